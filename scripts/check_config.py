#!/usr/bin/env python3
"""`make check-config`: the env files, the compose templates and celery_settings.py agree.

    .venv/bin/python scripts/check_config.py [--root DIR]

The Celery/Redis variables are the ones `config/celery_settings.py` reads: every
`_get(environ, "NAME")`, `_positive_int(environ, "NAME", ...)`, `_queue_name(environ, "NAME", ...)`
(and `environ.get("NAME")`, `os.getenv("NAME")`) found by parsing its source with `ast`, plus the
CELERY_*/REDIS_URL rows of its docstring's table; the code and the table must agree. A row
described "per worker ..." (CELERY_WORKER_QUEUES) is set per service, so it is not required below.
Then:

  envs/dev.env, envs/prod.env           name every variable (prod.env: when it exists; it must
                                        exist once docker-compose.example.yml does)
  x-celery-env of the compose templates has every variable as a key, no other CELERY_* key, and
                                        each value reads its own ${NAME} (else the env file's value
                                        would be ignored); so has the Swarm stack's
                                        (docker-stack.example.yml), when it exists
  every service running Django/Celery   (image trinity/django or trinity/fastapi, or build target
  or FastAPI                            django/fastapi) has every x-celery-env key in its resolved
                                        environment, i.e. merges the anchor

Prints one line per problem (`envs/prod.env: missing CELERY_IO_QUEUE (named by
config/celery_settings.py)`) and exits 1; else `check-config: OK (N variables, M files)`.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = Path("services/TrinityBackendDjango/config/celery_settings.py")
SETTINGS_NAME = "config/celery_settings.py"  # how messages name it
ENV_FILES = (Path("envs/dev.env"), Path("envs/prod.env"))
DEV_COMPOSE = Path("docker-compose-dev.example.yml")
PROD_COMPOSE = Path("docker-compose.example.yml")
SWARM_STACK = Path("docker-stack.example.yml")
PROD_ENV = Path("envs/prod.env")
ANCHOR = "x-celery-env"

# Helpers of celery_settings.py whose second argument is a variable name, and mapping methods
# whose first argument is one.
NAME_ARG_HELPERS = {"_get": 1, "_positive_int": 1, "_queue_name": 1, "_redis_url": 0}
ENV_LOOKUPS = {"get", "getenv", "__getitem__", "pop"}
VARIABLE = re.compile(r"^(?:CELERY_[A-Z0-9_]+|REDIS_URL)$")
TABLE_ROW = re.compile(r"^\s*(CELERY_[A-Z0-9_]+|REDIS_URL)(?=\s|$)", re.MULTILINE)
PER_SERVICE_ROW = re.compile(r"^\s*(CELERY_[A-Z0-9_]+|REDIS_URL)\s+per[ -](?:worker|service)\b",
                             re.MULTILINE | re.IGNORECASE)
APP_IMAGE = re.compile(r"(?:^|/)trinity/(?:django|fastapi)(?::|$)")
APP_TARGETS = {"django", "fastapi"}


# ---- celery_settings.py ------------------------------------------------------------------------

def variables_in_code(source: str) -> set[str]:
    """Variable names the module reads, found in its AST (never by importing it)."""
    names: set[str] = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        candidates = []
        if isinstance(func, ast.Name) and func.id in NAME_ARG_HELPERS:
            position = NAME_ARG_HELPERS[func.id]
            candidates = node.args[position:position + 1]
            candidates += [kw.value for kw in node.keywords if kw.arg == "name"]
        elif isinstance(func, ast.Attribute) and func.attr in ENV_LOOKUPS and node.args:
            candidates = node.args[:1]
        for arg in candidates:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                    and VARIABLE.match(arg.value):
                names.add(arg.value)
    for node in ast.walk(tree):  # os.environ["NAME"]
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str) and VARIABLE.match(node.slice.value):
            names.add(node.slice.value)
    return names


def variables_in_docstring(source: str) -> set[str]:
    """The CELERY_*/REDIS_URL names that start a line of the module docstring (its table)."""
    doc = ast.get_docstring(ast.parse(source)) or ""
    return set(TABLE_ROW.findall(doc))


def per_service_variables(source: str) -> set[str]:
    """Table rows described as "per worker"/"per service": set by one service, not shared.

    They stay out of the env files and the anchor (compose sets them on the service that
    needs them, e.g. CELERY_WORKER_QUEUES on each prod worker).
    """
    doc = ast.get_docstring(ast.parse(source)) or ""
    return set(PER_SERVICE_ROW.findall(doc))


def settings_variables(source: str) -> tuple[set[str], list[str]]:
    """(the shared variables named by the module, problems where its code and table disagree)."""
    code, table = variables_in_code(source), variables_in_docstring(source)
    problems = []
    for name in sorted(code - table):
        problems.append(f"{SETTINGS_NAME}: reads {name} but its docstring table does not list it")
    for name in sorted(table - code):
        problems.append(f"{SETTINGS_NAME}: docstring table lists {name} but the code never "
                        "reads it")
    if not code | table:
        problems.append(f"{SETTINGS_NAME}: no CELERY_*/REDIS_URL variable found "
                        "(did the helpers change names?)")
    return (code | table) - per_service_variables(source), problems


# ---- env files ---------------------------------------------------------------------------------

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def env_file_names(text: str) -> set[str]:
    """Names assigned in a dotenv file (comments and blank lines ignored)."""
    names = set()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match:
            names.add(match.group(1))
    return names


# ---- compose templates -------------------------------------------------------------------------

class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader (which resolves `<<` merges) that also accepts compose's !reset/!override."""


def _construct_any(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_multi_constructor("!", _construct_any)


def load_compose(text: str) -> dict:
    data = yaml.load(text, Loader=_ComposeLoader)  # noqa: S506 (SafeLoader subclass)
    return data if isinstance(data, dict) else {}


def environment_keys(environment) -> set[str]:
    """Keys of a service's `environment:` (mapping, or list of KEY=VALUE / KEY)."""
    if isinstance(environment, dict):
        return {str(key) for key in environment}
    if isinstance(environment, list):
        return {str(item).split("=", 1)[0] for item in environment}
    return set()


def is_app_service(service: dict) -> bool:
    """Runs Django, Celery or FastAPI: a trinity/django|fastapi image or build target."""
    if not isinstance(service, dict):
        return False
    build = service.get("build")
    if isinstance(build, dict) and build.get("target") in APP_TARGETS:
        return True
    return bool(APP_IMAGE.search(str(service.get("image") or "")))


def _reads_itself(name: str, value) -> bool:
    return re.search(r"\$\{?" + re.escape(name) + r"(?![A-Za-z0-9_])", str(value or "")) is not None


def check_compose(label: str, text: str, variables: set[str],
                  per_service: frozenset[str] = frozenset()) -> list[str]:
    try:
        data = load_compose(text)
    except yaml.YAMLError as exc:
        return [f"{label}: not valid YAML ({exc})"]
    anchor = data.get(ANCHOR)
    if not isinstance(anchor, dict):
        return [f"{label}: no {ANCHOR} mapping (the shared Celery environment)"]
    problems = []
    keys = set(anchor)
    for name in sorted(variables - keys):
        problems.append(f"{label}: {ANCHOR}: missing {name} (named by {SETTINGS_NAME})")
    for name in sorted(k for k in keys - variables - per_service if VARIABLE.match(k)):
        problems.append(f"{label}: {ANCHOR}: {name} is not read by {SETTINGS_NAME}")
    for name in sorted(keys & variables):
        if not _reads_itself(name, anchor[name]):
            problems.append(f"{label}: {ANCHOR}: {name}: {anchor[name]!r} does not read "
                            f"${{{name}}} (the env file's value would be ignored)")
    services = data.get("services") or {}
    app_services = [name for name, svc in services.items() if is_app_service(svc)]
    if not app_services:
        problems.append(f"{label}: no service runs Django, Celery or FastAPI "
                        "(image trinity/django|fastapi or build target django|fastapi)")
    for name in app_services:
        missing = keys - environment_keys(services[name].get("environment"))
        if missing:
            problems.append(f"{label}: service {name}: environment lacks "
                            f"{', '.join(sorted(missing))} of {ANCHOR} (merge the anchor: "
                            f"<<: *celery-env)")
    return problems


# ---- all of it ---------------------------------------------------------------------------------

def check(root: Path) -> tuple[list[str], list[str], set[str], list[Path]]:
    """(problems, notes, variables, files checked) for the repository at ``root``."""
    problems: list[str] = []
    notes: list[str] = []
    checked: list[Path] = []
    settings = root / SETTINGS
    if not settings.is_file():
        return [f"{SETTINGS}: not found"], notes, set(), checked
    source = settings.read_text()
    variables, settings_problems = settings_variables(source)
    per_service = frozenset(per_service_variables(source))
    problems += settings_problems
    checked.append(SETTINGS)

    prod_compose_exists = (root / PROD_COMPOSE).is_file()
    missing_files = []
    for rel in ENV_FILES:
        path = root / rel
        if not path.is_file():
            if rel == PROD_ENV and prod_compose_exists:
                problems.append(f"{rel}: missing (required: {PROD_COMPOSE} exists)")
            elif rel == PROD_ENV:
                missing_files.append(rel)
            else:
                problems.append(f"{rel}: missing")
            continue
        checked.append(rel)
        names = env_file_names(path.read_text())
        for name in sorted(variables - names):
            problems.append(f"{rel}: missing {name} (named by {SETTINGS_NAME})")

    for rel in (DEV_COMPOSE, PROD_COMPOSE, SWARM_STACK):
        path = root / rel
        if not path.is_file():
            if rel == DEV_COMPOSE:
                problems.append(f"{rel}: missing")
            elif rel == PROD_COMPOSE:
                missing_files.append(rel)
            continue
        checked.append(rel)
        problems += check_compose(str(rel), path.read_text(), variables, per_service)

    if missing_files:
        notes.append("check-config: not present, not checked: "
                     + ", ".join(str(p) for p in missing_files))
    return problems, notes, variables, checked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    problems, notes, variables, checked = check(args.root)
    for note in notes:
        print(note)
    for problem in problems:
        print(problem)
    if problems:
        print(f"check-config: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
        return 1
    print(f"check-config: OK ({len(variables)} variables, {len(checked)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
