"""The Swarm figure of `make bench`: the no-op drain by 1, 2 and 3 worker replicas, each on its
own node of a sandbox swarm, as ratios to 1 replica in the same run, with Redis's own CPU and
the machine's busy cores over each drain.

A sandbox of three nodes (scripts/swarm_sandbox.py) gets the production stack with `make
swarm-up`'s code (scripts/swarm.py); the stack's own app services are then scaled to nothing, so
that only Redis, Postgres and the proxy run beside the figure. Two services are cloned from the
stack's default worker (same image, variables, secrets, network): `bench-worker`, which runs
`celery -A bench_app worker` on the bench queue with the flags of images/django/start-celery, at
most one replica per node; and `bench-driver`, one task on the manager (next to Redis) in
which bench/inner.py runs. bench_app.py and inner.py reach both as Swarm configs. For each
replica count: `inner.py fill` queues N no-ops and sets them aside, the workers are scaled up,
`inner.py release` waits until they all answer a ping, puts the N back in one RENAME and times
the drain to the last ack. The sandbox, with everything in it, is removed at the end.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

import prod_secrets
import swarm
import swarm_sandbox

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
STACK = "trinity"
WORKER, DRIVER = "bench-worker", "bench-driver"
REPLICAS = (1, 2, 3)
# Scaled to nothing during the figure: idle, they still cost healthchecks on the same 2 cores.
IDLE = ["web", "fastapi", "celery", "celery-cpu", "celery-io", "beat"]
# The flags of images/django/start-celery; the concurrency is the stack's default (the cores).
WORKER_ARGS = ["celery", "-A", "bench_app", "worker", "--loglevel", "warning", "--queues",
               "trinity.bench", "--hostname", "bench@%h", "--pool", "prefork",
               "--without-gossip", "--without-mingle"]


def log(msg: str) -> None:
    print(f"[bench swarm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(n: int) -> dict:
    """{replicas: inner.py release's result} for 1, 2 and 3 replicas, on a sandbox of its own."""
    tag = os.environ.get("TRINITY_TAG") or "prod"
    sandbox = swarm_sandbox.Sandbox(f"trinity-bench-swarm-{secrets.token_hex(3)}", 3, tag)
    with tempfile.TemporaryDirectory(prefix="trinity-bench-swarm-") as tmp:
        try:
            sandbox.up()
            env = deploy(sandbox, Path(tmp), tag)
            return drains(sandbox, env, n)
        except SystemExit as exc:  # swarm.py's and the sandbox's errors: a failed figure
            raise RuntimeError(str(exc)) from None
        finally:
            sandbox.down()


def deploy(sandbox: swarm_sandbox.Sandbox, tmp: Path, tag: str) -> dict:
    """The stack on the sandbox, as `make swarm-up` deploys it (fresh secrets in tmp), with its
    app services at one replica; then those scaled to nothing. Returns swarm.py's settings."""
    env_file = tmp / "swarm.env"
    env_file.write_text((ROOT / "envs/prod.env").read_text() + "\n".join([
        f"SECRETS_DIR={tmp / 'secrets'}", "WEB_REPLICAS=1", "FASTAPI_REPLICAS=1",
        "CELERY_REPLICAS=1", ""]))
    env = {**os.environ, "SWARM_CONTEXT": sandbox.name, "SWARM_ENV": str(env_file),
           "SWARM_STACK": STACK, "TRINITY_TAG": tag}
    names = swarm.stack_config(swarm.settings(env))["secrets"]
    prod_secrets.create({key: tmp / "secrets" / key for key in names})
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "scripts/swarm.py", "up"], cwd=ROOT, env=env,
                          text=True, capture_output=True, timeout=1500)
    if proc.returncode:
        raise RuntimeError(f"swarm up failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    log(f"stack deployed in {time.monotonic() - started:.0f}s")
    settings = swarm.settings(env)
    swarm.docker(settings, "service", "scale", "--detach",
                 *[f"{STACK}_{name}=0" for name in IDLE])
    swarm.wait_converged(settings, time.monotonic())
    return settings


def drains(sandbox: swarm_sandbox.Sandbox, env: dict, n: int) -> dict:
    client = docker.DockerClient(base_url=sandbox.info()["docker_host"], version="auto",
                                 timeout=120)
    configs = [config(env, "bench_app.py"), config(env, "inner.py")]
    clone_worker(client, DRIVER, ["sleep", "infinity"], 1, configs,
                 {"Constraints": ["node.role == manager"]})
    clone_worker(client, WORKER, WORKER_ARGS, 0, configs, {"MaxReplicas": 1})
    manager = sandbox.client.containers.get(sandbox.node(1))
    wait(lambda: running(env, DRIVER) == 1, 180, f"{DRIVER} did not start",
         lambda: swarm.task_errors(env, DRIVER))
    results = {}
    for replicas in REPLICAS:
        inner(manager, "fill", "--n", str(n))
        swarm.docker(env, "service", "scale", "--detach", f"{WORKER}={replicas}")
        r = inner(manager, "release", "--n", str(n), "--workers", str(replicas))
        log(f"{replicas} replicas: {r['rate']:,.0f} /s, Redis {r['redis_cpu']:.2f} cores, host "
            f"{r['host_busy']:.2f} cores busy ({', '.join(r['workers'])})")
        results[replicas] = r
        swarm.docker(env, "service", "scale", "--detach", f"{WORKER}=0")
        # The next count starts with no worker left over (one still stopping would drain too).
        wait(lambda: not worker_containers(sandbox), 120, f"{WORKER} tasks still running",
             lambda: swarm.task_errors(env, WORKER))
    return results


def config(env: dict, name: str) -> dict:
    """bench/<name> as a Swarm config, mounted at /bench/<name> (world-readable: the image runs
    as its own user)."""
    config_name = f"bench-{name.replace('.', '-')}-{secrets.token_hex(3)}"
    config_id = swarm.docker(env, "config", "create", "--label", swarm.LABEL, config_name,
                             str(BENCH / name)).stdout.strip()
    return {"ConfigID": config_id, "ConfigName": config_name,
            "File": {"Name": f"/bench/{name}", "UID": "0", "GID": "0", "Mode": 0o444}}


def clone_worker(client, name: str, args: list[str], replicas: int, configs: list[dict],
                 placement: dict) -> None:
    """A service like the stack's default worker (image, variables, secrets, network, limits),
    running `args` with bench/ on its path; no healthcheck (it checks the stack's queues), not
    part of the stack (`stack rm` and its listing leave it alone)."""
    spec = client.api.inspect_service(f"{STACK}_celery")["Spec"]
    task = spec["TaskTemplate"]
    container = task["ContainerSpec"]
    container["Args"] = args
    container["Env"] = [e for e in container.get("Env", []) if not e.startswith("PYTHONPATH=")]
    container["Env"].append("PYTHONPATH=/bench:/app")
    container["Configs"] = configs
    container["Healthcheck"] = {"Test": ["NONE"]}
    container["Labels"] = not_stack(container.get("Labels"))
    task["Placement"] = placement
    for network in task.get("Networks", []):
        network.pop("Aliases", None)  # not reachable as `celery`
    client.api.create_service(task, name=name, labels=not_stack(spec.get("Labels")),
                              mode={"Replicated": {"Replicas": replicas}},
                              endpoint_spec=spec.get("EndpointSpec"))


def not_stack(labels: dict | None) -> dict:
    return {k: v for k, v in (labels or {}).items() if not k.startswith("com.docker.stack.")}


def running(env: dict, service: str) -> int:
    out = swarm.docker(env, "service", "ps", "--filter", "desired-state=running", "--format",
                       "{{.CurrentState}}", service).stdout
    return sum(line.startswith("Running") for line in out.splitlines())


def worker_containers(sandbox: swarm_sandbox.Sandbox) -> list[str]:
    """Containers of bench-worker on any node, stopping ones included."""
    found = []
    for i in range(1, sandbox.count + 1):
        node = sandbox.client.containers.get(sandbox.node(i))
        out = node.exec_run(["docker", "ps", "-q", "--filter",
                             f"label=com.docker.swarm.service.name={WORKER}"])
        found += out.output.decode().split()
    return found


def inner(manager, figure: str, *args: str) -> dict:
    """bench/inner.py in the driver's container on the manager node; its last line of JSON."""
    found = manager.exec_run(["docker", "ps", "-q", "--filter",
                              f"label=com.docker.swarm.service.name={DRIVER}"])
    ids = found.output.decode().split()
    if not ids:
        raise RuntimeError(f"no {DRIVER} container on {manager.name}")
    result = manager.exec_run(["docker", "exec", ids[0], "python", "/bench/inner.py", figure,
                               *args], demux=True)
    out, err = ((part or b"").decode(errors="replace") for part in result.output)
    lines = out.strip().splitlines()
    if result.exit_code or not lines:
        raise RuntimeError(f"inner {figure} failed ({result.exit_code}):\n{err[-3000:]}")
    return json.loads(lines[-1])


def wait(predicate, timeout: float, message: str, details=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{message} within {timeout:.0f}s\n{details()}")
        time.sleep(1)
