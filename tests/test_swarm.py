"""The production stack on Docker Swarm: the stack file as `docker stack deploy` reads it, then
(marker `swarm`) a three-node sandbox cluster with the stack deployed by `make swarm-up`'s own
code, seen through its edge: work spreads over the nodes and survives losing one.

The cluster tests start their own sandbox (its own name, context and registry), deploy, and
remove all of it at the end. They run when TRINITY_SWARM_TESTS=1, which `make test` and `make
test-swarm` set (README, "Scaling out"); otherwise pytest lists them as skipped with the reason.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest
import requests
import urllib3
import yaml

import prod_secrets
import swarm
import swarm_sandbox
from chaos.harness import BEAT_SEND, FINAL, Ledger, enqueue, poll_final
from stack import ROOT

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
STACK_FILE = ROOT / "docker-stack.example.yml"
INTERNAL = ["postgres", "redis", "migrate", "web", "fastapi", "celery", "celery-cpu",
            "celery-io", "beat"]
WORKERS = ["celery", "celery-cpu", "celery-io"]
SCAN_INTERVAL = 5  # CELERY_STUCK_SCAN_INTERVAL of the cluster (production: 60)


def stack_config(**env: str) -> subprocess.CompletedProcess:
    values = {**swarm.env_file_values(ROOT / "envs/prod.env"), "REGISTRY": "registry.test:5000",
              **env}
    return subprocess.run(["docker", "--context", "default", "stack", "config", "-c",
                           str(STACK_FILE)], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"),
                               **values})


# ---- the stack file, read as `docker stack deploy` reads it (no swarm needed) ----------------
@pytest.fixture(scope="module")
def config():
    proc = stack_config()
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_the_stack_file_needs_the_registry_and_names_it_when_missing():
    proc = stack_config(REGISTRY="")
    assert proc.returncode != 0
    assert "REGISTRY is required" in proc.stderr, proc.stderr


def test_internal_services_use_dns_round_robin_and_only_the_proxy_publishes(config):
    services = config["services"]
    for name in INTERNAL:
        assert services[name]["deploy"].get("endpoint_mode") == "dnsrr" or \
            services[name]["deploy"].get("mode") == "replicated-job", name
        assert "ports" not in services[name], name
    proxy = services["proxy"]
    assert {p["mode"] for p in proxy["ports"]} == {"host"}
    assert proxy["deploy"]["mode"] == "global"
    assert proxy["deploy"]["placement"]["constraints"] == ["node.labels.trinity.edge == true"]


def test_workers_roll_start_first_with_warm_shutdown_and_health(config):
    for name in WORKERS:
        service = config["services"][name]
        assert service["deploy"]["update_config"]["order"] == "start-first", name
        assert service["deploy"]["rollback_config"]["order"] == "start-first", name
        assert service["stop_grace_period"] == "1m0s", name
        assert service["healthcheck"]["test"] == ["CMD", "healthcheck-celery"], name
        assert "{{.Node.Hostname}}" in service["hostname"], name


def test_beat_is_one_replica_stopped_before_its_successor(config):
    beat = config["services"]["beat"]["deploy"]
    assert beat["replicas"] == 1
    assert beat["update_config"]["order"] == "stop-first"
    assert beat["rollback_config"]["order"] == "stop-first"


def test_data_services_are_one_replica_pinned_by_node_label(config):
    for name in ["postgres", "redis"]:
        deploy = config["services"][name]["deploy"]
        assert deploy["replicas"] == 1, name
        assert deploy["placement"]["constraints"] == [f"node.labels.trinity.{name} == true"]


def test_migrations_are_a_job_and_the_apps_wait_for_them(config):
    services = config["services"]
    assert services["migrate"]["deploy"]["mode"] == "replicated-job"
    for name in ["web", "celery", "celery-cpu", "celery-io", "beat"]:
        assert services[name]["entrypoint"][-1] == "wait-for-migrations", name
        assert services[name]["environment"]["MIGRATIONS_WAIT_SECONDS"], name


def test_secrets_are_external_swarm_secrets_read_through_file_variables(config):
    assert all(spec["external"] for spec in config["secrets"].values())
    for name, service in config["services"].items():
        for key, value in (service.get("environment") or {}).items():
            assert "PASSWORD" not in key or key.endswith("_FILE") or value in (None, ""), \
                (name, key)


# ---- the cluster ------------------------------------------------------------------------------
class Cluster:
    """A sandbox with the stack deployed: exec into a service's task on whichever node runs it,
    the edge over HTTPS, the TaskRun ledger from Postgres."""

    def __init__(self, sandbox: swarm_sandbox.Sandbox, env: dict, stack: str) -> None:
        self.sandbox, self.env, self.stack = sandbox, env, stack
        self.info = sandbox.info()
        self.edge = f"https://{self.info['edge']['https']}"
        self.http = requests.Session()

    def nodes(self) -> list:
        return [self.sandbox.client.containers.get(name) for name in self.info["nodes"]]

    def task_container(self, service: str) -> tuple:
        """(node, container id) of a running task of `service`."""
        for node in self.nodes():
            node.reload()
            if node.status != "running":
                continue
            out = node.exec_run(["docker", "ps", "-q", "--filter",
                                 f"label=com.docker.swarm.service.name={self.stack}_{service}"])
            ids = out.output.decode().split()
            if out.exit_code == 0 and ids:
                return node, ids[0]
        raise AssertionError(f"no running task of {service}")

    def exec(self, service: str, cmd: list[str]) -> str:
        node, cid = self.task_container(service)
        result = node.exec_run(["docker", "exec", cid, *cmd])
        out = result.output.decode()
        assert result.exit_code == 0, f"{service} on {node.name}: {cmd[:3]}: {out[-3000:]}"
        return out

    def sql(self, query: str):
        out = self.exec("postgres", ["psql", "-U", "postgres", "-d", "trinity", "-AtqX", "-v",
                                     "ON_ERROR_STOP=1", "-c", query])
        return json.loads(out.strip() or "null")

    def enqueue(self, operation: str, payload=None, *options: str) -> list[dict]:
        """`manage.py enqueue` in a web task, as Stack.enqueue does in a compose project."""
        args = [operation] + ([] if payload is None else [json.dumps(payload)]) + list(options)
        out = self.exec("web", ["python", "manage.py", "enqueue", *args])
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def ledger(self, ids: list[int]) -> Ledger:
        rows = self.sql("SELECT coalesce(json_agg(json_build_array(id, celery_task_id, operation,"
                        " status, attempts, error)), '[]') FROM public.orchestration_taskrun "
                        f"WHERE id = ANY(ARRAY[{','.join(map(str, ids))}]::bigint[])")
        return Ledger(rows, ids)

    def wait_final(self, ids: list[int], timeout: float) -> Ledger:
        return poll_final(lambda: self.ledger(ids), timeout, self.report)

    def workers_of(self, ids: list[int]) -> dict[str, int]:
        """How many of the TaskRuns `ids` each worker ran (TaskRun.worker: name@<node>-<slot>)."""
        return self.sql("SELECT coalesce(json_object_agg(worker, n), '{}') FROM (SELECT worker, "
                        "count(*) AS n FROM public.orchestration_taskrun WHERE id = "
                        f"ANY(ARRAY[{','.join(map(str, ids))}]::bigint[]) GROUP BY worker) AS w")

    def task_logs(self, service: str, since: float) -> dict[str, str]:
        """Task name -> its container's log since the epoch second `since`, read on each node
        (every task of `service` there, running or not): not through the manager's `service
        logs`, which streams from the other nodes and may come back short."""
        logs = {}
        for node in self.nodes():
            node.reload()
            if node.status != "running":
                continue
            out = node.exec_run(["docker", "ps", "-a", "--filter",
                                 f"label=com.docker.swarm.service.name={self.stack}_{service}",
                                 "--format", '{{.ID}} {{.Label "com.docker.swarm.task.name"}}'])
            assert out.exit_code == 0, f"{node.name}: docker ps: {out.output.decode()}"
            for line in out.output.decode().split("\n"):
                if not line.strip():
                    continue
                cid, task = line.split(" ", 1)
                log = node.exec_run(["docker", "logs", "--since", str(int(since)), cid])
                logs[f"{task}@{node.name}"] = log.output.decode(errors="replace")
        return logs

    def tasks(self, service: str) -> list[tuple[str, str]]:
        """(node, current state) of each task of `service` that should be running."""
        out = swarm.docker(self.env, "service", "ps", "--filter", "desired-state=running",
                           "--format", "{{.Node}} {{.CurrentState}}", f"{self.stack}_{service}")
        return [tuple(line.split(" ", 1)) for line in out.stdout.splitlines()]

    def report(self) -> str:
        parts = [json.dumps(self.sql(
            "SELECT coalesce(json_agg(json_build_array(pid, state, wait_event_type, "
            "backend_start::text, xact_start::text, left(query, 120))), '[]') "
            "FROM pg_stat_activity WHERE datname = 'trinity'"))]
        for service in ["postgres", "web", *WORKERS, "beat"]:
            logs = swarm.docker(self.env, "service", "logs", "--tail", "30", f"{self.stack}_"
                                f"{service}", check=False)
            parts.append(f"--- {service}\n{swarm.task_errors(self.env, f'{self.stack}_{service}')}"
                         f"{(logs.stdout + logs.stderr)[-3000:]}")
        return "\n".join(parts)


# Skipped, with this reason in pytest's summary, unless asked for: README, "Scaling out".
swarm_only = pytest.mark.skipif(os.environ.get("TRINITY_SWARM_TESTS") != "1",
                                reason="the Swarm cluster tests run with TRINITY_SWARM_TESTS=1 "
                                       "(make test-swarm)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swarm")
    name = f"trinity-swarmtest-{secrets.token_hex(3)}"
    tag = os.environ.get("TRINITY_TAG") or "prod"
    sandbox = swarm_sandbox.Sandbox(name, 3, tag)
    env_file = tmp / "swarm.env"
    env_file.write_text((ROOT / "envs/prod.env").read_text() + "\n".join([
        f"SECRETS_DIR={tmp / 'secrets'}",
        # A task of a SIGKILLed node comes back within seconds, not an hour (as the chaos stack).
        "CELERY_VISIBILITY_TIMEOUT=20", f"CELERY_STUCK_SCAN_INTERVAL={SCAN_INTERVAL}",
        # One default and one IO worker per node; the rest as small as it gets on 2 cores.
        "CELERY_REPLICAS=3", "CELERY_IO_REPLICAS=3", "CELERY_WORKER_CONCURRENCY=2",
        "CELERY_IO_CONCURRENCY=4",
        "WEB_REPLICAS=1", "FASTAPI_REPLICAS=1", ""]))
    env = {**os.environ, "SWARM_CONTEXT": name, "SWARM_ENV": str(env_file),
           "SWARM_STACK": "trinity", "TRINITY_TAG": tag}
    started = time.monotonic()
    try:
        sandbox.up()
        sandbox_up = time.monotonic() - started
        names = yaml.safe_load(stack_config().stdout)["secrets"]
        prod_secrets.create({key: tmp / "secrets" / key for key in names})
        proc = subprocess.run([str(ROOT / ".venv/bin/python"), "scripts/swarm.py", "up"],
                              cwd=ROOT, env=env, text=True, capture_output=True, timeout=1500)
        print(proc.stdout)
        if proc.returncode:
            pytest.fail(f"swarm up failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}",
                        pytrace=False)
        print(f"\nswarm sandbox up in {sandbox_up:.1f}s, stack converged "
              f"{time.monotonic() - started:.1f}s after the start")
        cluster = Cluster(sandbox, swarm.settings(env), "trinity")
        yield cluster
    finally:
        sandbox.down()


def api_token(cluster: Cluster) -> str:
    out = cluster.exec("web", ["python", "manage.py", "create_api_token", "--tenant", "public",
                               "--name", f"swarm-{secrets.token_hex(3)}"])
    return out.strip().splitlines()[-1]


@pytest.mark.swarm
@swarm_only
def test_the_default_workers_run_on_every_node(cluster):
    nodes = {node for node, state in cluster.tasks("celery") if state.startswith("Running")}
    assert len(nodes) >= 2, cluster.tasks("celery")


@pytest.mark.swarm
@swarm_only
def test_a_task_enqueued_through_the_edge_runs_to_success(cluster):
    token = api_token(cluster)
    headers = {"Authorization": f"Bearer {token}"}
    made = cluster.http.post(f"{cluster.edge}/api/task-runs/", json={"operation": "echo",
                             "payload": {"swarm": True}}, headers=headers, verify=False,
                             timeout=15)
    assert made.status_code == 201, made.text
    run_id = made.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        seen = cluster.http.get(f"{cluster.edge}/api/task-runs/{run_id}/", headers=headers,
                                verify=False, timeout=15).json()
        if seen["status"] in FINAL or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen["status"] == "SUCCESS", (seen, cluster.report())
    assert seen["result"] == {"swarm": True}, seen


@pytest.mark.swarm
@swarm_only
def test_a_burst_is_drained_by_workers_on_more_than_one_node(cluster):
    ids = enqueue(cluster, [["noop", None]] * 300)
    book = cluster.wait_final(ids, timeout=180)
    assert book.count("SUCCESS") == 300, book.summary()
    ran = cluster.workers_of(ids)
    hosts = {worker.split("@", 1)[-1].rsplit("-", 1)[0] for worker in ran}
    print(f"\nburst of 300 by worker: {ran}")
    assert "" not in ran, ran  # every row names the worker that ran it
    assert len(hosts) >= 2, ran


@pytest.mark.swarm
@swarm_only
def test_the_runbook_passes_against_the_swarm(cluster):
    """`make validate STACK=swarm`: the runbook's steps, each in a task on its node."""
    proc = subprocess.run([str(ROOT / ".venv/bin/python"), "scripts/swarm_validate.py"], cwd=ROOT,
                          env=cluster.env, text=True, capture_output=True, timeout=600)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout.splitlines()[-1], proc.stdout


# The stuck-task scan as a worker logs its receipt (Celery's own timestamp: the containers run
# in UTC); BEAT_SEND is beat's line for its send.
SCAN_RECEIVED = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
                           r"Task apps\.orchestration\.tasks\.mark_stuck_task_runs\[([0-9a-f-]+)\] "
                           r"received")
BEAT_WINDOW = 6 * SCAN_INTERVAL


def log_times(text: str, pattern: re.Pattern, start: dt.datetime, end: dt.datetime) -> dict:
    """First group of each match (a Celery log timestamp) -> the rest, for those in [start, end]."""
    found = {}
    for match in pattern.finditer(text):
        at = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").replace(
            tzinfo=dt.timezone.utc)
        if start <= at <= end:
            found[match.groups()[1:] or (at,)] = at
    return found


def running_beats(cluster: Cluster) -> list[str]:
    return [node for node, state in cluster.tasks("beat") if state.startswith("Running")]


@pytest.mark.swarm
@swarm_only
def test_a_second_beat_replica_sends_nothing_twice(cluster):
    """Beat scaled to two replicas on two nodes: over a window of six intervals the default
    workers receive the stuck-task scan once per interval, never two within one (RedBeat's lock
    in Redis: the second replica waits on it). Counted from the workers' logs, where a job sent
    by two beats would show twice (two task ids); back to one replica afterwards."""
    beat = f"{cluster.stack}_beat"
    swarm.docker(cluster.env, "service", "scale", "--detach", f"{beat}=2")
    try:
        # Running means healthy here: Swarm starts a task with a healthcheck as "Starting".
        deadline = time.monotonic() + 90
        while len(running_beats(cluster)) < 2:
            assert time.monotonic() < deadline, \
                f"beat not at 2 replicas after 90s: {cluster.tasks('beat')}\n{cluster.report()}"
            time.sleep(1)
        nodes = running_beats(cluster)
        assert len(set(nodes)) == 2, f"both beat replicas on one node: {nodes}"
        start = dt.datetime.now(dt.timezone.utc)
        end = start + dt.timedelta(seconds=BEAT_WINDOW)
        while dt.datetime.now(dt.timezone.utc) < end:  # both must stay up through the window
            assert len(running_beats(cluster)) == 2, (cluster.tasks("beat"), cluster.report())
            time.sleep(1)
        # The last receipt may land in the log a moment after the window closes.
        time.sleep(2)
        since = start.timestamp() - 1
        received = {}
        for text in cluster.task_logs("celery", since).values():
            received.update(log_times(text, SCAN_RECEIVED, start, end))
        sent = {task: sorted(log_times(text, BEAT_SEND, start, end).values())
                for task, text in cluster.task_logs("beat", since).items()}
    finally:
        swarm.docker(cluster.env, "service", "scale", "--detach", f"{beat}=1")
    times = sorted(received.values())
    gaps = [round((b - a).total_seconds(), 1) for a, b in zip(times, times[1:])]
    print(f"\nbeat x2 on {sorted(nodes)}: {len(times)} scans received in {BEAT_WINDOW}s "
          f"(interval {SCAN_INTERVAL}s), gaps {gaps}; sends per beat task: "
          f"{ {task: len(t) for task, t in sent.items()} }")
    expected = BEAT_WINDOW // SCAN_INTERVAL
    logs = "\n".join(f"--- {task}\n{text[-2000:]}"
                      for task, text in cluster.task_logs("beat", since).items())
    assert expected - 1 <= len(times) <= expected + 1, (len(times), gaps, logs)
    # Two sends in one interval: a job sent twice. Without the lock this is what fails (two
    # beats waking at the same due time both send); the count above can stay in range.
    assert min(gaps) >= SCAN_INTERVAL / 2, (gaps, logs)
    deadline = time.monotonic() + 90
    while len(cluster.tasks("beat")) != 1 or len(running_beats(cluster)) != 1:
        assert time.monotonic() < deadline, \
            f"beat not back at 1 replica after 90s: {cluster.tasks('beat')}"
        time.sleep(1)


@pytest.mark.swarm
@swarm_only
def test_a_rolling_update_of_the_workers_mid_burst_loses_nothing(cluster):
    """The IO workers move to a new image tag (the same image, pushed again under another
    name) while a burst of 1 s sleeps drains on them: start-first, one at a time, each old worker
    finishing what it runs (warm shutdown): every TaskRun SUCCESS, none run twice."""
    tag = f"{cluster.env['TRINITY_TAG']}-next"
    local, pushed = (f"trinity/django:{cluster.env['TRINITY_TAG']}",
                     f"{cluster.env['REGISTRY_PUSH']}/trinity/django:{tag}")
    for args in (["tag", local, pushed], ["push", "--quiet", pushed], ["rmi", pushed]):
        swarm.docker(cluster.env, *args, context="default")
    ids = enqueue(cluster, [["sleep", {"seconds": 1}]] * 400)
    started = time.monotonic()
    swarm.docker(cluster.env, "service", "update", "--detach", "--image",
                 f"{cluster.env['REGISTRY']}/trinity/django:{tag}", f"{cluster.stack}_celery-io")
    deadline = time.monotonic() + 300
    while True:
        state = swarm.update_states(cluster.env, [f"{cluster.stack}_celery-io"])
        if state.get(f"{cluster.stack}_celery-io") == "completed":
            break
        assert "rollback" not in str(state) and time.monotonic() < deadline, \
            (state, cluster.report())
        time.sleep(2)
    updated = time.monotonic() - started
    book = cluster.wait_final(ids, timeout=240)
    assert book.count("SUCCESS") == 400, book.summary()
    assert book.twice == [], book.summary()
    images = swarm.docker(cluster.env, "service", "ps", "--filter", "desired-state=running",
                          "--format", "{{.Image}}", f"{cluster.stack}_celery-io").stdout.split()
    assert len(images) == 3 and all(image.endswith(f":{tag}") for image in images), images
    print(f"\nrolling update of 3 IO workers during a burst of 400: {updated:.1f}s, "
          f"none lost or run twice")


@pytest.mark.swarm
@swarm_only
def test_a_worker_node_killed_mid_burst_loses_nothing(cluster):
    """SIGKILL of a whole node (the container that is the node: its engine and every task on it)
    while a burst of 1 s `sleep` runs drains on the IO workers of all three nodes: every TaskRun
    still ends SUCCESS, only those in flight there ran twice, and Swarm has the IO workers'
    replicas running on the other nodes again."""
    manager = cluster.info["nodes"][0]
    victims = [node for node, state in cluster.tasks("celery-io")
               if node != manager and state.startswith("Running")]
    assert victims, cluster.tasks("celery-io")
    victim = sorted(victims)[-1]
    ids = enqueue(cluster, [["sleep", {"seconds": 1}]] * 200)
    deadline = time.monotonic() + 120
    while cluster.ledger(ids).count("SUCCESS") < 40:
        assert time.monotonic() < deadline, cluster.ledger(ids).summary()
        time.sleep(0.5)
    cluster.sandbox.client.containers.get(victim).kill()
    killed = time.monotonic()
    # The visibility timeout (20 s) brings back what the node held; Postgres's keepalives end
    # the dead node's open transactions (docker-stack.example.yml).
    book = cluster.wait_final(ids, timeout=240)
    drained = time.monotonic() - killed
    assert book.count("SUCCESS") == 200, book.summary()
    # At most what the node's IO worker held (4 threads, prefetch 1 each); and at least one: a
    # kill that hit nothing in flight would prove nothing.
    assert 1 <= len(book.twice) <= 8, book.summary()
    deadline = time.monotonic() + 120
    while True:
        running = [node for node, state in cluster.tasks("celery-io") if state.startswith("Running")]
        if len(running) == 3 and victim not in running:
            break
        assert time.monotonic() < deadline, (cluster.tasks("celery-io"), cluster.report())
        time.sleep(1)
    print(f"\nnode {victim} SIGKILLed: burst final {drained:.1f}s later "
          f"({len(book.twice)} ran twice), 3 IO workers running again after "
          f"{time.monotonic() - killed:.1f}s on {sorted(set(running))}")
