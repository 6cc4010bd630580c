"""Make the Django project's shared modules importable and give the app a broker and a
database URL.

In the image, the Django-free modules of ../TrinityBackendDjango (config/celery_settings.py and
its neighbours, apps/orchestration/operations.py) sit beside /app/app, copied by
images/python/Dockerfile. In the repository, that project's config/__init__.py imports Django:
so bare ``config`` and ``apps`` packages pointing at its folders are registered instead.
"""

import importlib
import os
import sys
import types
from pathlib import Path

import pytest

# The stack passes the real REDIS_URL: then the live test PINGs it. Alone, the tests
# patch publishing and need no broker, but the Celery app needs some URL to start.
LIVE_REDIS = bool(os.environ.get("REDIS_URL", "").strip())
os.environ.setdefault("REDIS_URL", "redis://localhost:6379/0")
# The token store connects on first use only: any well-formed URL lets the app start. The stack
# passes the real one; the live_database fixture then uses it (and skips where none answers).
os.environ.setdefault("GATEWAY_DATABASE_URL", "postgres://gateway@127.0.0.1:1/trinity")

try:
    importlib.import_module("config.celery_settings")
except ModuleNotFoundError:
    django_project = Path(__file__).resolve().parents[2] / "TrinityBackendDjango"
    if not (django_project / "config" / "celery_settings.py").is_file():
        raise
    for name in ("config", "apps", "apps.orchestration"):
        package = types.ModuleType(name)
        package.__path__ = [str(django_project.joinpath(*name.split(".")))]
        sys.modules[name] = package
    importlib.import_module("config.celery_settings")


@pytest.fixture
def send_task():
    """celery_app.send_task patched, and Redis taken to have room (broker_room.check_room)."""
    from unittest import mock

    from app.celery_app import celery_app

    with mock.patch("app.routes.tasks.check_room"), \
            mock.patch.object(celery_app, "send_task") as patched:
        yield patched


@pytest.fixture
def live_redis():
    if not LIVE_REDIS:
        pytest.skip("REDIS_URL not set: no live Redis to PING")


@pytest.fixture
def live_database():
    """The token store against the real GATEWAY_DATABASE_URL; skipped when no Postgres listens
    there (the unit run), but a Postgres that answers with an error (no grant, no table)
    fails the test."""
    import psycopg

    from app import tokens

    try:
        psycopg.connect(tokens.token_store.database_url, connect_timeout=2).close()
    except psycopg.OperationalError as exc:
        text = str(exc)
        if any(s in text for s in ("Connection refused", "could not translate host name",
                                   "Name or service not known", "timeout expired",
                                   "Is the server running",
                                   "No route to host")):
            pytest.skip(f"no Postgres at GATEWAY_DATABASE_URL: {' '.join(text.split())[:200]}")
        raise
    return tokens.token_store


@pytest.fixture
def token_lookup():
    """The token table, mocked: TOKEN_A is tenant `public`, TOKEN_B `tenant_b`."""
    from unittest import mock

    from app import tokens
    from tests.helpers import SCHEMAS

    tokens.token_store.cache.clear()
    with mock.patch.object(tokens.token_store, "lookup_hash",
                           side_effect=lambda key: SCHEMAS.get(key)) as patched:
        yield patched
    tokens.token_store.cache.clear()
