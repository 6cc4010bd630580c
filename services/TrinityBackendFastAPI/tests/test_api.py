"""FastAPI gateway: auth, tenants, validation, limits, routing to queues, broker failures,
health, and the OpenAPI document."""

import json
import logging
import os
import time
from unittest import mock

import pytest
import redis.exceptions
from celery import Celery
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError

from app import owners, tokens
from app.celery_app import celery_app
from app.main import app, create_app
from app.settings import GatewaySettings
from config.broker_room import BrokerFull
from apps.orchestration.operations import OPERATIONS, RUN_OPERATION
from config.celery_settings import configure_celery_app, queue_for_operation
from tests.helpers import AUTH_A, AUTH_B

client = TestClient(app)


pytestmark = pytest.mark.usefixtures("token_lookup")


@pytest.fixture(autouse=True)
def owner_keys(monkeypatch):
    """trinity.gateway.owner:<id> keys (acceptance records), in a dict instead of Redis. The
    real ones, and Idempotency-Key claims, are tested against Redis in test_acceptance.py."""
    keys = {}
    def accept(task_id, schema, idem_key, deadline, sent):
        keys[task_id] = schema
        return True

    monkeypatch.setattr(owners, "accept", accept)
    monkeypatch.setattr(owners, "owner_of", lambda task_id: keys.get(task_id))
    return keys


def post(json=None, headers=AUTH_A, **kwargs):
    return client.post("/tasks", json=json, headers=headers, **kwargs)


# -- enqueue ------------------------------------------------------------------------------

@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_post_sends_to_the_operation_queue_with_its_own_task_id(send_task, owner_keys, operation):
    response = post({"operation": operation, "payload": {"n": 10}})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["queue"] == queue_for_operation(operation)
    send_task.assert_called_once_with(
        RUN_OPERATION, args=[operation, {"n": 10}, "public"], kwargs={"await_acceptance": True},
        queue=queue_for_operation(operation), task_id=body["task_id"],
    )
    assert owner_keys == {body["task_id"]: "public"}


def test_the_acceptance_record_is_written_after_publishing(send_task, owner_keys):
    send_task.side_effect = lambda *a, task_id, **k: (
        pytest.fail("record before publish") if task_id in owner_keys else None)
    task_id = post({"operation": "noop"}).json()["task_id"]
    assert owner_keys == {task_id: "public"}


def test_cpu_and_io_queues_differ(send_task):
    cpu = post({"operation": "primes"}).json()["queue"]
    io = post({"operation": "sleep"}).json()["queue"]
    assert cpu.endswith(".cpu") or cpu == os.environ.get("CELERY_CPU_QUEUE")
    assert io.endswith(".io") or io == os.environ.get("CELERY_IO_QUEUE")
    assert cpu != io


def test_the_schema_comes_from_the_token(send_task, owner_keys):
    response = post({"operation": "echo"}, headers=AUTH_B)
    assert response.status_code == 202
    assert send_task.call_args.kwargs["args"] == ["echo", None, "tenant_b"]
    assert owner_keys[response.json()["task_id"]] == "tenant_b"


def test_schema_in_the_body_is_refused(send_task):
    response = post({"operation": "echo", "schema": "tenant_b"})
    assert response.status_code == 422
    assert "Extra inputs are not permitted" in response.text
    assert response.json()["error"].startswith("body.schema: ")
    send_task.assert_not_called()


@pytest.mark.parametrize("body, reason", [
    ({"operation": "nope"}, "unknown operation 'nope'"),
    ({}, "Field required"),
    ({"operation": 5}, "Input should be"),
    ({"operation": "noop", "extra": 1}, "Extra inputs"),
    ({"operation": "echo", "payload": "a\u0000b"}, "NUL"),
    ({"operation": "echo", "payload": {"k\u0000": 1}}, "NUL"),
    ({"operation": "echo", "payload": [[{"deep": ["x\u0000"]}]]}, "NUL"),
    ({"operation": "echo", "payload": json.loads("[" * 33 + "]" * 33)},
     "nesting deeper than 32 levels"),
])
def test_bad_bodies_are_422_and_send_nothing(send_task, body, reason):
    response = post(body)
    assert response.status_code == 422, response.text
    assert reason in response.text
    assert response.json()["error"]
    send_task.assert_not_called()


@pytest.mark.parametrize("raw", [
    b'{"operation": "echo", "payload": "\\ud800"}',          # lone surrogate
    b'{"operation": "echo", "payload": {"\\udfff": 1}}',      # in a key
    b'{"operation": "echo", "payload": NaN}',
    b'{"operation": "echo", "payload": [Infinity]}',
])
def test_what_postgres_cannot_store_is_422(send_task, raw):
    response = post(content=raw, headers={**AUTH_A, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    send_task.assert_not_called()


def test_not_json_is_422(send_task):
    response = post(content=b"{nope", headers={**AUTH_A, "content-type": "application/json"})
    assert response.status_code == 422
    send_task.assert_not_called()


# -- auth ---------------------------------------------------------------------------------

@pytest.mark.parametrize("headers, reason", [
    ({}, "missing Authorization header"),
    ({"Authorization": "Basic dXNlcjpwdw=="}, "malformed Authorization header"),
    ({"Authorization": "Bearer"}, "malformed Authorization header"),
    ({"Authorization": "Bearer trn_unknown"}, "unknown or revoked token"),
])
@pytest.mark.parametrize("method", ["post", "get"])
def test_no_valid_token_is_401(send_task, headers, reason, method):
    if method == "post":
        response = client.post("/tasks", json={"operation": "noop"}, headers=headers)
    else:
        response = client.get("/tasks/some-id", headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == body["detail"]
    assert reason in response.json()["error"]
    send_task.assert_not_called()


def test_an_unusable_token_is_not_looked_up(token_lookup):
    response = post({"operation": "noop"}, headers={"Authorization": "Bearer " + "x" * 300})
    assert response.status_code == 401
    token_lookup.assert_not_called()


def test_token_store_down_is_503_not_500(send_task, token_lookup, caplog):
    token_lookup.side_effect = tokens.TokenStoreUnavailable("OperationalError: refused")
    with caplog.at_level(logging.WARNING, logger="trinity.gateway.auth"):
        response = post({"operation": "noop"})
    assert response.status_code == 503
    assert response.json() == {"error": "token store unavailable",
                               "detail": "token store unavailable"}
    assert "refused" in caplog.text
    send_task.assert_not_called()


def test_token_store_down_for_real_is_503(send_task, monkeypatch):
    """The real lookup against a closed port: psycopg's error becomes the 503."""
    monkeypatch.setattr(tokens, "token_store", tokens.TokenStore("postgres://g@127.0.0.1:1/t", 10))
    started = time.monotonic()
    response = post({"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["error"] == "token store unavailable"
    assert time.monotonic() - started < tokens.LOOKUP_TIMEOUT
    send_task.assert_not_called()


def test_hanging_token_store_is_503_within_the_deadline(token_lookup, monkeypatch):
    monkeypatch.setattr(tokens, "LOOKUP_TIMEOUT", 0.2)
    token_lookup.side_effect = lambda key: time.sleep(1)
    with TestClient(app) as persistent:
        started = time.monotonic()
        response = persistent.post("/tasks", json={"operation": "noop"}, headers=AUTH_A)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert elapsed < 1.0


def test_a_verified_token_is_cached(send_task, token_lookup):
    post({"operation": "noop"})
    post({"operation": "noop"})
    assert token_lookup.call_count == 1


# -- limits -------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_post_that_is_not_json_is_415(send_task, content_type):
    headers = dict(AUTH_A)
    if content_type:
        headers["content-type"] = content_type
    response = client.post("/tasks", content=b'{"operation": "noop"}', headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["error"]
    send_task.assert_not_called()


def test_json_with_a_charset_is_accepted(send_task):
    response = client.post("/tasks", content=b'{"operation": "noop"}',
                           headers={**AUTH_A, "content-type": "application/json; charset=utf-8"})
    assert response.status_code == 202, response.text


def test_a_body_above_api_max_body_bytes_is_413(send_task):
    small = TestClient(create_app(GatewaySettings(database_url="postgres://g@h/d",
                                                  max_body_bytes=100)))
    payload = {"operation": "echo", "payload": "x" * 200}
    response = small.post("/tasks", json=payload, headers=AUTH_A)  # Content-Length: 230
    assert response.status_code == 413
    assert "API_MAX_BODY_BYTES" in response.json()["error"]

    def chunks():  # no Content-Length: chunked, checked while reading
        yield b'{"operation": "echo", "payload": "'
        for _ in range(10):
            yield b"x" * 50
        yield b'"}'

    response = small.post("/tasks", content=chunks(),
                          headers={**AUTH_A, "content-type": "application/json"})
    assert response.status_code == 413
    assert small.post("/tasks", json={"operation": "noop"}, headers=AUTH_A).status_code == 202
    send_task.assert_called_once()


def test_the_default_limit_is_one_mebibyte(send_task):
    body = {"operation": "echo", "payload": "x" * (1024 * 1024)}
    assert post(body).status_code == 413
    assert post({"operation": "echo", "payload": "x" * 1000}).status_code == 202


# -- broker failures ----------------------------------------------------------------------

def test_broker_down_is_503(send_task):
    send_task.side_effect = OperationalError("Error 111 connecting to redis:6379.\nRefused")
    response = post({"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["detail"] == "broker unavailable: Error 111 connecting to redis:6379. Refused"


def _oom_error():
    """The exception redis-py raises for Redis's `-OOM ...` reply (it drops the prefix)."""
    from redis._parsers.base import BaseParser

    return BaseParser.parse_error(
        "OOM command not allowed when used memory > 'maxmemory'.")


def test_redis_out_of_memory_is_503_with_its_reason(send_task):
    assert isinstance(_oom_error(), redis.exceptions.OutOfMemoryError)
    send_task.side_effect = _oom_error()
    response = post({"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["detail"] == (
        "broker unavailable: OOM command not allowed when used memory > 'maxmemory'.")


def test_redis_out_of_memory_on_the_acceptance_record_is_503_too(send_task, monkeypatch):
    """Published, but not accepted: the worker will record the message FAILURE unrun."""
    def refuse(task_id, schema, idem_key, deadline, sent):
        raise _oom_error()

    monkeypatch.setattr(owners, "accept", refuse)
    response = post({"operation": "noop"})
    assert response.status_code == 503
    assert "OOM command not allowed" in response.json()["error"]
    send_task.assert_called_once()


def test_kombus_wrapped_out_of_memory_error_keeps_redis_reason(send_task):
    """What kombu raises for real when Redis is out of memory (seen against a Redis with
    maxmemory 1): an OperationalError naming the pipeline command, the OOM error as cause."""
    oom = _oom_error()
    wrapped = OperationalError(
        "Command # 1 (SADD _kombu.binding.trinity.tasks trinity.tasks) of pipeline caused "
        f"error: {oom}")
    wrapped.__cause__ = oom
    send_task.side_effect = wrapped
    response = post({"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["error"] == (
        "broker unavailable: OOM command not allowed when used memory > 'maxmemory'.")


def test_hanging_broker_is_503_within_the_deadline(send_task, monkeypatch):
    from app.routes import tasks

    monkeypatch.setattr(tasks, "PUBLISH_TIMEOUT", 0.2)
    monkeypatch.setattr(tasks, "ACCEPT_TIMEOUT", 0.4)
    send_task.side_effect = lambda *a, **k: time.sleep(1)
    # A persistent event loop, as under uvicorn (a per-request loop would wait for the
    # abandoned thread when it closes).
    with TestClient(app) as persistent:
        started = time.monotonic()
        response = persistent.post("/tasks", json={"operation": "noop"}, headers=AUTH_A)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "no answer within" in response.json()["detail"]
    assert elapsed < 1.0


def test_redis_nearly_full_answers_503_and_sends_nothing(send_task):
    from app.routes import tasks

    with mock.patch.object(tasks, "check_room",
                           side_effect=BrokerFull("Redis memory at 93% of maxmemory: ...")):
        response = post({"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["detail"] == "broker unavailable: Redis memory at 93% of maxmemory: ..."
    send_task.assert_not_called()


def test_unreachable_broker_answers_quickly(monkeypatch):
    """A real publish to a closed port: the bounded retries end it with a 503 in ~2 s."""
    from app.routes import tasks

    closed = Celery("closed-port")
    configure_celery_app(closed, {"REDIS_URL": "redis://127.0.0.1:1/0"})
    monkeypatch.setattr(tasks, "celery_app", closed)
    started = time.monotonic()
    response = post({"operation": "noop"})
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["detail"].startswith("broker unavailable: ")
    assert elapsed < tasks.PUBLISH_TIMEOUT


def test_unreachable_redis_for_the_acceptance_record_is_503(monkeypatch, send_task):
    """The real acceptance-record client against a closed port."""
    monkeypatch.undo()  # the real owners.accept
    closed = Celery("closed-port")
    configure_celery_app(closed, {"REDIS_URL": "redis://127.0.0.1:1/0"})
    monkeypatch.setattr(owners, "celery_app", closed)
    response = post({"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["detail"].startswith("broker unavailable: ")
    send_task.assert_called_once()


# -- task state ---------------------------------------------------------------------------

def test_task_state_of_my_own_task(owner_keys):
    owner_keys["abc"] = "public"
    fake = mock.Mock(state="SUCCESS", result={"count": 4})
    with mock.patch("app.routes.tasks.AsyncResult", return_value=fake):
        response = client.get("/tasks/abc", headers=AUTH_A)
    assert response.json() == {"task_id": "abc", "state": "SUCCESS", "result": {"count": 4}}
    fake = mock.Mock(state="FAILURE", result=ValueError("boom"))
    with mock.patch("app.routes.tasks.AsyncResult", return_value=fake):
        assert client.get("/tasks/abc", headers=AUTH_A).json() == {
            "task_id": "abc", "state": "FAILURE", "error": "boom"}
    fake = mock.Mock(state="PENDING", result=None)
    with mock.patch("app.routes.tasks.AsyncResult", return_value=fake):
        assert client.get("/tasks/abc", headers=AUTH_A).json() == {
            "task_id": "abc", "state": "PENDING"}


def test_another_tenants_task_is_404(owner_keys):
    owner_keys["abc"] = "tenant_b"
    with mock.patch("app.routes.tasks.AsyncResult") as result:
        response = client.get("/tasks/abc", headers=AUTH_A)
        assert response.status_code == 404
        assert response.json() == {"error": "no such task", "detail": "no such task"}
        assert client.get("/tasks/unknown", headers=AUTH_A).status_code == 404
        result.assert_not_called()
    with mock.patch("app.routes.tasks.AsyncResult",
                    return_value=mock.Mock(state="PENDING", result=None)):
        assert client.get("/tasks/abc", headers=AUTH_B).status_code == 200


def test_a_task_sent_is_readable_by_its_tenant_only(send_task):
    task_id = post({"operation": "noop"}, headers=AUTH_B).json()["task_id"]
    with mock.patch("app.routes.tasks.AsyncResult",
                    return_value=mock.Mock(state="PENDING", result=None)):
        assert client.get(f"/tasks/{task_id}", headers=AUTH_B).status_code == 200
        assert client.get(f"/tasks/{task_id}", headers=AUTH_A).status_code == 404


def test_unknown_paths_have_the_error_body():
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found", "detail": "Not Found"}


# -- health -------------------------------------------------------------------------------

@pytest.fixture
def db_ping():
    with mock.patch.object(tokens.token_store, "ping") as ping:
        yield ping


def test_livez_does_not_touch_redis(db_ping):
    with mock.patch("app.routes.health.broker_ping", side_effect=AssertionError) as ping:
        response = client.get("/livez")
    assert response.status_code == 200 and response.json() == {"status": "alive"}
    ping.assert_not_called()
    db_ping.assert_not_called()


def test_healthz_ok_says_only_ok(db_ping):
    with mock.patch("app.routes.health.broker_ping") as ping:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    ping.assert_called()
    db_ping.assert_called_once()


@pytest.mark.parametrize("failing", ["broker", "token_database"])
def test_healthz_down_says_only_error_and_logs_one_warning(db_ping, caplog, failing):
    broker = ConnectionError("refused") if failing == "broker" else None
    if failing == "token_database":
        db_ping.side_effect = tokens.TokenStoreUnavailable("OperationalError: no route")
    with mock.patch("app.routes.health.broker_ping", side_effect=broker), \
            caplog.at_level(logging.WARNING, logger="trinity.gateway.health"):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "error"}
    records = [r for r in caplog.records if r.name == "trinity.gateway.health"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert failing in records[0].getMessage()
    assert "\n" not in records[0].getMessage()


def test_healthz_live(live_redis, live_database):
    assert client.get("/healthz").status_code == 200


def test_the_token_query_runs_as_the_gateway_role(live_database):
    """The contract's SQL against the real table, with the gateway role's grants."""
    live_database.cache.clear()
    assert live_database.lookup_hash("0" * 64) is None


# -- OpenAPI ------------------------------------------------------------------------------

def test_openapi_documents_the_operations_security_and_every_status_code():
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    request = components["TaskRequest"]
    assert request["properties"]["operation"]["enum"] == sorted(OPERATIONS)
    assert "schema" not in request["properties"]
    assert request["additionalProperties"] is False
    assert request["properties"]["payload"]["$ref"] == "#/components/schemas/JsonValue"
    assert "JsonValue" in components
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": mock.ANY}
    post_op = schema["paths"]["/tasks"]["post"]
    get_op = schema["paths"]["/tasks/{task_id}"]["get"]
    assert set(post_op["responses"]) == {"202", "400", "401", "409", "413", "415", "422",
                                         "429", "503"}
    key, = post_op["parameters"]
    assert (key["name"], key["in"], key["required"]) == ("Idempotency-Key", "header", False)
    assert key["schema"] == {"type": "string", "minLength": 1, "maxLength": 255,
                             "title": mock.ANY, "description": mock.ANY}
    assert set(get_op["responses"]) == {"200", "401", "404", "422", "429", "503"}
    for op in (post_op, get_op):
        assert op["security"] == [{"HTTPBearer": []}]
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
        for code in ("401", "429", "503"):
            assert op["responses"][code]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"}
    assert list(post_op["requestBody"]["content"]) == ["application/json"]
    assert set(schema["paths"]["/healthz"]["get"]["responses"]) == {"200", "503"}


def test_a_body_that_is_not_utf8_is_422_not_400(send_task):
    response = post(content=b'\xff]O', headers={**AUTH_A, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "not UTF-8" in response.json()["error"]
    send_task.assert_not_called()


@pytest.mark.parametrize("path", ["/tasks/abc", "/healthz", "/livez"])
def test_an_undeclared_post_is_405_whatever_its_content_type(path):
    response = client.post(path, headers=AUTH_A)
    assert response.status_code == 405
    assert client.post("/nope", content=b"x" * 10).status_code == 404
