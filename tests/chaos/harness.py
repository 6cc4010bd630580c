"""What every chaos module uses: the TaskRun ledger read with psql in the stack's Postgres (Django's
shell in web where a test needs the ORM), Redis and worker helpers, and POST through the proxy
with the stack's API token.

TaskRun rows are the ledger: status says whether a task finished, attempts counts how many times
a worker started its operation, so attempts > 1 means it ran twice. Every wait polls against a
deadline and a failure prints the services' logs.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from contextlib import contextmanager

import requests

from edge import WORKERS
from stack import Stack, StackError, wait_for

SERVICES = ["web", "fastapi", *WORKERS, "beat"]
VISIBILITY = 20  # CELERY_VISIBILITY_TIMEOUT of the chaos stack (production: 3600)
SCAN_INTERVAL = 5  # CELERY_STUCK_SCAN_INTERVAL of the chaos stack (production: 60)
QUEUED_GRACE = 30  # apps/orchestration/backstop.py: a QUEUED row's age before the scan looks
QUEUES = ["trinity.tasks", "trinity.tasks.cpu", "trinity.tasks.io"]
FINAL = ("SUCCESS", "FAILURE")


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


# ---- the ledger read straight from Postgres: tests poll it often, and a Django shell per poll
# cost seconds of the same two cores the workers need -------------------------------------------
def sql(stack: Stack, query: str) -> object:
    """Run `query` (one JSON value) in the stack's Postgres as its superuser over the local
    socket, which trusts it inside the container; returns the value parsed."""
    code, out = stack.exec("postgres", ["psql", "-U", "postgres", "-d", "trinity", "-AtqX",
                                        "-v", "ON_ERROR_STOP=1", "-c", query])
    if code != 0:
        raise StackError(f"psql failed ({code}): {out[-2000:]}")
    return json.loads(out.strip() or "null")


def literal(text) -> str:
    """`text` as an SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def _texts(values) -> str:
    return "ARRAY[" + ",".join(literal(v) for v in values) + "]::text[]"


def _ints(values) -> str:
    return "ARRAY[" + ",".join(str(int(v)) for v in values) + "]::bigint[]"


def select_taskruns(stack: Stack, columns: str, where: str) -> list:
    """Rows of public's TaskRun table that match `where` (SQL), each as a list of `columns`
    (a SQL select list)."""
    return sql(stack, f"SELECT coalesce(json_agg(json_build_array({columns})), '[]') "
                      f"FROM public.orchestration_taskrun WHERE {where}")


def taskruns(stack: Stack, columns: str, ids=(), task_ids=(), where: str = "true") -> list:
    """The rows among `ids` (TaskRun ids) and `task_ids` (Celery task ids) that match `where`."""
    return select_taskruns(stack, columns, f"(id = ANY({_ints(ids)}) OR celery_task_id = "
                                           f"ANY({_texts(task_ids)})) AND {where}")


def count_taskruns(stack: Stack) -> int:
    return sql(stack, "SELECT count(*) FROM public.orchestration_taskrun")


def enqueue(stack: Stack, specs: list[tuple[str, object]]) -> list[int]:
    """Send one TaskRun per (operation, payload) with `manage.py enqueue`, one call (one Django
    start) per distinct spec, each to its own queue; their ids, in the order of `specs`."""
    positions: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        positions.setdefault(json.dumps(spec), []).append(i)
    ids = [0] * len(specs)
    for spec, where in positions.items():
        operation, payload = json.loads(spec)
        sent = stack.enqueue(operation, payload, "--count", str(len(where)))
        for i, line in zip(where, sent, strict=True):
            ids[i] = line["task_run_id"]
    return ids


class Ledger:
    """TaskRun rows keyed by id, or by Celery task id for rows a worker creates (FastAPI)."""

    def __init__(self, rows, ids, by_task_id=False):
        self.rows = {(tid if by_task_id else pk): dict(op=op, status=st, attempts=att, error=err)
                     for pk, tid, op, st, att, err in rows}
        self.missing = sorted(set(ids) - set(self.rows))
        self.expected = len(ids)

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
    rows = taskruns(stack, "id, celery_task_id, operation, status, attempts, error",
                    ids=[] if by_task_id else ids, task_ids=ids if by_task_id else [])
    return Ledger(rows, ids, by_task_id)


def wait_final(stack: Stack, ids: list, timeout: float, by_task_id: bool = False) -> Ledger:
    return poll_final(lambda: ledger(stack, ids, by_task_id), timeout, lambda: report(stack))


def poll_final(read, timeout: float, describe) -> Ledger:
    """Call `read()` for the Ledger every 2 s until all its TaskRuns are final; past `timeout`,
    raise with its summary and `describe()` (the services' logs). A read that fails with
    StackError (web's database briefly gone, in the Postgres scenario) is asked again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            book = read()
        except StackError:
            if time.monotonic() > deadline:
                raise
        else:
            if book.final == book.expected:
                return book
            if time.monotonic() > deadline:
                raise StackError(f"{book.expected - book.final} of {book.expected} TaskRuns not "
                                 f"final after {timeout:.0f}s: {book.summary()}\n{describe()}")
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
        return all(healthcheck(stack, w)[0] == 0 for w in workers)
    wait_for(ok, timeout, interval=1, describe=lambda: report(stack, workers))


def healthcheck(stack: Stack, worker: str) -> tuple[int, str]:
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


def sigkill_worker(stack: Stack, service: str) -> None:
    """SIGKILL every process of the worker (as the OOM killer or a crash would); the container
    then exits and `restart: always` brings it back. (`docker kill` would count as a manual
    stop: Docker does not restart a container it was told to kill.)"""
    code, out = stack.exec(service, ["sh", "-c", "kill -KILL -1"])
    assert code in (0, 137, -1, None) or "Killed" in out, (code, out)


def restarted(stack: Stack, service: str, restarts: int) -> bool:
    found = stack.containers(service)
    if not found:
        return False
    found[0].reload()
    return found[0].attrs["RestartCount"] > restarts and found[0].status == "running"


# ---- broker and beat faults (test_broker.py, test_beat.py) -----------------------------------
UNACKED_RESTORE_INTERVAL = 10  # config/celery_settings.py: kombu's sweep of the unacked index
REDBEAT_LOCK_TIMEOUT = 30  # celery_settings: redbeat_lock_timeout
# A beat's log line for each send of the stuck-task scan (Celery's own timestamp, UTC).
BEAT_SEND = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
                       r"Scheduler: Sending due task mark-stuck-task-runs")
BEAT_MAX_LOOP = 5  # celery_settings: beat_max_loop_interval (beat renews its lock this often)
GUARD_SKIP = "broker connection already closed: skipped"  # config/kombu_fixes.py's warning
CANCELLED = "cannot be acknowledged after a connection loss"  # Celery's cancel-on-loss warning


def worker_lives(stack: Stack, workers=WORKERS) -> dict[str, tuple[int, str]]:
    """(RestartCount, StartedAt) per worker: equal before and after means it never restarted."""
    lives = {}
    for w in workers:
        c = stack.container(w)
        c.reload()
        lives[w] = (c.attrs["RestartCount"], c.attrs["State"]["StartedAt"])
    return lives


def service_logs(stack: Stack, services, since: float) -> str:
    """Every container's log of `services` since the epoch second `since` (all replicas)."""
    return "".join(c.logs(since=int(since)).decode(errors="replace")
                   for s in services for c in stack.containers(s, all=True))


@contextmanager
def redis_cut_off(stack: Stack):
    """Redis's container off the stack's network (no RST: peers see silence, as with a
    network partition), then back under its service name."""
    redis = stack.container("redis")
    network = stack.client.networks.get(f"{stack.project}_default")
    network.disconnect(redis)
    try:
        yield
    finally:
        network.connect(redis, aliases=["redis"])


def unacked_on(stack: Stack, queue: str) -> int:
    """Messages of `queue` delivered to a worker and not yet acknowledged (kombu's `unacked`
    hash: field = delivery tag, value = JSON [message, exchange, routing key])."""
    out = redis_cli(stack, "--raw", "HVALS", "unacked")
    return sum(line.rstrip().endswith(f'"{queue}"]') for line in out.splitlines())


def duplicate_task_ids(stack: Stack, ids: list[int]) -> list[str]:
    """Celery task ids of `ids` that more than one TaskRun row carries (must be none)."""
    mine = [tid for [tid] in taskruns(stack, "celery_task_id", ids=ids)]
    return sql(stack, "SELECT coalesce(json_agg(celery_task_id), '[]') FROM (SELECT "
                      "celery_task_id FROM public.orchestration_taskrun WHERE celery_task_id = "
                      f"ANY({_texts(mine)}) GROUP BY 1 HAVING count(*) > 1) AS dup")
