"""The gateway's own settings (beside the shared Celery ones in config/celery_settings.py).

Its variables (FASTAPI_*, API_*, GATEWAY_DATABASE_*) are declared in config/variables.py with
their defaults and meaning. A bad value stops the process at start with one line naming the
variable, exit status 2 (config/startup.py), as in Django.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from config.secret_files import url_with_password
from config.startup import exit_with, refuse_insecure_secrets
from config.variables import SettingsError, read


@dataclass(frozen=True)
class GatewaySettings:
    database_url: str
    docs: bool = True
    root_path: str = ""
    max_body_bytes: int = 1024 * 1024
    token_cache_seconds: int = 10


def _database_url(environ: Mapping[str, str] | None) -> str:
    url = read("GATEWAY_DATABASE_URL", environ)
    password = read("GATEWAY_DATABASE_PASSWORD", environ)
    if password is not None and urlsplit(url).password is not None:
        raise SettingsError(
            "GATEWAY_DATABASE_URL: holds a password and GATEWAY_DATABASE_PASSWORD[_FILE] is set "
            "too; give it once")
    return url_with_password(url, password)


def load_settings(environ: Mapping[str, str] | None = None) -> GatewaySettings:
    refuse_insecure_secrets(environ)
    docs = read("FASTAPI_DOCS", environ)
    return GatewaySettings(
        database_url=_database_url(environ),
        docs=docs if docs is not None else read("TRINITY_ENV", environ) != "production",
        root_path=read("FASTAPI_ROOT_PATH", environ) or "",
        max_body_bytes=read("API_MAX_BODY_BYTES", environ),
        token_cache_seconds=read("API_TOKEN_CACHE_SECONDS", environ),
    )


def load_or_exit() -> GatewaySettings:
    """:func:`load_settings` at process start: one line naming the variable, exit status 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        exit_with(exc)


settings = load_or_exit()
