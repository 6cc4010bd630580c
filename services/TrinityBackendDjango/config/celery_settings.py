"""Every Celery setting of Trinity, shared by the Django and the FastAPI services.

Both ``config/celery.py`` (Django) and ``app/celery_app.py`` (FastAPI) call
:func:`configure_celery_app`, so whichever side publishes a task, it lands on the
same broker, in the same queues, with the same serializer and retry policy.

The variables it reads (REDIS_URL, CELERY_*) are declared in config/variables.py, with their
defaults and meaning. The FastAPI image (no Django) carries this module, so it imports only
the standard library, celery/kombu, and the Django-free modules beside it and
apps/orchestration/operations.py (images/python/Dockerfile).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from kombu import Exchange, Queue

from apps.orchestration.operations import MARK_STUCK_TASK_RUNS, RUN_OPERATION, operation
from config.broker import SOCKET_CONNECT_TIMEOUT, SOCKET_TIMEOUT
from config.secret_files import url_with_password
from config.startup import exit_with
from config.variables import SettingsError, read

REDBEAT_KEY_PREFIX = "trinity.redbeat:"  # keys: trinity.redbeat:<entry>, trinity.redbeat::lock
# Seconds between kombu's sweeps that put a dead worker's unacknowledged messages back.
UNACKED_RESTORE_INTERVAL = 10


def queue_names(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Queue name per kind: ``default``, ``cpu``, ``io`` and ``beat``."""
    default = read("CELERY_TASK_DEFAULT_QUEUE", environ)
    return {
        "default": default,
        "cpu": read("CELERY_CPU_QUEUE", environ) or f"{default}.cpu",
        "io": read("CELERY_IO_QUEUE", environ) or f"{default}.io",
        "beat": read("CELERY_BEAT_QUEUE", environ) or f"{default}.beat",
    }


def queue_for_operation(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The queue an operation is sent to: its kind's (apps/orchestration/operations.py) name in
    this environment. Unknown names raise UnknownOperation."""
    return queue_names(environ)[operation(name).kind]


def worker_queues(environ: Mapping[str, str] | None = None) -> str:
    """The ``--queues`` argument of a worker, from CELERY_WORKER_QUEUES.

    Items are queue kinds (``default``, ``cpu``, ``io``, ``beat``), resolved to this
    environment's names, or plain queue names; empty means every queue.
    """
    names = queue_names(environ)
    items = read("CELERY_WORKER_QUEUES", environ) or list(names)
    return ",".join(dict.fromkeys(names.get(item, item) for item in items))


def time_limits(visibility_timeout: int) -> tuple[int, int | None]:
    """(hard, soft) time limits in seconds: hard at 90 % of the visibility timeout, soft 5 %
    before it (at least 1 s, at most 60 s before; none when the hard limit is 1 s)."""
    hard = max(1, int(visibility_timeout * 0.9))
    soft = hard - min(60, max(1, hard // 20)) if hard > 1 else None
    return hard, soft


def make_router(queues: Mapping[str, str]):
    """Build the ``task_routes`` function for the given queue names.

    ``run_operation`` goes to the queue of its operation's kind; the beat job to
    the beat queue. Everything else (``execute_task`` published without an
    explicit queue, e.g. from a shell) goes to the default queue. A queue passed
    explicitly to ``apply_async``/``send_task`` always wins over this router.
    """

    def route_task(name, args, kwargs, options, task=None, **_):
        if name == RUN_OPERATION:
            name_of = args[0] if args else (kwargs or {}).get("operation")
            try:
                return {"queue": queues[operation(name_of).kind]}
            except ValueError:  # the worker records the unknown operation as a FAILURE
                return {"queue": queues["default"]}
        if name == MARK_STUCK_TASK_RUNS:
            return {"queue": queues["beat"]}
        return None

    return route_task


def _urls(environ: Mapping[str, str] | None) -> tuple[str, str]:
    """(broker URL, result backend URL), with the service's own Redis user and password put in
    when the URLs hold none: each service names its ACL user, and the password comes from a
    file, so no secret is in a variable that `docker inspect` shows."""
    redis_url = read("REDIS_URL", environ)
    broker_url = read("CELERY_BROKER_URL", environ) or redis_url
    result_backend = read("CELERY_RESULT_BACKEND", environ) or redis_url
    if not (broker_url and result_backend):
        raise SettingsError(
            "REDIS_URL: required (or set both CELERY_BROKER_URL and CELERY_RESULT_BACKEND)")
    username, password = read("REDIS_USERNAME", environ), read("REDIS_PASSWORD", environ)
    return (url_with_password(broker_url, password, username),
            url_with_password(result_backend, password, username))


# Bounded retries for every publish (sleeps 0 + 0.2 + 0.4 s), so .delay() and the enqueue
# endpoints give up well inside 2 s while Redis is down.
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
REDIS_SOCKETS = {
    "socket_timeout": SOCKET_TIMEOUT,
    "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
    "socket_keepalive": True,  # notice a dead peer behind a NAT/bridge
    "retry_on_timeout": True,
}

# The settings that no variable changes, by concern.
MESSAGES = {
    # JSON only: no pickle, so a message can never run code, and FastAPI can read results.
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    # Results expire so Redis does not fill up and evict broker keys.
    "result_expires": 24 * 3600,
    # Task name/args in results: what monitor_orchestration_tasks shows.
    "result_extended": True,
}
CONNECTIONS = {
    "redis_socket_timeout": SOCKET_TIMEOUT,
    "redis_socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
    "redis_socket_keepalive": True,
    "broker_connection_timeout": SOCKET_CONNECT_TIMEOUT,
    "task_publish_retry": True,
    "task_publish_retry_policy": PUBLISH_RETRY,
    # Workers wait for Redis at start (compose starts them together) and keep retrying.
    "broker_connection_retry_on_startup": True,
    "broker_connection_max_retries": None,
}
DELIVERY = {
    # Ack after the task ran, and requeue if the worker dies: tasks are idempotent,
    # so a rerun is harmless while a lost task is not.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    # One message at a time per process: short tasks never wait behind a long one.
    "worker_prefetch_multiplier": 1,
    # A task still running when the broker link drops will be redelivered: cancel it.
    "worker_cancel_long_running_tasks_on_connection_loss": True,
    # Warm shutdown (docker stop): finish for up to 10 s, then requeue what is left.
    # Compose's stop_grace_period must be above this.
    "worker_soft_shutdown_timeout": 10.0,
    "worker_enable_soft_shutdown_on_idle": True,
}
QUIET = {
    # No STARTED write per task (a GET + SETEX + PUBLISH): only the orchestration tasks,
    # which run operations long enough to watch, ask for it (track_started=True).
    "task_track_started": False,
    # No task events by default: publishing them was about a third of a worker's
    # consumer loop per short task (bench/RESULTS.md). Flower switches them on in the
    # workers while it runs (its enable_events broadcast); `celery -A config.celery
    # control enable_events` does the same for `celery events`.
    "worker_send_task_events": False,
    "task_send_sent_event": False,
}


def _redelivery(visibility_timeout: int) -> dict:
    """Redis redelivers an unacked message after visibility_timeout: it must exceed the longest
    task (else it runs twice), and be the same for the broker and the results."""
    hard_limit, soft_limit = time_limits(visibility_timeout)
    return {
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            # kombu sweeps the unacked index for expired messages only every
            # interval x throttle seconds (10 x 10 by default): a dead worker's task would
            # wait up to 100 s more. Sweep every 10 s instead (a cheap ZRANGE under a mutex).
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL,
            "unacked_restore_throttle": 1,
            **REDIS_SOCKETS,
            # kombu reads these when it (re)connects to publish: bounded, never forever.
            **PUBLISH_RETRY,
        },
        "result_backend_transport_options": {
            "visibility_timeout": visibility_timeout,
            # The result backend retries 20 times by default: bound it like publishing.
            "retry_policy": {**PUBLISH_RETRY, "max_retries": 2},
        },
        # The hard limit stays under the visibility timeout, so no task outlives it. The soft
        # limit comes first so that the task records its own FAILURE (prefork raises
        # SoftTimeLimitExceeded in it; pools without signals are timed by the task itself,
        # apps/orchestration/tasks.py); the hard one kills what ignored it.
        "task_time_limit": hard_limit,
        "task_soft_time_limit": soft_limit,
    }


def _routing(queues: Mapping[str, str]) -> dict:
    return {
        # Declared so `inspect active_queues` lists them and a plain worker consumes them all.
        "task_queues": tuple(Queue(name, Exchange(name, type="direct"), routing_key=name)
                             for name in dict.fromkeys(queues.values())),
        "task_default_queue": queues["default"],
        "task_default_exchange": queues["default"],
        "task_default_routing_key": queues["default"],
        "task_routes": (make_router(queues),),
    }


def _beat(broker_url: str, queues: Mapping[str, str], scan_interval: int) -> dict:
    """RedBeat keeps the schedule and a lock in Redis: no pidfile or schedule file in the
    container, and a second beat waits on the lock instead of sending every job twice."""
    return {
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": broker_url,
        "redbeat_key_prefix": REDBEAT_KEY_PREFIX,
        # Beat wakes at least every 5 s to renew its lock; a dead beat's lock lapses in 30 s.
        "beat_max_loop_interval": 5,
        "redbeat_lock_timeout": 30,
        # Same socket bounds as the broker; ride out a Redis restart for up to 30 s.
        "redbeat_redis_options": {**REDIS_SOCKETS, "retry_period": 30},
        "beat_schedule": {
            "mark-stuck-task-runs": {
                "task": MARK_STUCK_TASK_RUNS,
                "schedule": float(scan_interval),
                # A run that waited longer than its period is pointless: the next one comes.
                "options": {"queue": queues["beat"], "expires": max(1, scan_interval - 1)},
            },
        },
    }


def load_settings(environ: Mapping[str, str] | None = None) -> dict:
    """Read the environment and return Celery's settings (lowercase names) as a dict."""
    broker_url, result_backend = _urls(environ)
    queues = queue_names(environ)
    return {
        "broker_url": broker_url,
        "result_backend": result_backend,
        **MESSAGES, **CONNECTIONS, **DELIVERY, **QUIET,
        **_redelivery(read("CELERY_VISIBILITY_TIMEOUT", environ)),
        **_routing(queues),
        **_beat(broker_url, queues, read("CELERY_STUCK_SCAN_INTERVAL", environ)),
        "worker_concurrency": read("CELERY_WORKER_CONCURRENCY", environ) or os.cpu_count() or 1,
        # Our own setting (apps/orchestration/ledger.py): a poison task is started this often.
        "trinity_worker_lost_max": read("CELERY_WORKER_LOST_MAX", environ),
    }


def configure_celery_app(app, environ: Mapping[str, str] | None = None):
    """Apply :func:`load_settings` to a Celery app. At process start, so a bad variable stops
    the process with one line naming it (exit status 2), not a traceback."""
    try:
        app.conf.update(load_settings(environ))
    except SettingsError as exc:
        exit_with(exc)
    return app


if __name__ == "__main__":
    # `python -m config.celery_settings worker-queues`: the worker's start script and its
    # healthcheck agree on what the worker consumes.
    import sys

    if sys.argv[1:] != ["worker-queues"]:
        sys.exit("usage: python -m config.celery_settings worker-queues")
    try:
        print(worker_queues())
    except SettingsError as exc:
        exit_with(exc)
