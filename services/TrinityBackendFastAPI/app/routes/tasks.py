"""POST /tasks publishes an operation to the Django workers; GET /tasks/{id} reads its state.

Both need a bearer token; the tenant (schema) comes from it, never from the request. The
task id is made here: its owner key is written to Redis before the task is published, so
GET answers 404 for a task another tenant sent.

Publishing is blocking (kombu); it runs in a thread with a deadline so a request
never hangs while Redis is down: the client gets a 503 with the reason instead.
"""

import asyncio
import math
import uuid
from typing import Any, Literal

from celery.result import AsyncResult
from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, field_validator

from app import owners
from app.auth import tenant_schema
from app.celery_app import celery_app
from app.errors import (NOT_FOUND, RATE_LIMITED, TOO_LARGE, UNAUTHORIZED, UNAVAILABLE,
                        UNSUPPORTED)
from config.celery_settings import (OPERATION_KINDS, RUN_OPERATION, broker_error_reason,
                                    queue_for_operation)

router = APIRouter()

# Bounded retries in celery_settings end a publish in ~1.5 s; this is the outer guard.
PUBLISH_TIMEOUT = 3.0
RESULT_TIMEOUT = 3.0
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")

Operation = Literal[tuple(sorted(OPERATION_KINDS))]  # an enum in the OpenAPI document


def _check_json_value(value: Any) -> None:
    """Refuse what PostgreSQL's jsonb cannot store (the worker records the payload): NUL
    characters and lone surrogates in strings or keys, NaN and infinities."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for key, nested in item.items():
                _check_text(key)
                stack.append(nested)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"numbers must be finite, got {item!r}")


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ValueError("strings must not contain NUL (\\u0000) characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("strings must not contain lone surrogates") from None


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
        _check_json_value(value)
        return value


class TaskAccepted(BaseModel):
    task_id: str
    queue: str


class TaskState(BaseModel):
    task_id: str
    state: str
    result: Any = None  # present when state is SUCCESS
    error: str | None = None  # present when the task failed or was revoked


async def _in_thread(func, timeout: float, what: str):
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(None, func), timeout)
    except TimeoutError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"{what}: no answer within {timeout:g} s") from None
    except HTTPException:
        raise
    except Exception as exc:  # kombu OperationalError, redis errors (OOM...), OSError...
        reason = broker_error_reason(exc)  # Redis's own refusal when it refused
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{what}: {reason}") from None


@router.post("/tasks", status_code=status.HTTP_202_ACCEPTED, response_model=TaskAccepted,
             responses={**UNAUTHORIZED, **TOO_LARGE, **UNSUPPORTED, **RATE_LIMITED,
                        **UNAVAILABLE})
async def create_task(request: TaskRequest,
                      schema: str = Depends(tenant_schema)) -> TaskAccepted:
    """Publish `operation` with `payload` for the token's tenant; poll GET /tasks/{task_id}."""
    queue = queue_for_operation(request.operation)
    task_id = str(uuid.uuid4())

    def publish():
        owners.remember(task_id, schema)  # first: a GET right after the 202 must find it
        celery_app.send_task(
            RUN_OPERATION,
            args=[request.operation, request.payload, schema],
            queue=queue,
            task_id=task_id,
        )

    await _in_thread(publish, PUBLISH_TIMEOUT, "broker unavailable")
    return TaskAccepted(task_id=task_id, queue=queue)


@router.get("/tasks/{task_id}", response_model=TaskState, response_model_exclude_unset=True,
            responses={**UNAUTHORIZED, **NOT_FOUND, **RATE_LIMITED, **UNAVAILABLE})
async def task_state(task_id: str, schema: str = Depends(tenant_schema)) -> TaskState:
    """The state of a task this tenant sent (404 for any other)."""
    def read():
        if owners.owner_of(task_id) != schema:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such task")
        result = AsyncResult(task_id, app=celery_app)
        state = result.state
        body = {"task_id": task_id, "state": state}
        if state == "SUCCESS":
            body["result"] = result.result
        elif state in FINAL_STATES:
            body["error"] = str(result.result)
        return TaskState(**body)

    return await _in_thread(read, RESULT_TIMEOUT, "result backend unavailable")
