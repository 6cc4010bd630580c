"""Record TaskRuns and send them to their queue: the one enqueue of the runbook tooling.

    python manage.py enqueue OPERATION [PAYLOAD_JSON] [--schema NAME] [--count N]
        [--wait SECONDS | --no-send]

Prints one JSON object per TaskRun, one per line, for scripts to read:
  sent        {"task_run_id", "task_id", "operation", "queue", "schema", "status": "QUEUED"}
  --wait      the same once the TaskRun is final, plus "result" and "error"
  --no-send   {"task_run_id", "operation", "schema", "status": "PENDING"}: the row only, for
              sending it by hand, as the runbook does:
              execute_task.apply_async(args=[TASK_RUN_ID, 'public'])
Exit status: 0 sent (with --wait: every TaskRun SUCCESS), 1 a TaskRun failed or the broker
refused it, 3 --wait timed out; a bad argument stops it with a message naming the argument.

Every TaskRun goes through apps.orchestration.services.submit_task_run, the path of the HTTP
API: the rows are committed before anything is published, and a refused publish leaves its
row FAILURE with the reason, so a row this command reports as refused never runs.
"""

import json
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django_tenants.utils import get_public_schema_name, schema_context, schema_exists

from apps.orchestration.models import TaskRun
from apps.orchestration.services import submit_task_run

POLL_INTERVAL = 0.2  # seconds between two reads of the rows while --wait waits


def parse_payload(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandError(f"PAYLOAD_JSON: not JSON ({exc}): {text!r}") from None


def check_operation(name: str) -> str:
    known = [value for value, _ in TaskRun._meta.get_field("operation").choices]
    if name not in known:
        raise CommandError(f"OPERATION: unknown operation {name!r}; known: {', '.join(known)}")
    return name


def check_schema(name: str) -> str:
    if name != get_public_schema_name() and not schema_exists(name):
        raise CommandError(f"--schema: no schema {name!r} in this database "
                           "(python manage.py create_tenant_schema NAME adds a tenant)")
    return name


def line(run: TaskRun, schema: str, queue: str | None = None, final: bool = False) -> str:
    shown = {"task_run_id": run.pk, "task_id": run.celery_task_id or None,
             "operation": run.operation, "queue": queue, "schema": schema, "status": run.status}
    if final:
        shown.update(result=run.result, error=run.error or None)
    return json.dumps({k: v for k, v in shown.items() if v is not None or final},
                      default=str)


class Command(BaseCommand):
    help = "Record TaskRuns of OPERATION and send them to their queue; print them as JSON lines."

    def add_arguments(self, parser):
        parser.add_argument("operation", metavar="OPERATION")
        parser.add_argument("payload", metavar="PAYLOAD_JSON", nargs="?", default=None,
                            help="the operation's payload as JSON (default: null)")
        parser.add_argument("--schema", default=get_public_schema_name(),
                            help="tenant schema of the TaskRuns (default: public)")
        parser.add_argument("--count", type=int, default=1, help="how many TaskRuns (default 1)")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--wait", type=float, metavar="SECONDS",
                          help="wait until every TaskRun is final, at most SECONDS")
        mode.add_argument("--no-send", action="store_true",
                          help="record the TaskRun PENDING and do not send it")

    def handle(self, *args, operation, payload, schema, count, wait, no_send, **options):
        operation, payload = check_operation(operation), parse_payload(payload)
        schema = check_schema(schema)
        if count < 1:
            raise CommandError(f"--count: must be at least 1, got {count}")
        if no_send:
            with schema_context(schema):
                runs = [TaskRun.objects.create(operation=operation, payload=payload)
                        for _ in range(count)]
            self.stdout.write("\n".join(line(run, schema) for run in runs))
            return
        # One transaction: every row is committed before the first message is sent (and a
        # refusal turns its own row FAILURE without stopping the others).
        with transaction.atomic():
            sent = [submit_task_run(operation, payload, schema) for _ in range(count)]
        runs = self.reread([s.run for s in sent], schema)
        if wait is None:
            self.stdout.write("\n".join(line(runs[s.run.pk], schema, s.queue) for s in sent))
        # A refused publish: FAILURE before any worker started it (a worker's FAILURE has attempts).
        refused = [run for run in runs.values()
                   if run.status == TaskRun.Status.FAILURE and not run.attempts]
        if refused:
            raise CommandError(f"{len(refused)} of {count} TaskRuns not sent: {refused[0].error}",
                               returncode=1)
        if wait is not None:
            self.wait_final(sent, schema, wait)

    def reread(self, runs, schema) -> dict[int, TaskRun]:
        with schema_context(schema):
            return TaskRun.objects.in_bulk([run.pk for run in runs])

    def wait_final(self, sent, schema: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            runs = self.reread([s.run for s in sent], schema)
            if all(run.is_final for run in runs.values()) or time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        self.stdout.write("\n".join(line(runs[s.run.pk], schema, s.queue, final=True)
                                    for s in sent))
        waiting = [run.pk for run in runs.values() if not run.is_final]
        if waiting:
            raise CommandError(f"TaskRuns {waiting} not final after {seconds:g} s", returncode=3)
        failed = [run.pk for run in runs.values() if run.status != TaskRun.Status.SUCCESS]
        if failed:
            raise CommandError(f"TaskRuns {failed} ended FAILURE", returncode=1)
