"""The operations a TaskRun can run, and the names of the tasks that run them.

An operation is added here and nowhere else: a function (payload -> JSON-serializable result)
and one line in OPERATIONS with the kind of queue it belongs on. No migration: TaskRun.operation
takes its choices from operation_choices, a callable that migrations refer to by name. Names are
checked against OPERATIONS where work is submitted (services.submit_task_run, the gateway's
TaskRequest, the admin) and again by the task that runs it.

Standard library only: the FastAPI image carries this module (images/python/Dockerfile), so the
gateway validates and routes operations and names the tasks it publishes without Django. Every
operation is idempotent: running it twice gives the same result and changes nothing else, which
is what makes late acks safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Celery task names (apps/orchestration/tasks.py registers them under these names).
EXECUTE_TASK = "apps.orchestration.tasks.execute_task"
RUN_OPERATION = "apps.orchestration.tasks.run_operation"
MARK_STUCK_TASK_RUNS = "apps.orchestration.tasks.mark_stuck_task_runs"

# The gateway's acceptance record: written to the broker's Redis once FastAPI has told its client
# 202 (value: the tenant's schema). A run_operation sent with await_acceptance=True waits up to
# ACCEPTANCE_WAIT seconds for it and does not run without it, so a 503 is never a phantom.
GATEWAY_OWNER_KEY_PREFIX = "trinity.gateway.owner:"
ACCEPTANCE_WAIT = 10
# What the gateway accepted and no worker has recorded yet: a hash of task id -> JSON
# {schema, operation, payload, queue, at, republished}, written with the acceptance record and
# deleted by run_operation once its TaskRun row exists. Until then a lost message (Redis lost
# data, or a worker's connection closed while Redis was handing it a message) leaves no row
# for the stuck-task scan to find: the scan reads this instead (apps/orchestration/backstop.py).
GATEWAY_SENT_KEY = "trinity.gateway.sent"

SLEEP_MAX_SECONDS = 300  # stays far below the visibility timeout
PRIMES_DEFAULT_N = 200_000
PRIMES_MAX_N = 20_000_000  # ~20 MB sieve, a few seconds of CPU


class OperationError(Exception):
    """An operation refused its payload or failed on purpose."""


class UnknownOperation(ValueError):
    """The name is not in OPERATIONS; the message lists the known ones."""


def _number(payload, key: str, default):
    """Accept a bare number or {key: number}; None means the default."""
    value = payload.get(key, default) if isinstance(payload, dict) else payload
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OperationError(f"payload must be a number or {{{key!r}: number}}, got {value!r}")
    return value


def noop(payload):
    return None


def echo(payload):
    return payload


def sleep(payload):
    seconds = float(_number(payload, "seconds", 1))
    if not 0 <= seconds <= SLEEP_MAX_SECONDS:
        raise OperationError(f"sleep: seconds must be between 0 and {SLEEP_MAX_SECONDS}")
    time.sleep(seconds)
    return {"slept": seconds}


def primes(payload):
    """Count the primes below n with a sieve of Eratosthenes (real CPU work)."""
    n = _number(payload, "n", PRIMES_DEFAULT_N)
    if not isinstance(n, int) or not 0 <= n <= PRIMES_MAX_N:
        raise OperationError(f"primes: n must be an integer between 0 and {PRIMES_MAX_N}")
    if n < 3:
        return {"n": n, "count": 0}
    sieve = bytearray([1]) * n
    sieve[0] = sieve[1] = 0
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n, i)))
    return {"n": n, "count": sum(sieve)}


def fail(payload):
    raise OperationError(f"fail: this operation always fails (payload: {payload!r})")


@dataclass(frozen=True)
class Operation:
    run: Callable[[Any], Any]
    # The queue it is sent to (config/celery_settings.py names each kind's queue): "cpu" for
    # work that needs a core (prefork pool), "io" for waiting (threads pool), else "default".
    kind: str = "default"


OPERATIONS: dict[str, Operation] = {
    "noop": Operation(noop),
    "echo": Operation(echo),
    "sleep": Operation(sleep, kind="io"),
    "primes": Operation(primes, kind="cpu"),
    "fail": Operation(fail),
}


def operation_choices() -> list[tuple[str, str]]:
    """TaskRun.operation's choices. A callable: a migration keeps a reference to it, not the
    list, so adding an operation changes no migration."""
    return [(name, name) for name in sorted(OPERATIONS)]


def operation(name) -> Operation:
    """The operation called ``name``; UnknownOperation for any other name (or a non-string)."""
    found = OPERATIONS.get(name) if isinstance(name, str) else None
    if found is None:
        raise UnknownOperation(f"unknown operation {name!r}; known operations: "
                               f"{', '.join(sorted(OPERATIONS))}")
    return found


def run(name: str, payload):
    return operation(name).run(payload)
