"""The gateway's records in the broker's Redis, kept 24 h (as long as a task's result).

``trinity.gateway.owner:<task_id>`` = schema: the acceptance record. Written only once the task
is published and before the client is told 202, and only while the client still waits; a
worker runs the task only once it exists (``await_acceptance``), and GET /tasks/{id} answers
404 to any other tenant.

``trinity.gateway.sent`` (a hash): task id -> what was sent, written with the acceptance record
and deleted by the worker once the task's TaskRun row exists; the stuck-task scan publishes a
task again from it if Redis lost its message before that (apps/orchestration/backstop.py).

``trinity.gateway.idem:<schema>:<key>`` = {"task_id", "body"}: an Idempotency-Key's claim. Taken
with SET NX before publishing, it lives a minute until its task is accepted (so a claim whose
request died frees itself) and 24 h after.
"""

from __future__ import annotations

import json
import time

from app.celery_app import celery_app
from apps.orchestration.operations import GATEWAY_OWNER_KEY_PREFIX, GATEWAY_SENT_KEY
from config.broker import redis_client

KEY_PREFIX = GATEWAY_OWNER_KEY_PREFIX
IDEM_PREFIX = "trinity.gateway.idem:"
TTL_SECONDS = 86400
# Far above a POST's budget: only a claim whose request never finished lives this long.
CLAIM_TTL_SECONDS = 60

def _client():
    return redis_client(celery_app.conf.broker_url)


def _idem_key(schema: str, key: str) -> str:
    return f"{IDEM_PREFIX}{schema}:{key}"


def claim(schema: str, key: str, task_id: str, body_hash: str) -> dict | None:
    """Take the Idempotency-Key for ``task_id``: None when taken, else the claim that holds it
    ({"task_id", "body"}). One command (SET NX GET), so parallel requests cannot both win."""
    held = _client().set(_idem_key(schema, key), json.dumps({"task_id": task_id, "body": body_hash}),
                         nx=True, get=True, ex=CLAIM_TTL_SECONDS)
    return json.loads(held) if held is not None else None


def release(schema: str, key: str, task_id: str) -> None:
    """Free the Idempotency-Key after a 503, so that a retry can go through: only if ``task_id``
    still holds it and was not accepted after all (WATCH, no script: the gateway's Redis user
    may not run scripts)."""
    name, owner = _idem_key(schema, key), KEY_PREFIX + task_id

    def drop(pipe):
        held = pipe.get(name)
        if held is not None and json.loads(held)["task_id"] == task_id and not pipe.exists(owner):
            pipe.multi()
            pipe.delete(name)

    _client().transaction(drop, name, owner)


def accept(task_id: str, schema: str, idem_key: str | None, deadline: float,
           sent: dict) -> bool:
    """Write the acceptance record and the note of what was ``sent`` ({operation, payload,
    queue}), and keep the Idempotency-Key's claim as long, atomically, if Redis runs the write
    before ``deadline`` (a wall-clock time): True if it did.

    The record is first set to expire at the deadline, then given its 24 h: a write that Redis
    runs too late (it hung, and the client has had its 503) sets a key that is already gone,
    so no worker runs that task."""
    pipe = _client().pipeline(transaction=True)
    pipe.set(KEY_PREFIX + task_id, schema, pxat=int(deadline * 1000))
    pipe.expire(KEY_PREFIX + task_id, TTL_SECONDS)  # false when the key is already gone
    # A note whose record came too late is dropped by the scan: no record, no run.
    pipe.hset(GATEWAY_SENT_KEY, task_id, json.dumps({**sent, "schema": schema, "at": time.time()}))
    if idem_key is not None:
        pipe.expire(_idem_key(schema, idem_key), TTL_SECONDS)
    return bool(pipe.execute()[1])


def owner_of(task_id: str) -> str | None:
    value = _client().get(KEY_PREFIX + task_id)
    return value.decode("utf-8") if value is not None else None
