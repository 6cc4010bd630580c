#!/usr/bin/env python3
"""A local Docker Swarm on this one engine, for trying the stack and for its tests.

    scripts/swarm_sandbox.py up     build the node and registry images, start SWARM_NODES nodes
                                    (Docker Engines in containers) and a registry, init and join
                                    the swarm, label the nodes, create the docker context
    scripts/swarm_sandbox.py down   remove all of it (nodes, their volumes, network, context)
    scripts/swarm_sandbox.py info   what `up` made, as JSON (scripts/swarm.py reads it)

Everything is named after SWARM_SANDBOX (default `trinity-swarm`, also the docker context's
name) and carries the project's label, so `make clean` removes it too. Node 1 is the manager
and the node labelled for the edge and for the data services (postgres, redis): the others
only run replicated work, so a test can kill one without touching the data.

The node containers cannot be --privileged on an engine that lacks CAP_SYS_RESOURCE: they get
every other capability, no seccomp or /sys masking, /dev/fuse and the host's cgroup tree, which
is what a nested dockerd needs. Only loopback ports are published: the manager's API (plain
TCP, unauthenticated: a sandbox on this host only), the edge's HTTP/HTTPS ports, the registry.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import docker
from docker.errors import APIError, NotFound

ROOT = Path(__file__).resolve().parent.parent
LABEL = "org.trinity.project"
SANDBOX_LABEL = "org.trinity.swarm-sandbox"
NODE_FLAGS = dict(
    cap_add=["ALL"], cap_drop=["SYS_RESOURCE"], security_opt=["seccomp=unconfined"],
    devices=["/dev/fuse:/dev/fuse:rwm"],
)
# `--security-opt systempaths=unconfined` of the CLI: no masked or read-only /proc and /sys
# paths (the SDK has no parameter for it; the API takes the two lists).
UNMASKED = {"MaskedPaths": [], "ReadonlyPaths": []}
API_PORT = 2375
REGISTRY_PORT = 5000
# What the edge publishes on its node (the stack's PROXY_HTTP_PORT / PROXY_HTTPS_PORT).
EDGE_PORTS = {"http": 80, "https": 443}
# The deploy labels of the stack's placement constraints (docker-stack.example.yml).
MANAGER_NODE_LABELS = {"trinity.edge": "true", "trinity.postgres": "true", "trinity.redis": "true"}


def log(step: str, started: float, what: str) -> None:
    print(f"swarm-sandbox: {step:<10} {time.monotonic() - started:6.1f}s  {what}", flush=True)


class Sandbox:
    def __init__(self, name: str, nodes: int, tag: str) -> None:
        if nodes < 1:
            sys.exit(f"swarm-sandbox: SWARM_NODES must be 1 or more, got {nodes}")
        self.name, self.count, self.tag = name, nodes, tag
        self.client = docker.from_env(timeout=300)
        self.labels = {LABEL: "trinity", SANDBOX_LABEL: name}

    # ---- names ---------------------------------------------------------------------------
    def node(self, i: int) -> str:
        return f"{self.name}-node{i}"

    @property
    def registry(self) -> str:
        return f"{self.name}-registry"

    @property
    def network(self) -> str:
        return self.name

    def image(self, what: str) -> str:
        return f"trinity/{what}:{self.tag}"

    # ---- up --------------------------------------------------------------------------------
    def up(self) -> dict:
        started = time.monotonic()
        for what in ("swarm-node", "registry"):
            build(self.image(what), f"images/{what}/Dockerfile")
            log("build", started, self.image(what))
        self.client.networks.create(self.network, driver="bridge", labels=self.labels)
        registry = self.client.containers.run(
            self.image("registry"), name=self.registry, hostname=self.registry, detach=True,
            network=self.network, labels=self.labels, restart_policy={"Name": "unless-stopped"},
            volumes={self.volume("registry"): {"bind": "/var/lib/docker-registry"}},
            ports={f"{REGISTRY_PORT}/tcp": ("127.0.0.1", None)}, read_only=True,
            cap_drop=["ALL"], security_opt=["no-new-privileges:true"])
        log("registry", started, f"{self.registry}:{REGISTRY_PORT} on network {self.network}")
        nodes = [self.start_node(i) for i in range(1, self.count + 1)]
        for node in nodes:
            wait_for(lambda n=node: self.node_ready(n), 90, f"{node.name}: dockerd did not start",
                     lambda n=node: n.logs(tail=30).decode())
        log("nodes", started, f"{self.count} engines answer")
        manager = nodes[0]
        ip = self.ip(manager)
        run(manager, f"docker swarm init --advertise-addr {ip}")
        token = run(manager, "docker swarm join-token -q worker").strip()
        for node in nodes[1:]:
            run(node, f"docker swarm join --token {token} {ip}:2377")
        for key, value in MANAGER_NODE_LABELS.items():
            run(manager, f"docker node update --label-add {key}={value} {manager.name}")
        wait_for(lambda: self.ready_nodes(manager) == self.count, 60,
                 "not every node joined the swarm", lambda: run(manager, "docker node ls"))
        log("swarm", started, f"{self.count} nodes Ready, manager {manager.name} ({ip})")
        registry.reload()
        info = self.info()
        context(self.name, info["docker_host"])
        log("context", started, f"docker context {self.name} -> {info['docker_host']}")
        print(f"swarm-sandbox: ready: `docker --context {self.name} node ls`; `make swarm-up` "
              f"deploys the stack to it; `make swarm-sandbox-down` removes it")
        return info

    def start_node(self, i: int):
        name = self.node(i)
        args = ["--insecure-registry", f"{self.registry}:{REGISTRY_PORT}"]
        ports = []
        if i == 1:
            # --tls=false says "no TLS" on purpose: the port is published on loopback only.
            args += ["--host", f"tcp://0.0.0.0:{API_PORT}", "--tls=false"]
            ports = [API_PORT, *EDGE_PORTS.values()]
        api = self.client.api
        host_config = api.create_host_config(
            port_bindings={port: ("127.0.0.1",) for port in ports}, network_mode=self.network,
            binds={self.volume(f"node{i}"): {"bind": "/var/lib/docker", "mode": "rw"},
                   "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
            **NODE_FLAGS)
        host_config.update(UNMASKED)
        created = api.create_container(self.image("swarm-node"), args, name=name, hostname=name,
                                       labels=self.labels, ports=list(ports),
                                       host_config=host_config)
        api.start(created["Id"])
        return self.client.containers.get(created["Id"])

    def volume(self, what: str) -> str:
        volume = f"{self.name}-{what}"
        try:
            self.client.volumes.get(volume)
        except NotFound:
            self.client.volumes.create(volume, labels=self.labels)
        return volume

    def node_ready(self, node) -> bool:
        node.reload()
        if node.status != "running":
            raise AssertionError(f"{node.name} exited:\n{node.logs(tail=30).decode()}")
        # `docker info` exits 0 even when the engine does not answer; `version` does not.
        return node.exec_run(["docker", "version", "--format", "{{.Server.Version}}"]).exit_code == 0

    def ready_nodes(self, manager) -> int:
        out = run(manager, "docker node ls --format {{.Status}}")
        return out.split().count("Ready")

    def ip(self, container) -> str:
        container.reload()
        return container.attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"]

    # ---- what exists -----------------------------------------------------------------------
    def existing(self) -> list:
        return self.client.containers.list(all=True,
                                           filters={"label": f"{SANDBOX_LABEL}={self.name}"})

    def info(self) -> dict:
        """Where the manager, the edge and the registry answer, from the running containers."""
        manager = self.client.containers.get(self.node(1))
        registry = self.client.containers.get(self.registry)
        ports = manager.attrs["NetworkSettings"]["Ports"]
        host_port = lambda bindings, port: int(bindings[f"{port}/tcp"][0]["HostPort"])  # noqa: E731
        nodes = sorted(c.name for c in self.existing() if c.name != self.registry)
        return {
            "name": self.name,
            "docker_host": f"tcp://127.0.0.1:{host_port(ports, API_PORT)}",
            "nodes": nodes,
            # The registry as the nodes pull from it, and as this host pushes to it (Docker
            # treats a registry on 127.0.0.0/8 as insecure-allowed without configuration).
            "registry": f"{self.registry}:{REGISTRY_PORT}",
            "registry_push": "127.0.0.1:"
                             f"{host_port(registry.attrs['NetworkSettings']['Ports'], REGISTRY_PORT)}",
            "edge": {what: f"127.0.0.1:{host_port(ports, port)}"
                     for what, port in EDGE_PORTS.items()},
            "edge_node_ports": EDGE_PORTS,
        }

    # ---- down ------------------------------------------------------------------------------
    def down(self) -> None:
        started = time.monotonic()
        containers = self.existing()
        for c in containers:
            c.remove(force=True, v=True)
        log("containers", started, f"removed {len(containers)}")
        volumes = self.client.volumes.list(filters={"label": f"{SANDBOX_LABEL}={self.name}"})
        for v in volumes:
            v.remove(force=True)
        for n in self.client.networks.list(names=[self.network]):
            n.remove()
        log("volumes", started, f"removed {len(volumes)} and network {self.network}")
        subprocess.run(["docker", "context", "rm", "-f", self.name], capture_output=True)
        if subprocess.run(["docker", "context", "show"], capture_output=True,
                          text=True).stdout.strip() == self.name:
            subprocess.run(["docker", "context", "use", "default"], capture_output=True)
        log("context", started, f"docker context {self.name} removed")


def build(tag: str, dockerfile: str) -> None:
    base = os.environ.get("BASE_IMAGE") or (ROOT / ".base-image").read_text().strip()
    proc = subprocess.run(["docker", "--context", "default", "build", "-q", "-t", tag,
                           "-f", dockerfile, "--build-arg", f"BASE_IMAGE={base}",
                           "--label", f"{LABEL}=trinity", "."], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode:
        sys.exit(f"swarm-sandbox: building {tag} failed:\n{proc.stderr[-3000:]}")


def run(container, command: str) -> str:
    result = container.exec_run(command.split())
    out = result.output.decode()
    if result.exit_code:
        raise RuntimeError(f"{container.name}: `{command}` exited {result.exit_code}: {out}")
    return out


def wait_for(check, timeout: float, message: str, details=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (APIError, RuntimeError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"swarm-sandbox: {message} within {timeout:.0f}s\n{details()}")


def context(name: str, host: str) -> None:
    subprocess.run(["docker", "context", "rm", "-f", name], capture_output=True)
    subprocess.run(["docker", "context", "create", name, "--description",
                    "trinity swarm sandbox (make swarm-sandbox)", "--docker", f"host={host}"],
                   check=True, capture_output=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "info"])
    parser.add_argument("--name", default=os.environ.get("SWARM_SANDBOX") or "trinity-swarm")
    parser.add_argument("--nodes", type=int, default=int(os.environ.get("SWARM_NODES") or 3))
    parser.add_argument("--tag", default=os.environ.get("TRINITY_TAG") or "prod")
    args = parser.parse_args(argv)
    sandbox = Sandbox(args.name, args.nodes, args.tag)
    if args.action == "up":
        if sandbox.existing():
            sys.exit(f"swarm-sandbox: {args.name} already exists "
                     f"(`make swarm-sandbox-down` first, or SWARM_SANDBOX=another-name)")
        try:
            sandbox.up()
        except BaseException:
            if os.environ.get("SWARM_SANDBOX_KEEP_FAILED"):
                raise
            print("swarm-sandbox: failed; removing what was started", file=sys.stderr)
            sandbox.down()
            raise
    elif args.action == "down":
        sandbox.down()
    else:
        print(json.dumps(sandbox.info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
