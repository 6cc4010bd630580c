"""The operations a TaskRun can run: name -> callable(payload) -> JSON-serializable result.

Names and queue kinds are declared in config.celery_settings.OPERATION_KINDS (shared with
FastAPI); this module holds the code. Every operation is idempotent: running it twice
gives the same result and changes nothing else, which is what makes late acks safe.
"""

import time

from config.celery_settings import OPERATION_KINDS

SLEEP_MAX_SECONDS = 300  # stays far below the visibility timeout
PRIMES_DEFAULT_N = 200_000
PRIMES_MAX_N = 20_000_000  # ~20 MB sieve, a few seconds of CPU


class OperationError(Exception):
    """An operation refused its payload or failed on purpose."""


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


REGISTRY = {"noop": noop, "echo": echo, "sleep": sleep, "primes": primes, "fail": fail}

# The shared table and this registry must name the same operations.
assert set(REGISTRY) == set(OPERATION_KINDS), "operations.REGISTRY and OPERATION_KINDS differ"


def run(name: str, payload):
    try:
        func = REGISTRY[name]
    except KeyError:
        raise OperationError(f"unknown operation {name!r}") from None
    return func(payload)
