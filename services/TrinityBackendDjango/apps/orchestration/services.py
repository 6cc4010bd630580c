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
    """Publishing failed (after the bounded retries of celery_settings); the TaskRun
    ``task_run_id`` is kept as FAILURE with the reason."""

    def __init__(self, reason: str, task_run_id: int):
        super().__init__(reason)
        self.task_run_id = task_run_id


def submit_task_run(operation: str, payload, schema_name: str = "public") -> tuple[TaskRun, str]:
    """Record a new TaskRun, already QUEUED under its Celery task id, and publish it.

    One INSERT and one publish per call. The row is committed before publishing, so a fast
    worker always finds it. If the broker refuses, the row is kept as FAILURE with the reason
    (an audit trail of what was asked) and BrokerUnavailable is raised.
    """
    queue = queue_for_operation(operation)
    task_id = uuid()
    with schema_context(schema_name):
        task_run = TaskRun.objects.create(operation=operation, payload=payload,
                                          status=TaskRun.Status.QUEUED, celery_task_id=task_id)
        try:
            execute_task.apply_async(args=[task_run.pk, schema_name], task_id=task_id,
                                     queue=queue)
        except Exception as exc:  # kombu OperationalError, redis errors, OSError...
            reason = "broker unavailable: " + broker_error_reason(exc)
            logger.error("TaskRun %s in %s not queued: %s", task_run.pk, schema_name, reason)
            now = timezone.now()
            TaskRun.objects.filter(pk=task_run.pk).update(
                status=TaskRun.Status.FAILURE, error=reason, finished_at=now, updated_at=now
            )
            raise BrokerUnavailable(reason, task_run.pk) from exc
    return task_run, queue
