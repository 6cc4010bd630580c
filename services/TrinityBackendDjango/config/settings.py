"""Django settings of Trinity, read from the environment (12-factor).

Every variable read here is declared in config/variables.py (default, parser, meaning); a bad
one stops the process at start with one line that names it, exit 2 (config/startup.py).
Celery's variables are read by config/celery_settings.py.
"""

from pathlib import Path

import environ

from config.secret_files import url_with_password
from config.variables import read

BASE_DIR = Path(__file__).resolve().parent.parent


def _database(name: str) -> dict:
    """DATABASES["default"] from a postgres:// URL (django-environ's db_url_config), with the
    password from DATABASE_PASSWORD[_FILE] when the URL holds none (production)."""
    config = environ.Env.db_url_config(url_with_password(read(name), read("DATABASE_PASSWORD")))
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


def _origins_of(hosts: list[str]) -> list[str]:
    # ".example.com" in ALLOWED_HOSTS means every subdomain; "*" has no origin form.
    return [f"https://*{host}" if host.startswith(".") else f"https://{host}"
            for host in hosts if host != "*"]


SECRET_KEY = read("DJANGO_SECRET_KEY")
DEBUG = read("DJANGO_DEBUG")
ALLOWED_HOSTS = read("DJANGO_ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = read("DJANGO_CSRF_TRUSTED_ORIGINS") or _origins_of(ALLOWED_HOSTS)

# TLS ends at the proxy (images/proxy), which sets X-Forwarded-Proto and overwrites whatever a
# client sent: that is what makes trusting the header safe. Read the HSTS value in any case, so
# a bad one fails at start whatever DJANGO_HTTPS says.
HTTPS = read("DJANGO_HTTPS")
_HSTS_SECONDS = read("DJANGO_HSTS_SECONDS")
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
API_MAX_BODY_BYTES = read("API_MAX_BODY_BYTES")
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES

DATABASES = {"default": _database("DATABASE_URL")}
# Postgres role of the FastAPI gateway (token lookups, read-only); None: grant nothing.
DATABASE_GATEWAY_USER = read("DATABASE_GATEWAY_USER")
# The monitor role that may call public.trinity_taskrun_stats() (migrate_all_schemas).
DATABASE_MONITOR_USER = read("DATABASE_MONITOR_USER")
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
    # Request counts and latencies per view, method and status, first and last so they time
    # the whole stack; gunicorn serves them on :9100 (images/python/gunicorn_metrics.py).
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
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
    "django_prometheus.middleware.PrometheusAfterMiddleware",
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

LOG_LEVEL = read("DJANGO_LOG_LEVEL")

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
