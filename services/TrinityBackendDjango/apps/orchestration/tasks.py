"""Celery tasks of the orchestration app.

execute_task(task_run_id, schema_name)   run a recorded TaskRun in its tenant's schema
run_operation(operation, payload, schema) record + run in one go (FastAPI publishes this;
                                          it has no database)
mark_stuck_task_runs()                    beat job: close TaskRuns nobody will finish

Safe to run twice (late acks redeliver after a worker crash): a TaskRun that already
has an outcome returns it without running again, and operations are idempotent.
The schema is always set explicitly: a worker never inherits one from a previous task.
"""

import logging
from datetime import timedelta

from celery import current_app, shared_task
from celery.result import AsyncResult
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.orchestration import operations
from apps.orchestration.models import TaskRun
from apps.orchestration.schemas import UnknownSchema, all_schemas, check_schema
from config.celery_settings import (DEFAULT_VISIBILITY_TIMEOUT, UNACKED_RESTORE_INTERVAL,
                                    queue_for_operation)

logger = logging.getLogger(__name__)
Status = TaskRun.Status


class TaskRunError(Exception):
    """The TaskRun cannot run: unknown schema or id, or it failed before."""


def _now():
    return timezone.now()


def _claim(task_run_id: int, schema_name: str, celery_task_id: str | None):
    """Lock the row and mark it RUNNING; return (run, recorded_outcome_or_None)."""
    with transaction.atomic():
        try:
            run = TaskRun.objects.select_for_update().get(pk=task_run_id)
        except TaskRun.DoesNotExist:
            raise TaskRunError(
                f"TaskRun {task_run_id} not found in schema {schema_name!r}"
            ) from None
        if run.is_final:
            return run, True
        # RUNNING here means an earlier delivery died mid-way (redelivered): run it again.
        run.status = Status.RUNNING
        run.attempts += 1
        run.started_at = _now()
        run.error = ""
        if celery_task_id:
            run.celery_task_id = celery_task_id
        run.save(update_fields=["status", "attempts", "started_at", "error", "celery_task_id",
                                "updated_at"])
        return run, False


def _record(run: TaskRun, status: str, result=None, error: str = "") -> None:
    now = _now()
    TaskRun.objects.filter(pk=run.pk).update(
        status=status, result=result, error=error, finished_at=now, updated_at=now
    )


def _outcome(run: TaskRun, schema_name: str, status: str, result) -> dict:
    return {"task_run_id": run.pk, "schema": schema_name, "operation": run.operation,
            "status": status, "result": result}


def _execute(task_run_id, schema_name: str, celery_task_id: str | None) -> dict:
    """Shared body of execute_task and run_operation."""
    try:
        check_schema(schema_name)
    except UnknownSchema as exc:
        raise TaskRunError(str(exc)) from None
    try:
        task_run_id = int(task_run_id)
    except (TypeError, ValueError):
        raise TaskRunError(f"TaskRun id must be an integer, got {task_run_id!r}") from None

    with schema_context(schema_name):
        run, already_done = _claim(task_run_id, schema_name, celery_task_id)
        if already_done:
            logger.info("TaskRun %s in %s already %s: not run again", run.pk, schema_name,
                        run.status)
            if run.status == Status.FAILURE:
                raise TaskRunError(f"TaskRun {run.pk} already failed: {run.error}")
            return _outcome(run, schema_name, run.status, run.result)
        # The operation runs outside the row lock: a long one must not hold a transaction.
        try:
            result = operations.run(run.operation, run.payload)
        except Exception as exc:
            _record(run, Status.FAILURE, error=f"{type(exc).__name__}: {exc}")
            raise
        _record(run, Status.SUCCESS, result=result)
        return _outcome(run, schema_name, Status.SUCCESS, result)


# The database went away mid-task (Postgres restarted, failover): try again, 1+2+4+8+15+15 s
# apart, instead of leaving the row QUEUED or RUNNING. Safe: a rerun of a finished row returns
# its outcome and operations are idempotent. Each countdown stays below the visibility timeout.
DB_RETRY = {"autoretry_for": (OperationalError, InterfaceError), "max_retries": 6,
            "retry_backoff": 1, "retry_backoff_max": 15, "retry_jitter": False}
# Operations can run for minutes: report STARTED so monitor/inspect show them as running
# (the app-wide default is off, see celery_settings).
ORCHESTRATION = {**DB_RETRY, "track_started": True}


@shared_task(bind=True, name="apps.orchestration.tasks.execute_task", **ORCHESTRATION)
def execute_task(self, task_run_id, schema_name="public"):
    """Run TaskRun ``task_run_id`` of ``schema_name`` and record its outcome."""
    return _execute(task_run_id, schema_name, self.request.id)


@shared_task(bind=True, name="apps.orchestration.tasks.run_operation", **ORCHESTRATION)
def run_operation(self, operation, payload=None, schema_name="public"):
    """Create a TaskRun (celery_task_id = this task's id) in ``schema_name`` and run it."""
    queue_for_operation(operation)  # unknown operation: FAILURE with a clear message
    try:
        check_schema(schema_name)
    except UnknownSchema as exc:
        raise TaskRunError(str(exc)) from None
    task_id = self.request.id
    with schema_context(schema_name):
        if task_id:
            # A redelivered message finds the row its first delivery created.
            run, _ = TaskRun.objects.get_or_create(
                celery_task_id=task_id,
                defaults={"operation": operation, "payload": payload, "status": Status.QUEUED},
            )
        else:
            run = TaskRun.objects.create(operation=operation, payload=payload,
                                         status=Status.QUEUED)
    return _execute(run.pk, schema_name, task_id)


def stuck_after() -> timedelta:
    """How long a RUNNING/QUEUED row may stay so before it is declared stuck.

    Twice the visibility timeout plus one sweep of kombu's unacked index: by then Redis
    has redelivered the message of a dead worker (which re-claims the row and resets
    started_at) or never will.
    """
    options = current_app.conf.broker_transport_options or {}
    visibility = int(options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
    sweep = int(options.get("unacked_restore_interval", UNACKED_RESTORE_INTERVAL))
    return timedelta(seconds=2 * visibility + sweep)


def _celery_state(task_id: str) -> str | None:
    try:
        return AsyncResult(task_id).state
    except Exception:  # result backend unreachable: decide nothing this round
        return None


# Nobody reads the beat job's return value (it logs what it marked): store no result.
@shared_task(name="apps.orchestration.tasks.mark_stuck_task_runs", ignore_result=True)
def mark_stuck_task_runs():
    """Mark FAILURE the rows nobody will finish, in every schema; return counts per schema."""
    limit = stuck_after()
    counts = {}
    for schema_name in all_schemas():
        with schema_context(schema_name):
            now = _now()
            cutoff = now - limit
            running = TaskRun.objects.filter(status=Status.RUNNING, started_at__lt=cutoff).update(
                status=Status.FAILURE, finished_at=now, updated_at=now,
                error=f"stuck: RUNNING for more than {int(limit.total_seconds())} s "
                      "(worker lost, message not redelivered)",
            )
            queued = 0
            for run in TaskRun.objects.filter(status=Status.QUEUED, updated_at__lt=cutoff):
                state = _celery_state(run.celery_task_id) if run.celery_task_id else "PENDING"
                if state not in ("PENDING", "FAILURE", "REVOKED"):
                    continue  # Celery knows this task and it is moving, or unknown: leave it
                # PENDING: unknown to Celery. FAILURE/REVOKED: Celery gave up on it before it
                # could claim the row (e.g. the database was down for all its retries).
                known = "unknown to Celery" if state == "PENDING" else f"Celery says {state}"
                queued += TaskRun.objects.filter(pk=run.pk, status=Status.QUEUED).update(
                    status=Status.FAILURE, finished_at=now, updated_at=now,
                    error=f"stuck: QUEUED for more than {int(limit.total_seconds())} s "
                          f"and {known}",
                )
        counts[schema_name] = {"running": running, "queued": queued}
        if running or queued:
            logger.warning("marked stuck TaskRuns in %s: %s", schema_name, counts[schema_name])
    return counts
