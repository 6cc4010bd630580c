"""scripts/validate.py, the host side of `make validate`, against a stand-in `docker` on PATH:
what it runs, what it shows, which exit status it hands on. (The checks themselves are
`manage.py validate_stack`: services/TrinityBackendDjango/tests/test_validate_stack.py, and the
stack tests run the real thing.)"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_DOCKER = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_DOCKER_CALLS"
[ -n "$FAKE_DOCKER_SLEEP" ] && exec sleep "$FAKE_DOCKER_SLEEP"
printf '%b' "$FAKE_DOCKER_OUTPUT"
exit "${FAKE_DOCKER_EXIT:-0}"
"""


@pytest.fixture
def validate(tmp_path):
    (tmp_path / "bin").mkdir()
    docker = tmp_path / "bin" / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    calls = tmp_path / "calls"

    def run(*args, output="", exit=0, sleep=""):
        env = {**os.environ, "PATH": f"{docker.parent}:{os.environ['PATH']}",
               "FAKE_DOCKER_CALLS": str(calls), "FAKE_DOCKER_OUTPUT": output,
               "FAKE_DOCKER_EXIT": str(exit), "FAKE_DOCKER_SLEEP": sleep}
        proc = subprocess.run([sys.executable, "scripts/validate.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        proc.calls = calls.read_text().splitlines() if calls.exists() else []
        return proc

    return run


def test_it_runs_validate_stack_in_a_one_off_worker_container_and_shows_its_lines(validate):
    lines = "PASS  workers    3.0s  1 answered: celery@a\\nvalidate: 6 passed, 0 failed, 0 skipped\\n"
    proc = validate("--file", "docker-compose.example.yml", "--file", "compose/test.yml",
                    "--project", "p1", "--env-file", "envs/prod.env", "--", "--reply-timeout",
                    "1", output=lines)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.calls == ["compose -p p1 --env-file envs/prod.env -f docker-compose.example.yml "
                          "-f compose/test.yml run --rm --no-deps -T celery python manage.py "
                          "validate_stack --reply-timeout 1"]
    assert proc.stdout.splitlines()[1:] == ["PASS  workers    3.0s  1 answered: celery@a",
                                            "validate: 6 passed, 0 failed, 0 skipped"]


def test_without_project_and_env_file_compose_chooses_them(validate):
    assert validate("--file", "docker-compose-dev.example.yml").calls[0].startswith(
        "compose -f docker-compose-dev.example.yml run ")


def test_a_failed_step_is_handed_on_as_exit_status_1(validate):
    proc = validate("--file", "docker-compose-dev.example.yml", exit=1,
                    output="FAIL  workers    3.0s  no worker node answered ping\\n")
    assert proc.returncode == 1
    assert "FAIL  workers" in proc.stdout


def test_a_check_that_could_not_start_is_a_fail(validate):
    proc = validate("--file", "docker-compose-dev.example.yml", exit=125)
    assert proc.returncode == 1
    assert "FAIL  validate: `docker compose run` exited 125" in proc.stdout


def test_a_check_that_does_not_answer_in_time_is_a_fail(validate):
    proc = validate("--file", "docker-compose-dev.example.yml", "--timeout", "0.5", sleep="5")
    assert proc.returncode == 1
    assert "FAIL  validate: no answer within 0.5 s" in proc.stdout


def test_a_missing_compose_file_is_bad_usage_naming_it(validate):
    proc = validate("--file", "docker-compose-nowhere.yml")
    assert proc.returncode == 2
    assert "docker-compose-nowhere.yml not found" in proc.stderr
    assert proc.calls == []
