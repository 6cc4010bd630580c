"""Postgres and Redis images keep their contracts; nothing runs as root; no secret in an image."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import docker
import pytest

from stack import ROOT, wait_for

pytestmark = pytest.mark.stack


def env_values(pattern: str) -> dict[str, str]:
    """Values of envs/*.env whose names match `pattern` (the secrets and URLs that carry them)."""
    found = {}
    for path in sorted((ROOT / "envs").glob("*.env")):
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.startswith("#") and value and re.search(pattern, name):
                found[f"{path.name}:{name}"] = value
    return found


def psql(stack, sql: str) -> tuple[int, str]:
    """A query over TCP with the credentials of envs/dev.env, as an app would connect."""
    env = dict(l.split("=", 1) for l in (ROOT / "envs/dev.env").read_text().splitlines()
               if "=" in l and not l.startswith("#"))
    return stack.exec("postgres", ["psql", "-h", "127.0.0.1", "-U", env["POSTGRES_USER"],
                                   "-d", env["POSTGRES_DB"], "-tAc", sql],
                      environment={"PGPASSWORD": env["POSTGRES_PASSWORD"]})


def test_postgres_accepts_the_env_credentials_and_runs_a_query(stack):
    code, out = psql(stack, "SELECT current_user || '@' || current_database() || ' ' || 6*7")
    assert code == 0, out
    assert out.strip() == "trinity@trinity 42"


def test_postgres_refuses_a_wrong_password(stack):
    code, out = stack.exec("postgres", ["psql", "-h", "127.0.0.1", "-U", "trinity", "-d",
                                        "trinity", "-c", "SELECT 1"],
                           environment={"PGPASSWORD": "wrong"})
    assert code != 0 and "password authentication failed" in out


def test_postgres_init_script_ran_exactly_once(stack):
    assert psql(stack, "SELECT count(*) FROM initdb_marker")[1].strip() == "1"
    stack.compose("restart", "postgres")
    stack.wait_healthy(["postgres"], timeout=60)
    code, out = psql(stack, "SELECT count(*) FROM initdb_marker")
    assert (code, out.strip()) == (0, "1"), "the init script ran again on restart"


def test_postgres_without_password_exits_naming_the_variable(stack):
    image = stack.container("postgres").image
    volume = stack.client.volumes.create(f"trinity-test-nopw-{uuid.uuid4().hex[:8]}",
                                         labels={"org.trinity.project": "trinity"})
    container = stack.client.containers.run(image.id, detach=True, environment={},
                                            volumes={volume.name: {"bind": "/var/lib/postgresql/data"}})
    try:
        result = container.wait(timeout=30)
        logs = container.logs().decode()
        assert result["StatusCode"] != 0
        assert "POSTGRES_PASSWORD" in logs, logs
    finally:
        container.remove(force=True)
        volume.remove(force=True)


def redis_cli(stack, *args: str, password: bool = True) -> tuple[int, str]:
    env = {"REDISCLI_AUTH": env_values("^REDIS_PASSWORD$")["dev.env:REDIS_PASSWORD"]} if password else {}
    return stack.exec("redis", ["redis-cli", "--no-auth-warning", *args], environment=env)


def test_redis_requires_its_password(stack):
    assert redis_cli(stack, "PING")[1].strip() == "PONG"
    assert "NOAUTH" in redis_cli(stack, "PING", password=False)[1]


def test_redis_config_is_durable_and_never_evicts(stack):
    def conf(name):
        return redis_cli(stack, "CONFIG", "GET", name)[1].splitlines()
    assert conf("appendonly") == ["appendonly", "yes"]
    assert conf("appendfsync") == ["appendfsync", "everysec"]
    assert conf("maxmemory-policy") == ["maxmemory-policy", "noeviction"]


def test_redis_keeps_data_across_a_restart(stack):
    key, value = f"aof-{uuid.uuid4().hex}", uuid.uuid4().hex
    assert redis_cli(stack, "SET", key, value)[1].strip() == "OK"
    stack.compose("restart", "redis")
    stack.wait_healthy(["redis"], timeout=60)
    assert redis_cli(stack, "GET", key)[1].strip() == value


def test_every_service_runs_as_non_root(stack):
    root, seen = stack.root_processes()
    assert not root, f"running as root: {root}"
    assert seen >= len(stack.started)


def test_no_env_secret_in_any_image(stack):
    secrets = env_values(r"PASSWORD|SECRET|_URL$|TOKEN")
    assert secrets, "envs/*.env should hold the dev secrets this test looks for"
    images = stack.images()
    assert {tag.split(":")[0] for i in images for tag in i.tags} >= {"trinity/postgres", "trinity/redis"}
    for image in images:
        text = str(image.attrs["Config"]) + "".join(
            str(h.get("CreatedBy", "")) for h in image.history())
        for where, value in secrets.items():
            assert value not in text, f"{image.tags}: value of {where} is baked into the image"
