"""config/settings.py, each case in a fresh process: a bad value stops it with exit 2 and one line
that names the variable; `check --deploy` is clean with DJANGO_HTTPS=true."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

APP = Path(__file__).resolve().parent.parent
PRINT_SETTINGS = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'key': s.SECRET_KEY, 'password': s.DATABASES['default']['PASSWORD'], "
    "'user': s.DATABASES['default']['USER'], 'hosts': s.ALLOWED_HOSTS, "
    "'origins': s.CSRF_TRUSTED_ORIGINS, 'https': s.HTTPS, "
    "'redirect': getattr(s, 'SECURE_SSL_REDIRECT', False), "
    "'hsts': getattr(s, 'SECURE_HSTS_SECONDS', 0), 'max_body': s.API_MAX_BODY_BYTES, "
    "'upload': s.DATA_UPLOAD_MAX_MEMORY_SIZE, 'gateway': s.DATABASE_GATEWAY_USER, "
    "'validators': len(s.AUTH_PASSWORD_VALIDATORS)}))"
)


def run(args, **env):
    environ = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env}
    for name, value in env.items():
        if value is None:
            del environ[name]
    return subprocess.run([sys.executable, *args], cwd=APP, env=environ, capture_output=True,
                          text=True, timeout=120)


def settings_with(**env) -> dict:
    done = run(["-c", PRINT_SETTINGS], **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_defaults():
    values = settings_with(DJANGO_HTTPS=None, DJANGO_CSRF_TRUSTED_ORIGINS=None,
                           DJANGO_ALLOWED_HOSTS="localhost, .example.com,*",
                           API_MAX_BODY_BYTES=None, DATABASE_GATEWAY_USER=None)
    assert values["hosts"] == ["localhost", ".example.com", "*"]
    assert values["origins"] == ["https://localhost", "https://*.example.com"]
    assert values["https"] is False and values["redirect"] is False and values["hsts"] == 0
    assert values["max_body"] == values["upload"] == 1048576
    assert values["gateway"] is None and values["validators"] == 4


def test_secrets_from_files(tmp_path):
    key = tmp_path / "key"
    key.write_text("k" * 20 + "-from-a-file\n")
    password = tmp_path / "password"
    password.write_text("p@ss/word\n")
    url = urlsplit(os.environ["DATABASE_URL"])
    user_only = url._replace(netloc=f"{url.username}@{url.hostname}:{url.port or 5432}").geturl()
    values = settings_with(DJANGO_SECRET_KEY=None, DJANGO_SECRET_KEY_FILE=str(key),
                           DATABASE_URL=user_only, DATABASE_PASSWORD_FILE=str(password),
                           DJANGO_HTTPS="true", DJANGO_HSTS_SECONDS="60",
                           API_MAX_BODY_BYTES="2048", DATABASE_GATEWAY_USER="trinity_gateway")
    assert values["key"] == "k" * 20 + "-from-a-file"
    assert values["password"] == "p@ss/word"
    assert values["https"] is True and values["redirect"] is True and values["hsts"] == 60
    assert values["max_body"] == values["upload"] == 2048
    assert values["gateway"] == "trinity_gateway"


@pytest.mark.parametrize("env, message", [
    ({"DJANGO_HTTPS": "maybe"}, "DJANGO_HTTPS: must be true or false"),
    ({"DJANGO_DEBUG": "yes please"}, "DJANGO_DEBUG: must be true or false"),
    ({"DJANGO_HSTS_SECONDS": "-1"}, "DJANGO_HSTS_SECONDS: must be an integer >= 0"),
    ({"API_MAX_BODY_BYTES": "1MB"}, "API_MAX_BODY_BYTES: must be a positive integer"),
    ({"DJANGO_CSRF_TRUSTED_ORIGINS": "example.com"}, "DJANGO_CSRF_TRUSTED_ORIGINS: every entry"),
    ({"DJANGO_SECRET_KEY": None, "DJANGO_SECRET_KEY_FILE": "/nonexistent"},
     "DJANGO_SECRET_KEY_FILE: cannot read '/nonexistent'"),
    ({"DJANGO_SECRET_KEY": None}, "DJANGO_SECRET_KEY: required"),
    ({"DATABASE_PASSWORD": "x", "DATABASE_PASSWORD_FILE": "/run/secrets/x"},
     "DATABASE_PASSWORD: set either"),
])
def test_a_bad_value_stops_the_start_naming_the_variable(env, message):
    done = run(["manage.py", "check"], **env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"configuration error: {message}"), \
        done.stderr


def test_check_deploy_is_clean_with_https():
    done = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
               DJANGO_HTTPS="true", DJANGO_DEBUG="false", DJANGO_HSTS_SECONDS=None,
               DJANGO_SECRET_KEY=secrets.token_urlsafe(48), DJANGO_SECRET_KEY_FILE=None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout, done.stdout + done.stderr


HTTPS_REQUESTS = (
    "import json, django; django.setup(); from django.test import Client; c = Client(); "
    "h = {'HTTP_HOST': 'localhost'}; s = {**h, 'HTTP_X_FORWARDED_PROTO': 'https'}; "
    "api = c.get('/api/task-runs/1/', **h); secure = c.get('/api/task-runs/1/', **s); "
    "print(json.dumps({'livez': c.get('/livez', **h).status_code, "
    "'healthz': c.get('/healthz', **h).status_code, 'api': api.status_code, "
    "'location': api.get('Location'), 'secure': secure.status_code, "
    "'hsts': secure.get('Strict-Transport-Security')}))"
)


def test_https_redirects_all_but_the_health_checks():
    done = run(["-c", HTTPS_REQUESTS], DJANGO_HTTPS="true", DJANGO_HSTS_SECONDS=None,
               DJANGO_ALLOWED_HOSTS="localhost")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["livez"] == 200 and seen["healthz"] != 301  # probes call plain http
    assert seen["api"] == 301 and seen["location"] == "https://localhost/api/task-runs/1/"
    assert seen["secure"] == 401  # behind the proxy: served, and still needs a token
    assert seen["hsts"] == "max-age=31536000; includeSubDomains"
