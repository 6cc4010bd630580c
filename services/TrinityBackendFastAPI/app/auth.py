"""Bearer tokens: `Authorization: Bearer <token>` -> the schema of the token's tenant.

HTTPBearer declares the security scheme in the OpenAPI document; it runs with auto_error off
so that every refusal is a 401 with `WWW-Authenticate: Bearer` and a reason.
"""

from __future__ import annotations

import logging

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app import tokens

log = logging.getLogger("trinity.gateway.auth")

bearer = HTTPBearer(
    auto_error=False,
    description="An API token from `python manage.py create_api_token --tenant NAME --name "
                "LABEL`; the tenant comes from the token.")


def unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason,
                         headers={"WWW-Authenticate": "Bearer"})


async def tenant_schema(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> str:
    """The calling tenant's schema name, or 401/503."""
    if credentials is None:
        if request.headers.get("authorization") is None:
            raise unauthorized("missing Authorization header (Bearer token)")
        raise unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    try:
        schema = await tokens.token_store.tenant_for(credentials.credentials)
    except tokens.TokenStoreUnavailable as exc:
        log.warning("token store unavailable: %s", exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "token store unavailable") from None
    if schema is None:
        raise unauthorized("unknown or revoked token")
    return schema
