"""Talking to the broker's Redis directly, beside Celery: one kept client per URL, the health
ping, and Redis's own reason when it refused a publish (the 503's text).

Used by /healthz of both apps, the gateway's acceptance records, the acceptance wait, the
stuck-task scan and the enqueue admission check. The FastAPI image carries this module; it needs
only redis-py, imported when a client is first made.
"""

from __future__ import annotations

import os
import re

# Redis sockets: fail fast instead of hanging when Redis is gone (Celery's own connections use
# the same bounds, config/celery_settings.py).
SOCKET_TIMEOUT = 5.0
SOCKET_CONNECT_TIMEOUT = 2.0

_redis_clients: dict = {}


def redis_client(url: str, timeout: float = SOCKET_TIMEOUT):
    """A redis-py client for ``url`` with socket timeouts, kept per URL, timeout and process
    (a forked pool process makes its own): its connection pool is reused, as a new connection
    per call was most of a /healthz request. A kept connection that a Redis restart broke is
    replaced by one immediate retry, so a call still answers within about 2 x ``timeout``."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    key = (url, timeout, os.getpid())
    client = _redis_clients.get(key)
    if client is None:
        client = _redis_clients.setdefault(key, redis.Redis.from_url(
            url, socket_timeout=timeout,
            socket_connect_timeout=min(timeout, SOCKET_CONNECT_TIMEOUT),
            retry=Retry(NoBackoff(), 1)))
    return client


def broker_ping(url: str, timeout: float = 1.0) -> None:
    """PING Redis at ``url`` with a short timeout; raises on any failure (for /healthz)."""
    if not redis_client(url, timeout).ping():
        raise ConnectionError("PING returned a falsy reply")


# redis-py prefixes an error inside a pipeline (kombu publishes through one) with the command,
# binary arguments included: "Command # 1 (SADD ...) of pipeline caused error: <reason>".
_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)


def redis_refusal(exc: BaseException) -> str | None:
    """Redis's own reply when it refused a command somewhere in ``exc``'s chain, as Redis sent
    it ("OOM command not allowed when used memory > 'maxmemory'."); else None."""
    from redis.exceptions import ExecAbortError, ResponseError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ResponseError) and not isinstance(exc, ExecAbortError):
            message = _PIPELINE_PREFIX.sub("", str(exc))
            code = getattr(exc, "status_code", None)  # redis-py keeps the code ("OOM") apart
            if code and not message.startswith(code):
                message = f"{code} {message}"
            return message
        exc = exc.__cause__ or exc.__context__
    return None


def broker_error_reason(exc: Exception) -> str:
    """A publish error as one line for a 503: Redis's own refusal when it refused (out of
    memory, no permission), else the error's text. Celery's text ends with "The Celery
    application must be restarted", which is not so here: publishing works again once Redis
    is back."""
    refusal = redis_refusal(exc)
    if refusal:
        return refusal
    return " ".join(str(exc).split()).split(" The Celery application must be")[0]
