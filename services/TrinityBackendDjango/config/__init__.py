"""Trinity's Django project.

The Celery app is imported here so that it is the current app in every Django
process (web, shell, workers): ``shared_task``s then publish through it.
"""

from .celery import app as celery_app

__all__ = ("celery_app",)
