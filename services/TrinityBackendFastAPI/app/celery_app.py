"""FastAPI's own Celery app: publishes tasks by name (the code runs in the Django workers).

Its settings come from config/celery_settings.py, the same module the Django
service uses (copied into this image), so both enqueue with identical routing.
"""

from celery import Celery

from config.celery_fixes import poll_results_only
from config.celery_settings import configure_celery_app

celery_app = configure_celery_app(Celery("trinity-fastapi"))

# Nothing here waits on a result's pub/sub channel: clients poll GET /tasks/{id}.
poll_results_only(celery_app)
