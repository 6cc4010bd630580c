"""Publishing TaskRuns to Celery from Django code (views, shell, commands)."""

import logging

from celery import uuid
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.orchestration.models import TaskRun
from apps.orchestration.tasks import execute_task
from config.celery_settings import broker_error_reason, queue_for_operation

logger = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """Publishing failed (after the bounded retries of celery_settings)."""


def enqueue_task_run(task_run: TaskRun, schema_name: str = "public") -> tuple[str, str]:
    """Send execute_task for ``task_run`` to its operation's queue; return (task_id, queue).

    The row is marked QUEUED with its task id *before* publishing, so a fast worker
    never finds a stale row. If the broker refuses, the row is kept as FAILURE with
    the reason (an audit trail of what was asked) and BrokerUnavailable is raised.
    """
    queue = queue_for_operation(task_run.operation)
    task_id = uuid()
    with schema_context(schema_name):
        TaskRun.objects.filter(pk=task_run.pk).update(
            status=TaskRun.Status.QUEUED, celery_task_id=task_id, updated_at=timezone.now()
        )
        try:
            execute_task.apply_async(args=[task_run.pk, schema_name], task_id=task_id, queue=queue)
        except Exception as exc:  # kombu OperationalError, redis errors, OSError...
            reason = "broker unavailable: " + broker_error_reason(exc)
            logger.error("TaskRun %s in %s not queued: %s", task_run.pk, schema_name, reason)
            now = timezone.now()
            TaskRun.objects.filter(pk=task_run.pk).update(
                status=TaskRun.Status.FAILURE, error=reason, finished_at=now, updated_at=now
            )
            task_run.refresh_from_db()
            raise BrokerUnavailable(reason) from exc
        task_run.refresh_from_db()
    return task_id, queue
