"""Who may run a TaskRun, and who may write its outcome: one run per row at a time.

A delivery that starts the operation takes a lease: ``lease_owner`` "<celery task id>#<attempt>"
and ``lease_expires_at`` = the database's clock + the task's hard time limit + a margin. While the
lease is live, another delivery of the same row does not start (two messages for one row sent at
once, or a message sent twice). A delivery takes over a RUNNING row only when the holder is
known to be gone: the broker handed its message back (Redis sets ``redelivered`` when it
restores a dead worker's message), the lease lapsed, or it is the same task's own retry. Only
the lease holder writes the outcome, so a stale run can never overwrite a newer one, nor the
FAILURE that the stuck-task scan wrote.

Each takeover after a lost worker counts in ``worker_lost``; at ``CELERY_WORKER_LOST_MAX`` the
row ends FAILURE "worker lost N times" instead of starting again (a poison task that kills its
worker must not loop forever).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import BooleanField, ExpressionWrapper, Q
from django.db.models.functions import Now

from apps.orchestration.models import TaskRun

logger = logging.getLogger(__name__)
Status = TaskRun.Status

# Seconds a lease outlives the hard time limit: the worker's own bookkeeping after the limit.
LEASE_MARGIN = 30


class TaskRunError(Exception):
    """The TaskRun cannot run: unknown schema or id, or it failed before."""


class Decision(enum.Enum):
    RUN = "run"  # this delivery holds the lease: run the operation
    DONE = "done"  # the row has an outcome already: return it
    BUSY = "busy"  # another delivery holds a live lease: do not start
    GAVE_UP = "gave up"  # the worker was lost too often: the row is now FAILURE


@dataclass
class Claim:
    decision: Decision
    run: TaskRun
    owner: str = ""


def claim(task_run_id: int, schema_name: str, task_id: str | None, *, redelivered: bool,
          retry: bool, lease_seconds: int, lost_max: int, worker: str = "") -> Claim:
    """Lock the row and decide what this delivery does with it (see the module docstring).

    ``redelivered``: the broker handed this message back (its worker died). ``retry``: the
    task's own retry (an earlier run of it raised). Either may replace a RUNNING row's holder;
    only the first, or a lapsed lease, counts as a lost worker.
    """
    with transaction.atomic():
        live = ExpressionWrapper(Q(lease_expires_at__gt=Now()), output_field=BooleanField())
        try:
            run = (TaskRun.objects.select_for_update().annotate(lease_live=live)
                   .get(pk=task_run_id))
        except TaskRun.DoesNotExist:
            raise TaskRunError(
                f"TaskRun {task_run_id} not found in schema {schema_name!r}"
            ) from None
        if run.is_final:
            return Claim(Decision.DONE, run)
        if run.status == Status.RUNNING:
            if run.lease_live and not (redelivered or retry):
                return Claim(Decision.BUSY, run)
            if redelivered or not retry:  # a retry follows an error we saw, not a lost worker
                run.worker_lost += 1
            if run.worker_lost >= lost_max:
                _finish(run, Status.FAILURE, error=f"worker lost {run.worker_lost} times: "
                                                   "not started again")
                return Claim(Decision.GAVE_UP, run)
        run.attempts += 1
        run.status, run.error = Status.RUNNING, ""
        run.lease_owner = owner = f"{task_id or 'local'}#{run.attempts}"
        # A row made in a shell has no task id until its first delivery names it.
        run.celery_task_id = run.celery_task_id or task_id or ""
        # One UPDATE; the times come from the database's clock and are not read back (the run
        # needs its id, operation and payload, which the locked SELECT already has).
        TaskRun.objects.filter(pk=run.pk).update(
            status=run.status, attempts=run.attempts, worker_lost=run.worker_lost,
            started_at=Now(), updated_at=Now(), error="", lease_owner=owner,
            lease_expires_at=Now() + timedelta(seconds=lease_seconds + LEASE_MARGIN),
            celery_task_id=run.celery_task_id, worker=worker)
        return Claim(Decision.RUN, run, owner)


def record(run: TaskRun, owner: str, status: str, result=None, error: str = "") -> bool:
    """Write the outcome if ``owner`` still holds the row; False (and a log line) if not."""
    written = TaskRun.objects.filter(pk=run.pk, status=Status.RUNNING, lease_owner=owner).update(
        status=status, result=result, error=error, finished_at=Now(), updated_at=Now(),
        lease_expires_at=None)
    if not written:
        logger.warning("TaskRun %s: run %s no longer holds the row; its outcome (%s) is not "
                       "recorded", run.pk, owner, status)
    return bool(written)


def _finish(run: TaskRun, status: str, error: str) -> None:
    TaskRun.objects.filter(pk=run.pk).update(
        status=status, error=error, worker_lost=run.worker_lost, finished_at=Now(),
        updated_at=Now(), lease_expires_at=None)
    run.status, run.error = status, error
