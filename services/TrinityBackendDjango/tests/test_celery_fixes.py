"""config/celery_fixes.py: Celery's Redis backend subscribes on send (upstream), and the patch.

The first test shows the upstream behaviour without the patch: the day it fails, Celery no longer
subscribes when a task is sent, and config/celery_fixes.py can go.
"""

import pytest
from celery import Celery

from config import celery_fixes
from config.celery_settings import configure_celery_app

BASE = {"REDIS_URL": "redis://redis:6379/0"}


def redis_app():
    return configure_celery_app(Celery("t"), BASE)


def test_upstream_subscribes_to_the_result_channel_on_send():
    app = redis_app()
    subscribed = []
    app.backend.result_consumer.consume_from = subscribed.append
    app.backend.on_task_call(None, "some-task-id")
    assert subscribed == ["some-task-id"]


def test_patched_publishers_do_not_subscribe():
    """A .get() still subscribes itself; only the send no longer does."""
    app = redis_app()
    assert celery_fixes.poll_results_only(app) is True
    app.backend.on_task_call(None, "some-task-id")
    assert app.backend.result_consumer._pubsub is None  # no pub/sub connection was even made
    assert not app.backend.result_consumer.subscribed_to


def test_not_applied_on_another_celery_release(caplog):
    app = redis_app()
    assert celery_fixes.poll_results_only(app, version="9.9.9") is False
    assert "celery 9.9.9" in caplog.text
    subscribed = []
    app.backend.result_consumer.consume_from = subscribed.append
    app.backend.on_task_call(None, "id")
    assert subscribed == ["id"]


@pytest.mark.parametrize("backend", ["cache+memory://", "disabled://"])
def test_not_applied_to_other_backends(backend):
    app = configure_celery_app(Celery("t"), {**BASE, "CELERY_RESULT_BACKEND": "redis://r/0"})
    app.conf.result_backend = backend
    assert celery_fixes.poll_results_only(app) is False
