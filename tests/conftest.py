"""The stack fixtures, each one compose project brought up by the one harness (scripts/stack.py:
build, up --wait, the logs of every service when a test failed, always down -v). Unit tests
under tests/unit never start one; tests/chaos/conftest.py adds the chaos package's own."""
from __future__ import annotations

import re
import subprocess

import pytest

from edge import Edge, prod_stack
from stack import ROOT, Stack, running

DEV_FILES = ["docker-compose-dev.example.yml", "compose/test.yml"]
PROD_SCAN_INTERVAL = 2  # seconds between beat's periodic job in the prod tests' stack
PROD_RATE = 5  # requests per second per token at the prod tests' proxy (and as many burst)


@pytest.fixture(scope="session")
def stack(request):
    """The dev template (with the -test images) under a unique project name."""
    dev = Stack(files=DEV_FILES)
    with running(dev, dev.services(), show_logs=lambda: request.session.testsfailed) as up:
        yield up


@pytest.fixture(scope="module")
def prod(tmp_path_factory, request):
    """The production template with random secrets, started as the README's "Production" does (plus --wait)."""
    stack = prod_stack(tmp_path_factory.mktemp("prod"), "trinity-prodtest",
                       CELERY_STUCK_SCAN_INTERVAL=str(PROD_SCAN_INTERVAL),
                       PROXY_RATE=f"{PROD_RATE}r/s", PROXY_BURST=str(PROD_RATE))
    # The scheduled backup too (its profile): it must pass the same hardening checks.
    with running(stack, ["web", "fastapi", "celery", "backup"],
                 show_logs=lambda: request.session.testsfailed) as up:
        up.edge = Edge(up)
        up.scan_interval, up.rate = PROD_SCAN_INTERVAL, PROD_RATE
        yield up


@pytest.fixture(scope="session")
def validate():
    """validate(stack): `make validate`'s script against that stack, its output captured."""
    def run(stack: Stack) -> subprocess.CompletedProcess:
        files = [arg for f in stack.files for arg in ("--file", f)]
        return subprocess.run([str(ROOT / ".venv/bin/python"), "scripts/validate.py", *files,
                               "--project", stack.project, "--env-file", stack.env_file],
                              cwd=ROOT, capture_output=True, text=True, timeout=400)
    return run


@pytest.fixture(scope="session")
def validate_passes(validate):
    """validate_passes(stack): `make validate`'s script against that stack; it must exit 0 with
    every step PASS (beat may SKIP: a stack without beat has no schedule to check)."""
    def run(stack: Stack) -> subprocess.CompletedProcess:
        proc = validate(stack)
        print(proc.stdout)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for step in ("workers", "queues", "tasks", "monitor", "stuck"):
            assert re.search(rf"^PASS\s+{step} ", proc.stdout, re.M), proc.stdout
        assert re.search(r"^(PASS|SKIP)\s+beat ", proc.stdout, re.M), proc.stdout
        return proc
    return run
