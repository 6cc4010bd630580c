"""The runbook's checks of a running stack, from inside it: PASS/FAIL/SKIP per step.

    python manage.py validate_stack [--reply-timeout SECONDS] [--task-timeout SECONDS]

Run it where the workers' credentials are (`docker compose run --rm celery python manage.py
validate_stack`, which `make validate` does): in production only the workers' Redis user may
use Celery's remote control. Steps, each after the ones it needs:

  workers   `ping`: the worker nodes that answer
  queues    `inspect active_queues`: every declared queue (default, CPU, IO, beat) has a consumer
  tasks     one TaskRun per queue that an operation is routed to, sent as the API sends it
            (submit_task_run), SUCCESS in the ledger and in the result backend, taken from its
            queue; the echo's result equals its payload
  monitor   monitor_orchestration_tasks on the echo task (result backend, `inspect query_task`,
            TaskRun): found, final, SUCCESS
  stuck     `inspect reserved` and `inspect scheduled`: no task left waiting on a worker
  beat      when a beat holds the RedBeat lock: each periodic job was sent within its period

The last line is `validate: N passed, N failed, N skipped`; the exit status is 1 when a step
failed. Every broadcast has a reply timeout, every wait a deadline: it never hangs.
"""

import io
import json
import time
import uuid
from datetime import datetime, timezone

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import schema_context

from apps.orchestration.models import TaskRun
from apps.orchestration.services import submit_task_run
from config.celery import app

# One known-good operation per queue it is routed to; which queue that is, the routing says.
PROBES = {"echo": None, "primes": 1000, "sleep": 0.1}
BEAT_GRACE = 10.0  # seconds a periodic job may be late (beat wakes every beat_max_loop_interval)


class StepFailed(Exception):
    """The check ran and what it saw is wrong; the message says what."""


class StepSkipped(Exception):
    """The check does not apply to this stack; the message says why."""


# ---- judgements on what the workers answered (pure: tests/test_validate_stack.py) ------------
def judge_workers(replies: dict) -> list[str]:
    nodes = sorted(node for node, reply in (replies or {}).items()
                   if isinstance(reply, dict) and reply.get("ok") == "pong")
    if not nodes:
        raise StepFailed("no worker node answered ping")
    return nodes


def consumers(active_queues: dict) -> dict[str, list[str]]:
    """Queue name -> the nodes consuming it, from an `active_queues` reply."""
    found: dict[str, list[str]] = {}
    for node, queues in (active_queues or {}).items():
        for queue in queues or ():
            found.setdefault(queue["name"], []).append(node)
    return found


def judge_queues(declared: list[str], active_queues: dict) -> str:
    by_queue = consumers(active_queues)
    missing = [name for name in declared if name not in by_queue]
    if missing:
        raise StepFailed(f"no worker consumes {', '.join(missing)}")
    return ", ".join(f"{name} ({len(by_queue[name])})" for name in declared)


def judge_held(reserved: dict, scheduled: dict) -> str:
    held = [f"{task.get('request', task).get('id')} ({kind} on {node})"
            for kind, replies in (("reserved", reserved), ("scheduled", scheduled))
            for node, tasks in (replies or {}).items() for task in tasks or ()]
    if held:
        raise StepFailed("tasks waiting on a worker: " + ", ".join(held))
    return "nothing reserved or scheduled"


def judge_run(run: TaskRun, state: str, taken_from: str | None, queue: str, payload) -> str:
    problems = []
    if run.status != TaskRun.Status.SUCCESS or state != "SUCCESS":
        problems.append(f"TaskRun {run.status}, Celery {state}"
                        + (f" ({run.error})" if run.error else ""))
    if taken_from != queue:
        problems.append(f"taken from {taken_from}, routed to {queue}")
    if run.operation == "echo" and run.result != payload:
        problems.append(f"result {run.result!r} != payload {payload!r}")
    if problems:
        raise StepFailed(f"{run.operation} on {queue}: " + "; ".join(problems))
    return f"{run.operation} on {queue}"


def judge_monitor(report: dict) -> str:
    backend, database = report["result_backend"], report["database"]
    record = database.get("record") or {}
    seen = (backend.get("state"), record.get("status"), report["inspect"].get("error"))
    if seen != ("SUCCESS", "SUCCESS", None):
        raise StepFailed(f"Celery {seen[0]}, TaskRun {seen[1]}, inspect {seen[2] or 'answered'}")
    return f"task {report['task_id']}: Celery SUCCESS, TaskRun {record['id']} SUCCESS"


def judge_beat(lock_ttl_ms: int, last_sent: dict, periods: dict, now: datetime) -> str:
    if lock_ttl_ms < 0:  # -2: no key, -1: a key without expiry (not a beat's lock)
        raise StepSkipped("no beat holds the RedBeat lock (`make beat` starts one)")
    late = []
    for name, period in periods.items():
        sent = last_sent.get(name)
        if sent is None or (now - sent).total_seconds() > period + BEAT_GRACE:
            late.append(f"{name} last sent {sent and sent.isoformat()}, every {period:g} s")
    if late:
        raise StepFailed("; ".join(late))
    return f"lock held; {', '.join(periods)} sent within its period"


# ---- the steps: each returns its PASS detail, raises StepFailed / StepSkipped ----------------
class Checks:
    def __init__(self, reply_timeout: float, task_timeout: float):
        self.reply_timeout, self.task_timeout = reply_timeout, task_timeout
        self.nodes: list[str] = []
        self.echo_task_id = None

    def inspect(self):
        # limit: stop waiting once every node that answered ping has answered
        return app.control.inspect(timeout=self.reply_timeout, limit=len(self.nodes) or None)

    def workers(self) -> str:
        replies = {}
        for reply in app.control.ping(timeout=self.reply_timeout) or []:
            replies.update(reply)
        self.nodes = judge_workers(replies)
        return f"{len(self.nodes)} answered: {', '.join(self.nodes)}"

    def queues(self) -> str:
        declared = [queue.name for queue in app.conf.task_queues]
        return judge_queues(declared, self.inspect().active_queues())

    def tasks(self) -> str:
        payloads = {**PROBES, "echo": {"validate": uuid.uuid4().hex}}
        sent = [submit_task_run(op, payload) for op, payload in payloads.items()]
        probed = {s.queue for s in sent}
        beat_queues = {entry.get("options", {}).get("queue")
                       for entry in app.conf.beat_schedule.values()}
        unprobed = [q.name for q in app.conf.task_queues
                    if q.name not in probed | beat_queues]
        if unprobed:
            raise StepFailed(f"no operation is routed to {', '.join(unprobed)}")
        runs = self.wait_final([s.run.pk for s in sent])
        self.echo_task_id = sent[0].run.celery_task_id
        seen = []
        for submission, payload in zip(sent, payloads.values()):
            result = app.AsyncResult(submission.run.celery_task_id)  # queue: result_extended
            seen.append(judge_run(runs[submission.run.pk], result.state, result.queue,
                                  submission.queue, payload))
        return ", ".join(seen)

    def wait_final(self, ids: list[int]) -> dict[int, TaskRun]:
        deadline = time.monotonic() + self.task_timeout
        while True:
            with schema_context("public"):
                runs = TaskRun.objects.in_bulk(ids)
            if all(run.is_final for run in runs.values()):
                return runs
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{r.operation} {r.status}" for r in runs.values()
                                    if not r.is_final)
                raise StepFailed(f"not final after {self.task_timeout:g} s: {waiting}")
            time.sleep(0.2)

    def monitor(self) -> str:
        out = io.StringIO()
        call_command("monitor_orchestration_tasks", task_id=self.echo_task_id, json=True,
                     stdout=out)
        return judge_monitor(json.loads(out.getvalue().strip().splitlines()[-1]))

    def stuck(self) -> str:
        inspect = self.inspect()
        return judge_held(inspect.reserved(), inspect.scheduled())

    def beat(self) -> str:
        from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf, get_redis

        lock_ttl = get_redis(app).pttl(ensure_conf(app).lock_key)
        periods = {name: float(entry["schedule"])
                   for name, entry in app.conf.beat_schedule.items()}
        last_sent = {}
        for name in periods if lock_ttl >= 0 else ():
            key = RedBeatSchedulerEntry.generate_key(app, name)
            last_sent[name] = RedBeatSchedulerEntry.from_key(key, app=app).last_run_at
        return judge_beat(lock_ttl, last_sent, periods, datetime.now(timezone.utc))


# (name, what must have passed before it)
STEPS = [("workers", ()), ("queues", ("workers",)), ("tasks", ("queues",)),
         ("monitor", ("tasks",)), ("stuck", ("workers",)), ("beat", ())]


def run_step(checks: Checks, name: str) -> tuple[str, str]:
    try:
        return "PASS", getattr(checks, name)()
    except StepFailed as exc:
        return "FAIL", str(exc)
    except StepSkipped as exc:
        return "SKIP", str(exc)
    except Exception as exc:  # a broker or database error is this step's FAIL, not a traceback
        return "FAIL", f"{type(exc).__name__}: {exc}"


class Command(BaseCommand):
    help = "Check the running stack's workers, queues, tasks, monitor and beat: PASS/FAIL per step."

    def add_arguments(self, parser):
        parser.add_argument("--reply-timeout", type=float, default=3.0,
                            help="seconds a broadcast waits for the workers' replies (default 3)")
        parser.add_argument("--task-timeout", type=float, default=60.0,
                            help="seconds the test TaskRuns may take (default 60)")

    def handle(self, *args, reply_timeout, task_timeout, **options):
        checks = Checks(reply_timeout, task_timeout)
        outcome: dict[str, str] = {}
        for name, needs in STEPS:
            started = time.monotonic()
            unmet = [need for need in needs if outcome.get(need) != "PASS"]
            status, detail = ("SKIP", f"needs {', '.join(unmet)}") if unmet else run_step(
                checks, name)
            outcome[name] = status
            self.stdout.write(f"{status:<4}  {name:<8} {time.monotonic() - started:5.1f}s  "
                              f"{detail}")
            self.stdout.flush()
        counts = {s: list(outcome.values()).count(s) for s in ("PASS", "FAIL", "SKIP")}
        self.stdout.write(f"validate: {counts['PASS']} passed, {counts['FAIL']} failed, "
                          f"{counts['SKIP']} skipped")
        if counts["FAIL"]:
            raise CommandError(f"{counts['FAIL']} step(s) failed", returncode=1)
