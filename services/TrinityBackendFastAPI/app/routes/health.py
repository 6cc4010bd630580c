"""GET /healthz (readiness): {"status": "ok"} when the broker, the result backend and the token
database answer quickly, else 503 {"status": "error"}; what failed goes to the log, one
WARNING line, never to the client.
GET /livez (liveness): 200 while the process serves requests, touching nothing else."""

import logging
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app import tokens
from app.celery_app import celery_app
from config.broker import broker_ping

router = APIRouter()
log = logging.getLogger("trinity.gateway.health")
PING_TIMEOUT = 1.0


class Health(BaseModel):
    status: Literal["ok", "error"]


class Alive(BaseModel):
    status: Literal["alive"]


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


@router.get("/healthz", response_model=Health,
            responses={503: {"model": Health, "description": "A dependency failed (see the log)"}})
def healthz() -> JSONResponse:  # sync: FastAPI runs it in its threadpool
    urls = {"broker": celery_app.conf.broker_url}
    if celery_app.conf.result_backend != celery_app.conf.broker_url:
        urls["result_backend"] = celery_app.conf.result_backend
    failures = []
    for name, url in urls.items():
        try:
            broker_ping(url, timeout=PING_TIMEOUT)
        except Exception as exc:
            failures.append(f"{name} ({_one_line(exc)})")
    try:
        tokens.token_store.ping(timeout=PING_TIMEOUT)
    except Exception as exc:
        failures.append(f"token_database ({_one_line(exc)})")
    if failures:
        log.warning("healthz: failing: %s", "; ".join(failures))
        return JSONResponse({"status": "error"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/livez", response_model=Alive)
async def livez() -> dict:
    return {"status": "alive"}
