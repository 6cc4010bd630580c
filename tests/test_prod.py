"""The production template, brought up as the guide does, with throw-away secrets."""
from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from stack import ROOT, Stack, StackError, free_port, wait_for

pytestmark = pytest.mark.stack

PROD_FILE = "docker-compose.example.yml"
WORKERS = ["celery", "celery-cpu", "celery-io"]
REQUIRED = ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS"]
SCAN_INTERVAL = 2  # seconds between beat's periodic job, shortened for the tests


def prod_env(tmp: Path, drop: str | None = None, **override: str) -> Path:
    """envs/prod.env with every CHANGE-ME placeholder replaced by a random secret."""
    lines = []
    for line in (ROOT / "envs/prod.env").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            if name == drop:
                continue
            value = re.sub(r"CHANGE-ME-[A-Za-z-]*", lambda _: secrets.token_hex(12), value)
            value = override.get(name, value)
            line = f"{name}={value}"
        lines.append(line)
    path = tmp / (f"prod-without-{drop}.env" if drop else "prod-test.env")
    path.write_text("\n".join(lines) + "\n")
    return path


def env_value(path: Path, name: str) -> str:
    return next(l.split("=", 1)[1] for l in path.read_text().splitlines() if l.startswith(name + "="))


@pytest.fixture(scope="module")
def prod(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("prod")
    env_file = prod_env(tmp, WEB_PORT=str(free_port()), FASTAPI_PORT=str(free_port()),
                        FLOWER_PORT=str(free_port()),
                        CELERY_STUCK_SCAN_INTERVAL=str(SCAN_INTERVAL))
    stack = Stack(files=[PROD_FILE], env_file=str(env_file),
                  project=f"trinity-prodtest-{secrets.token_hex(4)}")
    stack.env_path = env_file
    try:
        stack.compose("build", "postgres", "redis", "web", "fastapi", timeout=1800)
        # The guide's command, plus --wait.
        proc = stack.compose("up", "-d", "--wait", "--wait-timeout", "240",
                             "web", "fastapi", "celery", check=False, timeout=300)
        if proc.returncode != 0:
            pytest.fail(f"the prod stack did not come up:\n{proc.stderr[-2000:]}\n"
                        + "\n".join(stack.logs(s) for s in ["migrate", "web", *WORKERS]),
                        pytrace=False)
        yield stack
    finally:
        if request.session.testsfailed:
            for s in ["web", "fastapi", *WORKERS, "beat", "flower"]:
                print(stack.logs(s, tail=60))
        stack.compose("--profile", "flower", "down", "-v", "--remove-orphans", "--timeout", "20",
                      check=False)


def test_the_guides_command_starts_a_consumer_for_every_queue(prod):
    for worker in WORKERS:
        assert prod.health(worker) == "healthy", worker
    code, out = prod.exec("celery", ["celery", "-A", "config.celery", "status", "--timeout", "10"])
    assert code == 0, out
    assert {n.split("@")[0] for n in re.findall(r"^->\s+(\S+): OK", out, re.M)} == {"default", "cpu", "io"}


def test_only_http_ports_are_published(prod):
    published = {}
    for container in prod.containers():
        service = container.labels["com.docker.compose.service"]
        bound = {p for p, b in (container.ports or {}).items() if b}
        if bound:
            published[service] = bound
    assert published == {"web": {"8000/tcp"}, "fastapi": {"8001/tcp"}}


def test_every_prod_service_runs_as_non_root(prod):
    root, seen = prod.root_processes()
    assert not root, f"running as root: {root}"
    assert seen >= 8  # postgres, redis, web, fastapi, three workers: all their processes


@pytest.mark.parametrize("service", ["web", "fastapi"])
def test_the_production_images_carry_no_test_tools(prod, service):
    """Test tools live only in the -test images that the stack tests build (compose/test.yml)."""
    code, out = prod.exec(service, ["python", "-c", "import importlib.util as u; print([m for m in "
                                    "('pytest', 'pytest_django', 'httpx') if u.find_spec(m)])"])
    assert (code, out.strip()) == (0, "[]"), out


def test_redis_refuses_commands_without_its_password(prod):
    code, out = prod.exec("redis", ["redis-cli", "--no-auth-warning", "SET", "k", "v"])
    assert "NOAUTH" in out, out


@pytest.mark.parametrize("name", REQUIRED)
def test_compose_refuses_to_start_without_a_required_secret(tmp_path, name):
    env_file = prod_env(tmp_path, drop=name)
    proc = subprocess.run(["docker", "compose", "-f", PROD_FILE, "--env-file", str(env_file),
                           "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert name in proc.stderr, proc.stderr


@pytest.mark.parametrize("service,name,value", [
    ("web", "DJANGO_SECRET_KEY", "CHANGE-ME-django-secret-key"),
    ("celery", "REDIS_URL", "redis://:insecure-dev-redis-password@redis:6379/0"),
    ("fastapi", "REDIS_URL", "redis://:CHANGE-ME-redis-password@redis:6379/0"),
])
def test_services_refuse_placeholder_secrets_at_start(prod, service, name, value):
    started = time.monotonic()
    proc = prod.compose("run", "--rm", "--no-deps", "-e", f"{name}={value}", service,
                        check=False, timeout=90)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"{name}: holds a placeholder" in output, output
    print(f"{service} refused {name} in {time.monotonic() - started:.1f}s")


def test_make_prod_up_refuses_the_template_placeholders():
    proc = subprocess.run(["scripts/prod-up"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PROD_ENV": "envs/prod.env"})
    assert proc.returncode == 1
    for name in ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "DJANGO_SECRET_KEY", "FLOWER_BASIC_AUTH"]:
        assert name in proc.stderr, proc.stderr


def validate(prod) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv/bin/python"), "scripts/validate.py", "--file",
                           PROD_FILE, "--project", prod.project, "--env-file", prod.env_file],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_validate_passes_on_a_healthy_stack_and_names_the_step_when_workers_stop(prod):
    healthy = validate(prod)
    print(healthy.stdout)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert re.search(r"\b0 failed", healthy.stdout), healthy.stdout
    try:
        prod.compose("stop", *WORKERS)
        broken = validate(prod)
        print(broken.stdout)
        assert broken.returncode != 0
        assert re.search(r"FAIL.*status", broken.stdout), broken.stdout
    finally:
        prod.compose("start", *WORKERS)
        prod.wait_healthy(WORKERS, timeout=120)


def test_a_worker_service_scales_out(prod):
    def io_nodes():
        code, out = prod.exec("celery", ["celery", "-A", "config.celery", "status", "--timeout", "5"])
        return len(re.findall(r"^->\s+io@\S+: OK", out, re.M))

    try:
        prod.compose("up", "-d", "--no-deps", "--scale", "celery-io=3", "celery-io")
        wait_for(lambda: io_nodes() == 3, 90, interval=2, describe=lambda: prod.logs("celery-io"))
    finally:
        prod.compose("up", "-d", "--no-deps", "--scale", "celery-io=1", "celery-io")


SEND = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
                  r"Scheduler: Sending due task mark-stuck-task-runs")


def send_times(text: str, since: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    """When any beat sent the periodic job, within [since, until] (beat logs in UTC)."""
    times = (dt.datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=dt.timezone.utc)
             for t in SEND.findall(text))
    return sorted(t for t in times if since <= t <= until)


def test_one_periodic_run_per_tick_with_three_beats(prod):
    """The beat service scaled to two, plus the guide's `run --rm celery ... beat`: RedBeat's
    lock lets one of them send; the others wait. The job runs on the beat queue's worker."""
    guide_beat = subprocess.Popen(
        prod.compose_cmd("run", "--rm", "--no-deps", "celery", "celery", "-A", "config.celery",
                         "beat", "--loglevel=info"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        prod.compose("up", "-d", "--no-deps", "--scale", "beat=2", "beat")
        prod.wait_healthy(["beat"], timeout=90)
        since = dt.datetime.now(dt.timezone.utc)
        time.sleep(8 * SCAN_INTERVAL)  # a measurement window, not a wait for readiness
        until = dt.datetime.now(dt.timezone.utc)
        guide_beat.terminate()
        guide_out, _ = guide_beat.communicate(timeout=30)
        logs = guide_out + "".join(c.logs().decode() for c in prod.containers("beat", all=True))
        sent = send_times(logs, since, until)
        gaps = [(b - a).total_seconds() for a, b in zip(sent, sent[1:])]
        ticks = (until - since).total_seconds() / SCAN_INTERVAL
        assert 1 <= len(sent) <= ticks + 1, f"{len(sent)} sends in {ticks:.0f} ticks: {sent}"
        assert min(gaps, default=SCAN_INTERVAL) >= SCAN_INTERVAL / 2, f"two sends per tick: {gaps}"
        ran = prod.container("celery").logs(since=since).decode()
        assert re.search(r"mark_stuck_task_runs\[\S+\] succeeded", ran), prod.logs("celery")
    finally:
        if guide_beat.poll() is None:
            guide_beat.kill()
        prod.compose("stop", "beat", check=False)


@pytest.mark.skipif(not (shutil.which("chromium-headless-shell") or shutil.which("chromium")),
                    reason="no headless Chromium on this machine (scripts/bootstrap installs "
                           "Debian's chromium-headless-shell when run as root)")
def test_flower_lists_the_workers_and_requires_authentication(prod):
    prod.compose("--profile", "flower", "up", "-d", "--wait", "--wait-timeout", "120", "flower")
    port = prod.container("flower").ports["5555/tcp"][0]["HostPort"]
    base = f"http://127.0.0.1:{port}"
    assert requests.get(f"{base}/workers", timeout=10).status_code == 401
    user, password = env_value(prod.env_path, "FLOWER_BASIC_AUTH").split(":", 1)
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    page = f"http://{user}:{password}@127.0.0.1:{port}/workers"
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
             "--virtual-time-budget=5000"]

    def listed():
        dom = subprocess.run(flags + ["--dump-dom", page], capture_output=True, text=True,
                             timeout=60).stdout
        return {n.split("@")[0] for n in re.findall(r"\b(?:default|cpu|io)@[0-9a-f]+", dom)}

    wait_for(lambda: listed() == {"default", "cpu", "io"}, 60, interval=2,
             describe=lambda: f"workers listed: {listed()}")
    subprocess.run(flags + [f"--screenshot={artifacts / 'flower-workers.png'}", page],
                   capture_output=True, timeout=60, check=True)
    assert (artifacts / "flower-workers.png").stat().st_size > 10_000
