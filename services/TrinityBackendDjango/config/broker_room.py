"""Both apps stop enqueueing before Redis is full, so that the workers can drain what is queued.

With ``maxmemory`` and ``noeviction`` Redis refuses every write past the limit, the workers'
own too: kombu's unacked index when a worker takes a message, the result when it finishes.
Celery treats such a refusal as unrecoverable; measured, a worker once exited and once hung in
its shutdown, consuming nothing. So a new task is refused (503) once Redis's used memory reaches
ENQUEUE_MEMORY_LIMIT of ``maxmemory``: the rest stays for the work already accepted.
"""

import os
import time

from config.broker import redis_client

ENQUEUE_MEMORY_LIMIT = 0.9
# One INFO per process and second at most: a burst of enqueues between two readings adds a few
# MB at most, far below the 10 % left.
READING_TTL = 1.0
READING_TIMEOUT = 1.0

_readings: dict = {}  # (url, pid) -> (monotonic time, used_memory, maxmemory)


class BrokerFull(RuntimeError):
    """Redis's used memory is at or above ENQUEUE_MEMORY_LIMIT of its maxmemory."""


def check_room(url: str) -> None:
    """Raise BrokerFull when Redis at ``url`` has no room for new tasks; Redis's own errors
    (unreachable, no permission) pass through, as a publish would raise them."""
    key = (url, os.getpid())
    now = time.monotonic()
    reading = _readings.get(key)
    if reading is None or now - reading[0] >= READING_TTL:
        memory = redis_client(url, READING_TIMEOUT).info("memory")
        reading = _readings[key] = (now, memory["used_memory"], memory.get("maxmemory", 0))
    _, used, limit = reading
    if limit and used >= ENQUEUE_MEMORY_LIMIT * limit:
        raise BrokerFull(
            f"Redis memory at {100 * used / limit:.0f}% of maxmemory: new tasks are refused "
            f"from {ENQUEUE_MEMORY_LIMIT:.0%} on, so that the workers can drain the queues")
