"""Trinity's FastAPI gateway.

dev:  uvicorn app.main:app --reload --host 0.0.0.0 --port 8001
prod: gunicorn app.main:app -k uvicorn_worker.UvicornWorker -b 0.0.0.0:8001
"""

from fastapi import FastAPI

from app.celery_app import celery_app  # noqa: F401 - fail at start on a bad Celery env
from app.routes import health, tasks

app = FastAPI(title="Trinity gateway")
app.include_router(tasks.router)
app.include_router(health.router)
