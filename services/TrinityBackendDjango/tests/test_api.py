"""HTTP API of the Django service; publishing is patched, the database is real."""

import json
import logging
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError as DatabaseOperationalError
from django.test import override_settings
from django_tenants.utils import schema_context
from kombu.exceptions import OperationalError
from redis.exceptions import ExecAbortError, OutOfMemoryError

from apps.orchestration.models import TaskRun
from apps.orchestration.tasks import execute_task
from config.celery_settings import queue_for_operation

pytestmark = pytest.mark.django_db


def post(client, body, raw=False, **extra):
    data = body if raw else json.dumps(body)
    return client.post("/api/task-runs/", data=data,
                       content_type=extra.pop("content_type", "application/json"), **extra)


@pytest.fixture
def publish():
    with mock.patch.object(execute_task, "apply_async") as patched:
        yield patched


@pytest.mark.parametrize("operation", ["noop", "sleep", "primes"])
def test_create_enqueues_on_the_operation_queue(api, publish, operation):
    response = post(api, {"operation": operation, "payload": 1})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["queue"] == queue_for_operation(operation)
    assert body["status"] == "QUEUED" and body["schema"] == "public"
    publish.assert_called_once()
    kwargs = publish.call_args.kwargs
    assert kwargs["args"] == [body["id"], "public"]
    assert kwargs["queue"] == body["queue"]
    assert kwargs["task_id"] == body["celery_task_id"]
    row = TaskRun.objects.get(pk=body["id"])
    assert row.celery_task_id == body["celery_task_id"] and row.status == "QUEUED"


def test_the_token_picks_the_tenant(client, publish, tenant_schema, issue_token):
    token = issue_token(tenant_schema)
    response = post(client, {"operation": "echo", "payload": {"a": 1}},
                    HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 201, response.content
    assert response.json()["schema"] == tenant_schema
    assert publish.call_args.kwargs["args"][1] == tenant_schema
    with schema_context(tenant_schema):
        assert TaskRun.objects.filter(status="QUEUED").count() == 1
    assert TaskRun.objects.count() == 0


def test_the_schema_field_is_refused(api, publish, tenant_schema):
    response = post(api, {"operation": "noop", "schema": tenant_schema})
    assert response.status_code == 400
    assert response.json()["error"] == "unknown fields: schema"
    publish.assert_not_called()
    with schema_context(tenant_schema):
        assert TaskRun.objects.count() == 0


@pytest.mark.parametrize("body, reason", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"operation": "nope"}), "unknown operation"),
    (json.dumps({"payload": 1}), "unknown operation None"),
    (json.dumps({"operation": "noop", "extra": 1}), "unknown fields"),
])
def test_bad_requests_create_nothing(api, publish, body, reason):
    response = post(api, body, raw=True)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    publish.assert_not_called()
    assert TaskRun.objects.count() == 0


@pytest.mark.parametrize("header, reason", [
    (None, "missing token"),
    ("Basic dXNlcjpwYXNz", "malformed"),
    ("Bearer", "malformed"),
    ("Bearer a b", "malformed"),
    ("Bearer trn_not-a-token-of-anyone", "unknown or revoked token"),
])
def test_missing_or_bad_token_is_401(client, publish, make_run, token, header, reason):
    run = make_run("echo", 1)
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    for response in (post(client, {"operation": "noop"}, **extra),
                     client.get(f"/api/task-runs/{run.pk}/", **extra)):
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Bearer"
        assert reason in response.json()["error"]
    publish.assert_not_called()


def test_a_session_is_not_a_credential(client, publish, public_tenant, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "a@example.com", "x-pw-9QvL2")
    client.force_login(user)
    assert post(client, {"operation": "noop"}).status_code == 401
    publish.assert_not_called()


def test_a_revoked_token_is_401(client, publish, issue_token, public_tenant):
    token = issue_token(public_tenant, "ci")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert post(client, {"operation": "noop"}, **auth).status_code == 201
    call_command("revoke_api_token", "--tenant", "public", "--name", "ci")
    response = post(client, {"operation": "noop"}, **auth)
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Bearer"
    assert publish.call_count == 1


def test_another_tenants_task_run_is_404(client, make_run, tenant_schema, issue_token,
                                         public_tenant):
    public_auth = {"HTTP_AUTHORIZATION": f"Bearer {issue_token(public_tenant)}"}
    tenant_auth = {"HTTP_AUTHORIZATION": f"Bearer {issue_token(tenant_schema)}"}
    # Each schema numbers its rows on its own: drop the other schema's row with the same id.
    tenant_run = make_run("echo", "tenant", schema=tenant_schema)
    TaskRun.objects.filter(pk=tenant_run.pk).delete()
    public_run = make_run("echo", "public")
    with schema_context(tenant_schema):
        TaskRun.objects.filter(pk=public_run.pk).delete()

    own = client.get(f"/api/task-runs/{tenant_run.pk}/", **tenant_auth)
    assert own.status_code == 200 and own.json()["payload"] == "tenant"
    assert own.json()["schema"] == tenant_schema
    assert client.get(f"/api/task-runs/{public_run.pk}/", **public_auth).status_code == 200
    assert client.get(f"/api/task-runs/{tenant_run.pk}/", **public_auth).status_code == 404
    assert client.get(f"/api/task-runs/{public_run.pk}/", **tenant_auth).status_code == 404


def test_the_schema_query_parameter_is_ignored(api, make_run, tenant_schema):
    tenant_run = make_run("echo", 2, schema=tenant_schema)
    TaskRun.objects.filter(pk=tenant_run.pk).delete()  # no public row with that id
    response = api.get(f"/api/task-runs/{tenant_run.pk}/?schema={tenant_schema}")
    assert response.status_code == 404


def test_non_json_content_type_is_415(api, publish):
    response = post(api, "operation=noop", raw=True,
                    content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    assert post(api, {"operation": "noop"},
                content_type="application/json; charset=utf-8").status_code == 201
    assert publish.call_count == 1


@override_settings(API_MAX_BODY_BYTES=100, DATA_UPLOAD_MAX_MEMORY_SIZE=100)
def test_body_above_the_limit_is_413(api, publish):
    big = {"operation": "echo", "payload": "x" * 200}
    response = post(api, big)
    assert response.status_code == 413 and "100 bytes" in response.json()["error"]
    # A Content-Length larger than the limit is refused before the body is read.
    with mock.patch("django.http.request.HttpRequest.body",
                    new_callable=mock.PropertyMock, side_effect=AssertionError("read")):
        response = post(api, big)
    assert response.status_code == 413
    publish.assert_not_called()
    assert post(api, {"operation": "noop"}).status_code == 201


@override_settings(API_MAX_BODY_BYTES=10**6, DATA_UPLOAD_MAX_MEMORY_SIZE=100)
def test_request_data_too_big_is_413_not_500(api, publish):
    response = post(api, {"operation": "echo", "payload": "x" * 200})
    assert response.status_code == 413
    publish.assert_not_called()


def test_broker_down_answers_503_and_records_failure(api, publish):
    publish.side_effect = OperationalError("Error 111 connecting to redis:6379")
    response = post(api, {"operation": "noop"})
    assert response.status_code == 503
    body = response.json()
    assert body["error"].startswith("broker unavailable: ")
    row = TaskRun.objects.get(pk=body["id"])
    assert row.status == "FAILURE" and row.error.startswith("broker unavailable")


def _oom_as_kombu_raises_it():
    """What publishing raised against a Redis at maxmemory (redis-py 8, kombu 5.7)."""
    prefix = "Command # 1 (SADD _kombu.binding.q q\x06\x16\x06\x16q) of pipeline caused error: "
    oom = OutOfMemoryError(prefix + "command not allowed when used memory > 'maxmemory'.")
    oom.status_code = "OOM"
    oom.__context__ = ExecAbortError("Transaction discarded because of previous errors.")
    error = OperationalError(str(oom))
    error.__cause__ = oom
    return error


def test_redis_out_of_memory_answers_503_with_redis_reason(api, publish):
    publish.side_effect = _oom_as_kombu_raises_it()
    response = post(api, {"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["error"] == (
        "broker unavailable: OOM command not allowed when used memory > 'maxmemory'.")


def test_database_down_answers_503(api, publish):
    broken = DatabaseOperationalError("connection to server at \"postgres\" failed")
    with mock.patch("apps.orchestration.services.TaskRun.objects.create", side_effect=broken):
        response = post(api, {"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["error"] == "database unavailable, try again later"  # no host names
    with mock.patch("apps.orchestration.views.tenant_for", side_effect=broken):
        response = post(api, {"operation": "noop"})
    assert response.status_code == 503 and "database unavailable" in response.json()["error"]
    publish.assert_not_called()


def test_detail(api, publish, make_run):
    run = make_run("echo", 3)
    execute_task.apply(args=[run.pk, "public"])
    with mock.patch("apps.orchestration.views._celery_view", return_value={"state": "SUCCESS"}):
        response = api.get(f"/api/task-runs/{run.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "SUCCESS" and body["result"] == 3
    assert body["celery"] == {"state": "SUCCESS"} and body["schema"] == "public"
    assert api.get("/api/task-runs/999999/").status_code == 404


def test_livez_needs_neither_database_nor_broker(client):
    with mock.patch("apps.orchestration.views.broker_ping", side_effect=AssertionError), \
            mock.patch("apps.orchestration.views.connection") as db:
        response = client.get("/livez")
    assert response.status_code == 200 and response.json() == {"status": "alive"}
    db.cursor.assert_not_called()


def test_healthz_ok(client):
    with mock.patch("apps.orchestration.views.broker_ping") as ping:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    ping.assert_called_once()


def test_healthz_says_only_error_and_logs_what_failed(client, caplog):
    with mock.patch("apps.orchestration.views.broker_ping",
                    side_effect=ConnectionError("Error 111 connecting to redis:6379")), \
            caplog.at_level(logging.WARNING, logger="apps.orchestration.views"):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "error"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "broker: Error 111 connecting to redis:6379" in warnings[0].getMessage()
    assert "database" not in warnings[0].getMessage()


def test_healthz_against_the_real_broker(client):
    """Needs the Redis of REDIS_URL, like the rest of the stack."""
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok"}


def test_monitor_unknown_task_exits_non_zero():
    with pytest.raises(CommandError) as caught:
        call_command("monitor_orchestration_tasks", "--task-id", "no-such-task")
    assert caught.value.returncode == 1


def test_monitor_finds_the_db_record(make_run, capsys):
    run = make_run("echo", 1)
    outcome = execute_task.apply(args=[run.pk, "public"])
    call_command("monitor_orchestration_tasks", "--task-id", outcome.id, "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["database"]["found"] is True
    assert report["database"]["record"]["status"] == "SUCCESS"
