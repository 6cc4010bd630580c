#!/usr/bin/env python3
"""`make validate STACK=swarm`: the runbook's checks (`manage.py validate_stack`) against the
stack on a Docker Swarm, run inside a running task of the worker service, on its node.

Swarm has no `service exec`: the command goes to the task's container on its node, through the
sandbox's node container (`make swarm-sandbox`), or else through a docker context named after
the node's host name (`docker context create NODE --docker host=ssh://NODE`, one per node).
SWARM_CONTEXT (default trinity-swarm) names the manager's context, SWARM_STACK (default trinity)
the stack.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import swarm_sandbox

SERVICE = "celery"  # the worker service: its environment, its Redis user (remote control)


@dataclass
class SwarmTasks:
    """The running tasks of a stack, reached through their nodes."""

    context: str
    stack: str

    def __post_init__(self) -> None:
        sandbox = swarm_sandbox.Sandbox(self.context, 1, "unused")
        self.sandbox_nodes = {c.name for c in sandbox.existing()}

    def task(self, service: str) -> tuple[str, str] | None:
        """(node host name, container name) of a running task of `service`."""
        proc = subprocess.run(
            ["docker", "--context", self.context, "service", "ps", "--no-trunc", "--filter",
             "desired-state=running", "--format", "{{.Node}} {{.Name}}.{{.ID}} {{.CurrentState}}",
             f"{self.stack}_{service}"], capture_output=True, text=True, timeout=30)
        for line in proc.stdout.splitlines():
            node, container, state = line.split(" ", 2)
            if state.startswith("Running"):
                return node, container
        return None

    def exec_command(self, service: str, argv: list[str]) -> list[str] | None:
        """The command line that runs `argv` in a running task of `service`, or None."""
        found = self.task(service)
        if not found:
            return None
        node, container = found
        if node in self.sandbox_nodes:
            return ["docker", "exec", node, "docker", "exec", container, *argv]
        return ["docker", "--context", node, "exec", container, *argv]


def main() -> int:
    tasks = SwarmTasks(os.environ.get("SWARM_CONTEXT") or "trinity-swarm",
                       os.environ.get("SWARM_STACK") or "trinity")
    command = tasks.exec_command(SERVICE, ["python", "manage.py", "validate_stack"])
    if command is None:
        print(f"FAIL  workers: no running task of {tasks.stack}_{SERVICE}", flush=True)
        return 1
    print(f"validate: {' '.join(command)}", flush=True)
    try:
        # Its output goes straight to the terminal: each step's line shows when it is done.
        done = subprocess.run(command, timeout=300, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print("FAIL  validate: no answer within 300 s", flush=True)
        return 1
    return done.returncode if done.returncode in (0, 1) else 1


if __name__ == "__main__":
    sys.exit(main())
