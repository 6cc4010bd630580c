"""The monitoring profile (README, "Monitoring") on the production template, with throw-away
secrets, its own compose project and one stack for the module: every target scraped, the
exporters' least-privileged users, what is published, an alert from a stopped worker to a
webhook, and the on-call page in headless Chromium. The alert rules' own unit tests run with
promtool inside the monitoring image.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest
import requests

import backup
from edge import PROD_FILE, env_value, prod_stack, secret_values
from stack import ROOT, running, wait_for

pytestmark = pytest.mark.stack

MONITORING = ROOT / "images/monitoring"
SERVICES = ["web", "fastapi", "celery", "beat", "flower", "prometheus", "alertmanager",
            "redis-exporter", "postgres-exporter", "alert-receiver"]
MONITORING_SERVICES = ["prometheus", "alertmanager", "redis-exporter", "postgres-exporter"]
TEST_FILES = ["/m/rules.test.yml", "/m/rules.slow.test.yml"]
SCRAPE = 2  # seconds: the stack's scrape and rule interval (PROMETHEUS_SCRAPE_INTERVAL)


@pytest.fixture(scope="module")
def mon(tmp_path_factory, request):
    from stack import free_port

    stack = prod_stack(tmp_path_factory.mktemp("monitoring"), "trinity-montest",
                       PROMETHEUS_PORT=str(free_port()), ALERTMANAGER_PORT=str(free_port()),
                       PROMETHEUS_SCRAPE_INTERVAL=f"{SCRAPE}s",
                       ALERT_WEBHOOK_URL="http://alert-receiver:8080/")
    stack.files.append("compose/monitoring-test.yml")
    stack.env["COMPOSE_PROFILES"] = "monitoring"
    with running(stack, SERVICES, show_logs=lambda: request.session.testsfailed) as up:
        up.prometheus = f"http://127.0.0.1:{env_value(stack.env_path, 'PROMETHEUS_PORT')}"
        up.alertmanager = f"http://127.0.0.1:{env_value(stack.env_path, 'ALERTMANAGER_PORT')}"
        yield up


def query(mon, expr: str) -> list[dict]:
    r = requests.get(f"{mon.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


def values(mon, expr: str) -> dict[str, float]:
    """{the series' labels as text: value} of an instant query."""
    return {json.dumps(s["metric"], sort_keys=True): float(s["value"][1])
            for s in query(mon, expr)}


def wait_value(mon, expr: str, timeout: float = 60) -> dict[str, float]:
    """Poll until `expr` returns at least one series; fail with the exporters' logs."""
    return wait_for(lambda: values(mon, expr), timeout, interval=1, describe=lambda: (
        f"no result for {expr}\n" + "\n".join(mon.logs(s) for s in MONITORING_SERVICES)))


# ---- the rules, with promtool, in the image -----------------------------------------------
def promtool(mon, *args: str, rules_dir=MONITORING) -> subprocess.CompletedProcess:
    image = next(i for i in mon.compose("config", "--images").stdout.split()
                 if i.startswith("trinity/monitoring:"))
    return subprocess.run(["docker", "run", "--rm", "--network", "none", "-v",
                           f"{rules_dir}:/m:ro", "--entrypoint", "promtool", image, *args],
                          capture_output=True, text=True, timeout=300)


def test_the_alert_rules_pass_their_promtool_unit_tests(mon):
    checked = promtool(mon, "check", "rules", "/m/rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool(mon, "test", "rules", *TEST_FILES)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@pytest.mark.parametrize("change", [("> 300", "> 3000"), ("== 0 and on() up", "== 1 and on() up")])
def test_the_promtool_tests_fail_when_a_rule_changes(mon, tmp_path, change):
    """The unit tests bind the rules: a changed threshold or condition fails them."""
    copy = tmp_path / "m"
    shutil.copytree(MONITORING, copy)
    rules = (copy / "rules.yml").read_text()
    assert change[0] in rules
    (copy / "rules.yml").write_text(rules.replace(change[0], change[1]))
    tested = promtool(mon, "test", "rules", *TEST_FILES, rules_dir=copy)
    assert tested.returncode != 0 and "FAILED" in tested.stdout + tested.stderr, tested.stdout


# ---- what is scraped ------------------------------------------------------------------------
def test_every_target_is_scraped(mon):
    def all_up():
        targets = requests.get(f"{mon.prometheus}/api/v1/targets", timeout=10).json()
        health = {t["labels"]["job"]: t["health"] for t in targets["data"]["activeTargets"]}
        return health if set(health.values()) == {"up"} else None

    health = wait_for(all_up, 90, interval=2, describe=lambda: "\n".join(
        mon.logs(s) for s in MONITORING_SERVICES + ["flower"]))
    assert set(health) == {"prometheus", "flower", "redis", "postgres", "web", "fastapi"}, health


def test_redis_postgres_workers_and_beat_are_seen(mon):
    assert set(wait_value(mon, "redis_up == 1").values()) == {1}
    assert set(wait_value(mon, "pg_up == 1").values()) == {1}
    # prod.env's REDIS_MAXMEMORY=256mb, read by the monitor user through INFO
    assert set(wait_value(mon, "redis_memory_max_bytes").values()) == {256 * 1024 * 1024}
    online = wait_for(lambda: (lambda v: v if len(v) == 3 else None)(
        values(mon, "trinity:queue_workers_online > 0")), 60, interval=1,
        describe=lambda: values(mon, "flower_worker_online"))
    assert {json.loads(k)["queue"] for k in online} == {"default", "cpu", "io"}
    assert set(wait_value(mon, 'redis_script_values{key="beat_lock_held"} == 1').values()) == {1}
    assert set(wait_value(mon, "trinity:queue_length").values()) == {0}  # idle: every queue empty


def test_the_last_backup_time_reaches_prometheus(mon):
    before = time.time()
    backup.record_success(mon)
    found = wait_value(mon, 'redis_script_values{key="backup_last_success"}')
    [recorded] = found.values()
    assert before - 2 <= recorded <= time.time() + 1, (before, recorded)


def test_taskruns_are_counted_per_schema_status_and_queue(mon):
    runs = mon.enqueue("echo", {"m": 1}, "--count", "3", "--wait", "60")
    assert {r["status"] for r in runs} == {"SUCCESS"}, runs
    series = wait_value(mon, 'trinity_taskruns_runs{schema="public", status="SUCCESS", '
                             'queue="default"} >= 3')
    assert len(series) == 1, series


def test_requests_to_both_apps_are_counted_across_their_gunicorn_workers(mon):
    """Six requests to each app through the proxy (401: no token), spread over both gunicorn
    workers of each: the master's :9100 sums every worker's counters."""
    from edge import Edge

    edge = Edge(mon)
    for _ in range(6):
        assert edge.post("/api/task-runs/", json={"operation": "noop"}).status_code == 401
        assert edge.get("/gateway/tasks/abc").status_code == 401
    wait_value(mon, 'sum(django_http_responses_total_by_status_view_method_total'
                    '{status="401", view="task-runs"}) >= 6')
    wait_value(mon, 'sum(http_requests_total{handler="/tasks/{task_id}", status="4xx"}) >= 6')
    wait_value(mon, 'histogram_quantile(0.95, sum by (le) '
                    '(rate(django_http_requests_latency_seconds_by_view_method_bucket[1m]))) > 0')


# ---- least privilege and what is published ------------------------------------------------
def test_the_redis_monitor_user_reads_only_its_keys(mon):
    password = secret_values(mon.env_path)["redis-monitor-password"]

    def as_monitor(*args: str) -> str:
        code, out = mon.exec("redis", ["redis-cli", "--user", "monitor", "--no-auth-warning",
                                       *args], environment={"REDISCLI_AUTH": password})
        return out.strip()

    assert as_monitor("LLEN", "trinity.tasks").isdigit()
    for refused in (["SET", "trinity.tasks", "x"], ["GET", "trinity.gateway.owner:x"],
                    ["KEYS", "*"], ["SCAN", "0"], ["CONFIG", "GET", "*"], ["SLOWLOG", "GET"],
                    ["PUBLISH", "x", "y"], ["FLUSHALL"],
                    # a script runs under the same rules
                    ["EVAL", "return redis.call('GET', 'trinity.gateway.owner:x')", "0"],
                    ["EVAL", "return redis.call('SET', 'trinity.tasks', 'x')", "0"]):
        answer = as_monitor(*refused)
        assert "NOPERM" in answer or "ACL failure" in answer, (refused, answer)


def test_the_postgres_monitor_role_sees_only_the_statistics(mon):
    password = secret_values(mon.env_path)["postgres-monitor-password"]
    user, db = env_value(mon.env_path, "POSTGRES_MONITOR_USER"), env_value(mon.env_path,
                                                                           "POSTGRES_DB")

    def as_monitor(sql: str) -> tuple[int, str]:
        return mon.exec("postgres", ["psql", "-h", "127.0.0.1", "-U", user, "-d", db, "-tAc",
                                     sql], environment={"PGPASSWORD": password})

    code, out = as_monitor("SELECT count(*) FROM public.trinity_taskrun_stats()")
    assert code == 0 and int(out.strip()) > 0, out
    for table in ("public.orchestration_taskrun", "public.tenants_apitoken"):
        code, out = as_monitor(f"SELECT count(*) FROM {table}")
        assert code != 0 and "permission denied" in out, (table, out)
    code, out = as_monitor("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    assert out.strip() == "f", out


def test_prometheus_and_alertmanager_are_published_on_loopback_only(mon):
    published = {}
    for container in mon.containers():
        for port, bindings in (container.ports or {}).items():
            for b in bindings or []:
                published.setdefault(container.labels["com.docker.compose.service"],
                                     set()).add(b["HostIp"])
    assert published.pop("proxy") and published == {"prometheus": {"127.0.0.1"},
                                                   "alertmanager": {"127.0.0.1"}}, published


def test_flower_metrics_reach_prometheus_but_not_the_internet(mon):
    from edge import Edge

    assert values(mon, 'up{job="flower"}') and set(values(mon, 'up{job="flower"}').values()) == {1}
    r = Edge(mon).get("/flower/metrics")
    assert r.status_code == 404, r.text[:200]
    assert "flower_" not in r.text


def test_monitoring_containers_are_hardened_non_root_and_show_no_secret(mon):
    secrets = secret_values(mon.env_path)
    for service in MONITORING_SERVICES:
        container = mon.container(service)
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in (host["SecurityOpt"] or []), service
        attrs = json.dumps(container.attrs)
        leaked = [n for n, v in secrets.items() if v in attrs or v.split(":")[-1] in attrs]
        assert not leaked, f"{service}: docker inspect shows {leaked}"
    root, seen = mon.root_processes()
    assert not root, f"running as root: {root}"


# ---- an alert, end to end; the on-call page ------------------------------------------------
def received(mon) -> list[tuple[float, dict]]:
    log = mon.container("alert-receiver").logs().decode()
    return [(float(t), json.loads(body))
            for t, body in re.findall(r"^received (\S+) (.*)$", log, re.M)]


def test_a_stopped_cpu_worker_alerts_the_webhook(mon):
    """No worker for the cpu queue: its tasks wait, the page shows it, the webhook hears of it
    once the rule's minute has passed."""
    stopped_at = time.time()
    mon.compose("stop", "celery-cpu", timeout=120)
    runs = mon.enqueue("primes", {"n": 1000}, "--count", "2")
    assert len(runs) == 2 and {r["queue"] for r in runs} == {"trinity.tasks.cpu"}, runs
    wait_value(mon, 'trinity:queue_length{queue="cpu"} >= 2')
    wait_value(mon, 'trinity_taskruns_oldest_seconds{status="QUEUED", queue="cpu"} > 0')

    def cpu_alert():
        for at, body in received(mon):
            for alert in body["alerts"]:
                if (alert["labels"].get("alertname"), alert["labels"].get("queue"),
                        alert["status"]) == ("TrinityNoWorkerForQueue", "cpu", "firing"):
                    return at, alert
        return None

    at, alert = wait_for(cpu_alert, 180, interval=2, describe=lambda: (
        f"received: {received(mon)}\nalerts: {query(mon, 'ALERTS')}\n"
        + mon.logs("alertmanager") + mon.logs("flower")))
    mon.alert_seconds = at - stopped_at
    print(f"\nfault to webhook: {mon.alert_seconds:.1f}s (rule: 1 minute of no cpu worker)")
    assert alert["annotations"]["summary"] == "no worker online for the cpu queue"
    assert 60 <= mon.alert_seconds <= 150, mon.alert_seconds
    # Only the cpu queue lost its worker.
    assert not any(a["labels"].get("queue") in ("default", "io")
                   for _, body in received(mon) for a in body["alerts"]
                   if a["labels"].get("alertname") == "TrinityNoWorkerForQueue")


@pytest.mark.skipif(not (shutil.which("chromium-headless-shell") or shutil.which("chromium")),
                    reason="no headless Chromium on this machine (scripts/bootstrap installs "
                           "Debian's chromium-headless-shell when run as root)")
def test_the_on_call_page_shows_the_stopped_worker(mon):
    """Run after the alert test: the cpu row shows no worker, its depth and waiting time."""
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    page = f"{mon.prometheus}/consoles/trinity.html"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
             "--virtual-time-budget=3000"]
    dom = subprocess.run(flags + ["--dump-dom", page], capture_output=True, text=True,
                         timeout=60).stdout
    assert "Trinity on-call" in dom, dom[:2000]
    assert "TrinityNoWorkerForQueue" in dom, dom  # among the firing alerts
    cpu_row = re.search(r"<th>cpu <small>trinity\.tasks\.cpu</small></th>\s*<td class=\"bad\">0</td>"
                        r"\s*<td>(\d+)</td>", dom)
    assert cpu_row and int(cpu_row.group(1)) >= 2, dom
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "monitoring-oncall.png"
    subprocess.run(flags + [f"--screenshot={shot}", page], capture_output=True, timeout=60,
                   check=True)
    assert shot.stat().st_size > 10_000
    mon.compose("start", "celery-cpu", timeout=120)
