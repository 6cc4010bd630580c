"""One error body for every error the gateway answers: {"error": reason, "detail": reason}.

``error`` is the name Django's API uses, ``detail`` FastAPI's; both carry the same one-line
reason. A 422 keeps FastAPI's list of validation errors in ``detail`` and sums it up in
``error``. The models here also document every status code in the OpenAPI document.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorBody(BaseModel):
    error: str
    detail: str


def error_response(status_code: int, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": reason}, status_code=status_code,
                        headers=headers)


def _error_doc(description: str, headers: dict | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": ErrorBody, "description": description}
    if headers:
        doc["headers"] = headers
    return doc


UNAUTHORIZED = {401: _error_doc(
    "Missing, malformed, unknown or revoked token",
    {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}})}
NOT_FOUND = {404: _error_doc("No such task for this token's tenant")}
TOO_LARGE = {413: _error_doc("Body larger than API_MAX_BODY_BYTES")}
UNSUPPORTED = {415: _error_doc("Content-Type is not application/json")}
RATE_LIMITED = {429: _error_doc("Too many requests for this token (the proxy's rate limit)")}
UNAVAILABLE = {503: _error_doc("Redis or the token store is unavailable; the reason says which")}


def _summary(errors: list[dict]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', '')}" if where else str(error.get("msg", "")))
    return "; ".join(parts) or "invalid request"


async def _http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, reason, getattr(exc, "headers", None))


def _printable(value: Any) -> Any:
    """What a 422 echoes back must itself be valid JSON text: a lone surrogate becomes its
    escape (backslash-u...), NaN and the infinities their names."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _printable(jsonable_encoder(exc.errors()))
    return JSONResponse({"detail": errors, "error": _summary(errors)}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
