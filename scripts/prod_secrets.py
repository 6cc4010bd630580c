#!/usr/bin/env python3
"""The production secrets: one file each in SECRETS_DIR, as docker-compose.yml's `secrets:` names.

    scripts/prod_secrets.py create   make every missing file with a random value (never overwrites)
    scripts/prod_secrets.py check    exit 1 naming each file that is missing, empty or a placeholder

The names come from the compose file itself (`docker compose config`), so a secret added there
is created and checked here with no second list. The folder is 0700 (only its owner can list
or open it on the host); the files are 0644 because compose bind-mounts each one alone into a
container whose processes run as their own non-root users. Standard library only: it runs on a
production host before anything is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Values that must never reach production (config/celery_settings.py refuses them too).
INSECURE_MARKERS = ("CHANGE-ME", "insecure-")


def compose_secrets(compose_file: str, env_file: str) -> dict[str, Path]:
    """Secret name -> host file, from the compose file with every profile on."""
    out = subprocess.run(["docker", "compose", "-f", compose_file, "--env-file", env_file,
                          "--profile", "*", "config", "--format", "json"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return {name: Path(spec["file"]) for name, spec in json.loads(out).get("secrets", {}).items()}


def new_value(name: str) -> str:
    if name == "flower-basic-auth":
        return f"admin:{secrets.token_hex(16)}"
    # 64 characters: Django's check --deploy wants a key of 50 or more.
    return secrets.token_hex(32)


def create(files: dict[str, Path]) -> None:
    for name, path in sorted(files.items()):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            print(f"secrets: {name}: kept {path}")
            continue
        path.write_text(new_value(name) + "\n")
        path.chmod(0o644)
        print(f"secrets: {name}: created {path}")


def problems(files: dict[str, Path]) -> list[str]:
    found = []
    for name, path in sorted(files.items()):
        if not path.is_file():
            found.append(f"{name}: {path} is missing (make prod-secrets creates it)")
            continue
        value = path.read_text().strip()
        if not value:
            found.append(f"{name}: {path} is empty")
        elif any(marker in value for marker in INSECURE_MARKERS):
            found.append(f"{name}: {path} holds a placeholder or development value")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["create", "check"])
    parser.add_argument("--file", default="docker-compose.yml")
    parser.add_argument("--env-file", default="envs/prod.env")
    args = parser.parse_args(argv)
    files = compose_secrets(args.file, args.env_file)
    if args.action == "create":
        create(files)
        return 0
    found = problems(files)
    for line in found:
        print(f"secrets: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
