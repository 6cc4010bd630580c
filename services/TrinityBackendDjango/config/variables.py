"""Every environment variable of Trinity, declared once: name, default, parser, meaning.

The code reads them through :func:`read` (config/celery_settings.py, config/settings.py, the
gateway's app/settings.py); scripts/check_config.py checks the env files, the compose files and
the images' scripts against VARIABLES, and writes the README's "Environment" table from it.

- An empty value counts as unset: it means the default.
- A bad value raises SettingsError whose message starts with the variable's name; at process
  start that becomes one line and exit status 2 (config/startup.py).
- ``secret``: may instead be given as NAME_FILE, a file holding the value (config/secret_files.py),
  and is refused in production when it holds a placeholder (config/startup.py).
- ``parse`` None: no Python code reads it (compose, a start script or an entrypoint does); then
  ``default`` is the one that script or compose file writes, and check-config holds them equal.
- ``files``: the env files (envs/<name>.env) that set it; none: a template sets it per service.
- ``read_by``: what reads it: ``celery`` (every Django and FastAPI process), ``django``,
  ``gateway``, a start script (``start-web``...), an image (``proxy``, ``postgres``, ``redis``,
  ``mongo``) or ``compose`` (interpolation only). Every service that runs a reader gets every
  variable its env file sets (check-config).

Standard library only: the FastAPI image carries this module, and check-config loads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from config.secret_files import SecretError, read_secret


class SettingsError(ValueError):
    """A variable is missing or invalid; the message starts with its name."""


# ---- parsers: text -> value, or ValueError saying what is expected ---------------------------

def redact(url: str) -> str:
    """Hide a password before a URL reaches an error message or a log."""
    parts = urlsplit(url)
    if parts.password:
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
    return url


def _int(minimum: int) -> Callable[[str], int]:
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise ValueError(f"must be {expected}")
        return value

    return parse


positive_int, non_negative_int = _int(1), _int(0)


def boolean(text: str) -> bool:
    word = text.lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def no_spaces(text: str) -> str:
    if any(ch.isspace() for ch in text):
        raise ValueError("must not contain whitespace")
    return text


def log_level(text: str) -> str:
    if text.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return text.upper()


def url_path(text: str) -> str:
    if not text.startswith("/") or any(ch.isspace() for ch in text):
        raise ValueError("must start with '/' and hold no whitespace")
    return text.rstrip("/")


def origins(text: str) -> list[str]:
    found = comma_list(text)
    for origin in found:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError("every entry must be scheme://host[:port]")
    return found


def _url(schemes: tuple[str, ...], example: str, needs_database: bool) -> Callable[[str], str]:
    def parse(text: str) -> str:
        safe = redact(text)
        try:
            parts = urlsplit(text)
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc}), got {safe!r}") from None
        try:
            parts.port  # raises ValueError on a non-numeric or out-of-range port
        except ValueError:
            raise ValueError(f"port must be an integer, got {safe!r}") from None
        if parts.scheme not in schemes:
            raise ValueError(f"scheme must be {' or '.join(s + '://' for s in schemes)}, "
                             f"got {safe!r}")
        if not parts.hostname:
            raise ValueError(f"host is missing ({example}), got {safe!r}")
        database = parts.path.strip("/")
        if needs_database and not database:
            raise ValueError(f"database name is missing ({example}), got {safe!r}")
        if not needs_database and database and not database.isdigit():
            raise ValueError(f"database must be an integer ({example}), got {safe!r}")
        return text

    return parse


redis_url = _url(("redis", "rediss"), "redis://host:6379/0", needs_database=False)
postgres_url = _url(("postgres", "postgresql"), "postgres://user@host:5432/dbname",
                    needs_database=True)


# ---- the declaration --------------------------------------------------------------------------

BOTH, DEV, PROD, PER_SERVICE = ("dev", "prod"), ("dev",), ("prod",), ()
APPS = ("celery",)  # celery_settings: every process of the django and fastapi images


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    default: str = ""  # as an env file would write it; "" = none (or computed: default_text)
    parse: Callable[[str], Any] | None = None
    files: tuple[str, ...] = BOTH
    read_by: tuple[str, ...] = ("compose",)
    secret: bool = False
    required: bool = False
    default_text: str = ""  # the README's default when ``default`` cannot say it


def _var(name, meaning, default="", parse=None, files=BOTH, read_by=("compose",), **extra):
    return Variable(name, meaning, str(default), parse, files, read_by, **extra)


VARIABLES: tuple[Variable, ...] = (
    # Redis and Celery (config/celery_settings.py), the same in Django and FastAPI
    _var("REDIS_URL", "Redis location, `redis://[user[:password]@]host:6379/0`", parse=redis_url,
         read_by=APPS, secret=True,
         default_text="required, unless both `CELERY_BROKER_URL` and `CELERY_RESULT_BACKEND` are set"),
    _var("REDIS_USERNAME", "per service: its Redis user, for a URL without one", files=PER_SERVICE,
         read_by=APPS),
    _var("REDIS_PASSWORD", "dev: the Redis server's password; per app service: its Redis user's "
         "password, for a URL without one", files=DEV, read_by=("redis",), secret=True),
    _var("CELERY_BROKER_URL", "the broker", parse=redis_url, read_by=APPS, secret=True,
         default_text="`REDIS_URL`"),
    _var("CELERY_RESULT_BACKEND", "the result store", parse=redis_url, read_by=APPS, secret=True,
         default_text="`REDIS_URL`"),
    _var("CELERY_TASK_DEFAULT_QUEUE", "default queue of both frameworks", "trinity.tasks",
         no_spaces, read_by=APPS),
    _var("CELERY_CPU_QUEUE", "queue of CPU-bound operations (`primes`)", parse=no_spaces,
         read_by=APPS, default_text="`<default queue>.cpu`"),
    _var("CELERY_IO_QUEUE", "queue of IO-bound operations (`sleep`)", parse=no_spaces,
         read_by=APPS, default_text="`<default queue>.io`"),
    _var("CELERY_BEAT_QUEUE", "queue of the jobs beat sends", parse=no_spaces, read_by=APPS,
         default_text="`<default queue>.beat`"),
    _var("CELERY_WORKER_CONCURRENCY", "pool size, read when the worker starts", parse=positive_int,
         read_by=APPS, default_text="CPU count"),
    _var("CELERY_VISIBILITY_TIMEOUT", "seconds before Redis redelivers an unacknowledged task; "
         "keep it above the longest task", 3600, positive_int, read_by=APPS),
    _var("CELERY_STUCK_SCAN_INTERVAL", "seconds between runs of the beat job that republishes "
         "TaskRuns whose message Redis lost and fails those nobody will finish", 60, positive_int,
         read_by=APPS),
    _var("CELERY_WORKER_LOST_MAX", "a TaskRun whose worker died this many times ends FAILURE "
         "\"worker lost N times\" instead of starting again", 3, positive_int, read_by=APPS),
    _var("CELERY_WORKER_QUEUES", "per worker service: what it consumes, queue kinds (`default`, "
         "`cpu`, `io`, `beat`) or names, comma-separated", parse=comma_list, files=PER_SERVICE,
         read_by=("start-celery",), default_text="every queue"),
    _var("CELERY_WORKER_NAME", "per worker service: its node name, `NAME@host`", "celery",
         files=PER_SERVICE, read_by=("start-celery",)),
    _var("CELERY_WORKER_POOL", "per worker service: its pool (`threads` for the IO worker)",
         "prefork", files=PER_SERVICE, read_by=("start-celery",)),
    _var("CELERY_LOGLEVEL", "log level of the workers and beat", "info",
         read_by=("start-celery", "start-beat")),
    _var("CELERY_CPU_CONCURRENCY", "pool size of the production CPU worker", files=PROD,
         default_text="`CELERY_WORKER_CONCURRENCY`"),
    _var("CELERY_IO_CONCURRENCY", "threads of the production IO worker", 16, files=PROD),
    _var("TRINITY_ENV", "`production` refuses placeholder and development secrets at start, and "
         "turns `FASTAPI_DOCS` off by default", files=PER_SERVICE, read_by=APPS),
    # Django (config/settings.py)
    _var("DJANGO_SECRET_KEY", "Django's signing key (50 characters or more in production)",
         files=DEV, read_by=("django",), secret=True, required=True),
    _var("DJANGO_DEBUG", "Django's debug mode", "false", boolean, files=DEV, read_by=("django",)),
    _var("DJANGO_ALLOWED_HOSTS", "host names Django answers, comma-separated",
         "localhost,127.0.0.1,web", comma_list, read_by=("django",)),
    _var("DJANGO_CSRF_TRUSTED_ORIGINS", "origins the admin's forms may be posted from, "
         "`scheme://host[:port]`, comma-separated", parse=origins, read_by=("django",),
         default_text="`https://<each allowed host>`"),
    _var("DJANGO_HTTPS", "behind the TLS proxy: trust its `X-Forwarded-Proto`, redirect to "
         "HTTPS (not `/healthz`, `/livez`), HSTS, Secure cookies", "false", boolean,
         files=PER_SERVICE, read_by=("django",)),
    _var("DJANGO_HSTS_SECONDS", "HSTS max-age with `DJANGO_HTTPS`", 31536000, non_negative_int,
         files=PROD, read_by=("django",)),
    _var("DJANGO_LOG_LEVEL", "level of Django's log (stdout)", "INFO", log_level,
         read_by=("django",)),
    _var("DATABASE_URL", "Django's database, `postgres://user[:password]@host:5432/db` (dev: "
         "built by compose from `POSTGRES_*`)", parse=postgres_url, files=PER_SERVICE,
         read_by=("django",), secret=True, required=True),
    _var("DATABASE_PASSWORD", "the password of `DATABASE_URL`'s user, for a URL without one",
         files=PER_SERVICE, read_by=("django",), secret=True),
    _var("DATABASE_GATEWAY_USER", "the Postgres role that `migrate` grants read access to the "
         "token columns FastAPI checks", files=PER_SERVICE, read_by=("django",)),
    _var("DATABASE_MONITOR_USER", "the Postgres role that `migrate` lets call the TaskRun "
         "statistics function the monitoring reads (production: `POSTGRES_MONITOR_USER`)",
         files=PER_SERVICE, read_by=("django",)),
    _var("API_MAX_BODY_BYTES", "both apps answer 413 above it", 1048576, positive_int,
         read_by=("django", "gateway")),
    # FastAPI (app/settings.py)
    _var("GATEWAY_DATABASE_URL", "where FastAPI checks API tokens, `postgres://user@host:5432/db`",
         parse=postgres_url, files=PER_SERVICE, read_by=("gateway",), secret=True, required=True),
    _var("GATEWAY_DATABASE_PASSWORD", "the password of `GATEWAY_DATABASE_URL`'s user",
         files=PER_SERVICE, read_by=("gateway",), secret=True),
    _var("API_TOKEN_CACHE_SECONDS", "FastAPI trusts a checked token this long (how late a "
         "revocation can be seen); while Postgres does not answer, 300 s more", 10, non_negative_int, read_by=("gateway",)),
    _var("FASTAPI_DOCS", "`/docs`, `/redoc`, `/openapi.json`", parse=boolean,
         read_by=("gateway",), default_text="`true`; `false` with `TRINITY_ENV=production`"),
    _var("FASTAPI_ROOT_PATH", "the prefix the proxy strips (production: `/gateway`)",
         parse=url_path, files=PER_SERVICE, read_by=("gateway",)),
    # The production servers (images/*/start-web, start-fastapi)
    _var("WEB_WORKERS", "gunicorn worker processes of `web`", 2, read_by=("start-web",)),
    _var("WEB_THREADS", "threads per `web` worker", 4, read_by=("start-web",)),
    _var("WEB_TIMEOUT", "seconds before gunicorn restarts a silent `web` worker", 30,
         read_by=("start-web",)),
    _var("FASTAPI_WORKERS", "uvicorn worker processes of `fastapi`", 2,
         read_by=("start-fastapi",)),
    _var("FASTAPI_TIMEOUT", "seconds before gunicorn restarts a silent `fastapi` worker", 30,
         read_by=("start-fastapi",)),
    _var("FLOWER_BASIC_AUTH", "`user:password` of the Celery dashboard (required by "
         "`start-flower`)", files=PER_SERVICE, read_by=("start-flower",), secret=True),
    _var("FLOWER_URL_PREFIX", "serve the dashboard under `/<prefix>/` (production: `flower`)",
         files=PER_SERVICE, read_by=("start-flower",)),
    # PostgreSQL (images/postgres)
    _var("POSTGRES_USER", "the superuser made at first start (dev: the apps log in as it)",
         "postgres", files=DEV, read_by=("postgres", "compose")),
    _var("POSTGRES_PASSWORD", "the superuser's password", files=DEV, read_by=("postgres",),
         secret=True),
    _var("POSTGRES_DB", "the database made at first start", read_by=("postgres", "start-backup",
                                                                  "compose"),
         default_text="`POSTGRES_USER`"),
    _var("POSTGRES_APP_USER", "production: the role that owns the database, Django's",
         files=PROD, required=True, read_by=("postgres", "compose")),
    _var("POSTGRES_APP_PASSWORD", "its password", files=PER_SERVICE, read_by=("postgres",),
         secret=True),
    _var("POSTGRES_GATEWAY_USER", "production: FastAPI's role, which may only connect (`migrate` "
         "grants it the token columns)", files=PROD, required=True, read_by=("postgres", "compose")),
    _var("POSTGRES_GATEWAY_PASSWORD", "its password", files=PER_SERVICE, read_by=("postgres",),
         secret=True),
    _var("POSTGRES_BACKUP_USER", "production: the scheduled backup's role, which may read every "
         "table and write none (`pg_read_all_data`)", files=PROD, required=True,
         read_by=("postgres", "start-backup", "compose")),
    _var("POSTGRES_BACKUP_PASSWORD", "its password", files=PER_SERVICE,
         read_by=("postgres", "start-backup"),
         secret=True),
    # The scheduled backup (images/postgres/start-backup, the `backup` profile)
    _var("BACKUP_INTERVAL", "seconds between two scheduled backups; the `backup` service is "
         "unhealthy once the newest is older than two", 86400, read_by=("start-backup",)),
    _var("BACKUP_KEEP", "how many backups to keep, scheduled or `make backup`", 7,
         read_by=("start-backup",)),
    _var("POSTGRES_MONITOR_USER", "production: the monitoring exporter's role (`pg_monitor`, "
         "and the TaskRun statistics function)", files=PROD, required=True,
         read_by=("postgres", "start-postgres-exporter", "compose")),
    _var("POSTGRES_MONITOR_PASSWORD", "its password", files=PER_SERVICE,
         read_by=("postgres", "start-postgres-exporter"), secret=True),
    # Redis (images/redis)
    _var("REDIS_MAXMEMORY", "Redis's memory limit; from 90 % of it both apps refuse new tasks "
         "(503 with the reason), so the workers keep room to drain the queues", read_by=("redis",),
         default_text="none"),
    *(_var(f"REDIS_{role.upper()}_PASSWORD", f"production (ACL mode): the password of the "
           f"`{role}` Redis user", files=PER_SERVICE, read_by=("redis",), secret=True)
      for role in ("admin", "worker", "web", "gateway")),
    _var("REDIS_MONITOR_PASSWORD", "production: the password of the `monitor` Redis user (the "
         "monitoring's exporter; the user exists only when this is given)", files=PER_SERVICE,
         read_by=("redis", "start-redis-exporter"), secret=True),
    _var("REDIS_BACKUP_PASSWORD", "production: the password of the `backup` Redis user, which "
         "only records the scheduled backup's time (the user exists only when this is given)",
         files=PER_SERVICE, read_by=("redis", "start-backup"), secret=True),
    # The proxy (images/proxy), production
    _var("PROXY_SERVER_NAME", "the name in the self-signed certificate", "localhost", files=PROD,
         read_by=("proxy",)),
    _var("PROXY_BIND", "the address the proxy publishes on", files=PROD, required=True),
    _var("PROXY_HTTP_PORT", "host port of HTTP (it redirects to HTTPS)", files=PROD, required=True),
    _var("PROXY_HTTPS_PORT", "host port of HTTPS", files=PROD, required=True),
    _var("PROXY_PUBLIC_HTTPS_PORT", "the HTTPS port in the proxy's redirects (compose passes "
         "`PROXY_HTTPS_PORT`)", 443, files=PER_SERVICE, read_by=("proxy",)),
    _var("PROXY_TLS_CERT_FILE", "your certificate, mounted into the proxy; empty: self-signed, "
         "made at first start", files=PROD, read_by=("proxy",)),
    _var("PROXY_TLS_KEY_FILE", "its key", files=PROD, read_by=("proxy",)),
    _var("PROXY_MAX_BODY", "the proxy's body limit (413)", "1m", files=PROD, read_by=("proxy",)),
    _var("PROXY_RATE", "requests per API token, at the proxy (429)", "10r/s", files=PROD,
         read_by=("proxy",)),
    _var("PROXY_BURST", "the burst allowed above `PROXY_RATE`", 20, files=PROD,
         read_by=("proxy",)),
    # Monitoring (images/monitoring, profile `monitoring`)
    _var("PROMETHEUS_SCRAPE_INTERVAL", "how often Prometheus scrapes every target and "
         "evaluates the alert rules", "15s", files=PROD, read_by=("start-prometheus",)),
    _var("ALERT_WEBHOOK_URL", "where Alertmanager POSTs every alert (its webhook JSON); empty: "
         "alerts are only shown in Alertmanager", files=PROD, read_by=("start-alertmanager",),
         secret=True, default_text="none"),
    _var("PROMETHEUS_PORT", "host port of Prometheus, on 127.0.0.1 only", 9090, files=PROD),
    _var("ALERTMANAGER_PORT", "host port of Alertmanager, on 127.0.0.1 only", 9093, files=PROD),
    # Compose
    _var("BASE_IMAGE", "base of every image (the bootstrap writes what it chose to "
         "`.base-image`)", "debian:trixie-slim"),
    _var("TRINITY_TAG", "tag of the images built here (`dev`, `prod`)", "dev"),
    _var("SECRETS_DIR", "the production secret files (`make prod-secrets` makes them)",
         files=PROD, required=True),
    _var("RESTART_POLICY", "restart policy of every service", "unless-stopped"),
    _var("HEALTHCHECK_INTERVAL", "healthcheck interval of every service", "5s"),
    _var("HEALTHCHECK_RETRIES", "failed healthchecks before a service is unhealthy", 12),
    _var("LIMIT_CPUS", "CPU limit of every production container", files=PROD, required=True),
    _var("LIMIT_MEMORY", "memory limit of every production container", files=PROD, required=True),
    _var("LIMIT_PIDS", "process limit of every production container", files=PROD, required=True),
    _var("LOG_MAX_SIZE", "json-file log rotation of every production container: size", files=PROD, required=True),
    _var("LOG_MAX_FILES", "... and files kept", files=PROD, required=True),
    _var("WEB_PORT", "dev host port of `web` (127.0.0.1 only)", files=DEV, required=True),
    _var("FASTAPI_PORT", "dev host port of `fastapi` (127.0.0.1 only)", files=DEV, required=True),
    # Docker Swarm (docker-stack.example.yml, make swarm-up: scripts/swarm.py)
    _var("REGISTRY", "the registry (host:port) every node pulls the images from; empty with "
         "the sandbox: its own", files=PER_SERVICE, required=True),
    _var("SWARM_STACK", "the stack's name (`docker stack deploy`), the prefix of its secrets",
         "trinity", files=PER_SERVICE),
    _var("WEB_REPLICAS", "replicas of `web` on the swarm", 2, files=PER_SERVICE),
    _var("FASTAPI_REPLICAS", "replicas of `fastapi` on the swarm", 2, files=PER_SERVICE),
    _var("CELERY_REPLICAS", "replicas of the default worker on the swarm", 2, files=PER_SERVICE),
    _var("CELERY_CPU_REPLICAS", "replicas of the CPU worker on the swarm", 1, files=PER_SERVICE),
    _var("CELERY_IO_REPLICAS", "replicas of the IO worker on the swarm", 1, files=PER_SERVICE),
    _var("MIGRATIONS_WAIT_SECONDS", "how long an app task on the swarm waits for the migrate job "
         "before it exits (and is started again)", 90, files=PER_SERVICE),
    # MongoDB (the official image), dev
    _var("MONGO_IMAGE", "the MongoDB image (needs a registry)", "mongo:7", files=DEV),
    _var("MONGO_INITDB_ROOT_USERNAME", "MongoDB's root user", files=DEV, read_by=("mongo",)),
    _var("MONGO_INITDB_ROOT_PASSWORD", "its password", files=DEV, read_by=("mongo",), secret=True),
)
BY_NAME: dict[str, Variable] = {variable.name: variable for variable in VARIABLES}


def read(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The parsed value of ``name``, its declared default when unset or empty, or None when it
    has neither. Raises SettingsError naming it when the value is bad or a required one is
    missing; KeyError when ``name`` is not declared above."""
    variable = BY_NAME[name]
    environ = os.environ if environ is None else environ
    try:
        raw = read_secret(name, environ) if variable.secret else (environ.get(name) or "").strip()
    except SecretError as exc:
        raise SettingsError(str(exc)) from None
    if not raw:
        if variable.required:
            also = f" (nor {name}_FILE)" if variable.secret else ""
            raise SettingsError(f"{name}: required, not set{also}")
        raw = variable.default
    if not raw or variable.parse is None:
        return raw or None
    try:
        return variable.parse(raw)
    except ValueError as exc:
        shown = "" if variable.secret else f", got {raw!r}"
        raise SettingsError(f"{name}: {exc}{shown}") from None


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """The README's "Environment" table."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for v in VARIABLES:
        default = v.default_text or ("required" if v.required else
                                     f"`{v.default}`" if v.default else "none")
        meaning = v.meaning + (" (or `_FILE`)" if v.secret else "")
        rows.append(f"| `{v.name}` | {_cell(default)} | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # `python -m config.variables`: the README's table
    print(markdown(), end="")
