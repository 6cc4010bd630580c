"""Make config/celery_settings.py importable and give the app a broker URL.

In the image, /app/config/celery_settings.py sits beside /app/app (an empty
config/__init__.py with it). In the repository it lives in ../TrinityBackendDjango,
whose config/__init__.py imports Django: so a bare ``config`` package pointing
at that folder is registered instead, and only celery_settings.py is loaded.
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

try:
    importlib.import_module("config.celery_settings")
except ModuleNotFoundError:
    django_config = Path(__file__).resolve().parents[2] / "TrinityBackendDjango" / "config"
    if not (django_config / "celery_settings.py").is_file():
        raise
    package = types.ModuleType("config")
    package.__path__ = [str(django_config)]
    sys.modules["config"] = package
    importlib.import_module("config.celery_settings")


@pytest.fixture
def live_redis():
    if not LIVE_REDIS:
        pytest.skip("REDIS_URL not set: no live Redis to PING")
