"""The production template, brought up as the README's "Production" does, with throw-away secrets, and seen from
outside as the internet sees it: only the proxy answers, over TLS, and only to API tokens."""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import requests

from edge import (FINGERPRINT, PROD_FILE, WORKERS, api_token, create_tenant, env_value, prod_env,
                  secret_values, tls_handshake, wait_for_token_rejected, wrong_security_headers)
from stack import ROOT, wait_for

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def tokens(prod):
    """One token of the public tenant and one of a second tenant, `acme`."""
    create_tenant(prod, "acme")
    return {"public": api_token(prod, "public"), "acme": api_token(prod, "acme")}


def calm(fn, *args, **kwargs):
    """Call fn until it is not answered 429 (the proxy's per-token rate; tests share tokens)."""
    deadline = time.monotonic() + 10
    while True:
        response = fn(*args, **kwargs)
        if response.status_code != 429 or time.monotonic() > deadline:
            return response
        time.sleep(0.3)


# ---- what is published, and how -------------------------------------------------------------
def test_the_runbooks_command_starts_a_consumer_for_every_queue(prod):
    for worker in WORKERS:
        assert prod.health(worker) == "healthy", worker
    code, out = prod.exec("celery", ["celery", "-A", "config.celery", "status", "--timeout", "10"])
    assert code == 0, out
    assert {n.split("@")[0] for n in re.findall(r"^->\s+(\S+): OK", out, re.M)} == {"default", "cpu", "io"}


def test_only_the_proxy_publishes_a_port(prod):
    published = {}
    for container in prod.containers():
        bound = {p for p, b in (container.ports or {}).items() if b}
        if bound:
            published[container.labels["com.docker.compose.service"]] = bound
    assert published == {"proxy": {"8080/tcp", "8443/tcp"}}


def test_tls_with_the_generated_certificate_and_http2(prod):
    """The certificate the proxy serves is the one whose fingerprint it logged at start."""
    logged = FINGERPRINT.findall(prod.container("proxy").logs().decode())
    assert logged, prod.logs("proxy")
    served = tls_handshake(int(env_value(prod.env_path, "PROXY_HTTPS_PORT")))
    assert served.fingerprint == logged[-1].upper(), (served, logged)
    assert served.alpn == "h2" and served.version in ("TLSv1.2", "TLSv1.3"), served


def test_http_redirects_to_https(prod):
    r = requests.get(prod.edge.http + "/api/task-runs/?x=1", allow_redirects=False, timeout=10)
    assert r.status_code == 301, r.text
    assert r.headers["Location"] == f"{prod.edge.https}/api/task-runs/?x=1", r.headers


def assert_security_headers(r: requests.Response, what: str) -> None:
    """HSTS, nosniff, frame DENY, no-referrer, each exactly once; no version in Server."""
    wrong = wrong_security_headers(r.headers)
    assert not wrong, f"{what} ({r.status_code}): wrong or missing {wrong}; {dict(r.headers)}"


def test_security_headers_on_every_proxied_answer(prod):
    """Django and FastAPI set some of these themselves: the proxy hides theirs, sends its own."""
    for path in ["/livez", "/gateway/livez", "/api/task-runs/"]:
        assert_security_headers(prod.edge.get(path), path)


def announced_body(port: int, length: int) -> requests.Response:
    """A POST that announces `length` bytes and sends none: nginx judges Content-Length before
    it reads a byte (no broken pipe while a large body is still being sent)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/api/task-runs/")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        raw = conn.getresponse()
        r = requests.Response()
        r.status_code, r._content = raw.status, raw.read()
        for name in set(raw.headers.keys()):  # a header sent twice stays visible, ", "-joined
            r.headers[name] = ", ".join(raw.headers.get_all(name))
        return r
    finally:
        conn.close()


def own_answer(prod, what: str) -> requests.Response:
    """An answer that nginx makes itself, never an upstream."""
    if what == "405":  # TRACE is refused by nginx everywhere
        return prod.edge.request("TRACE", "/api/task-runs/")
    if what == "502":  # flower is a profile: not started, its name does not resolve
        assert not prod.containers("flower"), "flower runs: /flower/ would not be nginx's 502"
        return prod.edge.get("/flower/")
    if what == "healthz":
        return prod.edge.get("/proxy-healthz")
    if what == "http 301":
        return requests.get(prod.edge.http + "/admin/", allow_redirects=False, timeout=10)
    if what == "http 413":  # the HTTP port refuses an oversized body too, before redirecting
        return announced_body(int(env_value(prod.env_path, "PROXY_HTTP_PORT")), 2_000_000)
    if what == "400 plain http on the https port":
        return requests.get(prod.edge.https.replace("https:", "http:") + "/", timeout=10)
    raise ValueError(what)


@pytest.mark.parametrize("what,status", [
    ("405", 405), ("502", 502), ("healthz", 200), ("http 301", 301), ("http 413", 413),
    ("400 plain http on the https port", 400)])
def test_the_proxys_own_answers_carry_the_security_headers(prod, what, status):
    """413 (body) and 429 (rate) are checked in their own tests below."""
    r = own_answer(prod, what)
    assert r.status_code == status, (what, r.status_code, r.text[:300])
    assert_security_headers(r, what)
    if what == "405":
        assert r.headers.get("Allow") == "GET, HEAD, POST", r.headers


# ---- who can do what ------------------------------------------------------------------------
ENDPOINTS = [("POST", "/api/task-runs/"), ("GET", "/api/task-runs/1/"), ("POST", "/gateway/tasks"),
             ("GET", "/gateway/tasks/0b1c")]


@pytest.mark.parametrize("method,path", ENDPOINTS)
@pytest.mark.parametrize("token", [None, "trn_not-a-token", "garbage"])
def test_no_endpoint_answers_without_a_valid_token(prod, method, path, token):
    r = calm(prod.edge.request, method, path, token, json={"operation": "noop"})
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers


def test_a_token_reads_only_its_own_tenant(prod, tokens):
    """The tenant comes from the token: acme cannot see public's TaskRun or task, and back."""
    made = calm(prod.edge.post, "/api/task-runs/", tokens["public"], json={"operation": "noop"})
    assert made.status_code == 201, made.text
    assert made.json()["schema"] == "public"
    run_id = made.json()["id"]
    assert calm(prod.edge.get, f"/api/task-runs/{run_id}/", tokens["public"]).status_code == 200
    other = calm(prod.edge.get, f"/api/task-runs/{run_id}/", tokens["acme"])
    # acme has its own table: the same id is either absent there or acme's own row.
    assert other.status_code == 404 or other.json()["schema"] == "acme", other.text

    sent = calm(prod.edge.post, "/gateway/tasks", tokens["acme"], json={"operation": "noop"})
    assert sent.status_code == 202, sent.text
    task_id = sent.json()["task_id"]
    assert calm(prod.edge.get, f"/gateway/tasks/{task_id}", tokens["public"]).status_code == 404
    mine = calm(prod.edge.get, f"/gateway/tasks/{task_id}", tokens["acme"])
    assert mine.status_code == 200, mine.text


def test_the_body_cannot_choose_the_tenant(prod, tokens):
    django = calm(prod.edge.post, "/api/task-runs/", tokens["acme"],
                  json={"operation": "noop", "schema": "public"})
    fastapi = calm(prod.edge.post, "/gateway/tasks", tokens["acme"],
                   json={"operation": "noop", "schema": "public"})
    assert (django.status_code, fastapi.status_code) == (400, 422), (django.text, fastapi.text)


@pytest.mark.parametrize("path", ["/api/task-runs/", "/gateway/tasks"])
def test_a_body_over_the_limit_gets_413(prod, tokens, path):
    body = json.dumps({"operation": "echo", "payload": "x" * (1024 * 1024 + 10)})
    r = calm(prod.edge.post, path, tokens["public"], data=body,
             headers={"Content-Type": "application/json"})
    assert r.status_code == 413, (r.status_code, r.text[:300])
    # Above PROXY_MAX_BODY (1m, as API_MAX_BODY_BYTES): nginx's own 413, not the app's.
    assert r.json() == {"error": "request body too large", "detail": "request body too large"}
    assert_security_headers(r, f"413 at {path}")


@pytest.mark.parametrize("path", ["/api/task-runs/", "/gateway/tasks"])
def test_a_body_that_is_not_json_gets_415(prod, tokens, path):
    r = calm(prod.edge.post, path, tokens["public"], data="operation=noop",
             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415, (r.status_code, r.text[:300])


def test_past_the_rate_of_a_token_the_proxy_answers_429(prod, tokens):
    """The limit is per token: a flood with one token leaves another token's requests alone."""
    flooder = api_token(prod, "public", "flooder")
    answers = [prod.edge.get("/api/task-runs/999999/", flooder) for _ in range(6 * prod.rate)]
    statuses = [r.status_code for r in answers]
    assert 429 in statuses, statuses
    assert statuses[0] == 404, statuses
    assert_security_headers(answers[statuses.index(429)], "429")
    assert calm(prod.edge.get, "/api/task-runs/999999/", tokens["acme"]).status_code == 404


def test_a_token_is_created_used_and_revoked(prod):
    token = api_token(prod, "public", "to-revoke")
    assert calm(prod.edge.post, "/api/task-runs/", token, json={"operation": "noop"}).status_code == 201
    assert calm(prod.edge.post, "/gateway/tasks", token, json={"operation": "noop"}).status_code == 202
    code, out = prod.exec("web", ["python", "manage.py", "revoke_api_token", "--tenant", "public",
                                  "--name", "to-revoke"])
    assert code == 0, out
    assert calm(prod.edge.get, "/api/task-runs/1/", token).status_code == 401
    # FastAPI trusts a verified token for API_TOKEN_CACHE_SECONDS (10 s by default).
    took = wait_for_token_rejected(prod.edge, "/gateway/tasks/x", token, timeout=30)
    print(f"FastAPI refused the revoked token after {took:.1f}s")


def test_healthz_tells_the_outside_only_ok(prod):
    for path in ["/healthz", "/gateway/healthz"]:
        r = prod.edge.get(path)
        assert (r.status_code, r.json()) == (200, {"status": "ok"}), (path, r.text)


def test_api_docs_are_off_in_production(prod):
    for path in ["/gateway/docs", "/gateway/openapi.json", "/gateway/redoc"]:
        assert prod.edge.get(path).status_code == 404, path


# ---- least privilege ------------------------------------------------------------------------
def test_every_container_is_hardened(prod):
    looked = []
    for container in prod.containers():
        host = container.attrs["HostConfig"]
        name = container.labels["com.docker.compose.service"]
        looked.append(name)
        assert host["ReadonlyRootfs"], name
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], (name, host["CapAdd"])
        assert "no-new-privileges:true" in (host["SecurityOpt"] or []), name
        assert host["Memory"] > 0 and host["NanoCpus"] > 0 and (host["PidsLimit"] or 0) > 0, name
        assert host["LogConfig"]["Type"] == "json-file", name
        assert host["LogConfig"]["Config"].get("max-size"), name
        assert not host["Privileged"], name
    assert {"proxy", "postgres", "redis", "web", "fastapi", *WORKERS} <= set(looked), looked


def test_no_secret_value_appears_in_docker_inspect(prod):
    values = secret_values(prod.env_path)
    assert len(values) >= 8, values
    for container in prod.containers():
        attrs = json.dumps(container.attrs)
        leaked = [name for name, value in values.items()
                  if value in attrs or value.split(":")[-1] in attrs]
        assert not leaked, f"{container.name}: docker inspect shows {leaked}"


def test_every_prod_service_runs_as_non_root(prod):
    root, seen = prod.root_processes()
    assert not root, f"running as root: {root}"
    assert seen >= 10  # proxy, postgres, redis, web, fastapi, three workers, backup


REDIS_AS_APP = """
import sys
from config.celery_settings import load_settings
import redis
client = redis.Redis.from_url(load_settings()["broker_url"])
for name, call in [("FLUSHALL", client.flushall), ("CONFIG", lambda: client.config_get("dir")),
                   ("SHUTDOWN", lambda: client.execute_command("SHUTDOWN", "NOSAVE")),
                   ("PUBLISH", lambda: client.publish("/0.celery.pidbox", "x"))]:
    try:
        call()
        print(name, "ALLOWED")
    except redis.exceptions.NoPermissionError:
        print(name, "refused")
client.lpush("trinity.tasks.acl-probe", "x") and client.delete("trinity.tasks.acl-probe")
print("LPUSH allowed")
"""


@pytest.mark.parametrize("service", ["fastapi", "web"])
def test_the_app_redis_users_cannot_wipe_reconfigure_or_control_workers(prod, service):
    code, out = prod.exec(service, ["python", "-c", REDIS_AS_APP])
    assert code == 0, out
    assert out.split() == ["FLUSHALL", "refused", "CONFIG", "refused", "SHUTDOWN", "refused",
                           "PUBLISH", "refused", "LPUSH", "allowed"], out


def test_celery_remote_control_from_an_app_container_is_refused(prod):
    code, out = prod.exec("web", ["celery", "-A", "config.celery", "inspect", "ping",
                                  "--timeout", "3"])
    assert code != 0 and "no permissions" in out, out


def test_redis_default_user_is_off(prod):
    code, out = prod.exec("redis", ["redis-cli", "--no-auth-warning", "SET", "k", "v"])
    assert "NOAUTH" in out, out
    code, out = prod.exec("redis", ["redis-cli", "--no-auth-warning", "--user", "default",
                                    "--pass", "anything", "PING"])
    assert "WRONGPASS" in out or "disabled" in out, out


PG_ROLES = """
import json
from django.db import connection
with connection.cursor() as c:
    c.execute("SELECT current_user, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
    me = c.fetchone()
    c.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'")
    owner = c.fetchone()[0]
    c.execute("SELECT has_table_privilege(%s, 'orchestration_taskrun', 'SELECT'), "
              "has_column_privilege(%s, 'tenants_apitoken', 'name', 'SELECT'), "
              "has_column_privilege(%s, 'tenants_apitoken', 'key_hash', 'SELECT')", [GW] * 3)
    gateway = c.fetchone()
print(json.dumps({"me": me, "public_owner": owner, "gateway": gateway}))
"""


def test_the_apps_postgres_roles_are_not_superusers(prod):
    gateway = env_value(prod.env_path, "POSTGRES_GATEWAY_USER")
    code, out = prod.exec("web", ["python", "manage.py", "shell", "-c",
                                  f"GW = {gateway!r}\n" + PG_ROLES])
    assert code == 0, out
    found = json.loads(out.strip().splitlines()[-1])
    user = env_value(prod.env_path, "POSTGRES_APP_USER")
    assert found["me"] == [user, False, False, False], found
    assert found["public_owner"] == user, found
    # The gateway reads the token hash, not the label, and no TaskRun at all.
    assert found["gateway"] == [False, False, True], found


BACKUP_ROLE = ('PGPASSWORD="$(cat "$POSTGRES_BACKUP_PASSWORD_FILE")" psql -h postgres '
               '-U "$POSTGRES_BACKUP_USER" -d "$POSTGRES_DB" -tAc "{sql}"')


def test_the_scheduled_backup_reads_everything_as_a_role_that_writes_nothing(prod):
    wait_for(lambda: "verified" in prod.logs("backup"), 60, describe=lambda: prod.logs("backup"))
    code, out = prod.exec("backup", ["sh", "-c", "cd /backups && sha256sum -c trinity-*.sha256 "
                                     "&& pg_restore --list trinity-*.dump"])
    assert code == 0 and ": OK" in out, out
    assert " TABLE DATA public orchestration_taskrun " in out, out  # the data, not only the schema
    code, out = prod.exec("backup", ["sh", "-c", BACKUP_ROLE.format(
        sql="SELECT rolsuper, pg_has_role(current_user, 'pg_read_all_data', 'MEMBER') "
            "FROM pg_roles WHERE rolname = current_user")])
    assert (code, out.strip()) == (0, "f|t"), out
    code, out = prod.exec("backup", ["sh", "-c", BACKUP_ROLE.format(
        sql="DELETE FROM orchestration_taskrun")])
    assert code != 0 and "permission denied" in out, out
    # Its time is recorded for the monitoring, by a Redis user that may only set that key.
    assert "recorded in Redis" in prod.logs("backup"), prod.logs("backup")
    code, out = prod.exec("redis", ["redis-admin", "GET", "trinity.backup.last_success"])
    assert code == 0 and abs(time.time() - int(out.strip())) < 600, out
    as_backup = ('REDISCLI_AUTH="$(cat "$REDIS_BACKUP_PASSWORD_FILE")" redis-cli -h redis '
                 '--user backup --no-auth-warning ')
    for command in ["GET trinity.backup.last_success", "SET trinity.tasks x", "FLUSHALL"]:
        code, out = prod.exec("backup", ["sh", "-c", as_backup + command])
        assert "NOPERM" in out, (command, out)


def test_django_check_deploy_is_clean(prod):
    code, out = prod.exec("web", ["python", "manage.py", "check", "--deploy",
                                  "--fail-level", "WARNING"])
    assert code == 0, out
    assert "no issues" in out, out


# ---- failures that must be told, not hidden -------------------------------------------------
def test_an_enqueue_that_redis_refuses_for_memory_answers_503_with_the_reason(prod, tokens):
    code, out = prod.exec("redis", ["redis-admin", "CONFIG", "SET", "maxmemory", "1"])
    assert code == 0 and "OK" in out, out
    try:
        for path in ["/api/task-runs/", "/gateway/tasks"]:
            r = calm(prod.edge.post, path, tokens["public"], json={"operation": "noop"})
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert "maxmemory" in r.text, (path, r.text)
    finally:
        limit = env_value(prod.env_path, "REDIS_MAXMEMORY")
        prod.exec("redis", ["redis-admin", "CONFIG", "SET", "maxmemory", limit])


def test_fastapi_meets_its_openapi_document(prod, tokens, tmp_path):
    """schemathesis, bounded, against the document FastAPI generates, through the proxy."""
    code, out = prod.exec("fastapi", ["python", "-c", "import json; from app.main import app; "
                                      "print(json.dumps(app.openapi()))"])
    assert code == 0, out
    document = tmp_path / "openapi.json"
    document.write_text(out.strip().splitlines()[-1])
    token = api_token(prod, "public", "schemathesis")
    # The run stays under the proxy's rate for one token (429 is documented, but a run of
    # nothing but 429s would prove little).
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/schemathesis"), "run", str(document),
         "--url", f"{prod.edge.https}/gateway", "--tls-verify", "false",
         "-H", f"Authorization: Bearer {token}", "--checks", "all",
         "--max-examples", "30", "--rate-limit", f"{prod.rate}/s", "--seed", "1",
         "--no-color", "--phases", "examples,coverage,fuzzing"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(ROOT / "tests/schemathesis_hooks.py")})
    summary = proc.stdout[-4000:]
    print(summary)
    assert proc.returncode == 0, summary + proc.stderr[-2000:]


# ---- the operator's commands ----------------------------------------------------------------
@pytest.mark.parametrize("service", ["web", "fastapi"])
def test_the_production_images_carry_no_test_tools(prod, service):
    """Test tools live only in the -test images that the stack tests build (compose/test.yml)."""
    code, out = prod.exec(service, ["python", "-c", "import importlib.util as u; print([m for m in "
                                    "('pytest', 'pytest_django', 'httpx') if u.find_spec(m)])"])
    assert (code, out.strip()) == (0, "[]"), out


@pytest.mark.parametrize("service,name,value", [
    ("web", "DJANGO_SECRET_KEY", "CHANGE-ME-django-secret-key"),
    ("celery", "REDIS_PASSWORD", "insecure-dev-redis-password"),
    ("fastapi", "REDIS_PASSWORD", "CHANGE-ME-redis-password"),
])
def test_services_refuse_placeholder_secrets_at_start(prod, service, name, value):
    """A placeholder given as the variable itself (its _FILE emptied) stops the service."""
    started = time.monotonic()
    proc = prod.compose("run", "--rm", "--no-deps", "-e", f"{name}_FILE=", "-e", f"{name}={value}",
                        service, check=False, timeout=90)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"{name}: holds a placeholder" in output, output
    print(f"{service} refused {name} in {time.monotonic() - started:.1f}s")


def test_make_prod_up_refuses_missing_and_placeholder_secrets(tmp_path):
    env_file = prod_env(tmp_path)
    folder = tmp_path / "secrets"
    (folder / "django-secret-key").write_text("CHANGE-ME-django-secret-key\n")
    (folder / "redis-web-password").unlink()
    proc = subprocess.run(["scripts/prod-up"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PROD_FILE": PROD_FILE,
                                           "PROD_ENV": str(env_file)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "django-secret-key" in proc.stderr and "placeholder" in proc.stderr, proc.stderr
    assert "redis-web-password" in proc.stderr and "missing" in proc.stderr, proc.stderr


def test_validate_passes_on_a_healthy_stack_and_names_the_step_when_workers_stop(
        prod, validate, validate_passes):
    validate_passes(prod)
    try:
        prod.compose("stop", *WORKERS)
        broken = validate(prod)
        print(broken.stdout)
        assert broken.returncode != 0
        assert re.search(r"^FAIL\s+workers .*no worker node answered", broken.stdout,
                         re.M), broken.stdout
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
    """The beat service scaled to two, plus the runbook's `run --rm celery ... beat`: RedBeat's
    lock lets one of them send; the others wait. The job runs on the beat queue's worker."""
    runbook_beat = subprocess.Popen(
        prod.compose_cmd("run", "--rm", "--no-deps", "celery", "celery", "-A", "config.celery",
                         "beat", "--loglevel=info"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        prod.compose("up", "-d", "--no-deps", "--scale", "beat=2", "beat")
        prod.wait_healthy(["beat"], timeout=90)
        since = dt.datetime.now(dt.timezone.utc)
        time.sleep(8 * prod.scan_interval)  # a measurement window, not a wait for readiness
        until = dt.datetime.now(dt.timezone.utc)
        runbook_beat.terminate()
        runbook_out, _ = runbook_beat.communicate(timeout=30)
        logs = runbook_out + "".join(c.logs().decode() for c in prod.containers("beat", all=True))
        sent = send_times(logs, since, until)
        gaps = [(b - a).total_seconds() for a, b in zip(sent, sent[1:])]
        ticks = (until - since).total_seconds() / prod.scan_interval
        assert 1 <= len(sent) <= ticks + 1, f"{len(sent)} sends in {ticks:.0f} ticks: {sent}"
        assert min(gaps, default=ticks) >= prod.scan_interval / 2, f"two sends per tick: {gaps}"
        ran = prod.container("celery").logs(since=since).decode()
        assert re.search(r"mark_stuck_task_runs\[\S+\] succeeded", ran), prod.logs("celery")
    finally:
        if runbook_beat.poll() is None:
            runbook_beat.kill()
        prod.compose("stop", "beat", check=False)


@pytest.mark.skipif(not (shutil.which("chromium-headless-shell") or shutil.which("chromium")),
                    reason="no headless Chromium on this machine (scripts/bootstrap installs "
                           "Debian's chromium-headless-shell when run as root)")
def test_flower_behind_the_proxy_lists_the_workers_and_requires_authentication(prod):
    prod.compose("--profile", "flower", "up", "-d", "--wait", "--wait-timeout", "120", "flower")
    base = f"{prod.edge.https}/flower"
    assert requests.get(f"{base}/workers", timeout=10, verify=False).status_code == 401
    user, password = secret_values(prod.env_path)["flower-basic-auth"].split(":", 1)
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    port = env_value(prod.env_path, "PROXY_HTTPS_PORT")
    page = f"https://{user}:{password}@127.0.0.1:{port}/flower/workers"
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
             "--ignore-certificate-errors", "--virtual-time-budget=5000"]

    def listed():
        dom = subprocess.run(flags + ["--dump-dom", page], capture_output=True, text=True,
                             timeout=60).stdout
        return {n.split("@")[0] for n in re.findall(r"\b(?:default|cpu|io)@[0-9a-f]+", dom)}

    wait_for(lambda: listed() == {"default", "cpu", "io"}, 60, interval=2,
             describe=lambda: f"workers listed: {listed()}")
    subprocess.run(flags + [f"--screenshot={artifacts / 'flower-workers.png'}", page],
                   capture_output=True, timeout=60, check=True)
    assert (artifacts / "flower-workers.png").stat().st_size > 10_000
