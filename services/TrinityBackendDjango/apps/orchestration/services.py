"""Publishing TaskRuns to Celery from Django code (views, shell, commands).

The TaskRun row is the acceptance record. A message is sent only once its row is committed,
and a publish the broker refuses or does not confirm within PUBLISH_TIMEOUT turns the row
FAILURE (unless a worker has claimed it already), so "not accepted" always means "never runs":
workers do not run a row that is already final.
"""

import logging
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

from celery import uuid
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.orchestration.models import TaskRun
from apps.orchestration.tasks import execute_task
from config.broker_room import check_room
from config.broker import broker_error_reason
from config.celery_settings import queue_for_operation

logger = logging.getLogger(__name__)

# kombu publishes with blocking sockets: against a hung Redis its retries x socket timeouts take
# ~20 s. Publishing runs in these threads instead and the caller waits PUBLISH_TIMEOUT at most,
# so a POST answers within 5 s even on a busy host. (A refused connection ends kombu's bounded
# retries in under 1 s, with Redis's own reason.) A publish still waiting for a thread at its
# deadline is cancelled, so never sent.
PUBLISH_TIMEOUT = 2.5
_publisher = ThreadPoolExecutor(max_workers=8, thread_name_prefix="publish")


class BrokerUnavailable(RuntimeError):
    """The broker refused the publish or did not confirm it in time; the TaskRun
    ``task_run_id`` is kept as FAILURE with the reason and will not run."""

    def __init__(self, reason: str, task_run_id: int):
        super().__init__(reason)
        self.task_run_id = task_run_id


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before for another operation or payload."""


@dataclass
class Submission:
    run: TaskRun
    queue: str
    created: bool  # False: an earlier request with the same Idempotency-Key made ``run``


def submit_task_run(operation: str, payload, schema_name: str = "public",
                    idempotency_key: str = "") -> Submission:
    """Record a new TaskRun, QUEUED under its Celery task id, and publish it once committed.

    Outside a transaction (the API view) the publish is done when this returns and a refused
    one raises BrokerUnavailable. Inside ``transaction.atomic()`` (a shell, a command) it waits
    for the commit, so no message names a row that does not exist; a refusal then marks that
    row FAILURE and is logged, without keeping the transaction's other rows from publishing.

    With ``idempotency_key``, a key this schema already holds returns its row unpublished
    (created=False) when operation and payload are the same, else raises IdempotencyConflict.
    The unique constraint decides between concurrent requests with one key.
    """
    queue = queue_for_operation(operation)
    with schema_context(schema_name):
        # Inside a caller's transaction a lost race must not abort it: use a savepoint. In
        # autocommit a failed INSERT aborts nothing, and the INSERT stays one statement.
        guard = transaction.atomic() if connection.in_atomic_block else nullcontext()
        try:
            with guard:
                run = TaskRun.objects.create(
                    operation=operation, payload=payload, status=TaskRun.Status.QUEUED,
                    celery_task_id=uuid(), idempotency_key=idempotency_key)
        except IntegrityError:
            earlier = (TaskRun.objects.filter(idempotency_key=idempotency_key).first()
                       if idempotency_key else None)
            if earlier is None:
                raise
            if (earlier.operation, earlier.payload) != (operation, payload):
                raise IdempotencyConflict(
                    f"Idempotency-Key already used for TaskRun {earlier.pk} with another "
                    "operation or payload") from None
            return Submission(earlier, queue, created=False)
    # Outside a transaction on_commit runs the publish now, and its error reaches the caller.
    transaction.on_commit(partial(_publish, run, schema_name, queue),
                          robust=connection.in_atomic_block)
    return Submission(run, queue, created=True)


def _send(run: TaskRun, schema_name: str, queue: str) -> None:
    check_room(execute_task.app.conf.broker_url)  # BrokerFull: Redis is nearly full
    execute_task.apply_async(args=[run.pk, schema_name], task_id=run.celery_task_id,
                             queue=queue)


def _publish(run: TaskRun, schema_name: str, queue: str) -> None:
    sent = _publisher.submit(_send, run, schema_name, queue)
    wait([sent], timeout=PUBLISH_TIMEOUT)
    if sent.done() and sent.exception() is None:
        return
    if sent.done():  # BrokerFull, kombu OperationalError, redis errors (OOM...), OSError...
        reason = "broker unavailable: " + broker_error_reason(sent.exception())
    else:
        sent.cancel()  # only succeeds if it never started: then it is never sent
        reason = f"broker unavailable: no answer within {PUBLISH_TIMEOUT:g} s"
    now = timezone.now()
    with schema_context(schema_name):
        # Only a row still QUEUED: the message may get through after all, and a worker that
        # claimed the row first has it (the caller is told 201, truthfully). The key is
        # released, so a retry with it is a new request instead of a replay of this refusal.
        refused = TaskRun.objects.filter(pk=run.pk, status=TaskRun.Status.QUEUED).update(
            status=TaskRun.Status.FAILURE, error=reason, idempotency_key="",
            finished_at=now, updated_at=now)
    if not refused:
        logger.warning("TaskRun %s in %s: %s, but a worker has claimed it", run.pk,
                       schema_name, reason)
        return
    logger.error("TaskRun %s in %s not queued: %s", run.pk, schema_name, reason)
    raise BrokerUnavailable(reason, run.pk)
