"""The stuck-task scan (the beat job mark_stuck_task_runs): no accepted TaskRun is failed while
it can still run, and none waits forever.

Every CELERY_STUCK_SCAN_INTERVAL seconds, in every schema, the candidates are QUEUED or
PENDING rows untouched for QUEUED_GRACE seconds and RUNNING rows whose lease lapsed (both
judged by the database's clock). Then the broker is asked, not guessed:

- a candidate whose message Redis still holds (in its queue at any priority, or in the unacked
  index of a worker that took it) is left alone: a backlog waits for its worker however long
  that worker is down, and a dead worker's message comes back by itself;
- a QUEUED or PENDING row with no message anywhere was lost (Redis lost data, or a row was
  recorded and never sent): execute_task is published again under the row's task id, at most
  MAX_REPUBLISH times, then the row ends FAILURE "lost";
- a RUNNING row with no message started and died where no redelivery will come (killed at the
  hard time limit, its message acknowledged): it ends FAILURE.

Tasks the gateway accepted have no row until a worker takes their message; the gateway notes
each one (operations.GATEWAY_SENT_KEY) until then, and the scan treats a note like a QUEUED
row: left alone while its message is in Redis, dropped once its row exists, else run_operation
is published again under the same task id (at most MAX_REPUBLISH times, then a FAILURE row
"lost" is written for it).

Reading the queues costs one LRANGE per queue and priority and one HVALS of the unacked
index, decoded message by message, and only when there are candidates: a backlog of 100,000
messages is a second or two of one worker's CPU per scan.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import timedelta

from celery import uuid
from django.db.models import F, Q
from django.db.models.functions import Now
from django_tenants.utils import schema_context
from kombu.transport.redis import PRIORITY_STEPS, Channel

from apps.orchestration.models import TaskRun
from apps.tenants.schemas import all_schemas
from apps.orchestration.operations import (EXECUTE_TASK, GATEWAY_OWNER_KEY_PREFIX,
                                           GATEWAY_SENT_KEY, RUN_OPERATION)
from config.broker import redis_client
from config.celery_settings import queue_for_operation

logger = logging.getLogger(__name__)
Status = TaskRun.Status

# A row is published right after its commit; one not seen in the broker this long after its
# last change is looked at. A republish in a race is harmless: the lease runs it once.
QUEUED_GRACE = 30
MAX_REPUBLISH = 3
WAITING = (Status.QUEUED, Status.PENDING)


def scan(app) -> dict:
    counts = {}
    notes = gateway_notes(app)  # before the broker, so a note's message is seen or its row is
    in_broker = messages_in_broker(app) if notes else None  # else only if a schema needs it
    for schema_name in all_schemas():
        with schema_context(schema_name):
            candidates = list(_candidates())
            if not candidates:
                continue
            if in_broker is None:
                in_broker = messages_in_broker(app)
            counts[schema_name] = _settle(app, schema_name, candidates, in_broker)
        if counts[schema_name]["republished"] or counts[schema_name]["failed"]:
            logger.warning("stuck TaskRuns in %s: %s", schema_name, counts[schema_name])
    if notes:
        counts["gateway"] = _settle_notes(app, notes, in_broker[0])
        if counts["gateway"]["republished"] or counts["gateway"]["failed"]:
            logger.warning("gateway tasks with no message and no row: %s", counts["gateway"])
    return counts


def _candidates():
    now = Now()
    return TaskRun.objects.filter(
        Q(status__in=WAITING, updated_at__lt=now - timedelta(seconds=QUEUED_GRACE))
        | Q(status=Status.RUNNING, lease_expires_at__lt=now)
    ).only("pk", "operation", "status", "celery_task_id", "republished", "attempts")


def _settle(app, schema_name: str, candidates, in_broker) -> dict:
    task_ids, refs = in_broker
    counts = {"waiting": 0, "republished": 0, "failed": 0}
    for run in candidates:
        if run.celery_task_id in task_ids or (schema_name, run.pk) in refs:
            counts["waiting"] += 1
            continue
        if run.status == Status.RUNNING:
            error = (f"stuck: RUNNING past its lease (attempt {run.attempts}) and no message "
                     "left in the broker: the run died and no redelivery will come")
            counts["failed"] += _fail(run, (Status.RUNNING,), error)
        elif run.republished >= MAX_REPUBLISH:
            error = (f"lost: no message in the broker after {run.republished} republishes")
            counts["failed"] += _fail(run, WAITING, error)
        else:
            counts["republished"] += _republish(app, schema_name, run)
    return counts


def _fail(run: TaskRun, statuses, error: str) -> int:
    # Conditional: a worker that claimed or finished the row meanwhile wins.
    return TaskRun.objects.filter(pk=run.pk, status__in=statuses).update(
        status=Status.FAILURE, error=error, finished_at=Now(), updated_at=Now(),
        lease_expires_at=None)


def _republish(app, schema_name: str, run: TaskRun) -> int:
    task_id = run.celery_task_id or uuid()
    try:
        app.send_task(EXECUTE_TASK, args=[run.pk, schema_name], task_id=task_id,
                      queue=queue_for_operation(run.operation))
    except Exception as exc:  # broker refused (out of memory, down): try again next scan
        logger.warning("TaskRun %s in %s: republish failed: %s", run.pk, schema_name, exc)
        return 0
    fields = {"republished": F("republished") + 1, "updated_at": Now()}
    rows = TaskRun.objects.filter(pk=run.pk, status__in=WAITING)
    if not run.celery_task_id:
        rows, fields["celery_task_id"] = rows.filter(celery_task_id=""), task_id
    return rows.update(**fields)


def gateway_notes(app) -> dict[str, dict]:
    """The gateway's notes older than QUEUED_GRACE (its clock: the gateway's wall time)."""
    now = time.time()
    notes = {}
    for task_id, raw in redis_client(app.conf.broker_url).hgetall(GATEWAY_SENT_KEY).items():
        note = json.loads(raw)
        if note["at"] < now - QUEUED_GRACE:
            notes[task_id.decode()] = note
    return notes


def _settle_notes(app, notes: dict[str, dict], task_ids: set[str]) -> dict:
    client = redis_client(app.conf.broker_url)
    counts = {"waiting": 0, "recorded": 0, "republished": 0, "failed": 0}
    for task_id, note in notes.items():
        if task_id in task_ids:
            counts["waiting"] += 1
            continue
        with schema_context(note["schema"]):
            recorded = TaskRun.objects.filter(celery_task_id=task_id).exists()
            if recorded or not client.exists(GATEWAY_OWNER_KEY_PREFIX + task_id):
                # A worker has its row (the scan looks at rows), or the gateway answered 503
                # and the task must not run: the note has served.
                counts["recorded"] += recorded
                client.hdel(GATEWAY_SENT_KEY, task_id)
            elif note.get("republished", 0) >= MAX_REPUBLISH:
                TaskRun.objects.get_or_create(celery_task_id=task_id, defaults={
                    "operation": note["operation"], "payload": note["payload"],
                    "status": Status.FAILURE, "finished_at": Now(),
                    "error": f"lost: no message in the broker after {MAX_REPUBLISH} republishes",
                    "republished": MAX_REPUBLISH})
                client.hdel(GATEWAY_SENT_KEY, task_id)
                counts["failed"] += 1
            else:
                counts["republished"] += _republish_note(app, client, task_id, note)
    return counts


def _republish_note(app, client, task_id: str, note: dict) -> int:
    try:
        app.send_task(RUN_OPERATION, args=[note["operation"], note["payload"], note["schema"]],
                      kwargs={"await_acceptance": True}, task_id=task_id, queue=note["queue"])
    except Exception as exc:  # broker refused (out of memory, down): try again next scan
        logger.warning("gateway task %s: republish failed: %s", task_id, exc)
        return 0
    note = {**note, "at": time.time(), "republished": note.get("republished", 0) + 1}
    client.hset(GATEWAY_SENT_KEY, task_id, json.dumps(note))
    return 1


def messages_in_broker(app) -> tuple[set[str], set[tuple[str, int]]]:
    """Task ids of every message Redis holds for our queues (waiting or unacknowledged), and
    (schema, TaskRun id) of the execute_task ones (a row made in a shell has no task id)."""
    pipe = redis_client(app.conf.broker_url).pipeline(transaction=False)
    # kombu's Redis transport keeps a queue's priorities in lists "<queue>", "<queue><sep>3", ...
    # and the messages delivered but not acknowledged in one hash.
    for queue in app.conf.task_queues:
        for step in PRIORITY_STEPS:
            pipe.lrange(f"{queue.name}{Channel.sep}{step}" if step else queue.name, 0, -1)
    pipe.hvals(Channel.unacked_key)
    task_ids, refs = set(), set()
    for raw in (item for found in pipe.execute() for item in found):
        task_id, ref = _identify(raw)
        if task_id:
            task_ids.add(task_id)
        if ref:
            refs.add(ref)
    return task_ids, refs


def _identify(raw: bytes) -> tuple[str | None, tuple[str, int] | None]:
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # unacked entries: [message, exchange, routing key]
            message = message[0]
        headers = message.get("headers") or {}
        if headers.get("task") != EXECUTE_TASK:
            return headers.get("id"), None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _ = json.loads(body)
        run_id = args[0] if args else kwargs.get("task_run_id")
        schema_name = args[1] if len(args) > 1 else kwargs.get("schema_name", "public")
        return headers.get("id"), (schema_name, int(run_id))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        logger.warning("stuck-task scan: a message it cannot read: %r", raw[:200])
        return None, None
