"""config/kombu_fixes.py against a real Redis channel (the REDIS_URL of the stack).

The first test reproduces the kombu bug without the guard: the day it fails, kombu has fixed
it and config/kombu_fixes.py can go. The others show what the guard does instead, and that
it is only applied on the kombu release it was made for.
"""

import logging
import uuid

import kombu
import pytest
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from config import kombu_fixes
from config.celery import app

BUG = r"'NoneType' object has no attribute '(client|hostname)'"


@pytest.fixture
def lost():
    """A message received with a late ack on a real Redis channel; then that channel, closed
    by kombu after a broker connection loss (``collect()``, as Celery's consumer does), is
    asked for the message again: the state a worker thread finishing its task meets when the
    consumer has already torn the connection down. Yields (message, its channel's QoS, a
    function that counts where the message is)."""
    name = f"trinity.test.kombu-fixes.{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    url = app.conf.broker_url
    with Connection(url) as publisher:
        publisher.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=name,
                                     declare=[queue], serializer="json")
    consumer = Connection(url)
    message = queue(consumer.channel()).get(no_ack=False)
    assert message is not None
    qos, tag = message.channel.qos, message.delivery_tag

    def kept() -> int:
        """Copies of the message still in Redis: queued again, or in the unacked index."""
        with Connection(url) as c:
            client = c.default_channel.client
            return client.llen(name) + client.hexists(qos.unacked_key, tag)

    consumer.collect(socket_timeout=5)  # restores the message: it is queued again
    # What close() leaves once nothing is left to restore: no pool, no connection. (With
    # something to restore, close() re-creates the pool on its way out and a late ack works.)
    message.channel._disconnect_pools()
    try:
        yield message, qos, kept
    finally:
        with Connection(url) as c:
            client = c.default_channel.client
            client.delete(name, f"_kombu.binding.{name}")
            client.hdel(qos.unacked_key, tag)
            client.zrem(qos.unacked_index_key, tag)


@pytest.fixture
def unguarded(monkeypatch):
    for name in kombu_fixes.GUARDED:
        method = getattr(kombu_redis.QoS, name)
        monkeypatch.setattr(kombu_redis.QoS, name, getattr(method, "__wrapped__", method))


def test_without_the_guard_a_lost_connection_breaks_ack_and_restore(unguarded, lost):
    """The bug the guard works around. If this fails, kombu fixed it: delete kombu_fixes."""
    message, qos, _ = lost
    with pytest.raises(AttributeError, match=BUG):
        message.ack()  # the task ended after the connection was lost
    with pytest.raises(AttributeError, match=BUG):
        qos.restore_unacked()  # the old channel restoring its unacked messages


def test_the_guard_turns_it_into_a_logged_noop_and_keeps_the_message(lost, caplog):
    message, qos, kept = lost
    assert kombu_fixes.apply() is True
    with caplog.at_level(logging.WARNING, logger="config.kombu_fixes"):
        assert message.ack() is None
        assert qos.restore_unacked() is None
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert any("skipped ack" in m for m in skipped), skipped
    assert any("skipped restore_unacked" in m for m in skipped), skipped
    assert kept() == 1  # nothing lost: the message is in Redis, to be redelivered


def test_the_guard_is_made_for_the_pinned_kombu_only():
    assert kombu.__version__ == kombu_fixes.SEEN_WITH, (
        f"kombu is now {kombu.__version__}: run this module's first test against it; update "
        "SEEN_WITH if it still fails without the guard, remove kombu_fixes if not")
    assert kombu_fixes.apply("0.0.0") is False
    assert getattr(kombu_redis.QoS.ack, "_trinity_guard", False)  # the worker's import applied it
