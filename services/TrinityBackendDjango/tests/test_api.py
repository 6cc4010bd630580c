"""HTTP API of the Django service; publishing is patched, the database is real.

The view runs in autocommit in production, so it publishes before it answers. Inside a test's
transaction it would wait for a commit that never comes: tests that watch the publish run
with ``autocommit`` (a real commit per statement, tables emptied afterwards).
"""

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError as DatabaseOperationalError
from django.db import connection, transaction
from django.test import Client, override_settings
from django_tenants.utils import schema_context
from kombu.exceptions import OperationalError
from redis.exceptions import ExecAbortError, OutOfMemoryError

from apps.orchestration import services
from apps.orchestration.models import TaskRun
from apps.orchestration.services import submit_task_run
from apps.orchestration.tasks import execute_task
from config.broker_room import BrokerFull
from config.celery_settings import queue_for_operation

pytestmark = pytest.mark.django_db
autocommit = pytest.mark.django_db(transaction=True)


def post(client, body, raw=False, **extra):
    data = body if raw else json.dumps(body)
    return client.post("/api/task-runs/", data=data,
                       content_type=extra.pop("content_type", "application/json"), **extra)


@pytest.fixture
def publish():
    """apply_async patched, and Redis taken to have room (broker_room.check_room)."""
    with mock.patch("apps.orchestration.services.check_room"), \
            mock.patch.object(execute_task, "apply_async") as patched:
        yield patched


@autocommit
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


def test_the_token_picks_the_tenant(client, publish, tenant_schema, issue_token,
                                   django_capture_on_commit_callbacks):
    token = issue_token(tenant_schema)
    with django_capture_on_commit_callbacks(execute=True):
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


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("payload, reason", [
    (r'"a\u0000b"', "NUL"),
    (r'{"a\u0000": 1}', "NUL"),
    (r'"\ud800"', "lone surrogates"),
    (r'{"x\udfff": 1}', "lone surrogates"),
    ("NaN", "finite"),
    ("[Infinity]", "finite"),
    ('{"a": -Infinity}', "finite"),
    ("1e400", "finite"),  # Python's parser reads it as inf
    (_nested(33), "nesting deeper than 32"),
])
def test_what_postgres_would_refuse_is_400_with_the_reason(api, publish, payload, reason):
    response = post(api, f'{{"operation": "echo", "payload": {payload}}}', raw=True)
    assert response.status_code == 400, response.content
    assert response.json()["error"].startswith("payload: ") and reason in response.json()["error"]
    assert TaskRun.objects.count() == 0


def test_json_too_deep_for_the_parser_is_400(api, publish):
    response = post(api, f'{{"operation": "echo", "payload": {_nested(200_000)}}}', raw=True)
    assert response.status_code == 400, response.content
    assert "nests too deeply" in response.json()["error"]
    assert TaskRun.objects.count() == 0


def test_32_levels_are_stored(api, publish):
    response = post(api, f'{{"operation": "echo", "payload": {_nested(32)}}}', raw=True)
    assert response.status_code == 201, response.content


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


@autocommit
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


@autocommit
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


@autocommit
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


@autocommit
def test_redis_out_of_memory_answers_503_with_redis_reason(api, publish):
    publish.side_effect = _oom_as_kombu_raises_it()
    response = post(api, {"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["error"] == (
        "broker unavailable: OOM command not allowed when used memory > 'maxmemory'.")


@autocommit
def test_redis_nearly_full_answers_503_and_sends_nothing(api, publish):
    with mock.patch("apps.orchestration.services.check_room",
                    side_effect=BrokerFull("Redis memory at 93% of maxmemory: ...")):
        response = post(api, {"operation": "noop"})
    assert response.status_code == 503
    assert response.json()["error"] == "broker unavailable: Redis memory at 93% of maxmemory: ..."
    publish.assert_not_called()
    assert TaskRun.objects.get(pk=response.json()["id"]).status == "FAILURE"


def test_database_down_answers_503(api, publish, make_run):
    broken = DatabaseOperationalError('connection to server at "postgres" failed: '
                                      'FATAL: password authentication failed for user "web"')
    run = make_run("echo", 1)
    with mock.patch("apps.orchestration.services.TaskRun.objects.create", side_effect=broken):
        response = post(api, {"operation": "noop"})
    assert response.status_code == 503
    assert response.json() == {"error": "database unavailable, try again later"}  # no names
    for target in ("apps.orchestration.views.tenant_for",
                   "apps.orchestration.views.TaskRun.objects.filter"):
        with mock.patch(target, side_effect=broken):
            for response in (post(api, {"operation": "noop"}),
                             api.get(f"/api/task-runs/{run.pk}/")):
                if "filter" in target and response.request["REQUEST_METHOD"] == "POST":
                    continue  # POST reads no row
                assert response.status_code == 503, (target, response.content)
                assert response.json()["error"] == "database unavailable, try again later"
    publish.assert_not_called()


class QueriesFirst:
    """A middleware that reads the database before any view, as TenantMainMiddleware does."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return self.get_response(request)


def test_database_down_before_the_view_answers_503(api, publish, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.QueriesFirst"]
    api.raise_request_exception = False  # as in production: the handler answers
    broken = DatabaseOperationalError('could not translate host name "postgres"')
    with mock.patch.object(connection, "cursor", side_effect=broken):
        response = post(api, {"operation": "noop"})
    assert response.status_code == 503, response.content
    assert response.json() == {"error": "database unavailable, try again later"}
    assert response["Retry-After"] == "5"
    publish.assert_not_called()
    # Any other error is still Django's plain 500.
    with mock.patch.object(connection, "cursor", side_effect=KeyError("x")):
        assert post(api, {"operation": "noop"}).status_code == 500


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


# ---- publishing waits for the commit --------------------------------------------------------
@autocommit
def test_a_transaction_publishes_after_its_commit_and_never_after_a_rollback(publish):
    with transaction.atomic():
        first = submit_task_run("noop", None)
        second = submit_task_run("echo", 2)
        publish.assert_not_called()  # the rows are not committed yet
    sent = [c.kwargs["task_id"] for c in publish.call_args_list]
    assert sent == [first.run.celery_task_id, second.run.celery_task_id]
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        rolled_back = submit_task_run("noop", None)
        1 / 0
    assert publish.call_count == 2
    assert not TaskRun.objects.filter(pk=rolled_back.run.pk).exists()


@autocommit
def test_a_refused_publish_after_commit_marks_only_its_row(publish, caplog):
    publish.side_effect = [OperationalError("Error 111 connecting to redis:6379"), None]
    with caplog.at_level(logging.ERROR), transaction.atomic():
        refused, sent = submit_task_run("noop", None), submit_task_run("noop", None)
    assert publish.call_count == 2  # the refusal did not keep the second from publishing
    assert TaskRun.objects.get(pk=refused.run.pk).status == "FAILURE"
    assert TaskRun.objects.get(pk=sent.run.pk).status == "QUEUED"
    assert "broker unavailable" in caplog.text


# ---- a hung broker: the answer within the deadline, and a true one -------------------------
@pytest.fixture
def hung_broker(publish):
    """apply_async never returns until the test ends (a paused Redis); a short deadline."""
    release = threading.Event()
    publish.side_effect = lambda *a, **kw: release.wait(30)
    with mock.patch.object(services, "PUBLISH_TIMEOUT", 0.5):
        yield publish
    release.set()


@autocommit
def test_a_hung_broker_is_503_within_the_deadline_and_the_row_never_runs(api, hung_broker):
    started = time.monotonic()
    response = post(api, {"operation": "noop"})
    took = time.monotonic() - started
    assert response.status_code == 503, response.content
    assert response.json()["error"] == "broker unavailable: no answer within 0.5 s"
    assert took < 2, took
    row = TaskRun.objects.get(pk=response.json()["id"])
    assert (row.status, row.attempts) == ("FAILURE", 0)
    # The message may still get through later: the worker does not run a final row.
    with pytest.raises(Exception, match="broker unavailable"):  # its recorded failure
        execute_task.apply(args=[row.pk, "public"], task_id=row.celery_task_id).get()
    assert TaskRun.objects.get(pk=row.pk).attempts == 0


@autocommit
def test_a_row_a_worker_claimed_before_the_deadline_is_201(api, publish):
    """The publish got through but its confirmation did not: a worker claimed the row before the
    deadline, so the request was accepted after all."""
    release = threading.Event()

    def delivered_then_hang(*args, **kwargs):
        try:
            TaskRun.objects.filter(pk=kwargs["args"][0]).update(status="RUNNING", attempts=1)
        finally:
            connection.close()  # this thread's own connection
        release.wait(30)

    publish.side_effect = delivered_then_hang
    with mock.patch.object(services, "PUBLISH_TIMEOUT", 0.5):
        response = post(api, {"operation": "noop"})
    release.set()
    assert response.status_code == 201, response.content
    assert TaskRun.objects.get(pk=response.json()["id"]).status == "RUNNING"


# ---- Idempotency-Key ---------------------------------------------------------------------------
@autocommit
def test_a_repeat_with_the_same_key_returns_the_same_task_run(api, publish):
    key = {"HTTP_IDEMPOTENCY_KEY": "order-17"}
    first = post(api, {"operation": "echo", "payload": {"a": 1, "b": [1, 2]}}, **key)
    assert first.status_code == 201, first.content
    again = post(api, {"payload": {"b": [1, 2], "a": 1}, "operation": "echo"}, **key)
    assert again.status_code == 200, again.content
    assert {k: again.json()[k] for k in ("id", "celery_task_id")} == \
        {k: first.json()[k] for k in ("id", "celery_task_id")}
    other = post(api, {"operation": "echo", "payload": {"a": 2}}, **key)
    assert other.status_code == 422
    assert "Idempotency-Key already used" in other.json()["error"]
    assert publish.call_count == 1 and TaskRun.objects.count() == 1
    assert post(api, {"operation": "echo", "payload": 1},
                HTTP_IDEMPOTENCY_KEY="order-18").status_code == 201


def test_the_key_is_per_tenant(client, publish, tenant_schema, issue_token, public_tenant):
    for schema in ("public", tenant_schema):
        response = post(client, {"operation": "noop"}, HTTP_IDEMPOTENCY_KEY="same",
                        HTTP_AUTHORIZATION=f"Bearer {issue_token(schema)}")
        assert response.status_code == 201 and response.json()["schema"] == schema


def test_a_replay_inside_a_transaction_leaves_it_usable(publish, public_tenant):
    with transaction.atomic():
        first = submit_task_run("noop", None, idempotency_key="k")
        again = submit_task_run("noop", None, idempotency_key="k")
        assert (again.run.pk, again.created) == (first.run.pk, False)
        assert TaskRun.objects.count() == 1  # the transaction still works


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_a_bad_key_is_400(api, publish, key):
    response = post(api, {"operation": "noop"}, HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400
    assert "Idempotency-Key must be 1 to 255 characters" in response.json()["error"]
    assert TaskRun.objects.count() == 0


@autocommit
def test_a_refused_publish_releases_the_key(api, publish):
    publish.side_effect = [OperationalError("Error 111 connecting to redis:6379"), None]
    key = {"HTTP_IDEMPOTENCY_KEY": "retry-me"}
    refused = post(api, {"operation": "noop"}, **key)
    assert refused.status_code == 503
    retried = post(api, {"operation": "noop"}, **key)
    assert retried.status_code == 201 and retried.json()["id"] != refused.json()["id"]


@autocommit
def test_parallel_requests_with_one_key_make_one_row(publish, token):
    def send(_):
        try:
            return post(Client(HTTP_AUTHORIZATION=f"Bearer {token}"), {"operation": "noop"},
                        HTTP_IDEMPOTENCY_KEY="burst")
        finally:
            connection.close()  # each thread has its own connection

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(send, range(20)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 19 + [201], [a.content for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert TaskRun.objects.count() == 1 and publish.call_count == 1
