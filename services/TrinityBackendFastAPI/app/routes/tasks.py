"""POST /tasks publishes an operation to the Django workers; GET /tasks/{id} reads its state.

Both need a bearer token; the tenant (schema) comes from it, never from the request.

A 202 means the task will run, a 503 that it will not. Publishing is blocking (kombu), so it
runs in a thread while the handler keeps a deadline; the task is sent with
``await_acceptance=True``, and a worker runs it only once the acceptance record (owners.py) is
in Redis. The thread writes that record after the publish, and only if the handler has not
answered 503 by then; the handler answers 202 once it is written. So a publish that Redis
completes after the client was told 503 leaves a message that the worker records as FAILURE
("not accepted") without running it.
"""

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from typing import Annotated, Any, Literal

from celery import states
from celery.result import AsyncResult
from fastapi import APIRouter, Depends, Header, HTTPException, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, field_validator

from app import owners
from app.auth import tenant_schema
from app.celery_app import celery_app
from app.errors import (NOT_FOUND, RATE_LIMITED, TOO_LARGE, UNAUTHORIZED, UNAVAILABLE,
                        UNSUPPORTED, ErrorBody)
from apps.orchestration.operations import OPERATIONS, RUN_OPERATION
from config.broker import broker_error_reason
from config.broker_room import check_room
from config.celery_settings import queue_for_operation
from config.payloads import IDEMPOTENCY_KEY_MAX, check_idempotency_key, check_storable

log = logging.getLogger("trinity.gateway.tasks")
router = APIRouter()

# Bounded retries in celery_settings end a publish in ~1.5 s; this is the outer guard. A thread
# that has published by then and is writing the acceptance record gets until ACCEPT_TIMEOUT:
# every POST is answered within that, a second under the 5 s a client may wait (the proxy,
# TLS and a loaded host take their share).
PUBLISH_TIMEOUT = 2.5
ACCEPT_TIMEOUT = 4.0
# The record must reach Redis this much before ACCEPT_TIMEOUT (owners.accept), so that its
# reply is back before the handler gives up.
REPLY_MARGIN = 0.5
RESULT_TIMEOUT = 3.0

Operation = Literal[tuple(sorted(OPERATIONS))]  # an enum in the OpenAPI document

IdempotencyKey = Annotated[str, Header(  # absent: None (a header has no null)
    alias="Idempotency-Key",
    description=f"1 to {IDEMPOTENCY_KEY_MAX} characters, unique per task the client means to "
                "send (a UUID). A repeat with the same key and body within 24 h answers the "
                "first request's task id (202) once that one was accepted, 409 while it is in "
                "progress; the same key with another body is a 422. A request that ended 503 "
                "frees its key for a retry.",
    json_schema_extra={"minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX})]

BAD_REQUEST = {400: {"model": ErrorBody, "description": "Idempotency-Key is empty or too long"}}
CONFLICT = {409: {"model": ErrorBody,
                  "description": "A request with this Idempotency-Key is still in progress"}}


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operation: Operation
    payload: Any = None

    @field_validator("operation", mode="before")
    @classmethod
    def known_operation(cls, value: Any) -> Any:
        if isinstance(value, str):
            queue_for_operation(value)  # raises ValueError naming the known operations
        return value

    @field_validator("payload")
    @classmethod
    def storable_payload(cls, value: Any) -> Any:
        check_storable(value)  # what PostgreSQL's jsonb cannot store: ValueError, a 422
        return value

    def digest(self) -> str:
        """The body's hash, stored with an Idempotency-Key's claim: same key, same body."""
        canonical = json.dumps([self.operation, self.payload], sort_keys=True,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class TaskAccepted(BaseModel):
    task_id: str
    queue: str


class TaskState(BaseModel):
    task_id: str
    state: str
    result: Any = None  # present when state is SUCCESS
    error: str | None = None  # present when the task failed or was revoked


class NotAccepted(Exception):
    """Not a TimeoutError: that would read as the handler's own deadline."""


def _unavailable(what: str, reason: str) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{what}: {reason}")


async def _in_thread(func, timeout: float, what: str):
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(None, func), timeout)
    except TimeoutError:
        raise _unavailable(what, f"no answer within {timeout:g} s") from None
    except Exception as exc:  # kombu OperationalError, redis errors (OOM...), OSError...
        raise _unavailable(what, broker_error_reason(exc)) from None  # Redis's own refusal


class Handoff:
    """Who decides a POST's answer, under one lock: once the handler has given up (503) the
    thread never writes the acceptance record; once the thread has begun writing it the
    handler waits for that write instead of answering 503."""

    def __init__(self):
        self._lock = threading.Lock()
        self._given_up = False
        self._writing = False

    @property
    def given_up(self) -> bool:
        with self._lock:
            return self._given_up

    def give_up(self) -> bool:
        """The handler's deadline passed: True if it may answer 503 (nothing written)."""
        with self._lock:
            self._given_up = not self._writing
            return self._given_up

    def begin_write(self) -> bool:
        """The thread has published: True if it may write the acceptance record."""
        with self._lock:
            self._writing = not self._given_up
            return self._writing


def _repeat(held: dict, body_hash: str) -> str:
    """A request whose Idempotency-Key another request holds: that one's task id, or why not."""
    if held["body"] != body_hash:
        raise RequestValidationError([{
            "type": "idempotency_key_reused", "loc": ("header", "Idempotency-Key"),
            "msg": "this key was used with a different body", "input": None}])
    if owners.owner_of(held["task_id"]) is None:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            "a request with this Idempotency-Key is in progress; retry shortly")
    return held["task_id"]


def _publish(handoff: Handoff, request: TaskRequest, schema: str, queue: str,
             key: str | None, deadline: float) -> str | None:
    """In a thread: claim the key, publish, write the acceptance record. Returns the task id
    the client gets (the first request's, for a repeat), None when the handler gave up."""
    if handoff.given_up:  # the executor started this late: the client has its 503
        return None
    check_room(celery_app.conf.broker_url)  # BrokerFull: Redis is nearly full
    task_id, accepted, repeat = str(uuid.uuid4()), False, False
    try:
        if key is not None:
            held = owners.claim(schema, key, task_id, request.digest())
            # redis-py sends a command again after a timeout; when Redis (hung, then back)
            # ran both, the second finds this request's own claim.
            if held is not None and held["task_id"] != task_id:
                repeat = True
                return _repeat(held, request.digest())
        if handoff.given_up:
            return None
        celery_app.send_task(RUN_OPERATION, args=[request.operation, request.payload, schema],
                             kwargs={"await_acceptance": True}, queue=queue, task_id=task_id)
        if not handoff.begin_write():
            return None  # answered 503: no record, so the worker will not run the message
        sent = {"operation": request.operation, "payload": request.payload, "queue": queue}
        if not owners.accept(task_id, schema, key, deadline, sent):
            raise NotAccepted("Redis took the acceptance record too late")
        accepted = True
        return task_id
    finally:
        # Not accepted: free the key (also when the claim failed: its SET may have landed).
        if key is not None and not accepted and not repeat:
            try:
                owners.release(schema, key, task_id)
            except Exception as exc:  # Redis still away: the claim expires on its own
                log.warning("Idempotency-Key not freed (%s); it expires in %d s",
                            broker_error_reason(exc), owners.CLAIM_TTL_SECONDS)


async def _accepted(handoff: Handoff, work) -> str:
    loop = asyncio.get_running_loop()
    started = loop.time()
    future = loop.run_in_executor(None, work)
    # The thread outlives a 503: collect its outcome so that an error is not logged as lost.
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    what = "broker unavailable"
    try:
        try:
            return await asyncio.wait_for(asyncio.shield(future), PUBLISH_TIMEOUT)
        except TimeoutError:
            if handoff.give_up():
                raise _unavailable(what, f"no answer within {PUBLISH_TIMEOUT:g} s") from None
        # Published, and the record is being written: wait for it within the budget.
        try:
            return await asyncio.wait_for(future, ACCEPT_TIMEOUT - (loop.time() - started))
        except TimeoutError:
            # Redis hung after the publish: a record it writes from now on is already expired
            # (owners.accept). Accepted risk: Redis wrote it in time but the reply took more
            # than REPLY_MARGIN to come back (or the clocks are that far apart), and the task
            # runs after this 503; a retry with the same Idempotency-Key gets that task's id.
            raise _unavailable(what, f"no answer within {ACCEPT_TIMEOUT:g} s") from None
    except (HTTPException, RequestValidationError):
        raise
    except Exception as exc:  # kombu OperationalError, redis errors (OOM...), OSError...
        raise _unavailable(what, broker_error_reason(exc)) from None  # Redis's own refusal


@router.post("/tasks", status_code=status.HTTP_202_ACCEPTED, response_model=TaskAccepted,
             responses={**BAD_REQUEST, **UNAUTHORIZED, **CONFLICT, **TOO_LARGE, **UNSUPPORTED,
                        **RATE_LIMITED, **UNAVAILABLE})
async def create_task(request: TaskRequest, schema: str = Depends(tenant_schema),
                      idempotency_key: IdempotencyKey = None) -> TaskAccepted:
    """Publish `operation` with `payload` for the token's tenant; poll GET /tasks/{task_id}.

    202: the task will run. 503: it will not (Redis did not accept it in time)."""
    if idempotency_key is not None:
        try:
            check_idempotency_key(idempotency_key)
        except ValueError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    queue = queue_for_operation(request.operation)
    handoff = Handoff()
    deadline = time.time() + ACCEPT_TIMEOUT - REPLY_MARGIN  # Redis's clock: wall time
    task_id = await _accepted(
        handoff, lambda: _publish(handoff, request, schema, queue, idempotency_key, deadline))
    return TaskAccepted(task_id=task_id, queue=queue)


@router.get("/tasks/{task_id}", response_model=TaskState, response_model_exclude_unset=True,
            responses={**UNAUTHORIZED, **NOT_FOUND, **RATE_LIMITED, **UNAVAILABLE})
async def task_state(task_id: str, schema: str = Depends(tenant_schema)) -> TaskState:
    """The state of a task this tenant sent (404 for any other)."""
    def read() -> TaskState | None:
        if owners.owner_of(task_id) != schema:
            return None
        result = AsyncResult(task_id, app=celery_app)
        state = result.state
        body = {"task_id": task_id, "state": state}
        if state == states.SUCCESS:
            body["result"] = result.result
        elif state in states.READY_STATES:
            body["error"] = str(result.result)
        return TaskState(**body)

    found = await _in_thread(read, RESULT_TIMEOUT, "result backend unavailable")
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such task")
    return found
