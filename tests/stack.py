"""A compose project driven from the tests: compose CLI to build/up/down, Docker SDK to look.

One `Stack` per pytest session (see conftest.py): a unique project name, so a test run never
touches an operator's dev stack, and `down -v` at the end whatever happened.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent


class StackError(AssertionError):
    pass


@dataclass
class Stack:
    files: list[str]
    env_file: str = "envs/dev.env"
    project: str = field(default_factory=lambda: f"trinity-test-{uuid.uuid4().hex[:8]}")
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = docker.from_env()

    # ---- compose CLI ------------------------------------------------------------------------
    def compose_cmd(self, *args: str) -> list[str]:
        cmd = ["docker", "compose", "-p", self.project, "--env-file", self.env_file]
        for f in self.files:
            cmd += ["-f", f]
        return cmd + list(args)

    def compose(self, *args: str, check: bool = True, timeout: float = 600,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **self.env, **(env or {})}
        full_env.setdefault("BASE_IMAGE", base_image())
        proc = subprocess.run(self.compose_cmd(*args), cwd=ROOT, env=full_env, text=True,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise StackError(f"docker compose {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    # ---- Docker SDK -------------------------------------------------------------------------
    def containers(self, service: str | None = None, all: bool = False) -> list:
        # oneoff=False: not the containers of `compose run` (they carry the service's label too)
        labels = [f"com.docker.compose.project={self.project}", "com.docker.compose.oneoff=False"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return self.client.containers.list(all=all, filters={"label": labels})

    def container(self, service: str):
        found = self.containers(service)
        if not found:
            raise StackError(f"no running container for service {service!r}\n"
                             f"{self.logs(service)}")
        return found[0]

    def health(self, service: str) -> str:
        found = self.containers(service, all=True)
        if not found:
            return "missing"
        c = found[0]
        c.reload()
        state = c.attrs["State"]
        return state.get("Health", {}).get("Status") or state["Status"]

    def wait_healthy(self, services: list[str], timeout: float = 180) -> None:
        """Poll until every service is healthy; on timeout fail with their states and logs."""
        deadline = time.monotonic() + timeout
        while True:
            states = {s: self.health(s) for s in services}
            if all(v == "healthy" for v in states.values()):
                return
            if time.monotonic() > deadline:
                bad = [s for s, v in states.items() if v != "healthy"]
                raise StackError(f"not healthy after {timeout:.0f}s: {states}\n"
                                 + "\n".join(self.logs(s) for s in bad))
            time.sleep(1)

    def exec(self, service: str, cmd: list[str] | str, user: str | None = None,
             environment: dict | None = None) -> tuple[int, str]:
        result = self.container(service).exec_run(cmd, user=user or "", demux=False,
                                                  environment=environment)
        return result.exit_code, result.output.decode(errors="replace")

    def logs(self, service: str, tail: int = 60) -> str:
        proc = self.compose("logs", "--no-color", "--tail", str(tail), service, check=False,
                            timeout=60)
        return f"---- logs of {service} ----\n{proc.stdout}{proc.stderr}"

    def images(self) -> list:
        """The images this project's compose files build (those with a build: section)."""
        config = self.compose("config", "--images").stdout.split()
        return [self.client.images.get(name) for name in sorted(set(config))
                if name.startswith("trinity/")]

    def root_processes(self) -> tuple[list[str], int]:
        """Processes running as uid 0 in this project's containers, and how many were looked at.
        (No user namespaces here: uid 0 in `docker top` is real root.)"""
        found, seen = [], 0
        for container in self.containers():
            for _pid, uid, comm in container.top(ps_args="-o pid,uid,comm")["Processes"]:
                seen += 1
                if uid == "0":
                    found.append(f"{container.name}: {comm}")
        return found, seen

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)


def base_image() -> str:
    """The base the bootstrap chose (the Makefile exports it; a bare `pytest` reads it here)."""
    chosen = ROOT / ".base-image"
    return chosen.read_text().strip() if chosen.is_file() else ""


def wait_for(predicate, timeout: float, interval: float = 0.5, describe=lambda: ""):
    """Poll `predicate` until it returns a truthy value; fail with `describe()` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StackError(f"condition not met within {timeout:.0f}s\n{describe()}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (for a stack's published ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
