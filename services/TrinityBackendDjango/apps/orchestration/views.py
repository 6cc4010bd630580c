"""JSON endpoints: create/enqueue a TaskRun, read one back, and the health checks.

The task-run endpoints need `Authorization: Bearer <token>` (apps/tenants/tokens.py); the
token's tenant is the schema they work in. No session, cookie or request field picks a tenant.
"""

import json
import logging

from celery import states
from celery.result import AsyncResult
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods
from django_tenants.utils import schema_context

from apps.orchestration.models import TaskRun
from apps.orchestration.services import BrokerUnavailable, IdempotencyConflict, submit_task_run
from apps.tenants.tokens import bearer_token, tenant_for
from apps.orchestration.operations import UnknownOperation, operation as known_operation
from config.broker import broker_ping
from config.payloads import MAX_DEPTH, check_idempotency_key, check_storable

logger = logging.getLogger(__name__)


def _error(status: int, reason: str) -> JsonResponse:
    return JsonResponse({"error": reason}, status=status)


def _authenticate(request) -> str | JsonResponse:
    """The schema of the request's token, or the response that refuses the request."""
    header = request.META.get("HTTP_AUTHORIZATION")
    if not header:
        reason = "missing token: send Authorization: Bearer <token>"
    elif bearer_token(header) is None:
        reason = "malformed Authorization header: expected Bearer <token>"
    else:
        # A database error here (as anywhere in a view) is config/middleware.py's 503.
        schema_name = tenant_for(header)
        if schema_name is not None:
            return schema_name
        reason = "unknown or revoked token"
    response = _error(401, reason)
    response["WWW-Authenticate"] = "Bearer"
    return response


def _read_json_body(request) -> dict | JsonResponse:
    """The body as a JSON object, or the response that refuses it (413, 415, 400). The size is
    checked from Content-Length before the body is read, then on the body as read."""
    limit = settings.API_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _error(400, "Content-Length is not an integer")
    if declared > limit:
        return _error(413, f"body larger than {limit} bytes")
    if request.content_type != "application/json":
        return _error(415, f"Content-Type must be application/json, got {request.content_type!r}")
    try:
        raw = request.body
    except RequestDataTooBig:
        return _error(413, f"body larger than {limit} bytes")
    if len(raw) > limit:
        return _error(413, f"body larger than {limit} bytes")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"body is not valid JSON: {exc}")
    except RecursionError:  # the parser recurses per level: thousands of levels exhaust it
        return _error(400, f"body nests too deeply: payload may nest {MAX_DEPTH} levels at most")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    return body


# CSRF protection is for credentials a browser attaches on its own (cookies). These views read
# no session or cookie: the only credential they accept is the Authorization: Bearer header,
# which a browser never sends unless the calling code sets it, so a cross-site form cannot act
# with a user's rights here. Exempting them is therefore safe; never add session auth to them.
@csrf_exempt
@require_http_methods(["POST"])
def task_runs(request):
    """POST {"operation", "payload"} -> 201 {"id", "celery_task_id", "status", "queue", "schema"},
    in the token's schema. With an Idempotency-Key header, a repeat of the same request answers
    200 with the same TaskRun (not published again); the key with another body answers 422."""
    schema_name = _authenticate(request)
    if isinstance(schema_name, JsonResponse):
        return schema_name
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        try:
            check_idempotency_key(key)
        except ValueError as exc:
            return _error(400, str(exc))
    body = _read_json_body(request)
    if isinstance(body, JsonResponse):
        return body
    unknown = set(body) - {"operation", "payload"}
    if unknown:
        return _error(400, f"unknown fields: {', '.join(sorted(unknown))}")
    operation, payload = body.get("operation"), body.get("payload")
    try:
        known_operation(operation)
    except UnknownOperation as exc:
        return _error(400, str(exc))
    try:
        check_storable(payload)  # what Postgres's jsonb would refuse, refused here by name
    except ValueError as exc:
        return _error(400, f"payload: {exc}")

    try:
        submitted = submit_task_run(operation, payload, schema_name, key or "")
    except IdempotencyConflict as exc:
        return _error(422, str(exc))
    except BrokerUnavailable as exc:
        # True: the row is FAILURE with this reason and no worker will run it.
        return JsonResponse({"error": str(exc), "id": exc.task_run_id}, status=503)
    run = submitted.run
    return JsonResponse(
        {"id": run.pk, "celery_task_id": run.celery_task_id, "status": run.status,
         "queue": submitted.queue, "schema": schema_name},
        status=201 if submitted.created else 200,
    )


def _celery_view(task_id: str) -> dict:
    if not task_id:
        return {"state": None}
    try:
        result = AsyncResult(task_id)
        state = result.state
        data = {"state": state}
        if state in states.READY_STATES:
            data["result"] = result.result if state == states.SUCCESS else str(result.result)
        return data
    except Exception as exc:
        return {"state": None, "error": f"result backend unavailable: {exc}"}


@csrf_exempt  # same reasoning as task_runs: bearer token only, no session or cookie read
@require_GET
def task_run_detail(request, pk: int):
    """GET /api/task-runs/<id>/ -> the record and its Celery state, in the token's schema;
    404 for an id of another tenant."""
    schema_name = _authenticate(request)
    if isinstance(schema_name, JsonResponse):
        return schema_name
    with schema_context(schema_name):
        run = TaskRun.objects.filter(pk=pk).first()
    if run is None:
        return _error(404, f"TaskRun {pk} not found")
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
    """200 {"status": "ok"} when Postgres answers SELECT 1 and Redis answers PING, else 503
    {"status": "error"}. What failed goes to the log (one WARNING line), not to the caller."""
    failures = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        failures.append(f"database: {' '.join(str(exc).split()) or type(exc).__name__}")
    try:
        broker_ping(settings_broker_url(), timeout=1.0)
    except Exception as exc:
        failures.append(f"broker: {' '.join(str(exc).split()) or type(exc).__name__}")
    if failures:
        logger.warning("healthz failing: %s", "; ".join(failures))
        return JsonResponse({"status": "error"}, status=503)
    return JsonResponse({"status": "ok"})


def settings_broker_url() -> str:
    from config.celery import app

    return app.conf.broker_url
