"""Django settings of Trinity, read from the environment (12-factor).

Variables (an empty value counts as unset; a bad one stops the process at start with one line
that names the variable, exit 2, through config/startup.py):
  DJANGO_SECRET_KEY           required; or DJANGO_SECRET_KEY_FILE, a file that holds it
  DJANGO_DEBUG                boolean, default false
  DJANGO_ALLOWED_HOSTS        comma list, default "localhost,127.0.0.1,web"
  DJANGO_HTTPS                boolean, default false. True behind the TLS proxy: trust its
                              X-Forwarded-Proto, redirect http to https (not /healthz, /livez),
                              HSTS (with subdomains), secure session and CSRF cookies
  DJANGO_HSTS_SECONDS         integer >= 0, default 31536000; used only with DJANGO_HTTPS
  DJANGO_CSRF_TRUSTED_ORIGINS comma list of scheme://host[:port]; default https://<host> for
                              every allowed host
  DATABASE_URL                required, postgres://user[:pass]@host:5432/db
  DATABASE_PASSWORD           password of DATABASE_URL's user when the URL holds none; or
                              DATABASE_PASSWORD_FILE, a file that holds it
  DATABASE_GATEWAY_USER       optional Postgres role of the FastAPI gateway; migrate_all_schemas
                              grants it read access to the token lookup columns only
  API_MAX_BODY_BYTES          integer >= 1, default 1048576: a larger API body answers 413
                              (also Django's DATA_UPLOAD_MAX_MEMORY_SIZE)
  DJANGO_LOG_LEVEL            default INFO
Celery's variables are read by config/celery_settings.py, not here.
"""

from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from config.secret_files import SecretError, read_secret, url_with_password

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

# environ's bool() reads any unknown word as False; here only these words are accepted.
_BOOL_WORDS = {*environ.Env.BOOLEAN_TRUE_STRINGS, "false", "off", "no", "n", "0"}


def _raw(name: str) -> str:
    return env.str(name, default="").strip()


def _secret(name: str, required: bool = False) -> str | None:
    try:
        value = read_secret(name)
    except SecretError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    if required and not value:
        raise ImproperlyConfigured(f"{name}: required, not set (nor {name}_FILE)")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = _raw(name).lower()
    if not raw:
        return default
    if raw not in _BOOL_WORDS:
        raise ImproperlyConfigured(f"{name}: must be a boolean (true/false/1/0), got {raw!r}")
    return env.bool(name)


def _list(name: str, default: list[str]) -> list[str]:
    if not _raw(name):
        return default
    return [item for item in env.list(name, cast=str.strip) if item]


def _int(name: str, default: int, minimum: int) -> int:
    raw = _raw(name)
    if not raw:
        return default
    try:
        value = env.int(name)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ImproperlyConfigured(f"{name}: must be an integer >= {minimum}, got {raw!r}")
    return value


def _database(name: str) -> dict:
    url = _secret(name, required=True)
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise ImproperlyConfigured(f"{name}: scheme must be postgres://, got {parts.scheme!r}")
    try:
        parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: port must be an integer") from None
    if not parts.hostname or not parts.path.strip("/"):
        raise ImproperlyConfigured(f"{name}: expected postgres://user[:pass]@host:5432/dbname")
    # Production: the URL names only the user, the password comes from a secret file.
    config = env.db_url_config(url_with_password(url, _secret("DATABASE_PASSWORD")))
    # django-tenants switches search_path per schema through its own backend.
    config["ENGINE"] = "django_tenants.postgresql_backend"
    # Fail in seconds, not minutes, when Postgres is unreachable (health checks, start-up).
    config.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    # Keep connections for a minute instead of one per request: connecting and password
    # auth were most of an enqueue request (bench/RESULTS.md). Health checks on reuse, so a
    # restarted Postgres does not break the kept ones.
    config["CONN_MAX_AGE"] = 60
    config["CONN_HEALTH_CHECKS"] = True
    return config


def _trusted_origins(name: str, hosts: list[str]) -> list[str]:
    origins = _list(name, [])
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ImproperlyConfigured(
                f"{name}: every entry must be scheme://host[:port], got {origin!r}")
    if origins:
        return origins
    # ".example.com" in ALLOWED_HOSTS means every subdomain; "*" has no origin form.
    return [f"https://*{host}" if host.startswith(".") else f"https://{host}"
            for host in hosts if host != "*"]


SECRET_KEY = _secret("DJANGO_SECRET_KEY", required=True)
DEBUG = _bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = _list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "web"])
CSRF_TRUSTED_ORIGINS = _trusted_origins("DJANGO_CSRF_TRUSTED_ORIGINS", ALLOWED_HOSTS)

# TLS ends at the proxy (images/proxy), which sets X-Forwarded-Proto and overwrites whatever a
# client sent: that is what makes trusting the header safe. Read the HSTS value in any case, so
# a bad one fails at start whatever DJANGO_HTTPS says.
HTTPS = _bool("DJANGO_HTTPS", False)
_HSTS_SECONDS = _int("DJANGO_HSTS_SECONDS", 31536000, minimum=0)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Container healthchecks call http://127.0.0.1:8000/healthz, not through the proxy.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^livez$"]
    SECURE_HSTS_SECONDS = _HSTS_SECONDS
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
# HSTS preload is a commitment made to browser vendors (hstspreload.org): an operator's
# decision, not a default. Its check is silenced so `check --deploy` reports real problems only.
SILENCED_SYSTEM_CHECKS = ["security.W021"]

# Largest API request body in bytes: the views answer 413 above it, and Django's own limit on
# reading a body is the same.
API_MAX_BODY_BYTES = _int("API_MAX_BODY_BYTES", 1048576, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES

DATABASES = {"default": _database("DATABASE_URL")}
# Postgres role of the FastAPI gateway (token lookups, read-only); None: grant nothing.
DATABASE_GATEWAY_USER = _raw("DATABASE_GATEWAY_USER") or None
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)

# Tenancy: one Postgres schema per tenant. Orchestration is in both lists so every
# schema (public included) has its own TaskRun table.
SHARED_APPS = [
    "django_tenants",
    "apps.tenants",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "apps.orchestration",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "apps.orchestration",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]
TENANT_MODEL = "tenants.Client"
TENANT_DOMAIN_MODEL = "tenants.Domain"
# SET search_path only when the schema changes, not before every query. Safe here: every
# request and task selects its schema explicitly (schema_context), which forces a new SET.
TENANT_LIMIT_SET_CALLS = True
# No TenantMainMiddleware: requests stay on the public schema and the API takes the schema from
# the caller's token (apps/tenants/tokens.py), so it answers without Domain rows per host name.

MIDDLEWARE = [
    # A database error in any view answers 503 with a reason, not 500 (config/middleware.py).
    "config.middleware.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Static files: collected into /app/staticfiles in the image, served by whitenoise.
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # No manifest: pages still render if collectstatic has not run (dev).
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOG_LEVEL = _raw("DJANGO_LOG_LEVEL").upper() or "INFO"
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"DJANGO_LOG_LEVEL: must be DEBUG/INFO/WARNING/ERROR/CRITICAL, got {LOG_LEVEL!r}")

# Containers log to stdout; the platform collects it.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                   "formatter": "plain"},
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
}
