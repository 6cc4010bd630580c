"""Session-wide compose stack for the stack tests; unit tests under tests/unit never start it."""
from __future__ import annotations

import os
import time

import pytest

from stack import Stack

FILES = ["docker-compose-dev.example.yml", "compose/test.yml"]


def _services(stack: Stack) -> list[str]:
    services = stack.compose("config", "--services").stdout.split()
    mongo_image = os.environ.get("MONGO_IMAGE", "mongo:7")
    if "mongo" in services and not _image_present(stack, mongo_image):
        print(f"\nmongo left out of the test stack: image {mongo_image} is not on this engine "
              "and cannot be pulled without a registry")
        services.remove("mongo")
    return services


def _image_present(stack: Stack, name: str) -> bool:
    try:
        stack.client.images.get(name)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def stack(request):
    stack = Stack(files=FILES)
    services = _services(stack)
    started = time.monotonic()
    try:
        stack.compose("build", *[s for s in services if s != "mongo"], timeout=1800)
        # --wait: every service healthy (one-shots like `migrate` exited 0) or fail.
        proc = stack.compose("up", "-d", "--wait", "--wait-timeout", "240", *services,
                             check=False, timeout=300)
        if proc.returncode != 0:
            pytest.fail(f"the stack did not come up healthy:\n{proc.stderr[-2000:]}\n"
                        + "\n".join(stack.logs(s) for s in services), pytrace=False)
        print(f"\nstack {stack.project} healthy in {time.monotonic() - started:.1f}s: "
              f"{', '.join(services)}")
        stack.services = services
        yield stack
    finally:
        if request.session.testsfailed:
            for s in services:
                print(stack.logs(s, tail=80))
        stack.down()
