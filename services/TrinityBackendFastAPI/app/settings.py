"""The gateway's own settings (beside the shared Celery ones in config/celery_settings.py).

FASTAPI_DOCS                  bool; default true, false when TRINITY_ENV=production: /docs,
                              /redoc and /openapi.json exist only when true
FASTAPI_ROOT_PATH             default "": the prefix a proxy strips (production: /gateway)
API_MAX_BODY_BYTES            default 1048576: larger request bodies get 413
API_TOKEN_CACHE_SECONDS       default 10: how long a verified token is trusted without asking
                              Postgres again (bounds how late a revocation takes effect)
GATEWAY_DATABASE_URL          required: postgres://trinity_gateway@postgres:5432/trinity
GATEWAY_DATABASE_PASSWORD     or GATEWAY_DATABASE_PASSWORD_FILE: put into the URL

A bad value raises SettingsError naming the variable; :func:`load_or_exit` turns it into one
line on stderr and exit status 2, like the Celery settings.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from config.celery_settings import INSECURE_MARKERS, SettingsError
from config.secret_files import SecretError, read_secret, url_with_password

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_TOKEN_CACHE_SECONDS = 10
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class GatewaySettings:
    database_url: str
    docs: bool = True
    root_path: str = ""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    token_cache_seconds: int = DEFAULT_TOKEN_CACHE_SECONDS


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = (environ.get(name) or "").strip()
    return value or None


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(environ, name)
    if raw is None:
        return default
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise SettingsError(f"{name}: must be true or false, got {raw!r}")


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = _get(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SettingsError(f"{name}: must be {kind}, got {raw!r}")
    return value


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
    return url


def _database_url(environ: Mapping[str, str]) -> str:
    name = "GATEWAY_DATABASE_URL"
    url = _get(environ, name)
    if url is None:
        raise SettingsError(f"{name}: required (postgres://user@host:5432/dbname)")
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise SettingsError(f"{name}: not a valid URL, got {_redact(url)!r}") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise SettingsError(
            f"{name}: scheme must be postgres:// or postgresql://, got {_redact(url)!r}")
    if not parts.hostname:
        raise SettingsError(f"{name}: host is missing, got {_redact(url)!r}")
    if not parts.path.strip("/"):
        raise SettingsError(f"{name}: database name is missing, got {_redact(url)!r}")
    try:
        password = read_secret("GATEWAY_DATABASE_PASSWORD", environ)
    except SecretError as exc:
        raise SettingsError(str(exc)) from None
    if password is not None and parts.password is not None:
        raise SettingsError(
            f"{name}: holds a password and GATEWAY_DATABASE_PASSWORD[_FILE] is set too; "
            "give it once")
    return url_with_password(url, password)


def load_settings(environ: Mapping[str, str] | None = None) -> GatewaySettings:
    environ = os.environ if environ is None else environ
    production = _get(environ, "TRINITY_ENV") == "production"
    database_url = _database_url(environ)
    if production:
        marker = next((m for m in INSECURE_MARKERS if m in database_url), None)
        if marker:
            raise SettingsError(
                f"GATEWAY_DATABASE_URL: holds a placeholder or development value ({marker!r}) "
                "(in the URL or in GATEWAY_DATABASE_PASSWORD[_FILE]); set a real secret")
    root_path = _get(environ, "FASTAPI_ROOT_PATH") or ""
    if root_path and (not root_path.startswith("/") or any(c.isspace() for c in root_path)):
        raise SettingsError(f"FASTAPI_ROOT_PATH: must start with '/', got {root_path!r}")
    return GatewaySettings(
        database_url=database_url,
        docs=_bool(environ, "FASTAPI_DOCS", default=not production),
        root_path=root_path.rstrip("/"),
        max_body_bytes=_int(environ, "API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1),
        token_cache_seconds=_int(environ, "API_TOKEN_CACHE_SECONDS",
                                 DEFAULT_TOKEN_CACHE_SECONDS, 0),
    )


def load_or_exit() -> GatewaySettings:
    """:func:`load_settings` at process start: one line naming the variable, exit status 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


settings = load_or_exit()
