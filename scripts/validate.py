#!/usr/bin/env python3
"""`make validate`: the runbook's checks against the RUNNING stack, PASS/FAIL per step.

    .venv/bin/python scripts/validate.py --file docker-compose-dev.yml [--file ...]
        [--project NAME] [--env-file PATH] [-- VALIDATE_STACK_OPTIONS]

The checks run inside the stack: `manage.py validate_stack` (apps/orchestration) in a one-off
container of the worker service (`docker compose run --rm --no-deps celery ...`), which has the
workers' credentials (production lets no other Redis user use Celery's remote control) and
starts even when every worker is down, so that is reported as the failed step it is. This side
only starts it, shows its lines as they come and hands on its exit status: 0 all passed, 1 a
step failed (or the check could not be started or answer within --timeout), 2 bad usage.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from stack import ROOT, Stack

SERVICE = "celery"  # the worker service: its image, its environment, its Redis user


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Check the running stack's Celery workers, queues and tasks end to end.")
    parser.add_argument("--file", "-f", action="append", required=True,
                        help="compose file of the running stack (repeat for overlays)")
    parser.add_argument("--project", "-p", help="compose project name (default: compose's)")
    parser.add_argument("--env-file", help="docker compose --env-file (default: compose's .env)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds the whole check may take (default 300)")
    parser.add_argument("options", nargs="*", help="passed on to manage.py validate_stack")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [f for f in args.file if not (ROOT / f).is_file() and not Path(f).is_file()]
    if missing:
        print(f"validate: {', '.join(missing)} not found (copy it from its .example.yml "
              "template)", file=sys.stderr)
        return 2
    stack = Stack(args.file, args.env_file, args.project)
    command = ["run", "--rm", "--no-deps", "-T", SERVICE, "python", "manage.py",
               "validate_stack", *args.options]
    print(f"validate: {' '.join(stack.compose_cmd(*command))}", flush=True)
    try:
        # Its output goes straight to the terminal: each step's line shows when it is done.
        done = stack.compose(*command, check=False, capture=False, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"FAIL  validate: no answer within {args.timeout:g} s", flush=True)
        return 1
    if done.returncode not in (0, 1):  # compose could not start it: say so as a step would
        print(f"FAIL  validate: `docker compose run` exited {done.returncode} (see above)")
        return 1
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
