"""Celery tasks of the orchestration app.

execute_task(task_run_id, schema_name)   run a recorded TaskRun in its tenant's schema
run_operation(operation, payload, schema) record + run in one go (FastAPI publishes this;
                                          it has no database)
mark_stuck_task_runs()                    beat job: publish again what the broker lost, close
                                          what nobody will finish (apps/orchestration/backstop.py)

Safe to deliver twice, even at once: the ledger (apps/orchestration/ledger.py) lets one
delivery at a time start the operation, a finished TaskRun returns its outcome without running
again, and operations are idempotent. The schema is always set explicitly: a worker never
inherits one from a previous task.
"""

import logging
import threading
import time

from celery import current_app, shared_task
from celery.exceptions import Ignore
from celery.signals import worker_process_init
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models.functions import Now
from django_tenants.utils import schema_context

from apps.orchestration import backstop, ledger, operations
from apps.orchestration.ledger import Decision, TaskRunError
from apps.orchestration.models import TaskRun
from apps.tenants.schemas import UnknownSchema, check_schema
from apps.orchestration.operations import (ACCEPTANCE_WAIT, EXECUTE_TASK, GATEWAY_OWNER_KEY_PREFIX,
                                           GATEWAY_SENT_KEY, MARK_STUCK_TASK_RUNS, RUN_OPERATION)
from config.broker import redis_client

logger = logging.getLogger(__name__)
Status = TaskRun.Status

__all__ = ["TaskRunError", "execute_task", "run_operation", "mark_stuck_task_runs"]


class TimeLimitReached(Exception):
    """The operation ran past the soft time limit (raised where the pool cannot signal)."""


# Celery's time limits are signals that only a prefork child receives; the threads pool (and
# solo) ignore them. There the task times the operation itself (see _run_timed).
_prefork_child = False


@worker_process_init.connect
def _in_prefork_child(**_):
    global _prefork_child
    _prefork_child = True


def _run_timed(operation: str, payload, soft_limit: float | None):
    """Run the operation; where Celery cannot enforce the soft limit, enforce it here.

    The operation runs in a thread of its own that is abandoned at the limit: Python cannot
    stop a thread, so it finishes in the background, its result dropped (the row is FAILURE by
    then, and operations are idempotent). Operations on such pools are IO waits (sleep), so an
    abandoned one holds a thread, not a CPU.
    """
    if _prefork_child or not soft_limit:
        return operations.run(operation, payload)
    outcome = {}

    def target():
        try:
            outcome["result"] = operations.run(operation, payload)
        except BaseException as exc:  # handed to the task's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"operation-{operation}", daemon=True)
    worker.start()
    worker.join(soft_limit)
    if worker.is_alive():
        raise TimeLimitReached(f"still running after the soft time limit of {soft_limit:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _outcome(run: TaskRun, schema_name: str, status: str, result) -> dict:
    return {"task_run_id": run.pk, "schema": schema_name, "operation": run.operation,
            "status": status, "result": result}


def _execute(task, task_run_id, schema_name: str) -> dict:
    """Shared body of execute_task and run_operation."""
    try:
        check_schema(schema_name)
    except UnknownSchema as exc:
        raise TaskRunError(str(exc)) from None
    try:
        task_run_id = int(task_run_id)
    except (TypeError, ValueError):
        raise TaskRunError(f"TaskRun id must be an integer, got {task_run_id!r}") from None

    request, conf = task.request, current_app.conf
    with schema_context(schema_name):
        claim = ledger.claim(
            task_run_id, schema_name, request.id,
            # kombu marks a message it restores from a dead worker's unacked entry
            redelivered=bool((request.delivery_info or {}).get("redelivered")),
            retry=bool(request.retries),
            lease_seconds=conf.task_time_limit or 0,
            lost_max=conf.trinity_worker_lost_max,
            worker=request.hostname or "")
        run = claim.run
        if claim.decision is Decision.BUSY:
            logger.info("TaskRun %s in %s is running under %s: this delivery does not start it",
                        run.pk, schema_name, run.lease_owner)
            raise Ignore()  # no result stored: the holder's outcome is the task's outcome
        if claim.decision is not Decision.RUN:
            logger.info("TaskRun %s in %s already %s: not run again", run.pk, schema_name,
                        run.status)
            if run.status == Status.FAILURE:
                raise TaskRunError(f"TaskRun {run.pk} failed: {run.error}")
            return _outcome(run, schema_name, run.status, run.result)
        # The operation runs outside the row lock: a long one must not hold a transaction.
        try:
            result = _run_timed(run.operation, run.payload, conf.task_soft_time_limit)
        except Exception as exc:  # SoftTimeLimitExceeded (prefork) and TimeLimitReached too
            ledger.record(run, claim.owner, Status.FAILURE, error=f"{type(exc).__name__}: {exc}")
            raise
        ledger.record(run, claim.owner, Status.SUCCESS, result=result)
        return _outcome(run, schema_name, Status.SUCCESS, result)


# The database went away mid-task (Postgres restarted, failover): try again, 1+2+4+8+15+15 s
# apart, instead of leaving the row QUEUED or RUNNING. Safe: a rerun of a finished row returns
# its outcome and operations are idempotent. Each countdown stays below the visibility timeout.
DB_RETRY = {"autoretry_for": (OperationalError, InterfaceError), "max_retries": 6,
            "retry_backoff": 1, "retry_backoff_max": 15, "retry_jitter": False}
# Operations can run for minutes: report STARTED so monitor/inspect show them as running
# (the app-wide default is off: config/celery_settings.py).
ORCHESTRATION = {**DB_RETRY, "track_started": True}


@shared_task(bind=True, name=EXECUTE_TASK, **ORCHESTRATION)
def execute_task(self, task_run_id, schema_name="public"):
    """Run TaskRun ``task_run_id`` of ``schema_name`` and record its outcome."""
    return _execute(self, task_run_id, schema_name)


@shared_task(bind=True, name=RUN_OPERATION, **ORCHESTRATION)
def run_operation(self, operation, payload=None, schema_name="public", await_acceptance=False):
    """Create a TaskRun (celery_task_id = this task's id) in ``schema_name`` and run it.

    ``await_acceptance``: the sender (FastAPI) writes its acceptance record only once it has
    told its client 202; without that record within ACCEPTANCE_WAIT seconds the row ends
    FAILURE "not accepted" and the operation does not run, so a 503 is never a phantom.
    """
    operations.operation(operation)  # UnknownOperation: FAILURE naming the known operations
    try:
        check_schema(schema_name)
    except UnknownSchema as exc:
        raise TaskRunError(str(exc)) from None
    task_id = self.request.id
    with schema_context(schema_name):
        run = _row_for_task(task_id, operation, payload)
        if await_acceptance:
            _recorded(task_id)
        if await_acceptance and run.status == Status.QUEUED and not _accepted(task_id):
            reason = (f"not accepted: the gateway did not confirm task {task_id} within "
                      f"{ACCEPTANCE_WAIT} s (its client was told 503)")
            TaskRun.objects.filter(pk=run.pk, status=Status.QUEUED).update(
                status=Status.FAILURE, error=reason, finished_at=Now(), updated_at=Now())
            raise TaskRunError(reason)
    return _execute(self, run.pk, schema_name)


def _row_for_task(task_id, operation, payload) -> TaskRun:
    """The row of this Celery task id, created on its first delivery (one row per task id,
    even when two deliveries race: the unique constraint decides)."""
    if not task_id:
        return TaskRun.objects.create(operation=operation, payload=payload, status=Status.QUEUED)
    try:
        with transaction.atomic():
            return TaskRun.objects.get_or_create(
                celery_task_id=task_id,
                defaults={"operation": operation, "payload": payload, "status": Status.QUEUED},
            )[0]
    except IntegrityError:  # the other delivery inserted it first
        return TaskRun.objects.get(celery_task_id=task_id)


def _recorded(task_id: str) -> None:
    """The row exists: the gateway's note of this task is no longer needed (the scan reads the
    row from now on). A Redis error leaves the note, which the scan then drops itself."""
    try:
        redis_client(current_app.conf.broker_url).hdel(GATEWAY_SENT_KEY, task_id)
    except Exception as exc:
        logger.warning("task %s: the gateway's note not deleted (%s); the scan will", task_id, exc)


def _accepted(task_id: str) -> bool:
    """Poll the gateway's acceptance record for up to ACCEPTANCE_WAIT seconds.

    A Redis error is not an answer: polling goes on, and if the last read still failed the
    error propagates (the row stays QUEUED for the stuck-task scan) instead of declaring a
    task unaccepted that its client may have been told 202 for."""
    import redis

    client = redis_client(current_app.conf.broker_url)
    deadline = time.monotonic() + ACCEPTANCE_WAIT
    while True:
        try:
            if client.exists(GATEWAY_OWNER_KEY_PREFIX + task_id):
                return True
            error = None
        except redis.RedisError as exc:
            error = exc
        if time.monotonic() > deadline:
            if error is not None:
                raise error
            return False
        time.sleep(0.1)


# Nobody reads the beat job's return value (it logs what it did): store no result.
@shared_task(name=MARK_STUCK_TASK_RUNS, ignore_result=True)
def mark_stuck_task_runs():
    """Publish again the TaskRuns whose message the broker lost, and close those nobody will
    finish, in every schema; return counts per schema."""
    return backstop.scan(current_app)
