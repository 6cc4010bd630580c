"""Show a Celery task's state beside its TaskRun row; optionally follow it to the end.

    python manage.py monitor_orchestration_tasks --task-id ID [--schema S] [--watch]
        [--timeout SECONDS] [--json]

Three views of one task:
  result backend  AsyncResult: state, result/error, task name and args (result_extended)
  workers         `inspect query_task` with a short reply timeout (active/reserved/scheduled)
  database        the TaskRun whose celery_task_id is ID in the schema; when execute_task
                  was re-sent for a TaskRun that already had an outcome, the row is found
                  through the task's args instead.
Exit code: 0 found (and final with --watch), 1 not found anywhere, 3 --watch timed out.
"""

import json
import threading
import time

from celery import states
from celery.result import AsyncResult
from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import schema_context

from apps.orchestration.models import TaskRun
from apps.tenants.schemas import UnknownSchema, check_schema
from config.celery import app
from apps.orchestration.operations import EXECUTE_TASK, RUN_OPERATION

INSPECT_TIMEOUT = 1.0


def _with_deadline(func, seconds: float):
    """Run func in a daemon thread; give up after ``seconds`` (never hang the command)."""
    box = {}

    def target():
        try:
            box["value"] = func()
        except Exception as exc:  # reported, not raised: the other views still print
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return None, f"no answer within {seconds:g} s"
    return box.get("value"), box.get("error")


def backend_view(task_id: str) -> dict:
    def read():
        result = AsyncResult(task_id, app=app)
        state = result.state
        view = {"state": state, "name": result.name, "args": result.args,
                "worker": getattr(result, "worker", None)}
        if state in states.READY_STATES:
            view["result"] = result.result if state == states.SUCCESS else repr(result.result)
        date_done = result.date_done
        view["date_done"] = date_done.isoformat() if hasattr(date_done, "isoformat") else date_done
        return view

    value, error = _with_deadline(read, 5.0)
    return value if error is None else {"state": None, "error": error}


def workers_view(task_id: str) -> dict:
    def ask():
        return app.control.inspect(timeout=INSPECT_TIMEOUT).query_task(task_id) or {}

    replies, error = _with_deadline(ask, INSPECT_TIMEOUT + 4.0)
    if error is not None:
        return {"error": error, "workers": {}}
    found = {}
    for worker, tasks in replies.items():
        if task_id in (tasks or {}):
            state, info = tasks[task_id]
            found[worker] = {"state": state, "name": (info or {}).get("name")}
    return {"workers": found}


def database_view(task_id: str, schema_name: str, backend: dict) -> dict:
    with schema_context(schema_name):
        run = TaskRun.objects.filter(celery_task_id=task_id).first()
        how = "celery_task_id"
        args = backend.get("args") or []
        if run is None and backend.get("name") == EXECUTE_TASK and args:
            run = TaskRun.objects.filter(pk=_int(args[0])).first()
            how = "task args"
    if run is None:
        return {"found": False, "schema": schema_name}
    return {"found": True, "schema": schema_name, "matched_by": how, "record": run.as_dict()}


def _schema_from_args(backend: dict) -> str:
    """The schema a task was sent for, read from its recorded args; else 'public'."""
    args = backend.get("args") or []
    position = {EXECUTE_TASK: 1, RUN_OPERATION: 2}.get(backend.get("name"))
    if position is not None and len(args) > position:
        return args[position]
    return "public"


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


class Command(BaseCommand):
    help = "Print a Celery task's state (result backend + workers) beside its TaskRun."

    def add_arguments(self, parser):
        parser.add_argument("--task-id", required=True, help="Celery task id")
        parser.add_argument("--schema", default=None,
                            help="tenant schema of the TaskRun (default: from the task's "
                                 "args, else public)")
        parser.add_argument("--watch", action="store_true", help="poll until SUCCESS/FAILURE")
        parser.add_argument("--timeout", type=float, default=60.0,
                            help="seconds --watch waits for a final state (default 60)")
        parser.add_argument("--interval", type=float, default=1.0, help="--watch poll interval")
        parser.add_argument("--json", action="store_true", help="print one JSON object per poll")

    def handle(self, *args, task_id, schema, watch, timeout, interval, json, **options):
        deadline = time.monotonic() + timeout
        while True:
            report = self.snapshot(task_id, schema)
            self.show(report, as_json=json)
            final = report["final"]
            if not watch or final or time.monotonic() >= deadline:
                break
            time.sleep(interval)
        if not report["found"]:
            raise CommandError(f"task {task_id} not found (no result, no worker, no TaskRun)",
                               returncode=1)
        if watch and not final:
            raise CommandError(f"task {task_id} not final after {timeout:g} s", returncode=3)

    def snapshot(self, task_id: str, schema) -> dict:
        backend = backend_view(task_id)
        if schema is None:
            schema = _schema_from_args(backend)
        try:
            check_schema(schema)
            database = database_view(task_id, schema, backend)
        except UnknownSchema as exc:
            database = {"found": False, "schema": schema, "error": str(exc)}
        workers = workers_view(task_id)
        record = database.get("record") or {}
        found = bool(database["found"] or workers["workers"]
                     or backend.get("state") not in (None, "PENDING"))
        final = (backend.get("state") in states.READY_STATES
                 or record.get("status") in TaskRun.FINAL)
        return {"task_id": task_id, "found": found, "final": final, "result_backend": backend,
                "inspect": workers, "database": database}

    def show(self, report: dict, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(report, default=str))
            return
        backend, workers, database = report["result_backend"], report["inspect"], report["database"]
        lines = [f"task {report['task_id']}"]
        line = f"  celery (result backend): {backend.get('state')}"
        if backend.get("error"):
            line += f"  [{backend['error']}]"
        if backend.get("name"):
            line += f"  {backend['name']}{tuple(backend.get('args') or ())}"
        lines.append(line)
        if "result" in backend:
            lines.append(f"  celery result: {backend['result']!r}")
        if workers.get("error"):
            lines.append(f"  workers (inspect): {workers['error']}")
        elif workers["workers"]:
            for worker, info in workers["workers"].items():
                lines.append(f"  workers (inspect): {worker} {info['state']}")
        else:
            lines.append("  workers (inspect): not active/reserved/scheduled on any worker")
        if database["found"]:
            rec = database["record"]
            lines.append(
                f"  database ({database['schema']}): TaskRun {rec['id']} {rec['operation']} "
                f"status={rec['status']} attempts={rec['attempts']} "
                f"finished_at={rec['finished_at']}"
            )
            if rec["result"] is not None:
                lines.append(f"  database result: {rec['result']!r}")
            if rec["error"]:
                lines.append(f"  database error: {rec['error']}")
        else:
            lines.append(f"  database ({database['schema']}): no TaskRun for this task"
                         + (f" [{database['error']}]" if database.get("error") else ""))
        self.stdout.write("\n".join(lines))
