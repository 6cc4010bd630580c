"""Every Celery setting of Trinity, shared by the Django and the FastAPI services.

Both ``config/celery.py`` (Django) and ``app/celery_app.py`` (FastAPI) call
:func:`configure_celery_app`, so whichever side publishes a task, it lands on the
same broker, in the same queues, with the same serializer and retry policy.

This module is copied into the FastAPI image (which has no Django) with secret_files.py,
so it may import only the standard library, that module, celery/kombu and (lazily) redis.

Environment contract (an empty string counts as unset):

REDIS_URL                  required unless both URLs below are set; need not hold credentials
REDIS_USERNAME             per service: the Redis ACL user, for URLs that name none
REDIS_PASSWORD             per service: that user's password, or REDIS_PASSWORD_FILE: a file
                           holding it (for URLs that hold no password)
CELERY_BROKER_URL          default REDIS_URL
CELERY_RESULT_BACKEND      default REDIS_URL
CELERY_TASK_DEFAULT_QUEUE  default "trinity.tasks"
CELERY_BEAT_QUEUE          default "<default queue>.beat"
CELERY_CPU_QUEUE           default "<default queue>.cpu"
CELERY_IO_QUEUE            default "<default queue>.io"
CELERY_WORKER_CONCURRENCY  default os.cpu_count(); integer >= 1
CELERY_VISIBILITY_TIMEOUT  default 3600 (seconds); integer >= 1
CELERY_STUCK_SCAN_INTERVAL default 60 (seconds); integer >= 1: period of the beat job
CELERY_WORKER_LOST_MAX     default 3; integer >= 1: a TaskRun whose worker died this many times
                           ends FAILURE instead of being started again
CELERY_WORKER_QUEUES       per worker: queue kinds (default, cpu, io, beat) or names; empty = all
TRINITY_ENV                "production" refuses placeholder and development secrets at start

A bad value raises :class:`SettingsError` whose message starts with the
variable's name, so the start-up log says exactly what to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from kombu import Exchange, Queue

from config.secret_files import SecretError, read_secret, url_with_password

# Task names are spelled out (not imported) so FastAPI can publish them without Django.
EXECUTE_TASK = "apps.orchestration.tasks.execute_task"
RUN_OPERATION = "apps.orchestration.tasks.run_operation"
MARK_STUCK_TASK_RUNS = "apps.orchestration.tasks.mark_stuck_task_runs"

# Operation name -> kind of queue it belongs on. The callables live in
# apps/orchestration/operations.py; this table is Django-free so FastAPI can
# validate and route without importing them.
OPERATION_KINDS: dict[str, str] = {
    "noop": "default",
    "echo": "default",
    "sleep": "io",  # waits on time, not on CPU: fits a threads pool
    "primes": "cpu",  # counts primes below n: fits a prefork pool
    "fail": "default",
}

DEFAULT_QUEUE = "trinity.tasks"
DEFAULT_VISIBILITY_TIMEOUT = 3600
# Redis sockets: fail fast instead of hanging when Redis is gone.
SOCKET_TIMEOUT = 5.0
SOCKET_CONNECT_TIMEOUT = 2.0
REDBEAT_KEY_PREFIX = "trinity.redbeat:"  # keys: trinity.redbeat:<entry>, trinity.redbeat::lock
DEFAULT_STUCK_SCAN_INTERVAL = 60
DEFAULT_WORKER_LOST_MAX = 3
# The gateway's acceptance record: written to the broker's Redis once FastAPI has told its client
# 202 (value: the tenant's schema). A run_operation sent with await_acceptance=True waits up to
# ACCEPTANCE_WAIT seconds for it and does not run without it, so a 503 is never a phantom.
GATEWAY_OWNER_KEY_PREFIX = "trinity.gateway.owner:"
ACCEPTANCE_WAIT = 10
# Seconds between kombu's sweeps that put a dead worker's unacknowledged messages back.
UNACKED_RESTORE_INTERVAL = 10


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message starts with its name."""


class UnknownOperation(ValueError):
    """The operation name is not in :data:`OPERATION_KINDS`."""


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _redis_url(name: str, value: str) -> str:
    """Check that ``value`` is a usable redis:// or rediss:// URL."""
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise SettingsError(f"{name}: not a valid URL ({exc}), got {value!r}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise SettingsError(
            f"{name}: scheme must be redis:// or rediss://, got {_redact(value)!r}"
        )
    try:
        parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise SettingsError(f"{name}: port must be an integer, got {_redact(value)!r}") from None
    if not parts.hostname:
        raise SettingsError(f"{name}: host is missing, got {_redact(value)!r}")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise SettingsError(
            f"{name}: database must be an integer (redis://host:6379/0), got {_redact(value)!r}"
        )
    return value


def _redact(url: str) -> str:
    """Hide a password before a URL reaches an error message or a log."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = _get(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SettingsError(f"{name}: must be a positive integer, got {raw!r}")
    return value


def _queue_name(environ: Mapping[str, str], name: str, default: str) -> str:
    value = _get(environ, name) or default
    if any(ch.isspace() for ch in value):
        raise SettingsError(f"{name}: must not contain whitespace, got {value!r}")
    return value


def queue_names(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Queue name per kind: ``default``, ``cpu``, ``io`` and ``beat``."""
    environ = os.environ if environ is None else environ
    default = _queue_name(environ, "CELERY_TASK_DEFAULT_QUEUE", DEFAULT_QUEUE)
    return {
        "default": default,
        "cpu": _queue_name(environ, "CELERY_CPU_QUEUE", f"{default}.cpu"),
        "io": _queue_name(environ, "CELERY_IO_QUEUE", f"{default}.io"),
        "beat": _queue_name(environ, "CELERY_BEAT_QUEUE", f"{default}.beat"),
    }


def queue_for_operation(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The queue an operation is sent to; unknown names raise :class:`UnknownOperation`."""
    kind = OPERATION_KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        known = ", ".join(sorted(OPERATION_KINDS))
        raise UnknownOperation(f"unknown operation {name!r}; known operations: {known}")
    return queue_names(environ)[kind]


def worker_queues(environ: Mapping[str, str] | None = None) -> str:
    """The ``--queues`` argument of a worker, from CELERY_WORKER_QUEUES.

    Items are queue kinds (``default``, ``cpu``, ``io``, ``beat``), resolved to this
    environment's names, or plain queue names; empty means every queue.
    """
    environ = os.environ if environ is None else environ
    names = queue_names(environ)
    spec = _get(environ, "CELERY_WORKER_QUEUES")
    items = spec.split(",") if spec else list(names)
    return ",".join(dict.fromkeys(names.get(i.strip(), i.strip()) for i in items if i.strip()))


# Values that must never reach production: envs/prod.env's placeholders and envs/dev.env's
# development secrets (all marked). Checked at every process start when TRINITY_ENV=production.
INSECURE_MARKERS = ("CHANGE-ME", "insecure-")
# Each may be given as NAME or as NAME_FILE (config/secret_files.py): both are checked.
SECRET_VARIABLES = ("REDIS_URL", "REDIS_PASSWORD", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
                    "DJANGO_SECRET_KEY", "DATABASE_URL", "DATABASE_PASSWORD",
                    "GATEWAY_DATABASE_URL", "GATEWAY_DATABASE_PASSWORD", "FLOWER_BASIC_AUTH")


def _secret(environ: Mapping[str, str], name: str) -> str | None:
    try:
        return read_secret(name, environ)
    except SecretError as exc:
        raise SettingsError(str(exc)) from None


def refuse_insecure_secrets(environ: Mapping[str, str]) -> None:
    if _get(environ, "TRINITY_ENV") != "production":
        return
    for name in SECRET_VARIABLES:
        value = _secret(environ, name) or ""
        marker = next((m for m in INSECURE_MARKERS if m in value), None)
        if marker:
            raise SettingsError(
                f"{name}: holds a placeholder or development value ({marker!r}); "
                "set a real secret (its file in SECRETS_DIR, or your secret manager)"
            )


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
            operation = args[0] if args else (kwargs or {}).get("operation")
            return {"queue": queues[OPERATION_KINDS.get(operation, "default")]}
        if name == MARK_STUCK_TASK_RUNS:
            return {"queue": queues["beat"]}
        return None

    return route_task


def load_settings(environ: Mapping[str, str] | None = None) -> dict:
    """Read the environment and return Celery's settings (lowercase names) as a dict."""
    environ = os.environ if environ is None else environ
    refuse_insecure_secrets(environ)

    redis_url = _get(environ, "REDIS_URL")
    broker_url = _get(environ, "CELERY_BROKER_URL")
    result_backend = _get(environ, "CELERY_RESULT_BACKEND")
    if redis_url is not None:
        redis_url = _redis_url("REDIS_URL", redis_url)
    if broker_url is None or result_backend is None:
        if redis_url is None:
            raise SettingsError(
                "REDIS_URL: required (or set both CELERY_BROKER_URL and CELERY_RESULT_BACKEND)"
            )
    broker_url = _redis_url("CELERY_BROKER_URL", broker_url) if broker_url else redis_url
    result_backend = (
        _redis_url("CELERY_RESULT_BACKEND", result_backend) if result_backend else redis_url
    )
    # Credentials may come apart from the URL: each service names its own ACL user, and the
    # password comes from a file, so no secret is in a variable that `docker inspect` shows.
    username, password = _get(environ, "REDIS_USERNAME"), _secret(environ, "REDIS_PASSWORD")
    broker_url = url_with_password(broker_url, password, username)
    result_backend = url_with_password(result_backend, password, username)

    queues = queue_names(environ)
    concurrency = _positive_int(environ, "CELERY_WORKER_CONCURRENCY", os.cpu_count() or 1)
    visibility_timeout = _positive_int(
        environ, "CELERY_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT
    )
    scan_interval = _positive_int(
        environ, "CELERY_STUCK_SCAN_INTERVAL", DEFAULT_STUCK_SCAN_INTERVAL
    )
    worker_lost_max = _positive_int(environ, "CELERY_WORKER_LOST_MAX", DEFAULT_WORKER_LOST_MAX)
    hard_limit, soft_limit = time_limits(visibility_timeout)

    # Bounded retries for every publish (sleeps 0 + 0.2 + 0.4 s), so .delay() and the enqueue
    # endpoints give up well inside 2 s while Redis is down.
    publish_retry = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2,
                     "interval_max": 0.5}
    redis_sockets = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
        "socket_keepalive": True,  # notice a dead peer behind a NAT/bridge
        "retry_on_timeout": True,
    }

    return {
        "broker_url": broker_url,
        "result_backend": result_backend,
        # JSON only: no pickle, so a message can never run code, and FastAPI can read results.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Queues are declared so `inspect active_queues` lists them and a plain worker consumes all.
        "task_queues": tuple(
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in dict.fromkeys(queues.values())
        ),
        "task_default_queue": queues["default"],
        "task_default_exchange": queues["default"],
        "task_default_routing_key": queues["default"],
        "task_routes": (make_router(queues),),
        "worker_concurrency": concurrency,
        # Ack after the task ran, and requeue if the worker dies: tasks are idempotent,
        # so a rerun is harmless while a lost task is not.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per process: short tasks never wait behind a long one.
        "worker_prefetch_multiplier": 1,
        # Redis redelivers an unacked message after visibility_timeout: it must exceed the
        # longest task (else it runs twice), and be the same for the broker and the results.
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            # kombu sweeps the unacked index for expired messages only every
            # interval x throttle seconds (10 x 10 by default): a dead worker's task would
            # wait up to 100 s more. Sweep every 10 s instead (a cheap ZRANGE under a mutex).
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL,
            "unacked_restore_throttle": 1,
            **redis_sockets,
            # kombu reads these when it (re)connects to publish: bounded, never forever.
            **publish_retry,
        },
        "result_backend_transport_options": {
            "visibility_timeout": visibility_timeout,
            # The result backend retries 20 times by default: bound it like publishing.
            "retry_policy": {**publish_retry, "max_retries": 2},
        },
        "redis_socket_timeout": SOCKET_TIMEOUT,
        "redis_socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
        "redis_socket_keepalive": True,
        "broker_connection_timeout": SOCKET_CONNECT_TIMEOUT,
        "task_publish_retry": True,
        "task_publish_retry_policy": publish_retry,
        # Workers wait for Redis at start (compose starts them together) and keep retrying.
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # A task still running when the broker link drops will be redelivered: cancel it.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # The hard limit stays under the visibility timeout, so no task outlives it. The soft
        # limit comes first so that the task records its own FAILURE (prefork raises
        # SoftTimeLimitExceeded in it; pools without signals are timed by the task itself,
        # apps/orchestration/tasks.py); the hard one kills what ignored it.
        "task_time_limit": hard_limit,
        "task_soft_time_limit": soft_limit,
        # Our own setting (apps/orchestration/ledger.py): a poison task is started this often.
        "trinity_worker_lost_max": worker_lost_max,
        # Warm shutdown (docker stop): finish for up to 10 s, then requeue what is left.
        # Compose's stop_grace_period must be above this.
        "worker_soft_shutdown_timeout": 10.0,
        "worker_enable_soft_shutdown_on_idle": True,
        # Results expire so Redis does not fill up and evict broker keys.
        "result_expires": 24 * 3600,
        # Task name/args in results: what monitor_orchestration_tasks shows.
        "result_extended": True,
        # No STARTED write per task (a GET + SETEX + PUBLISH): only the orchestration tasks,
        # which run operations long enough to watch, ask for it (track_started=True).
        "task_track_started": False,
        # No task events by default: publishing them was about a third of a worker's
        # consumer loop per short task (bench/RESULTS.md). Flower switches them on in the
        # workers while it runs (its enable_events broadcast); `celery -A config.celery
        # control enable_events` does the same for `celery events`.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        # Beat: RedBeat keeps the schedule and a lock in Redis: no pidfile/schedule file in
        # the container, and a second beat waits on the lock instead of running jobs twice.
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": broker_url,
        "redbeat_key_prefix": REDBEAT_KEY_PREFIX,
        # Beat wakes at least every 5 s to renew its lock; a dead beat's lock lapses in 30 s.
        "beat_max_loop_interval": 5,
        "redbeat_lock_timeout": 30,
        # Same socket bounds as the broker; ride out a Redis restart for up to 30 s.
        "redbeat_redis_options": {**redis_sockets, "retry_period": 30},
        "beat_schedule": {
            "mark-stuck-task-runs": {
                "task": MARK_STUCK_TASK_RUNS,
                "schedule": float(scan_interval),
                # A run that waited longer than its period is pointless: the next one comes.
                "options": {"queue": queues["beat"], "expires": max(1, scan_interval - 1)},
            },
        },
    }


def configure_celery_app(app, environ: Mapping[str, str] | None = None):
    """Apply :func:`load_settings` to a Celery app; raises :class:`SettingsError`."""
    app.conf.update(load_settings(environ))
    return app


def poll_results_only(app) -> None:
    """Publish without subscribing to each task's result channel.

    Celery's Redis backend SUBSCRIBEs to a task's result channel when the task is sent, in
    case the sender calls ``.get()`` (and UNSUBSCRIBEs when the AsyncResult is collected):
    two round trips per publish that nobody here uses (bench/RESULTS.md). Our publishers read
    results by key (``AsyncResult.state``); a ``.get()`` still works, as it subscribes itself
    and then reads the stored result, so a result published before that is not missed.
    """
    backend = app.backend
    if hasattr(backend, "result_consumer"):  # the Redis backend; others have no such cost
        backend.on_task_call = lambda producer, task_id: None


def configure_or_exit(app):
    """:func:`configure_celery_app` at process start: a bad variable stops the process with
    one line naming it (exit status 2), not a traceback."""
    try:
        return configure_celery_app(app)
    except SettingsError as exc:
        _exit_with(exc)


def _exit_with(exc: SettingsError):
    import sys

    print(f"configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


# redis-py prefixes an error inside a pipeline (kombu publishes through one) with the command,
# binary arguments included: "Command # 1 (SADD ...) of pipeline caused error: <reason>".
_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)


def redis_refusal(exc: BaseException) -> str | None:
    """Redis's own reply when it refused a command somewhere in ``exc``'s chain, as Redis sent
    it ("OOM command not allowed when used memory > 'maxmemory'."); else None."""
    from redis.exceptions import ExecAbortError, ResponseError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ResponseError) and not isinstance(exc, ExecAbortError):
            message = _PIPELINE_PREFIX.sub("", str(exc))
            code = getattr(exc, "status_code", None)  # redis-py keeps the code ("OOM") apart
            if code and not message.startswith(code):
                message = f"{code} {message}"
            return message
        exc = exc.__cause__ or exc.__context__
    return None


def broker_error_reason(exc: Exception) -> str:
    """A publish error as one line for a 503: Redis's own refusal when it refused (out of
    memory, no permission), else the error's text. Celery's text ends with "The Celery
    application must be restarted", which is not so here: publishing works again once Redis
    is back."""
    refusal = redis_refusal(exc)
    if refusal:
        return refusal
    return " ".join(str(exc).split()).split(" The Celery application must be")[0]


_redis_clients: dict = {}


def redis_client(url: str, timeout: float = SOCKET_TIMEOUT):
    """A redis-py client for ``url`` with socket timeouts, kept per URL, timeout and process
    (a forked pool process makes its own): its connection pool is reused, as a new connection
    per call was most of a /healthz request. A kept connection that a Redis restart broke is
    replaced by one immediate retry, so a call still answers within about 2 x ``timeout``."""
    import redis  # lazy: only the code that talks to Redis directly needs the client
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    key = (url, timeout, os.getpid())
    client = _redis_clients.get(key)
    if client is None:
        client = _redis_clients.setdefault(key, redis.Redis.from_url(
            url, socket_timeout=timeout,
            socket_connect_timeout=min(timeout, SOCKET_CONNECT_TIMEOUT),
            retry=Retry(NoBackoff(), 1)))
    return client


def broker_ping(url: str, timeout: float = 1.0) -> None:
    """PING Redis at ``url`` with a short timeout; raises on any failure (for /healthz)."""
    if not redis_client(url, timeout).ping():
        raise ConnectionError("PING returned a falsy reply")


if __name__ == "__main__":
    # `python -m config.celery_settings worker-queues`: used by the worker's start script and
    # healthcheck, so both agree on what the worker consumes.
    import sys

    if sys.argv[1:] != ["worker-queues"]:
        sys.exit("usage: python -m config.celery_settings worker-queues")
    try:
        print(worker_queues())
    except SettingsError as exc:
        _exit_with(exc)
