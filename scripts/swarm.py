#!/usr/bin/env python3
"""Deploy the production stack to a Docker Swarm (`make swarm-up`), or remove it (`make swarm-down`).

    scripts/swarm.py up     check the secret files (as prod-up does), build the images on this
                            engine, push them to REGISTRY, create the missing Swarm secrets,
                            `docker stack deploy`, wait until every service converged and the
                            migrate job completed, print where the edge answers
    scripts/swarm.py down   `docker stack rm`, wait until its tasks are gone (volumes and secrets
                            stay: the database was initialised with those secrets)

Settings (environment, then the values file SWARM_ENV, default envs/prod.env; the shell wins):
  SWARM_CONTEXT   the docker context of a manager of the swarm (default trinity-swarm, the
                  sandbox's: `make swarm-sandbox`)
  SWARM_STACK     the stack's name (default trinity); Swarm secrets are named <stack>_<secret>
  REGISTRY        where the nodes pull the images from (host:port); for the sandbox's context it
                  defaults to the sandbox's registry
  REGISTRY_PUSH   where this host pushes them (default REGISTRY; the sandbox's published port)
  SWARM_WAIT      seconds to wait for convergence (default 600)
Images are built and pushed with the engine of the `default` context (SWARM_BUILD_CONTEXT),
never with the swarm's: a manager is not a build machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import prod_secrets
import swarm_sandbox

ROOT = Path(__file__).resolve().parent.parent
STACK_FILE = "docker-stack.example.yml"
# The compose template that builds the images the stack runs (the same images as prod-up).
BUILD_FILE = "docker-compose.example.yml"
BUILD_SERVICES = ["proxy", "postgres", "redis", "web", "fastapi"]
IMAGES = ["proxy", "postgres", "redis", "django", "fastapi"]
LABEL = "org.trinity.project=trinity"


class SwarmError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"swarm: {message}")


def log(step: str, started: float, what: str) -> None:
    print(f"swarm: {step:<9} {time.monotonic() - started:6.1f}s  {what}", flush=True)


def env_file_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[name.strip()] = value
    return values


def settings(environ=os.environ) -> dict[str, str]:
    """The values `docker stack deploy` interpolates: the env file, the shell over it, then
    what the stack file cannot compute itself."""
    env_path = ROOT / (environ.get("SWARM_ENV") or "envs/prod.env")
    if not env_path.is_file():
        raise SwarmError(f"SWARM_ENV: {env_path} does not exist")
    env = {**env_file_values(env_path), **environ}
    env["SWARM_ENV"] = str(env_path)
    env["SWARM_CONTEXT"] = env.get("SWARM_CONTEXT") or "trinity-swarm"
    env["SWARM_STACK"] = env.get("SWARM_STACK") or "trinity"
    env["TRINITY_TAG"] = env.get("TRINITY_TAG") or "prod"
    # The compose template's nested default, which a stack file cannot spell.
    env["CELERY_CPU_CONCURRENCY"] = (env.get("CELERY_CPU_CONCURRENCY")
                                     or env.get("CELERY_WORKER_CONCURRENCY") or "")
    if not env.get("REGISTRY"):
        sandbox = sandbox_info(env["SWARM_CONTEXT"])
        if not sandbox:
            raise SwarmError("REGISTRY is required: the host:port every node pulls the images "
                             "from (only the sandbox's context has a default)")
        env["REGISTRY"] = sandbox["registry"]
        env.setdefault("REGISTRY_PUSH", sandbox["registry_push"])
    env["REGISTRY_PUSH"] = env.get("REGISTRY_PUSH") or env["REGISTRY"]
    return env


def sandbox_info(context: str) -> dict | None:
    """The sandbox behind `context`, if it is one (`make swarm-sandbox` names both alike)."""
    sandbox = swarm_sandbox.Sandbox(context, 1, "unused")
    if not sandbox.existing():
        return None
    return sandbox.info()


def docker(env: dict, *args: str, context: str | None = None, check: bool = True,
           timeout: float = 600, capture: bool = True) -> subprocess.CompletedProcess:
    cmd = ["docker", "--context", context or env["SWARM_CONTEXT"], *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, timeout=timeout,
                          capture_output=capture)
    if check and proc.returncode:
        raise SwarmError(f"`{' '.join(args[:3])} ...` failed ({proc.returncode}):\n"
                         f"{(proc.stderr or '')[-3000:]}")
    return proc


def stack_config(env: dict) -> dict:
    """The stack file as `docker stack deploy` reads it (interpolated, merged); needs no swarm."""
    out = docker(env, "stack", "config", "-c", STACK_FILE, context="default").stdout
    import yaml  # the host venv's; stack config prints YAML only

    return yaml.safe_load(out)


# ---- up -------------------------------------------------------------------------------------
def check_secret_files(env: dict, config: dict) -> dict[str, Path]:
    """Secret -> its file in SECRETS_DIR; refuse missing, empty or placeholder ones."""
    folder = Path(env.get("SECRETS_DIR") or "./secrets")
    if not folder.is_absolute():
        folder = ROOT / folder
    files = {name: folder / name for name in config.get("secrets", {})}
    problems = prod_secrets.problems(files)
    if problems:
        raise SwarmError("refusing to deploy:\n  " + "\n  ".join(problems)
                         + "\n(make prod-secrets creates the missing ones, SECRETS_DIR says where)")
    return files


def manager_check(env: dict) -> None:
    proc = docker(env, "info", "--format", "{{.Swarm.ControlAvailable}}", check=False)
    if proc.returncode or proc.stdout.strip() != "true":
        raise SwarmError(f"docker context {env['SWARM_CONTEXT']} is not a swarm manager "
                         f"({(proc.stderr or proc.stdout).strip()[:300]}); `make swarm-sandbox` "
                         "starts a local one, SWARM_CONTEXT names another")


def build_and_push(env: dict, started: float) -> None:
    build_env = {**env, "BASE_IMAGE": env.get("BASE_IMAGE") or base_image()}
    if env.get("SWARM_BUILD", "1") != "0":
        docker(build_env, "compose", "-f", BUILD_FILE, "--env-file", env["SWARM_ENV"], "build",
               *BUILD_SERVICES, context=env.get("SWARM_BUILD_CONTEXT") or "default",
               timeout=1800)
        log("build", started, f"trinity/{{{','.join(IMAGES)}}}:{env['TRINITY_TAG']}")
    for image in IMAGES:
        local = f"trinity/{image}:{env['TRINITY_TAG']}"
        remote = f"{env['REGISTRY_PUSH']}/{local}"
        docker(env, "tag", local, remote, context=env.get("SWARM_BUILD_CONTEXT") or "default")
        docker(env, "push", "--quiet", remote, context=env.get("SWARM_BUILD_CONTEXT") or "default")
        # Only the name goes: the image stays as trinity/<image>:<tag>, and no registry's name
        # is left behind on the build engine (a sandbox's port changes at every start).
        docker(env, "rmi", remote, context=env.get("SWARM_BUILD_CONTEXT") or "default")
    log("push", started, f"{len(IMAGES)} images to {env['REGISTRY_PUSH']}"
        + (f" (nodes pull from {env['REGISTRY']})" if env["REGISTRY"] != env["REGISTRY_PUSH"] else ""))


def base_image() -> str:
    path = ROOT / ".base-image"
    return path.read_text().strip() if path.is_file() else "debian:trixie-slim"


def create_secrets(env: dict, config: dict, files: dict[str, Path], started: float) -> None:
    existing = set(docker(env, "secret", "ls", "--format", "{{.Name}}").stdout.split())
    created = []
    for key, spec in sorted(config.get("secrets", {}).items()):
        name = spec.get("name") or key
        if name in existing:
            continue
        docker(env, "secret", "create", "--label", LABEL, name, str(files[key]))
        created.append(name)
    log("secrets", started, f"created {', '.join(created)}" if created
        else f"all {len(files)} present (kept: a Swarm secret cannot change; rotate by name)")


def deploy(env: dict, started: float) -> None:
    docker(env, "stack", "deploy", "--detach=true", "--prune", "--with-registry-auth",
           "--resolve-image", "always", "-c", STACK_FILE, env["SWARM_STACK"])
    log("deploy", started, f"stack {env['SWARM_STACK']} on context {env['SWARM_CONTEXT']}")


def services(env: dict) -> list[dict]:
    out = docker(env, "service", "ls", "--filter",
                 f"label=com.docker.stack.namespace={env['SWARM_STACK']}",
                 "--format", "{{json .}}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def update_states(env: dict, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    out = docker(env, "service", "inspect", *names, "--format",
                 "{{.Spec.Name}} {{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}").stdout
    return {line.split()[0]: (line.split() + [""])[1] for line in out.splitlines()}


def pending(env: dict) -> list[str]:
    """What has not converged yet: `name running/wanted` per service, `name job` for a job that
    has not completed; an update that rolled back is an error."""
    found = services(env)
    if not found:
        return ["no service of the stack yet"]
    states = update_states(env, [s["Name"] for s in found])
    waiting = []
    for s in found:
        state = states.get(s["Name"], "")
        if state.startswith("rollback"):
            raise SwarmError(f"{s['Name']}: the update failed and was rolled back ({state}):\n"
                             + task_errors(env, s["Name"]))
        replicas = s["Replicas"]
        if "job" in s["Mode"]:
            # "0/1 (1/1 completed)"
            done = replicas.partition("(")[2].split()[0] if "(" in replicas else ""
            total = done.split("/")
            if len(total) != 2 or total[0] != total[1]:
                waiting.append(f"{s['Name']} {replicas}")
            continue
        running, _, wanted = replicas.split()[0].partition("/")
        if running != wanted or state in ("updating", "paused"):
            waiting.append(f"{s['Name']} {replicas} {state}".strip())
    return waiting


def task_errors(env: dict, service: str) -> str:
    return docker(env, "service", "ps", "--no-trunc", "--format",
                  "{{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}", service,
                  check=False).stdout[-2000:]


def wait_converged(env: dict, started: float) -> None:
    deadline = time.monotonic() + float(env.get("SWARM_WAIT") or 600)
    last = None
    while True:
        waiting = pending(env)
        if not waiting:
            break
        if waiting != last:
            log("wait", started, "; ".join(waiting))
            last = waiting
        if time.monotonic() > deadline:
            details = []
            for item in waiting:
                name = item.split()[0]
                logs = docker(env, "service", "logs", "--tail", "20", "--no-task-ids", name,
                              check=False)
                details.append(f"--- {name}\n{task_errors(env, name)}\n"
                               f"{(logs.stdout + logs.stderr)[-2000:]}")
            raise SwarmError("not converged after SWARM_WAIT seconds:\n" + "\n".join(details))
        time.sleep(3)
    log("converged", started, ", ".join(f"{s['Name']} {s['Replicas']}" for s in services(env)))


def edge_addresses(env: dict) -> list[str]:
    sandbox = sandbox_info(env["SWARM_CONTEXT"])
    if sandbox:
        return [f"https://{sandbox['edge']['https']}  (the sandbox's edge node, port "
                f"{sandbox['edge_node_ports']['https']} published on this host's loopback)"]
    nodes = docker(env, "node", "ls", "--filter", "node.label=trinity.edge=true", "--format",
                   "{{.Hostname}}").stdout.split()
    port = env.get("PROXY_HTTPS_PORT") or "443"
    return [f"https://{node}:{port}" for node in nodes] or [
        "nowhere: no node is labelled trinity.edge=true "
        "(docker node update --label-add trinity.edge=true NODE)"]


def up(env: dict) -> None:
    started = time.monotonic()
    config = stack_config(env)
    files = check_secret_files(env, config)
    log("check", started, f"{STACK_FILE} valid, {len(files)} secret files ok")
    manager_check(env)
    build_and_push(env, started)
    create_secrets(env, config, files, started)
    deploy(env, started)
    wait_converged(env, started)
    print(f"\n  Edge:     {'  '.join(edge_addresses(env))}"
          f"\n  Services: docker --context {env['SWARM_CONTEXT']} stack services {env['SWARM_STACK']}"
          f"\n  Token:    docker --context {env['SWARM_CONTEXT']} exec <a web task's container> "
          "python manage.py create_api_token --tenant public --name NAME  (on its node)")


def down(env: dict) -> None:
    started = time.monotonic()
    docker(env, "stack", "rm", env["SWARM_STACK"])
    deadline = time.monotonic() + 120
    # The stack's networks go last, once no task is attached to them any more; the manager's
    # own containers are the last the manager can see (warm shutdown takes up to a minute).
    label = f"label=com.docker.stack.namespace={env['SWARM_STACK']}"
    while (services(env) or docker(env, "network", "ls", "-q", "--filter", label).stdout.strip()
           or docker(env, "ps", "-aq", "--filter", label).stdout.strip()):
        if time.monotonic() > deadline:
            raise SwarmError(f"stack {env['SWARM_STACK']} still has tasks after 120s")
        time.sleep(1)
    log("removed", started, f"stack {env['SWARM_STACK']} (volumes and secrets kept)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "config"])
    args = parser.parse_args(argv)
    if args.action == "down":
        env = {**os.environ, "SWARM_CONTEXT": os.environ.get("SWARM_CONTEXT") or "trinity-swarm",
               "SWARM_STACK": os.environ.get("SWARM_STACK") or "trinity"}
        down(env)
        return 0
    env = settings()
    if args.action == "config":
        print(json.dumps(stack_config(env), indent=2))
    else:
        up(env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
