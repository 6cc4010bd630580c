#!/usr/bin/env python3
"""`make check-config`: the env files, compose files, images' scripts and the README agree with
the one declaration of every variable, services/TrinityBackendDjango/config/variables.py.

    .venv/bin/python scripts/check_config.py [--root DIR] [--write-readme]

- every name an env file sets, a compose file interpolates or gives a service, or an image's
  script takes with a default (${NAME:-...}) is declared (NAME_FILE: for a secret NAME);
- each env file sets every variable declared for it;
- a default written outside the code equals the declared one, and a variable whose default is
  in the code gets none elsewhere (compose passes ${NAME:-});
- in each template, every service that runs a reader of a variable its env file sets receives
  it, and not as a fixed value that would hide the env file's (`docker compose config`);
- the README's "Environment" table is the declaration's (--write-readme rewrites it).

Prints one line per problem and exits 1; else `check-config: OK (N variables, M files)`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DJANGO = ROOT / "services/TrinityBackendDjango"
DECLARATION = "config/variables.py"
TEMPLATES = {"docker-compose-dev.example.yml": "dev", "docker-compose.example.yml": "prod"}
README = "README.md"
TABLE_HEAD = "| variable | default | meaning |"

NAME = r"[A-Z][A-Z0-9_]*"
ENV_LINE = re.compile(rf"^\s*(?:export\s+)?({NAME})\s*=", re.MULTILINE)
REFERENCE = re.compile(rf"\$\{{({NAME})")  # any ${NAME...}
INPUT = re.compile(rf"\$\{{({NAME}):?[-=?+]")  # ${NAME:-...}: a script's configurable input
LITERAL_DEFAULT = re.compile(rf"\$\{{({NAME}):?[-=]([^}}$]+)\}}")
APP_ROLES = {"django": {"celery", "django"}, "fastapi": {"celery", "gateway"}}


def load_variables():
    """config/variables.py of this repository, without the Django project's config/__init__."""
    if "config.variables" not in sys.modules:
        package = types.ModuleType("config")
        package.__path__ = [str(DJANGO / "config")]
        sys.modules.setdefault("config", package)
    return importlib.import_module("config.variables")


def _uncommented(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


class Checker:
    def __init__(self, root: Path):
        self.root = root
        self.variables = load_variables()
        self.declared = self.variables.BY_NAME
        self.problems: list[str] = []
        self.files = 0

    def known(self, name: str) -> bool:
        base = name.removesuffix("_FILE")
        return name in self.declared or (base != name and base in self.declared
                                         and self.declared[base].secret)

    def read(self, rel: str) -> str | None:
        path = self.root / rel
        if not path.is_file():
            self.problems.append(f"{rel}: missing")
            return None
        self.files += 1
        return path.read_text()

    def env_files(self) -> None:
        for env in ("dev", "prod"):
            rel = f"envs/{env}.env"
            text = self.read(rel)
            if text is None:
                continue
            names = set(ENV_LINE.findall(_uncommented(text)))
            self.problems += [f"{rel}: {n} is not declared in {DECLARATION}"
                              for n in sorted(names) if not self.known(n)]
            self.problems += [f"{rel}: missing {v.name} (declared for it in {DECLARATION})"
                              for v in self.variables.VARIABLES
                              if env in v.files and v.name not in names]

    def references(self, rel: str, text: str, pattern: re.Pattern) -> None:
        text = _uncommented(text)
        for name in sorted(set(pattern.findall(text))):
            if not self.known(name):
                self.problems.append(f"{rel}: {name} is not declared in {DECLARATION}")
        for name, default in sorted(set(LITERAL_DEFAULT.findall(text))):
            variable = self.declared.get(name)
            if variable is None:
                continue
            if variable.parse is not None:
                self.problems.append(f"{rel}: {name} defaults to {default!r} here; leave the "
                                     f"default to the code (${{{name}:-}})")
            elif default != variable.default:
                self.problems.append(f"{rel}: {name} defaults to {default!r} here, "
                                     f"{variable.default!r} in {DECLARATION}")

    def compose_and_scripts(self) -> None:
        for path in sorted([*self.root.glob("*.example.yml"), *self.root.glob("compose/*.yml")]):
            self.files += 1
            self.references(str(path.relative_to(self.root)), path.read_text(), REFERENCE)
        for path in sorted(self.root.glob("images/*/*")):
            if path.is_file() and path.name != "Dockerfile":
                self.files += 1
                self.references(str(path.relative_to(self.root)), path.read_text(), INPUT)

    def services(self, template: str) -> dict:
        proc = subprocess.run(["docker", "compose", "-f", template, "config", "--no-interpolate",
                               "--format", "json"], cwd=self.root, capture_output=True, text=True)
        if proc.returncode != 0:
            self.problems.append(f"{template}: docker compose config failed: "
                                 f"{proc.stderr.strip()[-500:]}")
            return {}
        return json.loads(proc.stdout).get("services") or {}

    def service_environments(self) -> None:
        for template, env in TEMPLATES.items():
            if not (self.root / template).is_file():
                self.problems.append(f"{template}: missing")
                continue
            for name, service in self.services(template).items():
                self.service(f"{template}: service {name}", env, service)

    def service(self, label: str, env: str, service: dict) -> None:
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        self.problems += [f"{label}: {key} is not declared in {DECLARATION}"
                          for key in sorted(environment) if not self.known(key)]
        roles = set()
        match = re.search(r"trinity/(django|fastapi|proxy|postgres|redis)\b|\b(mongo)\b",
                          str(service.get("image") or ""))
        if match:
            role = match.group(1) or match.group(2)
            roles = set(APP_ROLES.get(role, {role}))
        command = service.get("command") or [""]
        command = str(command[0] if isinstance(command, list) else command.split()[0])
        if roles == {"postgres"} and command not in ("", "postgres"):
            roles = set()  # the postgres image running another program (start-backup)
        roles.add(command)
        for variable in self.variables.VARIABLES:
            if env not in variable.files or not roles & set(variable.read_by):
                continue
            value = environment.get(variable.name)
            if value is None and not (variable.secret and f"{variable.name}_FILE" in environment):
                self.problems.append(f"{label}: lacks {variable.name}, which envs/{env}.env "
                                     "sets (pass it: ${" + variable.name + ":-})")
            elif value is not None and "${" not in str(value):
                self.problems.append(f"{label}: {variable.name} is fixed to {value!r}, so "
                                     f"envs/{env}.env's {variable.name} is ignored")

    def readme(self, write: bool) -> None:
        text = self.read(README)
        if text is None:
            return
        lines = text.splitlines(keepends=True)
        if TABLE_HEAD + "\n" not in lines:
            self.problems.append(f"{README}: no table headed {TABLE_HEAD!r}")
            return
        start = lines.index(TABLE_HEAD + "\n")
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        table = self.variables.markdown()
        if "".join(lines[start:end]) == table:
            return
        if write:
            (self.root / README).write_text("".join(lines[:start]) + table + "".join(lines[end:]))
            print(f"{README}: Environment table rewritten from {DECLARATION}")
        else:
            self.problems.append(f"{README}: the Environment table differs from {DECLARATION} "
                                 "(scripts/check_config.py --write-readme rewrites it)")


def check(root: Path, write_readme: bool = False) -> Checker:
    checker = Checker(root)
    checker.env_files()
    checker.compose_and_scripts()
    checker.service_environments()
    checker.readme(write_readme)
    return checker


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    parser.add_argument("--write-readme", action="store_true",
                        help="rewrite the README's Environment table from the declaration")
    args = parser.parse_args(argv)
    checker = check(args.root, args.write_readme)
    for problem in checker.problems:
        print(problem)
    if checker.problems:
        count = len(checker.problems)
        print(f"check-config: {count} problem{'s' if count != 1 else ''}")
        return 1
    print(f"check-config: OK ({len(checker.variables.VARIABLES)} variables, "
          f"{checker.files} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
