"""No task lost: break workers, Redis, Postgres and the input on purpose.

One production stack per module (the PROD template, random secrets, its own project name,
HTTP through its proxy with an API token), with a short Redis visibility timeout so a SIGKILLed worker's task comes back within seconds
instead of an hour. TaskRun rows are the ledger: status says whether a task finished, attempts
counts how many times a worker claimed (started) it, so attempts > 1 means it ran twice.
Every wait polls against a deadline; a failure prints the services' logs.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
import requests

from edge import Edge, api_token, up_prod_stack
from stack import Stack, StackError, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.chaos]

WORKERS = ["celery", "celery-cpu", "celery-io"]
SERVICES = ["web", "fastapi", *WORKERS, "beat"]
VISIBILITY = 20  # CELERY_VISIBILITY_TIMEOUT of this stack (production: 3600)
SCAN_INTERVAL = 5  # CELERY_STUCK_SCAN_INTERVAL of this stack (production: 60)
QUEUES = ["trinity.tasks", "trinity.tasks.cpu", "trinity.tasks.io"]
FINAL = ("SUCCESS", "FAILURE")


# ---- the stack -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chaos(tmp_path_factory, request):
    started = time.monotonic()
    # The proxy's per-token rate stays out of the way: these tests send bursts on purpose.
    stack = up_prod_stack(tmp_path_factory.mktemp("chaos"), "trinity-chaos", SERVICES,
                          CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY),
                          CELERY_STUCK_SCAN_INTERVAL=str(SCAN_INTERVAL),
                          PROXY_RATE="10000r/s", PROXY_BURST="10000")
    try:
        edge = Edge(stack)
        stack.web, stack.fastapi = edge.https, edge.https + "/gateway"
        stack.token = api_token(stack)
        print(f"\nchaos stack {stack.project} healthy in {time.monotonic() - started:.1f}s")
        yield stack
    finally:
        if request.session.testsfailed:
            for s in ["redis", "postgres", "proxy", *SERVICES]:
                print(stack.logs(s, tail=80))
        stack.down()


def report(stack: Stack, services=SERVICES) -> str:
    return "\n".join(stack.logs(s, tail=40) for s in services)


# ---- the ledger: Django shell in the web container, one call per check ----------------------
def django(stack: Stack, code: str, timeout: float = 90) -> object:
    """Run `code` in `manage.py shell` of web; it must print one JSON line, returned parsed."""
    container = stack.container("web")
    proc = subprocess.run(["docker", "exec", container.id, "python", "manage.py", "shell",
                           "-c", code], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise StackError(f"django shell failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


ENQUEUE = """
import json
from celery import uuid
from django_tenants.utils import schema_context
from apps.orchestration.models import TaskRun
from apps.orchestration.tasks import execute_task
from config.celery_settings import queue_for_operation
specs = json.loads({specs!r})
with schema_context("public"):
    runs = TaskRun.objects.bulk_create(
        [TaskRun(operation=op, payload=p, status="QUEUED", celery_task_id=uuid()) for op, p in specs])
    for run in runs:
        execute_task.apply_async(args=[run.pk, "public"], task_id=run.celery_task_id,
                                 queue=queue_for_operation(run.operation))
print(json.dumps([run.pk for run in runs]))
"""

LEDGER = """
import json
from django.db.models import Q
from django_tenants.utils import schema_context
from apps.orchestration.models import TaskRun
ids, task_ids = json.loads({ids!r}), json.loads({task_ids!r})
with schema_context("public"):
    rows = list(TaskRun.objects.filter(Q(pk__in=ids) | Q(celery_task_id__in=task_ids))
                .values_list("pk", "celery_task_id", "operation", "status", "attempts", "error"))
print(json.dumps(rows))
"""


def enqueue(stack: Stack, specs: list[tuple[str, object]]) -> list[int]:
    """Create one TaskRun per (operation, payload) and send execute_task to its queue."""
    return django(stack, ENQUEUE.format(specs=json.dumps(specs)), timeout=180)


class Ledger:
    """TaskRun rows keyed by id, or by Celery task id for rows a worker creates (FastAPI)."""

    def __init__(self, rows, ids, by_task_id=False):
        self.rows = {(tid if by_task_id else pk): dict(op=op, status=st, attempts=att, error=err)
                     for pk, tid, op, st, att, err in rows}
        self.missing = sorted(set(ids) - set(self.rows))

    def count(self, *statuses) -> int:
        return sum(r["status"] in statuses for r in self.rows.values())

    @property
    def final(self) -> int:
        return self.count(*FINAL)  # a missing row is never final

    @property
    def twice(self) -> list[int]:
        return sorted(pk for pk, r in self.rows.items() if r["attempts"] > 1)

    def summary(self) -> str:
        by = {}
        for r in self.rows.values():
            by[r["status"]] = by.get(r["status"], 0) + 1
        return f"{by}, claimed twice: {len(self.twice)}, missing rows: {len(self.missing)}"


def ledger(stack: Stack, ids: list, by_task_id: bool = False) -> Ledger:
    query = LEDGER.format(ids=json.dumps([] if by_task_id else ids),
                          task_ids=json.dumps(ids if by_task_id else []))
    return Ledger(django(stack, query), ids, by_task_id)


def wait_final(stack: Stack, ids: list, timeout: float, by_task_id: bool = False) -> Ledger:
    deadline = time.monotonic() + timeout
    book = None
    while True:
        try:
            book = ledger(stack, ids, by_task_id)
        except StackError:  # web's database briefly gone (the Postgres scenario): ask again
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
            continue
        if book.final == len(ids):
            return book
        if time.monotonic() > deadline:
            raise StackError(f"{len(ids) - book.final} of {len(ids)} TaskRuns not final after "
                             f"{timeout:.0f}s: {book.summary()}\n{report(stack)}")
        time.sleep(2)


# ---- Redis and worker helpers ----------------------------------------------------------------
def redis_cli(stack: Stack, *args: str) -> str:
    code, out = stack.exec("redis", ["redis-admin", *args])
    assert code == 0, out
    return out.strip()


def queue_lengths(stack: Stack) -> dict[str, int]:
    return {q: int(redis_cli(stack, "LLEN", q)) for q in QUEUES}


def started_at(stack: Stack, service: str) -> str:
    c = stack.container(service)
    c.reload()
    return c.attrs["State"]["StartedAt"]


def wait_workers_healthy(stack: Stack, workers=WORKERS, timeout: float = 120) -> None:
    """Poll the workers' own healthcheck by exec (faster than docker's 10 s interval)."""
    def ok():
        return all(_healthcheck(stack, w)[0] == 0 for w in workers)
    wait_for(ok, timeout, interval=1, describe=lambda: report(stack, workers))


def _healthcheck(stack: Stack, worker: str) -> tuple[int, str]:
    try:
        return stack.exec(worker, ["healthcheck-celery"])
    except StackError as exc:  # container not running (yet)
        return 1, str(exc)


@contextmanager
def workers_stopped(stack: Stack, workers=WORKERS):
    stack.compose("stop", "--timeout", "30", *workers)
    try:
        yield
    finally:
        stack.compose("start", *workers)


def post(stack: Stack, url: str, body, timeout: float = 10) -> tuple[requests.Response, float]:
    """POST through the proxy with the stack's API token (its certificate is self-signed)."""
    started = time.monotonic()
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    r = requests.post(url, data=data, timeout=timeout, verify=False,
                      headers={"Content-Type": "application/json",
                               "Authorization": f"Bearer {stack.token}"})
    return r, time.monotonic() - started


# ---- a. bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("service,name,value", [
    ("celery", "CELERY_WORKER_CONCURRENCY", "abc"),
    ("celery", "REDIS_URL", "redis://redis:notaport/0"),
    ("fastapi", "REDIS_URL", "redis://redis:notaport/0"),
    ("web", "REDIS_URL", "redis://redis:notaport/0"),
    ("web", "DJANGO_SECRET_KEY_FILE", "/run/secrets/no-such-file"),
    ("celery", "DATABASE_URL", ""),
])
def test_a_bad_environment_stops_the_service_at_start(chaos, service, name, value):
    """The process exits non-zero within 5 s (container StartedAt -> FinishedAt, without
    compose's own overhead), and its log names the variable."""
    proc = chaos.compose("run", "-d", "--no-deps", "-e", f"{name}={value}", service, timeout=60)
    container = chaos.client.containers.get(proc.stdout.strip().splitlines()[-1])
    try:
        status = container.wait(timeout=30)
        container.reload()
        state = container.attrs["State"]
        logs = container.logs().decode(errors="replace")
        took = _seconds(state["FinishedAt"]) - _seconds(state["StartedAt"])
        print(f"{service} with bad {name}: exit {status['StatusCode']} after {took:.2f}s")
        assert status["StatusCode"] != 0, logs
        assert name in logs, logs
        assert "Traceback" not in logs, logs
        assert took < 5, f"{took:.2f}s\n{logs}"
    finally:
        container.remove(force=True)


def _seconds(stamp: str) -> float:
    # 2026-11-25T15:17:26.123456789Z -> seconds since the epoch
    head, _, frac = stamp.rstrip("Z").partition(".")
    t = dt.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return t.timestamp() + float(f"0.{frac or 0}")


BAD_BODIES = [
    "{not json",
    "[1, 2]",
    {"operation": "rm -rf"},
    {"operation": "echo", "surprise": 1},
    {"operation": "echo", "schema": "no_such_tenant"},
    {"payload": 1},
]


def test_a_bad_http_input_gets_4xx_with_a_reason_and_enqueues_nothing(chaos):
    count_rows = ("import json; from apps.orchestration.models import TaskRun; "
                  "print(json.dumps(TaskRun.objects.count()))")
    with workers_stopped(chaos):  # nothing consumes: a queued message would stay visible
        before, rows_before = queue_lengths(chaos), django(chaos, count_rows)
        answers = []
        for body in BAD_BODIES:
            for url in (f"{chaos.web}/api/task-runs/", f"{chaos.fastapi}/tasks"):
                r, _ = post(chaos, url, body)
                answers.append((url, body, r.status_code, r.text[:200]))
                assert 400 <= r.status_code < 500, answers[-1]
                reason = r.json().get("error") or r.json().get("detail")
                assert reason, answers[-1]
        after, rows_after = queue_lengths(chaos), django(chaos, count_rows)
        assert after == before, (before, after, answers)
        assert rows_after == rows_before
        # The control: a good request does show up in the same counters.
        r, _ = post(chaos, f"{chaos.fastapi}/tasks", {"operation": "noop"})
        assert r.status_code == 202, r.text
        assert queue_lengths(chaos)["trinity.tasks"] == before["trinity.tasks"] + 1
    print(f"{len(answers)} bad requests refused, queues {after}")


# ---- b. Redis stopped: the enqueue endpoints answer 503 fast, then recover -----------------
def test_b_enqueue_endpoints_answer_503_fast_while_redis_is_down(chaos):
    web_started, api_started = started_at(chaos, "web"), started_at(chaos, "fastapi")
    chaos.compose("stop", "redis")
    try:
        for url, body in [(f"{chaos.web}/api/task-runs/", {"operation": "echo", "payload": 1}),
                          (f"{chaos.fastapi}/tasks", {"operation": "echo", "payload": 1})]:
            r, took = post(chaos, url, body)
            print(f"{url} with Redis down: {r.status_code} in {took:.2f}s: {r.text[:160]}")
            assert r.status_code == 503, r.text
            assert took < 2, f"{took:.2f}s"
            reason = r.json().get("error") or r.json().get("detail")
            assert reason and "broker" in reason, r.text
            assert "Traceback" not in r.text
    finally:
        chaos.compose("start", "redis")
    chaos.wait_healthy(["redis"], timeout=60)

    def accepted():
        a, _ = post(chaos, f"{chaos.web}/api/task-runs/", {"operation": "echo", "payload": 2})
        b, _ = post(chaos, f"{chaos.fastapi}/tasks", {"operation": "echo", "payload": 2})
        return a.status_code == 201 and b.status_code == 202 and a.json()["id"]
    run_id = wait_for(accepted, 30, interval=1, describe=lambda: report(chaos, ["web", "fastapi"]))
    assert started_at(chaos, "web") == web_started, "web was restarted"
    assert started_at(chaos, "fastapi") == api_started, "fastapi was restarted"
    wait_workers_healthy(chaos)
    book = wait_final(chaos, [run_id], 60)
    assert book.count("SUCCESS") == 1, book.summary()


# ---- c. SIGKILL of the IO worker mid-task ----------------------------------------------------
def test_c_sigkilled_worker_task_is_redelivered_and_succeeds(chaos):
    wait_workers_healthy(chaos, ["celery-io"])
    ids = enqueue(chaos, [("sleep", {"seconds": 8})] * 3)
    wait_for(lambda: ledger(chaos, ids).count("RUNNING") == 3, 30, interval=0.5,
             describe=lambda: ledger(chaos, ids).summary() + report(chaos, ["celery-io"]))
    restarts = chaos.container("celery-io").attrs["RestartCount"]
    killed = time.monotonic()
    sigkill_worker(chaos, "celery-io")
    wait_for(lambda: _restarted(chaos, "celery-io", restarts), 30, interval=1,
             describe=lambda: report(chaos, ["celery-io"]))
    book = wait_final(chaos, ids, VISIBILITY + 60)
    took = time.monotonic() - killed
    print(f"SIGKILL mid-sleep: enqueued 3, {book.summary()}, final {took:.1f}s after the kill")
    assert book.count("SUCCESS") == 3, book.summary()
    assert all(r["attempts"] == 2 for r in book.rows.values()), book.rows  # killed run + rerun


def sigkill_worker(stack: Stack, service: str) -> None:
    """SIGKILL every process of the worker (as the OOM killer or a crash would); the container
    then exits and `restart: always` brings it back. (`docker kill` would count as a manual
    stop: Docker does not restart a container it was told to kill.)"""
    code, out = stack.exec(service, ["sh", "-c", "kill -KILL -1"])
    assert code in (0, 137, -1, None) or "Killed" in out, (code, out)


def _restarted(stack: Stack, service: str, restarts: int) -> bool:
    found = stack.containers(service)
    if not found:
        return False
    found[0].reload()
    return found[0].attrs["RestartCount"] > restarts and found[0].status == "running"


# ---- d. docker compose stop of the default worker during a burst ------------------------------
def test_d_stopping_the_worker_mid_burst_loses_and_repeats_nothing(chaos):
    wait_workers_healthy(chaos, ["celery"])
    started = time.monotonic()
    ids = enqueue(chaos, [("noop", None)] * 500)
    chaos.compose("stop", "--timeout", "60", "celery")  # warm shutdown, as a deploy does
    at_stop = ledger(chaos, ids)
    chaos.compose("start", "celery")
    book = wait_final(chaos, ids, 120)
    took = time.monotonic() - started
    print(f"stop mid-burst: enqueued 500, finished before the stop {at_stop.final}, "
          f"{book.summary()}, {took:.1f}s")
    assert at_stop.final < 500, "the worker finished the burst before it was stopped"
    assert book.count("SUCCESS") == 500, book.summary()
    assert book.twice == [], book.summary()


# ---- e/f. Redis away: healthcheck says so, workers come back alone, even if started first -----
def test_ef_workers_report_redis_loss_and_reconnect_without_help(chaos):
    wait_workers_healthy(chaos)
    before = {w: started_at(chaos, w) for w in ["celery", "celery-cpu"]}
    chaos.compose("stop", "redis")
    try:
        t0 = time.monotonic()
        code, out = _healthcheck(chaos, "celery")
        took = time.monotonic() - t0
        print(f"healthcheck-celery with Redis down: exit {code} in {took:.1f}s: {out.strip()[-160:]}")
        assert code != 0 and "unhealthy" in out, out
        assert took < 20, f"{took:.1f}s: above the compose healthcheck timeout"
        # f: a worker (re)started while Redis is down keeps trying instead of exiting.
        io = chaos.container("celery-io")
        since = int(time.time())
        io.restart(timeout=30)
        wait_for(lambda: "Cannot connect to redis" in io.logs(since=since).decode(), 30,
                 interval=1, describe=lambda: report(chaos, ["celery-io"]))
        time.sleep(3)  # a few more connection attempts: the worker must still be there
        io.reload()
        assert io.status == "running", report(chaos, ["celery-io"])
    finally:
        chaos.compose("start", "redis")
    back = time.monotonic()
    chaos.wait_healthy(["redis"], timeout=60)
    wait_workers_healthy(chaos, timeout=90)
    print(f"all workers healthy again {time.monotonic() - back:.1f}s after Redis started")
    assert {w: started_at(chaos, w) for w in before} == before, "a worker was restarted"
    ids = enqueue(chaos, [("noop", None), ("primes", {"n": 1000}), ("sleep", {"seconds": 0.1})])
    book = wait_final(chaos, ids, 60)
    assert book.count("SUCCESS") == 3, book.summary()


# ---- e. Redis restarted with 200 tasks queued ---------------------------------------------------
def test_e_redis_restart_keeps_200_queued_tasks(chaos):
    specs = [("noop", None)] * 120 + [("primes", {"n": 1000})] * 40 + [("sleep", {"seconds": 0.1})] * 40
    with workers_stopped(chaos):
        ids = enqueue(chaos, specs)
        queued = queue_lengths(chaos)
        assert sum(queued.values()) >= 200, queued
        chaos.compose("restart", "--no-deps", "redis")
        chaos.wait_healthy(["redis"], timeout=60)
        after = queue_lengths(chaos)
        assert after == queued, (queued, after)
    started = time.monotonic()
    book = wait_final(chaos, ids, 120)
    print(f"Redis restart with 200 queued ({queued}): {book.summary()}, "
          f"{time.monotonic() - started:.1f}s after the workers started")
    assert book.count("SUCCESS") == 200, book.summary()
    assert book.twice == [], book.summary()


# ---- g. Postgres restarted while tasks run ------------------------------------------------------
def test_g_postgres_restart_leaves_no_task_running_forever(chaos):
    """Sleeps are running and FastAPI requests keep coming (their worker creates the row, so
    it needs the database) while Postgres restarts: every task ends SUCCESS, or FAILURE with
    a recorded error; none stays QUEUED/RUNNING, no FastAPI task is without its row."""
    wait_workers_healthy(chaos)
    ids = enqueue(chaos, [("sleep", {"seconds": 4})] * 10)
    wait_for(lambda: ledger(chaos, ids).count("RUNNING") >= 5, 30, interval=0.5,
             describe=lambda: ledger(chaos, ids).summary())
    task_ids, errors, stop = [], [], threading.Event()

    def keep_posting():
        while not stop.is_set():
            try:
                r, _ = post(chaos, f"{chaos.fastapi}/tasks", {"operation": "noop"}, timeout=5)
                if r.status_code == 202:
                    task_ids.append(r.json()["task_id"])
                else:
                    errors.append(r.text)
            except requests.RequestException as exc:
                errors.append(str(exc))
            time.sleep(0.05)

    poster = threading.Thread(target=keep_posting, daemon=True)
    poster.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        chaos.compose("restart", "--no-deps", "postgres")
        time.sleep(2)
    finally:
        stop.set()
        poster.join(10)
    assert not errors, errors[:3]  # FastAPI does not need Postgres to accept
    book = wait_final(chaos, ids, 2 * VISIBILITY + 10 + SCAN_INTERVAL + 60)
    api = wait_final(chaos, task_ids, 2 * VISIBILITY + 10 + SCAN_INTERVAL + 60, by_task_id=True)
    rows = {**book.rows, **api.rows}
    failed = {k: r for k, r in rows.items() if r["status"] == "FAILURE"}
    print(f"Postgres restart: 10 sleeps enqueued, {book.summary()}; {len(task_ids)} FastAPI "
          f"noops, {api.summary()}; all final {time.monotonic() - started:.1f}s after the "
          f"restart; errors: {sorted({r['error'][:80] for r in failed.values()})}")
    assert len(task_ids) >= 20, task_ids
    assert all(r["error"] for r in failed.values()), failed
    assert not api.missing
    # With the database retries of execute_task/run_operation, the outage costs a rerun only.
    assert book.count("SUCCESS") == len(ids) and api.count("SUCCESS") == len(task_ids), failed


# ---- h. 1,000 mixed tasks, one worker SIGKILLed in the middle -----------------------------------
def test_h_thousand_mixed_tasks_one_worker_killed_none_lost(chaos):
    wait_workers_healthy(chaos)
    kinds = [("noop", None), ("noop", None), ("primes", {"n": 20000}), ("sleep", {"seconds": 0.2})]
    specs = [kinds[i % 4] for i in range(1000)]
    started = time.monotonic()
    ids = enqueue(chaos, specs)
    wait_for(lambda: ledger(chaos, ids).final >= 300, 120, interval=1,
             describe=lambda: ledger(chaos, ids).summary())
    at_kill = ledger(chaos, ids)
    restarts = chaos.container("celery").attrs["RestartCount"]
    sigkill_worker(chaos, "celery")
    wait_for(lambda: _restarted(chaos, "celery", restarts), 30, interval=1,
             describe=lambda: report(chaos, ["celery"]))
    book = wait_final(chaos, ids, VISIBILITY + 150)
    twice_ops = sorted({book.rows[pk]["op"] for pk in book.twice})
    print(f"1000 mixed, default worker SIGKILLed at {at_kill.final} final: {book.summary()} "
          f"(twice: {twice_ops}), {time.monotonic() - started:.1f}s")
    assert book.count("SUCCESS") == 1000, book.summary()
    assert not book.missing
    # Only the killed worker's in-flight tasks may run twice, and they are idempotent (noop).
    assert set(twice_ops) <= {"noop"}, twice_ops
    assert len(book.twice) <= 4, book.summary()  # concurrency 2 x prefetch 1, plus reserved
