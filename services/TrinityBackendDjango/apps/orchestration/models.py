"""TaskRun: one requested operation, its Celery task and its outcome (one table per schema)."""

from django.db import models

from apps.orchestration.operations import operation_choices
from config.payloads import IDEMPOTENCY_KEY_MAX


class TaskRun(models.Model):
    class Status(models.TextChoices):
        PENDING = "PENDING"  # recorded, not yet published
        QUEUED = "QUEUED"  # published to the broker
        RUNNING = "RUNNING"  # claimed by a worker
        SUCCESS = "SUCCESS"
        FAILURE = "FAILURE"

    FINAL = (Status.SUCCESS, Status.FAILURE)

    # Choices from a callable: adding an operation (apps/orchestration/operations.py) needs no
    # migration, since a migration refers to the callable, not to the list it returns.
    operation = models.CharField(max_length=50, choices=operation_choices)
    payload = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING,
                              db_index=True)
    # One row per Celery task id (see Meta): two deliveries of run_operation cannot make two.
    celery_task_id = models.CharField(max_length=255, blank=True, default="", db_index=True)
    # A client's Idempotency-Key: a retried POST with the same key returns this row.
    idempotency_key = models.CharField(max_length=IDEMPOTENCY_KEY_MAX, blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)  # operation starts
    # The run that holds the row: "<celery task id>#<attempt>" until the database's clock
    # passes lease_expires_at (claim time + the hard time limit). Only the holder records.
    lease_owner = models.CharField(max_length=300, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Deliveries that found the previous run's worker gone (apps/orchestration/ledger.py).
    worker_lost = models.PositiveIntegerField(default=0)
    # The Celery node (name@host) that claimed the row last: on Swarm the host names the node
    # and the replica (`<node>-<slot>`), so the spread of work over nodes can be read here.
    worker = models.CharField(max_length=255, blank=True, default="")
    # How often the stuck-task scan published this row again because its message was lost.
    republished = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.UniqueConstraint(fields=["celery_task_id"], name="taskrun_unique_task_id",
                                    condition=~models.Q(celery_task_id="")),
            models.UniqueConstraint(fields=["idempotency_key"],
                                    name="taskrun_unique_idempotency_key",
                                    condition=~models.Q(idempotency_key="")),
        ]

    def __str__(self) -> str:
        return f"TaskRun {self.pk} {self.operation} {self.status}"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL

    def as_dict(self) -> dict:
        return {
            "id": self.pk,
            "operation": self.operation,
            "payload": self.payload,
            "status": self.status,
            "celery_task_id": self.celery_task_id or None,
            "result": self.result,
            "error": self.error or None,
            "attempts": self.attempts,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


def _iso(value):
    return value.isoformat() if value else None
