"""API tokens: issue one for a tenant, find the tenant of an Authorization header, revoke.

A token is "trn_" + 43 url-safe characters (32 random bytes). The database keeps its sha256
(hex, unique index): a request is checked by looking its hash up, so there is no comparison to
time and a leaked table holds no usable token. The FastAPI gateway does the same lookup in SQL
(apps/tenants/models.py ApiToken; the grants are in migrate_all_schemas).
"""

import hashlib
import secrets

from django.db.models import QuerySet
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context

from apps.tenants.models import ApiToken, Client

TOKEN_PREFIX = "trn_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue(tenant: Client, name: str) -> str:
    """Store a new active token of ``tenant`` labelled ``name``; return the token (only here)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with schema_context(get_public_schema_name()):
        ApiToken.objects.create(tenant=tenant, name=name, key_hash=hash_token(token),
                                prefix=token[:12])
    return token


def bearer_token(authorization_header: str | None) -> str | None:
    """The token of "Bearer <token>", or None when the header is missing or malformed."""
    scheme, _, token = (authorization_header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def tenant_for(authorization_header: str | None) -> str | None:
    """The schema name of the tenant whose active token the header carries, else None.

    Database errors (OperationalError, InterfaceError) propagate: the caller answers 503."""
    token = bearer_token(authorization_header)
    if token is None:
        return None
    with schema_context(get_public_schema_name()):
        return (ApiToken.objects.filter(key_hash=hash_token(token), revoked_at__isnull=True)
                .values_list("tenant__schema_name", flat=True).first())


def revoke(tokens: QuerySet) -> int:
    """Revoke the active tokens of ``tokens``; return how many."""
    return tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
