"""Trinity's FastAPI gateway.

dev:  uvicorn app.main:app --reload --host 0.0.0.0 --port 8001
prod: gunicorn app.main:app -k uvicorn_worker.UvicornWorker -b 0.0.0.0:8001
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator

from app import errors
from app.celery_app import celery_app  # noqa: F401 - fail at start on a bad Celery env
from app.limits import BodyLimits
from app.routes import health, tasks
from app.settings import GatewaySettings, settings

NO_NUL = "^[^\\u0000]*$"
# TaskRequest.payload as JSON Schema: any JSON value that PostgreSQL's jsonb can store.
JSON_VALUE = {
    "description": "Any JSON value. No string or key may hold a NUL character (\\u0000) or a "
                   "lone surrogate, and numbers are finite: PostgreSQL cannot store them.",
    "anyOf": [
        {"type": "null"}, {"type": "boolean"}, {"type": "number"},
        {"type": "string", "pattern": NO_NUL},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {"type": "object", "propertyNames": {"pattern": NO_NUL},
         "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    ],
}


def _log_to_stderr() -> None:
    """The gateway's WARNING lines (healthz, token store) on stderr, one line each, when
    nothing else (uvicorn and gunicorn configure only their own loggers) handles them."""
    logger = logging.getLogger("trinity.gateway")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def create_app(config: GatewaySettings = settings) -> FastAPI:
    docs = config.docs
    app = FastAPI(
        title="Trinity gateway",
        root_path=config.root_path,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.include_router(tasks.router)
    app.include_router(health.router)
    errors.install(app)
    app.add_middleware(BodyLimits, max_bytes=config.max_body_bytes, router=app.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # FastAPI's own (servers from root_path)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["JsonValue"] = JSON_VALUE
            payload = components["TaskRequest"]["properties"]["payload"]
            components["TaskRequest"]["properties"]["payload"] = {
                "$ref": "#/components/schemas/JsonValue", "default": payload.get("default")}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


_log_to_stderr()
app = create_app()
# Request counts and latencies per route, method and status, of the served app only (an app
# made by a test would register the same metrics twice); gunicorn serves them on :9100
# (images/python/gunicorn_metrics.py). Health probes are left out: they are not traffic.
Instrumentator(excluded_handlers=["/healthz", "/livez"]).instrument(app)
