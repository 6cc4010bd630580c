"""The gateway's own variables: docs, root path, limits, the token database URL and secrets."""

import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import GatewaySettings, load_settings
from config.variables import SettingsError

URL = "postgres://trinity_gateway@postgres:5432/trinity"


def settings(**env):
    return load_settings({"GATEWAY_DATABASE_URL": URL, **env})


def test_defaults():
    loaded = settings()
    assert loaded == GatewaySettings(database_url=URL, docs=True, root_path="",
                                     max_body_bytes=1048576, token_cache_seconds=10)


def test_the_password_goes_into_the_url(tmp_path):
    assert settings(GATEWAY_DATABASE_PASSWORD="p@ss/word").database_url == (
        "postgres://trinity_gateway:p%40ss%2Fword@postgres:5432/trinity")
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    assert settings(GATEWAY_DATABASE_PASSWORD_FILE=str(secret)).database_url == (
        "postgres://trinity_gateway:from-a-file@postgres:5432/trinity")


def test_docs_are_off_in_production_unless_asked_for():
    prod = {"TRINITY_ENV": "production", "GATEWAY_DATABASE_PASSWORD": "real-secret"}
    assert settings(**prod).docs is False
    assert settings(**prod, FASTAPI_DOCS="true").docs is True
    assert settings(FASTAPI_DOCS="false").docs is False


def test_no_docs_means_no_docs_redoc_or_openapi():
    client = TestClient(create_app(GatewaySettings(database_url=URL, docs=False)))
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404, path
    assert client.get("/livez").status_code == 200
    docs = TestClient(create_app(GatewaySettings(database_url=URL, docs=True)))
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert docs.get(path).status_code == 200, path


def test_the_root_path_is_the_proxy_prefix():
    assert settings(FASTAPI_ROOT_PATH="/gateway/").root_path == "/gateway"
    client = TestClient(create_app(GatewaySettings(database_url=URL, root_path="/gateway")))
    assert client.get("/livez").status_code == 200  # the proxy strips the prefix
    assert client.get("/openapi.json").json()["servers"] == [{"url": "/gateway"}]
    assert "/gateway/openapi.json" in client.get("/docs").text


@pytest.mark.parametrize("env, message", [
    ({"GATEWAY_DATABASE_URL": ""}, "GATEWAY_DATABASE_URL: required"),
    ({"GATEWAY_DATABASE_URL": "mysql://u@h/d"}, "GATEWAY_DATABASE_URL: scheme must be"),
    ({"GATEWAY_DATABASE_URL": "postgres://u@h:port/d"}, "GATEWAY_DATABASE_URL: port must be"),
    ({"GATEWAY_DATABASE_URL": "postgres://u@/d"}, "GATEWAY_DATABASE_URL: host is missing"),
    ({"GATEWAY_DATABASE_URL": "postgres://u@h:5432"}, "GATEWAY_DATABASE_URL: database name"),
    ({"GATEWAY_DATABASE_URL": "postgres://u:x@h/d", "GATEWAY_DATABASE_PASSWORD": "y"},
     "GATEWAY_DATABASE_URL: holds a password"),
    ({"GATEWAY_DATABASE_PASSWORD": "a", "GATEWAY_DATABASE_PASSWORD_FILE": "/x"},
     "GATEWAY_DATABASE_PASSWORD: set either"),
    ({"GATEWAY_DATABASE_PASSWORD_FILE": "/nonexistent"}, "GATEWAY_DATABASE_PASSWORD_FILE: cannot read"),
    ({"TRINITY_ENV": "production", "GATEWAY_DATABASE_PASSWORD": "CHANGE-ME"},
     "GATEWAY_DATABASE_PASSWORD: holds a placeholder"),
    ({"FASTAPI_DOCS": "maybe"}, "FASTAPI_DOCS: must be true or false"),
    ({"FASTAPI_ROOT_PATH": "gateway"}, "FASTAPI_ROOT_PATH: must start with '/'"),
    ({"API_MAX_BODY_BYTES": "0"}, "API_MAX_BODY_BYTES: must be a positive integer"),
    ({"API_MAX_BODY_BYTES": "1MB"}, "API_MAX_BODY_BYTES: must be a positive integer"),
    ({"API_TOKEN_CACHE_SECONDS": "-1"}, "API_TOKEN_CACHE_SECONDS: must be an integer >= 0"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(SettingsError) as raised:
        settings(**env)
    assert str(raised.value).startswith(message)
    assert "x@" not in str(raised.value) or ":***@" in str(raised.value)


def _start(env_changes):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.update(env_changes)
    code = "import tests.conftest, app.main"  # conftest makes config importable in the repo
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)


def test_start_fails_with_one_line():
    """uvicorn/gunicorn import app.main: a bad variable stops it with one line, exit code 2."""
    result = _start({"REDIS_URL": "http://redis:6379/0"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "configuration error: REDIS_URL: scheme must be redis:// or rediss://, "
        "got 'http://redis:6379/0'")


def test_a_bad_gateway_variable_stops_the_start_with_one_line():
    result = _start({"GATEWAY_DATABASE_URL": "postgres://u:secret@db:x/d"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "configuration error: GATEWAY_DATABASE_URL: port must be an integer, got "
        "'postgres://u:***@db:x/d'")
    result = _start({"GATEWAY_DATABASE_URL": " "})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("configuration error: GATEWAY_DATABASE_URL: required")
