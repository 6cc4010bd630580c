"""Django settings of Trinity, read from the environment (12-factor).

Variables:
  DJANGO_SECRET_KEY     required
  DJANGO_DEBUG          boolean, default False
  DJANGO_ALLOWED_HOSTS  comma list, default "localhost,127.0.0.1,web"
  DATABASE_URL          required, postgres://user:pass@host:5432/db
  DJANGO_LOG_LEVEL      default INFO
Celery's variables are read by config/celery_settings.py, not here.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ImproperlyConfigured(f"{name}: required, not set")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}: must be a boolean (true/false/1/0), got {raw!r}")


def _database(name: str) -> dict:
    url = _required(name)
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise ImproperlyConfigured(f"{name}: scheme must be postgres://, got {parts.scheme!r}")
    try:
        parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: port must be an integer") from None
    if not parts.hostname or not parts.path.strip("/"):
        raise ImproperlyConfigured(f"{name}: expected postgres://user:pass@host:5432/dbname")
    config = env.db_url_config(url)
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


SECRET_KEY = _required("DJANGO_SECRET_KEY")
DEBUG = _bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [
    host.strip()
    for host in (os.environ.get("DJANGO_ALLOWED_HOSTS", "").strip() or "localhost,127.0.0.1,web").split(",")
    if host.strip()
]

DATABASES = {"default": _database("DATABASE_URL")}
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
# No TenantMainMiddleware: requests stay on the public schema and the API names the
# schema explicitly, so the API answers without Domain rows for every host name.

MIDDLEWARE = [
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
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
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

LOG_LEVEL = os.environ.get("DJANGO_LOG_LEVEL", "").strip().upper() or "INFO"
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
