#!/usr/bin/env python3
"""`make validate STACK=swarm`: the runbook's checks (scripts/validate.py) against the stack on a
Docker Swarm, each run inside a running task of the service, on whichever node runs it.

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
import validate


@dataclass
class SwarmTasks:
    """validate.Compose's interface (base, exec) over the tasks of a stack."""

    context: str
    stack: str

    def __post_init__(self) -> None:
        sandbox = swarm_sandbox.Sandbox(self.context, 1, "unused")
        self.sandbox_nodes = {c.name for c in sandbox.existing()} if sandbox.existing() else set()

    def base(self) -> list[str]:
        return ["docker", "--context", self.context, "stack", self.stack]

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

    def exec(self, service: str, argv: list[str], timeout: float) -> validate.Completed:
        shown = f"{service}: {' '.join(validate._quote(a) for a in argv)}"
        found = self.task(service)
        if not found:
            return validate.Completed(1, "", f"no running task of {self.stack}_{service}", shown)
        node, container = found
        if node in self.sandbox_nodes:
            cmd = ["docker", "exec", node, "docker", "exec", container, *argv]
        else:
            cmd = ["docker", "--context", node, "exec", container, *argv]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            return validate.Completed(None, validate._text(exc.stdout),
                                      validate._text(exc.stderr), shown)
        return validate.Completed(proc.returncode, proc.stdout or "", proc.stderr or "", shown)


def main() -> int:
    tasks = SwarmTasks(os.environ.get("SWARM_CONTEXT") or "trinity-swarm",
                       os.environ.get("SWARM_STACK") or "trinity")
    print(f"validate: stack {tasks.stack} on docker context {tasks.context} "
          "(workers: celery, Django: web)", flush=True)
    steps = validate.build_steps(tasks, "celery", "web")
    results = validate.run_steps(steps, {},
                                 emit=lambda r: print(validate.format_result(r), flush=True))
    print(validate.summary_line(results), flush=True)
    return validate.exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
