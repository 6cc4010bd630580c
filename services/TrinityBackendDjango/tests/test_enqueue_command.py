"""`manage.py enqueue`: what it records, what it sends, what it prints, how it refuses.

Publishing is patched (no worker here); the rows are real. The command commits its own
transaction, so these tests run in autocommit (tables emptied afterwards).
"""

import io
import json
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from kombu.exceptions import OperationalError

from apps.orchestration.models import TaskRun
from apps.orchestration.tasks import execute_task

pytestmark = pytest.mark.django_db(transaction=True)


def enqueue(*args) -> list[dict]:
    out = io.StringIO()
    call_command("enqueue", *args, stdout=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture
def publish():
    with mock.patch.object(execute_task, "apply_async") as patched:
        yield patched


def finish(status="SUCCESS", result="done"):
    """A publish that a worker answers at once: the row ends `status`."""
    def worker(args, task_id, queue):
        TaskRun.objects.filter(pk=args[0]).update(status=status, result=result, attempts=1)
    return worker


def test_one_taskrun_is_recorded_sent_to_its_queue_and_printed(publish):
    [shown] = enqueue("sleep", '{"seconds": 0.1}')
    row = TaskRun.objects.get(pk=shown["task_run_id"])
    assert (row.operation, row.payload, row.status) == ("sleep", {"seconds": 0.1}, "QUEUED")
    assert shown == {"task_run_id": row.pk, "task_id": row.celery_task_id, "operation": "sleep",
                     "queue": "trinity.tasks.io", "schema": "public", "status": "QUEUED"}
    publish.assert_called_once_with(args=[row.pk, "public"], task_id=row.celery_task_id,
                                    queue="trinity.tasks.io")


def test_count_sends_that_many(publish):
    shown = enqueue("noop", "--count", "3")
    assert len({line["task_id"] for line in shown}) == 3 and publish.call_count == 3


def test_no_send_records_a_pending_row_for_sending_by_hand(publish):
    [shown] = enqueue("echo", '{"hi": 1}', "--no-send")
    assert shown == {"task_run_id": shown["task_run_id"], "operation": "echo",
                     "schema": "public", "status": "PENDING"}
    assert TaskRun.objects.get(pk=shown["task_run_id"]).status == "PENDING"
    publish.assert_not_called()


def test_wait_prints_the_final_row(publish):
    publish.side_effect = finish(result={"hi": 1})
    [shown] = enqueue("echo", '{"hi": 1}', "--wait", "10")
    assert (shown["status"], shown["result"], shown["error"]) == ("SUCCESS", {"hi": 1}, None)


def test_wait_exits_1_on_failure_and_3_on_timeout(publish):
    publish.side_effect = finish("FAILURE")
    with pytest.raises(CommandError, match="ended FAILURE") as failed:
        enqueue("fail", "--wait", "10")
    assert failed.value.returncode == 1
    publish.side_effect = None
    with pytest.raises(CommandError, match="not final after 0.5 s") as late:
        enqueue("noop", "--wait", "0.5")
    assert late.value.returncode == 3


def test_a_refused_publish_is_reported_and_the_row_never_runs(publish):
    publish.side_effect = OperationalError("Error 111 connecting to redis:6379. Connection refused.")
    with pytest.raises(CommandError, match="1 of 1 TaskRuns not sent: broker unavailable: "
                                           "Error 111") as refused:
        enqueue("noop")
    assert refused.value.returncode == 1
    assert TaskRun.objects.get().status == "FAILURE"


@pytest.mark.parametrize("args,named", [
    (["no-such-op"], "OPERATION: unknown operation 'no-such-op'; known: "),
    (["echo", "{not json"], "PAYLOAD_JSON: not JSON"),
    (["echo", "--schema", "nowhere"], "--schema: no schema 'nowhere'"),
    (["echo", "--count", "0"], "--count: must be at least 1"),
])
def test_bad_arguments_stop_it_naming_the_argument_and_nothing_is_recorded(publish, args, named):
    with pytest.raises(CommandError, match=named.replace("{", r"\{")):
        enqueue(*args)
    assert not TaskRun.objects.exists()
    publish.assert_not_called()
