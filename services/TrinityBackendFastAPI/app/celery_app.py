"""FastAPI's own Celery app: publishes tasks by name (the code runs in the Django workers).

Its settings come from config/celery_settings.py, the same module the Django
service uses (copied into this image), so both enqueue with identical routing.
"""

import sys

from celery import Celery

from config.celery_settings import SettingsError, configure_celery_app

celery_app = Celery("trinity-fastapi")
try:
    configure_celery_app(celery_app)
except SettingsError as exc:
    print(f"configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
