"""Fail fast, in one line, when the environment is wrong.

A traceback of several screens hides the one thing an operator needs: which variable to fix.
Every entry point goes through here: manage.py, wsgi and celery (Django), the gateway's
settings, and configure_celery_app in both. Standard library only (the FastAPI image carries it):
Django is imported only by load_settings_or_exit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import NoReturn

from config.secret_files import SecretError, read_secret
from config.variables import VARIABLES, SettingsError

# Values that must never reach production: envs/prod.env's placeholders and envs/dev.env's
# development secrets (all marked). scripts/prod_secrets.py refuses them before a start, too.
INSECURE_MARKERS = ("CHANGE-ME", "insecure-")


def exit_with(exc: Exception) -> NoReturn:
    """One line naming the variable on stderr, exit status 2, no traceback."""
    print(f"configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def refuse_insecure_secrets(environ: Mapping[str, str] | None = None) -> None:
    """With TRINITY_ENV=production, raise SettingsError when a secret variable (or its _FILE)
    holds a placeholder or a development value."""
    environ = os.environ if environ is None else environ
    if (environ.get("TRINITY_ENV") or "").strip() != "production":
        return
    for variable in VARIABLES:
        if not variable.secret:
            continue
        try:
            value = read_secret(variable.name, environ) or ""
        except SecretError as exc:
            raise SettingsError(str(exc)) from None
        marker = next((m for m in INSECURE_MARKERS if m in value), None)
        if marker:
            raise SettingsError(
                f"{variable.name}: holds a placeholder or development value ({marker!r}); "
                "set a real secret (its file in SECRETS_DIR, or your secret manager)")


def load_settings_or_exit() -> None:
    """Import Django's settings now, and refuse insecure secrets in production."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        refuse_insecure_secrets()
        settings.INSTALLED_APPS  # noqa: B018 - touching it imports config.settings
    except (ImproperlyConfigured, ValueError) as exc:
        exit_with(exc)


