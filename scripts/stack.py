#!/usr/bin/env python3
"""The one stack harness: a compose project driven by the compose CLI (build, up --wait, logs,
down) and looked at through the Docker SDK. The stack tests, `make bench`, `make validate` and
`make dev-up` all use it.

    stack = Stack(files=["docker-compose-dev.example.yml", "compose/test.yml"])
    with running(stack, stack.services(), show_logs=lambda: failed):   # up; always down -v
        stack.exec("web", ["python", "manage.py", "enqueue", "echo"])

It lives in scripts/ so that every user imports it by name: the scripts beside it get their own
folder on sys.path from Python, pytest from pytest.ini (`pythonpath`), `make bench` from the
PYTHONPATH its Makefile line sets. `.venv/bin/python scripts/stack.py services -f FILE` prints
the services to start (what `make dev-up` starts).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 1800
WAIT_TIMEOUT = 240  # up --wait: every service healthy (one-shots exited 0) within this


class StackError(AssertionError):
    pass


@dataclass
class Stack:
    """A compose project. `project`/`env_file` None: compose's own choice (the file's `name:`,
    `.env`), as for an operator's stack; the tests and the bench name their own."""
    files: list[str]
    env_file: str | None = "envs/dev.env"
    project: str | None = field(default_factory=lambda: f"trinity-test-{uuid.uuid4().hex[:8]}")
    env: dict[str, str] = field(default_factory=dict)

    @cached_property
    def client(self):
        import docker  # the host venv has it; `scripts/stack.py services` needs no more than python3

        return docker.from_env()

    # ---- compose CLI ------------------------------------------------------------------------
    def compose_cmd(self, *args: str) -> list[str]:
        cmd = ["docker", "compose"]
        if self.project:
            cmd += ["-p", self.project]
        if self.env_file:
            cmd += ["--env-file", self.env_file]
        for f in self.files:
            cmd += ["-f", f]
        return cmd + list(args)

    def compose(self, *args: str, check: bool = True, timeout: float = 600,
                env: dict[str, str] | None = None,
                capture: bool = True) -> subprocess.CompletedProcess:
        """Run `docker compose ARGS`; capture=False lets its output through to the terminal."""
        full_env = {**os.environ, **self.env, **(env or {})}
        full_env.setdefault("BASE_IMAGE", base_image())
        proc = subprocess.run(self.compose_cmd(*args), cwd=ROOT, env=full_env, text=True,
                              capture_output=capture, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise StackError(f"docker compose {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{(proc.stdout or '')[-3000:]}\n{(proc.stderr or '')[-3000:]}")
        return proc

    def services(self) -> list[str]:
        """Every service of the files, less MongoDB where its image cannot be had (the official
        image needs a registry; without one the stack runs without it and says so)."""
        services = self.compose("config", "--services").stdout.split()
        if "mongo" in services:
            image = next((i for i in self.compose("config", "--images").stdout.split()
                          if i.split(":")[0] == "mongo"), "mongo")
            if not image_available(image):
                print(f"MongoDB left out: the image {image} is not on this engine and cannot be "
                      "pulled (no registry answers); `docker load` it, or use a machine with a "
                      "registry. Everything else runs without it.", file=sys.stderr, flush=True)
                services.remove("mongo")
        return services

    def up(self, services: list[str], wait_timeout: float = WAIT_TIMEOUT) -> None:
        """Build every image that has a build: section, start `services` (and what they depend
        on), wait until all are healthy; fail with compose's reason and every service's logs."""
        self.compose("build", timeout=BUILD_TIMEOUT)  # every image of the files: none is stale
        proc = self.compose("up", "-d", "--wait", "--wait-timeout", str(int(wait_timeout)),
                            *services, check=False, timeout=wait_timeout + 60)
        if proc.returncode != 0:
            raise StackError(f"{self.project or 'the stack'} did not come up healthy:\n"
                             f"{proc.stderr[-2000:]}\n" + self.all_logs())

    def down(self) -> None:
        self.compose("--profile", "*", "down", "-v", "--remove-orphans", "--timeout", "20",
                     check=False)

    def logs(self, service: str, tail: int = 60) -> str:
        proc = self.compose("logs", "--no-color", "--tail", str(tail), service, check=False,
                            timeout=60)
        return f"---- logs of {service} ----\n{proc.stdout}{proc.stderr}"

    def all_logs(self, tail: int = 60) -> str:
        """The logs of every service that has (or had) a container in this project."""
        services = {c.labels["com.docker.compose.service"] for c in self.containers(all=True)}
        return "\n".join(self.logs(s, tail) for s in sorted(services))

    def enqueue(self, operation: str, payload=None, *options: str, check: bool = True,
                timeout: float = 300) -> list[dict]:
        """`manage.py enqueue` in web: the TaskRuns it printed, one dict per JSON line
        (check=False: also when it exits non-zero, e.g. a --wait that saw a FAILURE)."""
        args = [operation] + ([] if payload is None else [json.dumps(payload)]) + list(options)
        proc = self.compose("exec", "-T", "web", "python", "manage.py", "enqueue", *args,
                            check=check, timeout=timeout)
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

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
        states = {}

        def healthy():
            states.update({s: self.health(s) for s in services})
            return all(v == "healthy" for v in states.values())

        wait_for(healthy, timeout, interval=1, describe=lambda: f"{states}\n" + "\n".join(
            self.logs(s) for s, v in states.items() if v != "healthy"))

    def exec(self, service: str, cmd: list[str] | str, user: str | None = None,
             environment: dict | None = None) -> tuple[int, str]:
        result = self.container(service).exec_run(cmd, user=user or "", demux=False,
                                                  environment=environment)
        return result.exit_code, result.output.decode(errors="replace")

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


@contextmanager
def running(stack: Stack, services: list[str], show_logs=lambda: False):
    """`stack` up with `services` healthy for the block; then its logs if `show_logs()` (a
    test failed), and `down -v` whatever happened, a failed start included."""
    started = time.monotonic()
    try:
        stack.up(services)
        stack.started = services
        print(f"\nstack {stack.project} healthy in {time.monotonic() - started:.1f}s: "
              f"{', '.join(services)}", flush=True)
        yield stack
    finally:
        if show_logs():
            print(stack.all_logs(tail=80))
        stack.down()


def image_available(image: str) -> bool:
    """On this engine, or pulled within a minute (a registry-less engine refuses at once)."""
    for cmd, timeout in ((["docker", "image", "inspect", image], 30),
                         (["docker", "pull", "-q", image], 60)):
        try:
            if subprocess.run(cmd, capture_output=True, timeout=timeout).returncode == 0:
                return True
        except subprocess.TimeoutExpired:
            pass
    return False


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="What a compose project will start.")
    parser.add_argument("command", choices=["services"])
    parser.add_argument("--file", "-f", action="append", required=True)
    parser.add_argument("--project", "-p")
    parser.add_argument("--env-file")
    args = parser.parse_args(argv)
    print("\n".join(Stack(args.file, args.env_file, args.project).services()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
