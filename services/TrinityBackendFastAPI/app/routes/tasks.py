"""POST /tasks publishes an operation to the Django workers; GET /tasks/{id} reads its state.

Publishing is blocking (kombu); it runs in a thread with a deadline so a request
never hangs while Redis is down: the client gets a 503 with the reason instead.
"""

import asyncio
import re
from typing import Any

from celery.result import AsyncResult
from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.celery_app import celery_app
from config.celery_settings import RUN_OPERATION, broker_error_reason, queue_for_operation

router = APIRouter()

# Bounded retries in celery_settings end a publish in ~1.5 s; this is the outer guard.
PUBLISH_TIMEOUT = 3.0
RESULT_TIMEOUT = 3.0
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    operation: str
    payload: Any = None
    schema_name: str = Field("public", alias="schema")

    @field_validator("operation")
    @classmethod
    def known_operation(cls, value: str) -> str:
        queue_for_operation(value)  # raises ValueError naming the known operations
        return value

    @field_validator("schema_name")
    @classmethod
    def valid_schema_name(cls, value: str) -> str:
        # Existence is checked by the worker (it has the database); the shape is checked here.
        if not SCHEMA_NAME.match(value):
            raise ValueError(f"invalid schema name {value!r}")
        return value


class TaskAccepted(BaseModel):
    task_id: str
    queue: str


async def _in_thread(func, timeout: float, what: str):
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(None, func), timeout)
    except TimeoutError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"{what}: no answer within {timeout:g} s") from None
    except HTTPException:
        raise
    except Exception as exc:  # kombu OperationalError, redis errors, OSError...
        reason = broker_error_reason(exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{what}: {reason}") from None


@router.post("/tasks", status_code=status.HTTP_202_ACCEPTED, response_model=TaskAccepted)
async def create_task(request: TaskRequest) -> TaskAccepted:
    queue = queue_for_operation(request.operation)

    def publish():
        return celery_app.send_task(
            RUN_OPERATION,
            args=[request.operation, request.payload, request.schema_name],
            queue=queue,
        )

    result = await _in_thread(publish, PUBLISH_TIMEOUT, "broker unavailable")
    return TaskAccepted(task_id=result.id, queue=queue)


@router.get("/tasks/{task_id}")
async def task_state(task_id: str) -> dict:
    def read():
        result = AsyncResult(task_id, app=celery_app)
        state = result.state
        body = {"task_id": task_id, "state": state}
        if state == "SUCCESS":
            body["result"] = result.result
        elif state in FINAL_STATES:
            body["error"] = str(result.result)
        return body

    return await _in_thread(read, RESULT_TIMEOUT, "result backend unavailable")
