"""config/variables.py: one declaration per variable, and how a value is read from it."""

import pytest

from config import variables
from config.variables import BY_NAME, VARIABLES, SettingsError, read


def test_each_variable_is_declared_once():
    assert len(BY_NAME) == len(VARIABLES)


@pytest.mark.parametrize("variable", [v for v in VARIABLES if v.parse and v.default],
                         ids=lambda v: v.name)
def test_every_declared_default_is_a_valid_value(variable):
    variable.parse(variable.default)


def test_unset_and_empty_mean_the_default():
    assert read("CELERY_VISIBILITY_TIMEOUT", {}) == 3600
    assert read("CELERY_VISIBILITY_TIMEOUT", {"CELERY_VISIBILITY_TIMEOUT": "  "}) == 3600
    assert read("CELERY_VISIBILITY_TIMEOUT", {"CELERY_VISIBILITY_TIMEOUT": "7200"}) == 7200
    assert read("CELERY_WORKER_CONCURRENCY", {}) is None  # computed by its reader


@pytest.mark.parametrize("name, raw, message", [
    ("CELERY_WORKER_LOST_MAX", "0", "CELERY_WORKER_LOST_MAX: must be a positive integer, got '0'"),
    ("DJANGO_HSTS_SECONDS", "-1", "DJANGO_HSTS_SECONDS: must be an integer >= 0, got '-1'"),
    ("DJANGO_DEBUG", "maybe", "DJANGO_DEBUG: must be true or false, got 'maybe'"),
    ("DJANGO_LOG_LEVEL", "loud", "DJANGO_LOG_LEVEL: must be DEBUG, INFO, WARNING, ERROR or "
                                 "CRITICAL, got 'loud'"),
    ("CELERY_IO_QUEUE", "a b", "CELERY_IO_QUEUE: must not contain whitespace, got 'a b'"),
    ("DJANGO_CSRF_TRUSTED_ORIGINS", "example.com",
     "DJANGO_CSRF_TRUSTED_ORIGINS: every entry must be scheme://host[:port], got 'example.com'"),
])
def test_a_bad_value_names_the_variable(name, raw, message):
    with pytest.raises(SettingsError) as caught:
        read(name, {name: raw})
    assert str(caught.value).endswith(message.split(": ", 1)[1])
    assert str(caught.value).startswith(f"{name}: ")


def test_secrets_come_from_files_and_are_never_echoed(tmp_path):
    secret = tmp_path / "url"
    secret.write_text("redis://:from-a-file@redis:6379/0\n")
    assert read("REDIS_URL", {"REDIS_URL_FILE": str(secret)}) == (
        "redis://:from-a-file@redis:6379/0")
    with pytest.raises(SettingsError) as caught:
        read("REDIS_URL", {"REDIS_URL": "redis://:s3cret@redis:port/0"})
    assert "s3cret" not in str(caught.value)
    with pytest.raises(SettingsError, match="^REDIS_URL: set either"):
        read("REDIS_URL", {"REDIS_URL": "redis://r/0", "REDIS_URL_FILE": str(secret)})


def test_required_variables():
    with pytest.raises(SettingsError, match=r"^DATABASE_URL: required, not set \(nor "
                                            r"DATABASE_URL_FILE\)$"):
        read("DATABASE_URL", {"DATABASE_URL": ""})


def test_an_undeclared_name_is_a_programming_error():
    with pytest.raises(KeyError):
        read("CELERY_NO_SUCH_THING", {})


def test_the_markdown_table_has_one_row_per_variable():
    table = variables.markdown().splitlines()
    assert table[0] == "| variable | default | meaning |"
    assert len(table) == 2 + len(VARIABLES)
    assert "| `CELERY_VISIBILITY_TIMEOUT` | `3600` | seconds before Redis redelivers" in (
        "\n".join(table))
    assert "| `DJANGO_SECRET_KEY` | required | Django's signing key" in "\n".join(table)
