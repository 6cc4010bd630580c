"""config/startup.py: the production refusal of placeholder and development secrets."""

import pytest

from config.startup import refuse_insecure_secrets
from config.variables import SettingsError


@pytest.mark.parametrize("name,value", [
    ("DJANGO_SECRET_KEY", "CHANGE-ME-django-secret-key"),
    ("REDIS_URL", "redis://:insecure-dev-redis-password@redis:6379/0"),
    ("DATABASE_URL", "postgres://u:CHANGE-ME-pw@postgres:5432/db"),
    ("FLOWER_BASIC_AUTH", "CHANGE-ME-user:CHANGE-ME-password"),
    ("GATEWAY_DATABASE_PASSWORD", "insecure-dev-password"),
])
def test_production_refuses_placeholder_and_dev_secrets(name, value):
    with pytest.raises(SettingsError, match=f"^{name}: holds a placeholder"):
        refuse_insecure_secrets({"TRINITY_ENV": "production", name: value})
    refuse_insecure_secrets({name: value})  # outside production the same value is accepted


def test_a_placeholder_in_a_secret_file_is_refused_too(tmp_path):
    secret = tmp_path / "key"
    secret.write_text("CHANGE-ME\n")
    with pytest.raises(SettingsError, match="^DJANGO_SECRET_KEY: holds a placeholder"):
        refuse_insecure_secrets({"TRINITY_ENV": "production",
                                 "DJANGO_SECRET_KEY_FILE": str(secret)})


def test_real_secrets_pass():
    refuse_insecure_secrets({"TRINITY_ENV": "production", "DJANGO_SECRET_KEY": "x" * 50,
                             "REDIS_URL": "redis://redis:6379/0"})
