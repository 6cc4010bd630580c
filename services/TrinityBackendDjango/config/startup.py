"""Fail fast, in one line, when the environment is wrong.

A traceback of several screens hides the one thing an operator needs: which
variable to fix. Every entry point (manage.py, wsgi, celery) goes through here.
"""

import sys

from django.core.exceptions import ImproperlyConfigured


def exit_with_configuration_error(exc: Exception) -> None:
    print(f"configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def load_settings_or_exit() -> None:
    """Import Django's settings now; a bad variable stops the process with exit code 2."""
    from django.conf import settings

    try:
        settings.INSTALLED_APPS  # noqa: B018 - touching it imports config.settings
    except (ImproperlyConfigured, ValueError) as exc:
        exit_with_configuration_error(exc)
