"""One run per TaskRun at a time, a bound on lost workers, time limits, the gateway's acceptance
record and the stuck-task scan, against the real Postgres (and Redis where said)."""

import base64
import json
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone
from kombu import Queue

from apps.orchestration import backstop, ledger, operations, tasks
from apps.orchestration.ledger import Decision
from apps.orchestration.models import TaskRun
from apps.orchestration.tasks import execute_task, run_operation
from config.celery import app
from apps.orchestration.operations import (EXECUTE_TASK, GATEWAY_OWNER_KEY_PREFIX,
                                           GATEWAY_SENT_KEY, RUN_OPERATION)

from .conftest import reload

pytestmark = pytest.mark.django_db


def claim(run, task_id="t", redelivered=False, retry=False, lost_max=3):
    return ledger.claim(run.pk, "public", task_id, redelivered=redelivered, retry=retry,
                        lease_seconds=60, lost_max=lost_max)


# ---- the lease ---------------------------------------------------------------------------------
def test_a_live_lease_keeps_a_second_delivery_from_starting(make_run, monkeypatch):
    run = make_run("echo", 1)
    first = claim(run, "first")
    assert first.decision is Decision.RUN and first.owner == "first#1"
    calls = []
    monkeypatch.setitem(operations.OPERATIONS, "echo",
                        operations.Operation(lambda payload: calls.append(payload)))
    second = execute_task.apply(args=[run.pk, "public"])
    assert second.state == "IGNORED"
    assert calls == []
    row = reload(run)
    assert row.status == "RUNNING" and row.attempts == 1 and row.lease_owner == "first#1"


def test_a_redelivery_takes_over_and_the_stale_run_cannot_record(make_run):
    run = make_run("echo", 1)
    stale = claim(run, "t")
    fresh = claim(run, "t", redelivered=True)  # the broker handed the message back
    assert fresh.decision is Decision.RUN and fresh.owner == "t#2"
    assert ledger.record(fresh.run, fresh.owner, "SUCCESS", result=1)
    assert not ledger.record(stale.run, stale.owner, "FAILURE", error="late")
    row = reload(run)
    assert (row.status, row.result, row.attempts, row.worker_lost) == ("SUCCESS", 1, 2, 1)


def test_a_lapsed_lease_is_taken_over_without_the_redelivered_flag(make_run):
    run = make_run("echo", 1)
    claim(run, "a")
    TaskRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(1))
    assert claim(run, "b").decision is Decision.RUN


def test_the_lease_expiry_comes_from_the_database_clock(make_run):
    run = make_run("echo", 1)
    claim(run)
    row = reload(run)
    assert timedelta(seconds=60) < row.lease_expires_at - row.started_at <= timedelta(seconds=91)


def test_the_scan_failure_is_not_overwritten_by_the_run(make_run):
    run = make_run("echo", 1)
    held = claim(run)
    TaskRun.objects.filter(pk=run.pk).update(status="FAILURE", error="stuck")
    assert not ledger.record(held.run, held.owner, "SUCCESS", result=1)
    assert reload(run).error == "stuck"


# ---- poison ------------------------------------------------------------------------------------
def test_a_task_whose_worker_dies_n_times_ends_failure(make_run):
    run = make_run("echo", 1)
    decisions = [claim(run, "t", redelivered=i > 0).decision for i in range(4)]
    assert decisions == [Decision.RUN, Decision.RUN, Decision.RUN, Decision.GAVE_UP]
    row = reload(run)
    assert row.status == "FAILURE" and row.error.startswith("worker lost 3 times")
    assert row.attempts == 3 and row.finished_at is not None
    assert claim(run, "t", redelivered=True).decision is Decision.DONE  # not started again


def test_our_own_retry_is_not_a_lost_worker(make_run):
    run = make_run("echo", 1)
    assert claim(run, "same").decision is Decision.RUN
    for _ in range(5):  # e.g. the database retries: a new message each, not a redelivery
        assert claim(run, "same", retry=True, lost_max=2).decision is Decision.RUN
    assert reload(run).worker_lost == 0


# ---- time limits -------------------------------------------------------------------------------
def test_pools_without_signals_time_the_operation_themselves(make_run, monkeypatch):
    monkeypatch.setitem(app.conf, "task_soft_time_limit", 0.5)
    run = make_run("sleep", {"seconds": 5})
    started = time.monotonic()
    outcome = execute_task.apply(args=[run.pk, "public"])
    assert time.monotonic() - started < 3
    assert outcome.state == "FAILURE"
    row = reload(run)
    assert row.status == "FAILURE" and row.error.startswith("TimeLimitReached")


def test_soft_limit_is_below_the_hard_one():
    assert app.conf.task_soft_time_limit < app.conf.task_time_limit


# ---- one row per task id, the gateway's acceptance record -----------------------------------------
def test_one_row_per_celery_task_id(make_run):
    from django.db import IntegrityError, transaction

    make_run("echo", 1, celery_task_id="dup")
    with pytest.raises(IntegrityError), transaction.atomic():
        make_run("echo", 2, celery_task_id="dup")


def test_run_operation_without_acceptance_never_runs(monkeypatch):
    monkeypatch.setattr(tasks, "ACCEPTANCE_WAIT", 0.3)
    calls = []
    monkeypatch.setitem(operations.OPERATIONS, "echo",
                        operations.Operation(lambda payload: calls.append(payload)))
    task_id = f"unaccepted-{uuid.uuid4()}"
    outcome = run_operation.apply(args=["echo", 1, "public"], kwargs={"await_acceptance": True},
                                  task_id=task_id)
    assert outcome.state == "FAILURE" and "not accepted" in str(outcome.result)
    row = TaskRun.objects.get(celery_task_id=task_id)
    assert (row.status, row.attempts, calls) == ("FAILURE", 0, [])


@pytest.fixture(autouse=True)
def sent_key(monkeypatch):
    """The gateway's notes under a key of this test: the Redis is the test stack's own."""
    import redis

    key = f"test.{GATEWAY_SENT_KEY}.{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(backstop, "GATEWAY_SENT_KEY", key)
    monkeypatch.setattr(tasks, "GATEWAY_SENT_KEY", key)
    yield key
    redis.Redis.from_url(app.conf.broker_url).delete(key)


@pytest.fixture
def redis_client():
    import redis

    return redis.Redis.from_url(app.conf.broker_url)


def note(client, task_id, age=3600, accepted=True, **fields):
    """The gateway's acceptance record and note of ``task_id``, ``age`` seconds old."""
    if accepted:
        client.set(GATEWAY_OWNER_KEY_PREFIX + task_id, "public", ex=60)
    sent = {"operation": "echo", "payload": 1, "queue": "trinity.tasks", "schema": "public",
            "at": time.time() - age, **fields}
    client.hset(backstop.GATEWAY_SENT_KEY, task_id, json.dumps(sent))


def test_run_operation_with_acceptance_runs_and_drops_the_gateways_note(redis_client):
    task_id = f"accepted-{uuid.uuid4()}"
    note(redis_client, task_id, age=0)
    try:
        outcome = run_operation.apply(args=["echo", 1, "public"],
                                      kwargs={"await_acceptance": True}, task_id=task_id)
    finally:
        redis_client.delete(GATEWAY_OWNER_KEY_PREFIX + task_id)
    assert outcome.state == "SUCCESS"
    assert TaskRun.objects.get(celery_task_id=task_id).attempts == 1
    assert not redis_client.hexists(backstop.GATEWAY_SENT_KEY, task_id)


# ---- the stuck-task scan -----------------------------------------------------------------------
class FakeApp:
    def __init__(self):
        self.sent = []
        self.conf = SimpleNamespace(broker_url=app.conf.broker_url, task_queues=[])

    def send_task(self, name, args, task_id, queue, kwargs=None):
        self.sent.append((name, args, task_id, queue))


def _old(run, **fields):
    TaskRun.objects.filter(pk=run.pk).update(updated_at=timezone.now() - timedelta(hours=3),
                                             **fields)


def test_the_scan_leaves_what_the_broker_still_holds(make_run, monkeypatch):
    queued = make_run("echo", 1, status="QUEUED", celery_task_id="in-queue")
    pending = make_run("echo", 2)  # made in a shell: no task id until a worker claims it
    _old(queued), _old(pending)
    monkeypatch.setattr(backstop, "messages_in_broker",
                        lambda app: ({"in-queue"}, {("public", pending.pk)}))
    fake = FakeApp()
    assert backstop.scan(fake)["public"] == {"waiting": 2, "republished": 0, "failed": 0}
    assert fake.sent == []
    assert reload(queued).status == "QUEUED" and reload(pending).status == "PENDING"


def test_the_scan_republishes_a_lost_row_then_gives_up(make_run, monkeypatch):
    lost = make_run("primes", 10, status="QUEUED", celery_task_id="lost")
    never_sent = make_run("sleep", 1)
    _old(lost), _old(never_sent)
    monkeypatch.setattr(backstop, "messages_in_broker", lambda app: (set(), set()))
    fake = FakeApp()
    for _ in range(backstop.MAX_REPUBLISH):
        assert backstop.scan(fake)["public"]["republished"] == 2
        _old(lost), _old(never_sent)
    assert sum(sent[2] == "lost" for sent in fake.sent) == backstop.MAX_REPUBLISH
    assert {s[3] for s in fake.sent} == {"trinity.tasks.cpu", "trinity.tasks.io"}
    named = reload(never_sent).celery_task_id
    assert named and all(s[2] in ("lost", named) for s in fake.sent)
    assert backstop.scan(fake)["public"]["failed"] == 2
    row = reload(lost)
    assert row.status == "FAILURE" and row.error.startswith("lost:") and row.attempts == 0


def test_the_scan_fails_a_running_row_past_its_lease_with_no_message(make_run, monkeypatch):
    dead = make_run("sleep", 1, status="RUNNING", celery_task_id="dead", attempts=1,
                    lease_expires_at=timezone.now() - timedelta(minutes=1))
    live = make_run("sleep", 1, status="RUNNING", celery_task_id="live", attempts=1,
                    lease_expires_at=timezone.now() + timedelta(minutes=10))
    fresh = make_run("echo", 1, status="QUEUED", celery_task_id="fresh")
    monkeypatch.setattr(backstop, "messages_in_broker", lambda app: (set(), set()))
    assert backstop.scan(FakeApp())["public"] == {"waiting": 0, "republished": 0, "failed": 1}
    assert reload(dead).status == "FAILURE" and "RUNNING past its lease" in reload(dead).error
    assert reload(live).status == "RUNNING" and reload(fresh).status == "QUEUED"


def test_the_scan_reads_real_messages_from_redis():
    """A message sent to a queue no worker consumes is found by task id and by TaskRun id."""
    import redis

    queue = f"test.backstop.{uuid.uuid4().hex[:8]}"
    app.send_task(EXECUTE_TASK, args=[424242, "public"], task_id="real-message", queue=queue)
    fake = FakeApp()
    fake.conf.task_queues = [Queue(queue)]
    try:
        task_ids, refs = backstop.messages_in_broker(fake)
    finally:
        redis.Redis.from_url(app.conf.broker_url).delete(queue)
    assert "real-message" in task_ids and ("public", 424242) in refs


def test_an_unacked_entry_is_read_like_a_queued_one():
    body = base64.b64encode(json.dumps([[7, "tenant_a"], {}, {}]).encode()).decode()
    message = {"body": body, "headers": {"id": "x", "task": EXECUTE_TASK},
               "properties": {"body_encoding": "base64"}}
    entry = json.dumps([message, "trinity.tasks", "trinity.tasks"]).encode()
    assert backstop._identify(entry) == ("x", ("tenant_a", 7))
    assert backstop._identify(b"not json") == (None, None)


def test_the_scan_sends_a_gateway_task_again_whose_message_and_row_are_missing(
        make_run, redis_client, monkeypatch):
    """Accepted by the gateway, then lost before any worker made its row: run_operation is
    published again under its task id, MAX_REPUBLISH times, then a FAILURE row says so. A note
    whose message Redis holds, whose row exists, that is young, or whose client was told 503
    (no acceptance record) is not sent."""
    monkeypatch.setattr(backstop, "messages_in_broker", lambda app: ({"queued"}, set()))
    make_run("echo", 1, status="SUCCESS", celery_task_id="recorded")
    for task_id in ("lost", "queued", "recorded"):
        note(redis_client, task_id)
    note(redis_client, "young", age=1)
    note(redis_client, "refused", accepted=False)
    fake = FakeApp()
    try:
        counts = backstop.scan(fake)["gateway"]
        assert counts == {"waiting": 1, "recorded": 1, "republished": 1, "failed": 0}, counts
        assert fake.sent == [(RUN_OPERATION, ["echo", 1, "public"], "lost", "trinity.tasks")]
        assert sorted(k.decode() for k in redis_client.hkeys(backstop.GATEWAY_SENT_KEY)) == [
            "lost", "queued", "young"]
        for republished in range(1, backstop.MAX_REPUBLISH):  # each scan once the grace is over
            note(redis_client, "lost", republished=republished)
            assert backstop.scan(fake)["gateway"]["republished"] == 1
        note(redis_client, "lost", republished=backstop.MAX_REPUBLISH)
        assert backstop.scan(fake)["gateway"]["failed"] == 1
    finally:
        for task_id in ("lost", "queued", "recorded", "young", "refused"):
            redis_client.delete(GATEWAY_OWNER_KEY_PREFIX + task_id)
    row = TaskRun.objects.get(celery_task_id="lost")
    assert (row.status, row.attempts, row.operation) == ("FAILURE", 0, "echo")
    assert row.error.startswith("lost:"), row.error
    assert len(fake.sent) == backstop.MAX_REPUBLISH
    assert not redis_client.hexists(backstop.GATEWAY_SENT_KEY, "lost")
