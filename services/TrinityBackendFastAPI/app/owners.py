"""Which tenant sent a task: `trinity.gateway.owner:<task_id>` = schema in the broker's Redis,
written before the task is published, kept 24 h (as long as its result)."""

from __future__ import annotations

import os

from app.celery_app import celery_app
from config.celery_settings import SOCKET_CONNECT_TIMEOUT, SOCKET_TIMEOUT

KEY_PREFIX = "trinity.gateway.owner:"
TTL_SECONDS = 86400

_clients: dict = {}


def _client():
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    url = celery_app.conf.broker_url
    client = _clients.get((url, os.getpid()))
    if client is None:
        # One immediate retry replaces a connection that a Redis restart broke.
        client = _clients.setdefault((url, os.getpid()), redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 1)))
    return client


def remember(task_id: str, schema: str) -> None:
    _client().set(KEY_PREFIX + task_id, schema, ex=TTL_SECONDS)


def owner_of(task_id: str) -> str | None:
    value = _client().get(KEY_PREFIX + task_id)
    return value.decode("utf-8") if value is not None else None
