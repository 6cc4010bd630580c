"""Publish without subscribing to each task's result channel (Celery's Redis result backend).

When a task is sent, Celery's Redis backend SUBSCRIBEs to that task's result channel in case the
sender calls ``.get()``, and UNSUBSCRIBEs when the AsyncResult is collected: two round trips per
publish that nobody here uses (bench/RESULTS.md), and a pub/sub connection per publisher that
piles up subscriptions. Upstream: https://github.com/celery/celery/issues/3808 (open; the
subscription is skipped only for ``ignore_result`` tasks since celery/celery#4709).

Our publishers read results by key (``AsyncResult.state``); a ``.get()`` still works, as it
subscribes itself and then reads the stored result, so a result published before that is not
missed. tests/test_celery_fixes.py shows the upstream behaviour without the patch (and fails the
day Celery stops subscribing on send: then drop this module) and what the patch changes.
"""

import logging

import celery

logger = logging.getLogger(__name__)

# The Celery release the behaviour was seen (and the patch tested) with: requirements/*.lock.
# Another release gets no patch until tests/test_celery_fixes.py has been run against it.
SEEN_WITH = "5.7.0"


def poll_results_only(app, version: str | None = None) -> bool:
    """Make ``app``'s Redis result backend skip the subscription on send; True if applied.
    Not applied (logged) on another Celery release, or with a backend that has no such cost."""
    version = celery.__version__ if version is None else version
    if version != SEEN_WITH:
        logger.warning("celery %s: poll_results_only is made for celery %s and is not applied; "
                       "run tests/test_celery_fixes.py to see whether this release needs it",
                       version, SEEN_WITH)
        return False
    backend = app.backend
    if not hasattr(backend, "result_consumer"):  # not the Redis backend
        return False
    backend.on_task_call = lambda producer, task_id: None
    return True
