"""A guard for a kombu bug that kills a worker when Redis restarts mid-task.

Seen with kombu 5.7.0 / redis-py 8 and late acks: when the broker connection
drops while a task is running, Celery collects that connection, which detaches
the channel from its transport (``channel.connection`` and ``transport.client``
become None). Two later calls on the old channel then raise AttributeError
('NoneType' object has no attribute 'hostname' / 'client', from
``Channel._connparams``): restoring the unacked message while closing, and
acking it when the task ends. AttributeError is not a connection error, so
Celery calls it unrecoverable and the worker exits (the "Redis restarted, the
worker died" failure).

No upstream issue matches exactly. The nearest is the same path,
``QoS.restore_unacked -> conn_or_acquire -> _connparams`` on a channel whose
connection is gone, reported for warm shutdown in kombu 4.2.2:
https://github.com/celery/kombu/issues/970 (closed as fixed there; the
connection-loss path still fails); https://github.com/celery/kombu/issues/582 is the same
``_connparams`` error from a channel closed at a consumer restart.
``tests/test_kombu_fixes.py`` reproduces the bug without the guard and fails once kombu fixes
it: then drop this module.

The guard turns those calls into a logged no-op when the channel's connection
is gone. Nothing is lost: the message stays in Redis' unacked index and is
redelivered after the visibility timeout; the task is idempotent, so the rerun
returns the outcome already recorded. The worker reconnects as it does when idle.
"""

import functools
import logging

import kombu
from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)

# The kombu release the bug was seen (and the guard tested) with: requirements/django.lock.
# Another release gets no guard until tests/test_kombu_fixes.py has been run against it.
SEEN_WITH = "5.7.0"
GUARDED = ("restore_unacked", "ack", "reject")


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


def apply(version: str | None = None) -> bool:
    """Install the guard once (idempotent) on the kombu release it was made for; on any
    other release log that it was skipped and return False."""
    version = kombu.__version__ if version is None else version
    if version != SEEN_WITH:
        logger.warning(
            "kombu %s: the restore/ack guard is made for kombu %s and is not applied; run "
            "tests/test_kombu_fixes.py to see whether this release still needs it",
            version, SEEN_WITH,
        )
        return False
    qos = kombu_redis.QoS
    for name in GUARDED:
        method = getattr(qos, name)
        if not getattr(method, "_trinity_guard", False):
            setattr(qos, name, _guard(method))
    return True
