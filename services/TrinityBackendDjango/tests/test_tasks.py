"""execute_task / run_operation against the real Postgres (the ledger and the stuck-task scan:
test_ledger.py).

Tasks run eagerly with .apply(): same code path as a worker, no broker needed.
"""

import pytest
from django_tenants.utils import schema_context

from apps.orchestration import operations
from apps.orchestration.models import TaskRun
from apps.orchestration.tasks import execute_task, run_operation

from .conftest import reload

pytestmark = pytest.mark.django_db


def test_success_is_recorded(make_run):
    run = make_run("primes", {"n": 100})
    outcome = execute_task.apply(args=[run.pk, "public"])
    assert outcome.state == "SUCCESS"
    assert outcome.result["result"] == {"n": 100, "count": 25}
    row = reload(run)
    assert row.status == "SUCCESS"
    assert row.result == {"n": 100, "count": 25}
    assert row.attempts == 1
    assert row.celery_task_id == outcome.id
    assert row.started_at and row.finished_at and row.error == ""


def test_failure_is_recorded(make_run):
    run = make_run("fail", {"why": "test"})
    outcome = execute_task.apply(args=[run.pk, "public"])
    assert outcome.state == "FAILURE"
    row = reload(run)
    assert row.status == "FAILURE"
    assert "always fails" in row.error
    assert row.finished_at is not None


def test_second_run_returns_recorded_outcome(make_run, monkeypatch):
    run = make_run("echo", {"x": 1})
    first = execute_task.apply(args=[run.pk, "public"])
    calls = []
    monkeypatch.setitem(operations.OPERATIONS, "echo",
                        operations.Operation(lambda payload: calls.append(payload)))
    second = execute_task.apply(args=[run.pk, "public"])
    assert second.state == "SUCCESS"
    assert second.result["result"] == first.result["result"] == {"x": 1}
    assert calls == []  # not run again
    assert reload(run).attempts == 1


def test_second_run_of_a_failure_fails_again_without_running(make_run):
    run = make_run("fail")
    execute_task.apply(args=[run.pk, "public"])
    again = execute_task.apply(args=[run.pk, "public"])
    assert again.state == "FAILURE"
    assert "failed: " in str(again.result)
    assert reload(run).attempts == 1


def test_unknown_id_fails_with_a_clear_message():
    outcome = execute_task.apply(args=[999999, "public"])
    assert outcome.state == "FAILURE"
    assert "TaskRun 999999 not found in schema 'public'" in str(outcome.result)


def test_unknown_schema_fails_and_touches_nothing(make_run):
    run = make_run("echo", 1)
    outcome = execute_task.apply(args=[run.pk, "no_such_schema"])
    assert outcome.state == "FAILURE"
    assert "unknown schema 'no_such_schema'" in str(outcome.result)
    row = reload(run)
    assert row.status == "PENDING" and row.attempts == 0


def test_tenant_schema_is_isolated(make_run, tenant_schema):
    public_run = make_run("echo", "public row")
    tenant_run = make_run("echo", "tenant row", schema=tenant_schema)
    outcome = execute_task.apply(args=[tenant_run.pk, tenant_schema])
    assert outcome.state == "SUCCESS"
    assert outcome.result["result"] == "tenant row"
    assert reload(tenant_run, tenant_schema).status == "SUCCESS"
    public_row = reload(public_run)
    assert public_row.status == "PENDING" and public_row.attempts == 0
    with schema_context(tenant_schema):
        assert TaskRun.objects.count() == 1


def test_run_operation_creates_and_runs(tenant_schema):
    outcome = run_operation.apply(args=["primes", 30, tenant_schema])
    assert outcome.state == "SUCCESS"
    assert outcome.result["result"] == {"n": 30, "count": 10}
    with schema_context(tenant_schema):
        row = TaskRun.objects.get(celery_task_id=outcome.id)
    assert row.status == "SUCCESS" and row.operation == "primes"
    assert not TaskRun.objects.filter(celery_task_id=outcome.id).exists()  # not in public


def test_run_operation_is_idempotent_per_task_id():
    first = run_operation.apply(args=["echo", 5, "public"], task_id="fixed-id")
    second = run_operation.apply(args=["echo", 5, "public"], task_id="fixed-id")
    assert first.state == second.state == "SUCCESS"
    assert TaskRun.objects.filter(celery_task_id="fixed-id").count() == 1


def test_run_operation_rejects_unknown_operation():
    outcome = run_operation.apply(args=["nope", None, "public"])
    assert outcome.state == "FAILURE"
    assert "unknown operation 'nope'" in str(outcome.result)
    assert TaskRun.objects.count() == 0


def test_database_errors_are_retried():
    from django.db import InterfaceError, OperationalError

    for task in (execute_task, run_operation):
        assert {OperationalError, InterfaceError} <= set(task.autoretry_for)
        assert task.max_retries >= 3


@pytest.mark.parametrize("payload, expected", [(None, None), ({"a": [1]}, {"a": [1]})])
def test_echo(payload, expected):
    assert operations.run("echo", payload) == expected


def test_operation_payload_errors():
    with pytest.raises(operations.OperationError):
        operations.run("sleep", "abc")
    with pytest.raises(operations.OperationError):
        operations.run("sleep", operations.SLEEP_MAX_SECONDS + 1)
    with pytest.raises(operations.OperationError):
        operations.run("primes", 2.5)
    assert operations.run("primes", {"n": 2}) == {"n": 2, "count": 0}
    assert operations.run("sleep", 0) == {"slept": 0.0}
