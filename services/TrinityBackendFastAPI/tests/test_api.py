"""FastAPI gateway: validation, routing to queues, broker failures, health."""

import os
import time
from unittest import mock

import pytest
from celery import Celery
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError

from app.celery_app import celery_app
from app.main import app
from config.celery_settings import RUN_OPERATION, configure_celery_app, queue_for_operation

client = TestClient(app)


@pytest.fixture
def send_task():
    with mock.patch.object(celery_app, "send_task") as patched:
        patched.return_value = mock.Mock(id="task-123")
        yield patched


@pytest.mark.parametrize("operation", ["noop", "echo", "sleep", "primes", "fail"])
def test_post_sends_to_the_operation_queue(send_task, operation):
    response = client.post("/tasks", json={"operation": operation, "payload": {"n": 10}})
    assert response.status_code == 202, response.text
    assert response.json() == {"task_id": "task-123", "queue": queue_for_operation(operation)}
    send_task.assert_called_once_with(
        RUN_OPERATION, args=[operation, {"n": 10}, "public"],
        queue=queue_for_operation(operation),
    )


def test_cpu_and_io_queues_differ(send_task):
    cpu = client.post("/tasks", json={"operation": "primes"}).json()["queue"]
    io = client.post("/tasks", json={"operation": "sleep"}).json()["queue"]
    assert cpu.endswith(".cpu") or cpu == os.environ.get("CELERY_CPU_QUEUE")
    assert io.endswith(".io") or io == os.environ.get("CELERY_IO_QUEUE")
    assert cpu != io


def test_schema_is_passed(send_task):
    response = client.post("/tasks", json={"operation": "echo", "schema": "tenant_b"})
    assert response.status_code == 202
    assert send_task.call_args.kwargs["args"] == ["echo", None, "tenant_b"]


@pytest.mark.parametrize("body, reason", [
    ({"operation": "nope"}, "unknown operation 'nope'"),
    ({}, "Field required"),
    ({"operation": 5}, "valid string"),
    ({"operation": "noop", "schema": "Bad Name"}, "invalid schema name"),
    ({"operation": "noop", "extra": 1}, "Extra inputs"),
])
def test_bad_bodies_are_422_and_send_nothing(send_task, body, reason):
    response = client.post("/tasks", json=body)
    assert response.status_code == 422
    assert reason in response.text
    send_task.assert_not_called()


def test_not_json_is_422(send_task):
    response = client.post("/tasks", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422
    send_task.assert_not_called()


def test_broker_down_is_503(send_task):
    send_task.side_effect = OperationalError("Error 111 connecting to redis:6379.\nRefused")
    response = client.post("/tasks", json={"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["detail"] == "broker unavailable: Error 111 connecting to redis:6379. Refused"


def test_hanging_broker_is_503_within_the_deadline(send_task, monkeypatch):
    from app.routes import tasks

    monkeypatch.setattr(tasks, "PUBLISH_TIMEOUT", 0.2)
    send_task.side_effect = lambda *a, **k: time.sleep(1)
    # A persistent event loop, as under uvicorn (a per-request loop would wait for the
    # abandoned thread when it closes).
    with TestClient(app) as persistent:
        started = time.monotonic()
        response = persistent.post("/tasks", json={"operation": "noop"})
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "no answer within" in response.json()["detail"]
    assert elapsed < 1.0


def test_unreachable_broker_answers_quickly(monkeypatch):
    """A real publish to a closed port: the bounded retries end it with a 503 in ~2 s."""
    from app.routes import tasks

    closed = Celery("closed-port")
    configure_celery_app(closed, {"REDIS_URL": "redis://127.0.0.1:1/0"})
    monkeypatch.setattr(tasks, "celery_app", closed)
    started = time.monotonic()
    response = client.post("/tasks", json={"operation": "noop"})
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["detail"].startswith("broker unavailable: ")
    assert elapsed < tasks.PUBLISH_TIMEOUT


def test_task_state(send_task):
    fake = mock.Mock(state="SUCCESS", result={"count": 4})
    with mock.patch("app.routes.tasks.AsyncResult", return_value=fake):
        response = client.get("/tasks/abc")
    assert response.json() == {"task_id": "abc", "state": "SUCCESS", "result": {"count": 4}}
    fake = mock.Mock(state="FAILURE", result=ValueError("boom"))
    with mock.patch("app.routes.tasks.AsyncResult", return_value=fake):
        assert client.get("/tasks/abc").json()["error"] == "boom"


def test_livez_does_not_touch_redis():
    with mock.patch("app.routes.health.broker_ping", side_effect=AssertionError) as ping:
        response = client.get("/livez")
    assert response.status_code == 200 and response.json() == {"status": "alive"}
    ping.assert_not_called()


def test_healthz_ok():
    with mock.patch("app.routes.health.broker_ping") as ping:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    ping.assert_called()


def test_healthz_down():
    with mock.patch("app.routes.health.broker_ping", side_effect=ConnectionError("refused")):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert "broker" in response.json()["failing"]


def test_healthz_live(live_redis):
    assert client.get("/healthz").status_code == 200


def test_start_fails_with_one_line():
    """uvicorn/gunicorn import app.main: a bad variable stops it with one line, exit code 2."""
    import subprocess
    import sys

    env = {**os.environ, "REDIS_URL": "http://redis:6379/0",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    code = "import tests.conftest, app.main"  # conftest makes config importable in the repo
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "configuration error: REDIS_URL: scheme must be redis:// or rediss://, "
        "got 'http://redis:6379/0'")
