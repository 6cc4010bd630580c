"""A guard for a kombu bug that kills a worker when Redis restarts mid-task.

Seen with kombu 5.7.0 / redis-py 8 and late acks: when the broker connection
drops while a task is running, the worker closes that connection, which detaches
the channel from its transport. Two later calls on the old channel then raise
AttributeError ('NoneType' object has no attribute 'hostname' / 'client'):
restoring the unacked message while closing, and acking it when the task ends.
AttributeError is not a connection error, so Celery calls it unrecoverable and
the worker exits (the "Redis restarted, the worker died" failure).

The guard turns those calls into a logged no-op when the channel's connection is
gone. Nothing is lost: the message stays in Redis' unacked index and is
redelivered after the visibility timeout; the task is idempotent, so the rerun
returns the outcome already recorded. The worker reconnects as it does when idle.
"""

import functools
import logging

from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)


def _connection_gone(qos) -> bool:
    transport = getattr(qos.channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def _guard(method):
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if kwargs.get("client") is None and _connection_gone(self):
            logger.warning(
                "broker connection already closed: skipped %s; the unacknowledged "
                "message stays in Redis and is redelivered after the visibility timeout",
                method.__name__,
            )
            return None
        return method(self, *args, **kwargs)

    guarded._trinity_guard = True
    return guarded


def apply() -> None:
    """Install the guard once (idempotent)."""
    qos = kombu_redis.QoS
    for name in ("restore_unacked", "ack", "reject"):
        method = getattr(qos, name)
        if not getattr(method, "_trinity_guard", False):
            setattr(qos, name, _guard(method))
