"""HTTP API of the Django service; publishing is patched, the database is real."""

import json
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django_tenants.utils import schema_context
from kombu.exceptions import OperationalError

from apps.orchestration.models import TaskRun
from apps.orchestration.tasks import execute_task
from config.celery_settings import queue_for_operation

pytestmark = pytest.mark.django_db


def post(client, body, raw=False):
    data = body if raw else json.dumps(body)
    return client.post("/api/task-runs/", data=data, content_type="application/json")


@pytest.fixture
def publish():
    with mock.patch.object(execute_task, "apply_async") as patched:
        yield patched


@pytest.mark.parametrize("operation", ["noop", "sleep", "primes"])
def test_create_enqueues_on_the_operation_queue(client, publish, operation):
    response = post(client, {"operation": operation, "payload": 1})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["queue"] == queue_for_operation(operation)
    assert body["status"] == "QUEUED"
    publish.assert_called_once()
    kwargs = publish.call_args.kwargs
    assert kwargs["args"] == [body["id"], "public"]
    assert kwargs["queue"] == body["queue"]
    assert kwargs["task_id"] == body["celery_task_id"]
    row = TaskRun.objects.get(pk=body["id"])
    assert row.celery_task_id == body["celery_task_id"] and row.status == "QUEUED"


def test_create_in_a_tenant_schema(client, publish, tenant_schema):
    response = post(client, {"operation": "echo", "payload": {"a": 1}, "schema": tenant_schema})
    assert response.status_code == 201
    assert publish.call_args.kwargs["args"][1] == tenant_schema
    with schema_context(tenant_schema):
        assert TaskRun.objects.filter(status="QUEUED").count() == 1
    assert TaskRun.objects.count() == 0


@pytest.mark.parametrize("body, reason", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"operation": "nope"}), "unknown operation"),
    (json.dumps({"payload": 1}), "unknown operation None"),
    (json.dumps({"operation": "noop", "schema": "missing"}), "unknown schema"),
    (json.dumps({"operation": "noop", "schema": "Bad Name"}), "unknown schema"),
    (json.dumps({"operation": "noop", "extra": 1}), "unknown fields"),
])
def test_bad_requests_create_nothing(client, publish, body, reason):
    response = post(client, body, raw=True)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    publish.assert_not_called()
    assert TaskRun.objects.count() == 0


def test_broker_down_answers_503_and_records_failure(client, publish):
    publish.side_effect = OperationalError("Error 111 connecting to redis:6379")
    response = post(client, {"operation": "noop"})
    assert response.status_code == 503
    body = response.json()
    assert body["error"].startswith("broker unavailable: ")
    row = TaskRun.objects.get(pk=body["id"])
    assert row.status == "FAILURE" and row.error.startswith("broker unavailable")


def test_detail(client, publish, make_run):
    run = make_run("echo", 3)
    execute_task.apply(args=[run.pk, "public"])
    with mock.patch("apps.orchestration.views._celery_view", return_value={"state": "SUCCESS"}):
        response = client.get(f"/api/task-runs/{run.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "SUCCESS" and body["result"] == 3
    assert body["celery"] == {"state": "SUCCESS"}
    assert client.get("/api/task-runs/999999/").status_code == 404
    assert client.get(f"/api/task-runs/{run.pk}/?schema=missing").status_code == 400


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
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}
    ping.assert_called_once()


def test_healthz_names_the_failing_check(client):
    with mock.patch("apps.orchestration.views.broker_ping", side_effect=ConnectionError("down")):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["broker"]


def test_healthz_against_the_real_broker(client):
    """Needs the Redis of REDIS_URL, like the rest of the stack."""
    response = client.get("/healthz")
    assert response.status_code == 200, response.content


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
