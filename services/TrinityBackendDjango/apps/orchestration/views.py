"""JSON endpoints: create/enqueue a TaskRun, read one back, and the health check."""

import json

from celery.result import AsyncResult
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods
from django_tenants.utils import schema_context

from apps.orchestration.models import TaskRun
from apps.orchestration.schemas import UnknownSchema, check_schema
from apps.orchestration.services import BrokerUnavailable, submit_task_run
from config.celery_settings import UnknownOperation, broker_ping, queue_for_operation

FINAL_CELERY_STATES = ("SUCCESS", "FAILURE", "REVOKED")


def _error(status: int, reason: str) -> JsonResponse:
    return JsonResponse({"error": reason}, status=status)


@csrf_exempt  # a JSON API for machines, no browser session involved
@require_http_methods(["POST"])
def task_runs(request):
    """POST {"operation", "payload", "schema"} -> 201 {"id", "celery_task_id", "status", "queue"}."""
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    unknown = set(body) - {"operation", "payload", "schema"}
    if unknown:
        return _error(400, f"unknown fields: {', '.join(sorted(unknown))}")
    operation = body.get("operation")
    schema_name = body.get("schema", "public")
    try:
        queue_for_operation(operation)
        check_schema(schema_name)
    except (UnknownOperation, UnknownSchema) as exc:
        return _error(400, str(exc))

    try:
        run, queue = submit_task_run(operation, body.get("payload"), schema_name)
    except BrokerUnavailable as exc:
        # The row stays, as FAILURE with this reason: the attempt is on record.
        return JsonResponse({"error": str(exc), "id": exc.task_run_id}, status=503)
    return JsonResponse(
        {"id": run.pk, "celery_task_id": run.celery_task_id, "status": run.status,
         "queue": queue, "schema": schema_name},
        status=201,
    )


def _celery_view(task_id: str) -> dict:
    if not task_id:
        return {"state": None}
    try:
        result = AsyncResult(task_id)
        state = result.state
        data = {"state": state}
        if state in FINAL_CELERY_STATES:
            data["result"] = result.result if state == "SUCCESS" else str(result.result)
        return data
    except Exception as exc:
        return {"state": None, "error": f"result backend unavailable: {exc}"}


@require_GET
def task_run_detail(request, pk: int):
    """GET /api/task-runs/<id>/?schema=public -> the record and its Celery state."""
    schema_name = request.GET.get("schema", "public")
    try:
        check_schema(schema_name)
    except UnknownSchema as exc:
        return _error(400, str(exc))
    with schema_context(schema_name):
        run = TaskRun.objects.filter(pk=pk).first()
    if run is None:
        return _error(404, f"TaskRun {pk} not found in schema {schema_name!r}")
    return JsonResponse({**run.as_dict(), "schema": schema_name,
                         "celery": _celery_view(run.celery_task_id)})


@require_GET
def livez(request):
    """200 while the process serves requests; touches neither Postgres nor Redis.

    A liveness probe (restart me if this fails), and the bench's baseline for what a request
    costs in this server before any work is done."""
    return JsonResponse({"status": "alive"})


@require_GET
def healthz(request):
    """200 when Postgres answers SELECT 1 and Redis answers PING; else 503 naming the failure."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc}"
    try:
        broker_ping(settings_broker_url(), timeout=1.0)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc}"
    failing = [name for name, value in checks.items() if value != "ok"]
    if failing:
        return JsonResponse({"status": "error", "failing": failing, "checks": checks}, status=503)
    return JsonResponse({"status": "ok", "checks": checks})


def settings_broker_url() -> str:
    from config.celery import app

    return app.conf.broker_url
