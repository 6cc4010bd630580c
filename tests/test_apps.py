"""The runbook (README, "Running the dev stack by hand"), end to end, against the dev stack: Django and FastAPI enqueue into the
same Redis queues, the shared workers run what either sends, and the runbook commands answer."""
from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest
import requests

from stack import ROOT, wait_for

pytestmark = pytest.mark.stack

CELERY = ["celery", "-A", "config.celery"]
QUEUES = {"trinity.tasks", "trinity.tasks.cpu", "trinity.tasks.io"}


def url(stack, service: str, port: int, path: str) -> str:
    binding = stack.container(service).ports[f"{port}/tcp"][0]
    return f"http://127.0.0.1:{binding['HostPort']}{path}"


def django_shell(stack, code: str) -> str:
    exit_code, out = stack.exec("web", ["python", "manage.py", "shell", "-c", code])
    assert exit_code == 0, out
    return out.strip()


def create_task_run(stack, operation: str, payload=None, schema: str = "public") -> int:
    """A TaskRun recorded and not sent, for the runbook's command to send."""
    [run] = stack.enqueue(operation, payload, "--no-send", "--schema", schema)
    return run["task_run_id"]


def enqueue_as_the_runbook_does(stack, task_run_id: int, schema: str = "public") -> str:
    """The runbook's command, verbatim but for the id and schema."""
    out = django_shell(stack, "from apps.orchestration.tasks import execute_task; "
                              f"result = execute_task.apply_async(args=[{task_run_id}, "
                              f"{schema!r}]); print(result.id)")
    return out.splitlines()[-1]


def monitor(stack, task_id: str, *extra: str) -> tuple[int, str]:
    return stack.exec("web", ["python", "manage.py", "monitor_orchestration_tasks",
                              "--task-id", task_id, *extra])


def wait_final(stack, task_id: str, schema: str = "public", timeout: float = 60) -> dict:
    """Poll the monitor command's JSON until Celery reports a final state."""
    last = {}

    def final():
        code, out = monitor(stack, task_id, "--json", "--schema", schema)
        try:
            last["report"] = json.loads(out)
        except ValueError:
            last["report"] = out
            return None
        state = last["report"].get("result_backend", {}).get("state")
        return last["report"] if state in ("SUCCESS", "FAILURE") else None

    return wait_for(final, timeout, interval=1,
                    describe=lambda: f"last report: {last.get('report')}\n{stack.logs('celery')}")


def task_run_row(stack, pk: int, schema: str = "public") -> dict:
    code = ("import json\nfrom django_tenants.utils import schema_context\n"
            "from apps.orchestration.models import TaskRun\n"
            f"with schema_context({schema!r}):\n"
            f"    r = TaskRun.objects.filter(pk={pk}).first()\n"
            "    print(json.dumps(r and r.as_dict(), default=str))")
    return json.loads(django_shell(stack, code).splitlines()[-1])


def test_task_enqueued_from_the_django_shell_reaches_success(stack):
    pk = create_task_run(stack, "echo", {"hello": "runbook"})
    task_id = enqueue_as_the_runbook_does(stack, pk)
    report = wait_final(stack, task_id)
    assert report["result_backend"]["state"] == "SUCCESS", report
    row = task_run_row(stack, pk)
    assert row["status"] == "SUCCESS" and row["result"] == {"hello": "runbook"}, row
    assert row["celery_task_id"] == task_id


def test_the_enqueue_command_waits_for_the_outcome_and_prints_it(stack):
    [done] = stack.enqueue("echo", {"hello": "tooling"}, "--wait", "60")
    assert (done["status"], done["result"], done["queue"]) == (
        "SUCCESS", {"hello": "tooling"}, "trinity.tasks"), done
    [failed] = stack.enqueue("fail", "on purpose", "--wait", "60", check=False)
    assert failed["status"] == "FAILURE" and "on purpose" in failed["error"], failed
    assert task_run_row(stack, failed["task_run_id"])["status"] == "FAILURE"


@pytest.fixture(scope="module")
def auth(stack) -> dict:
    """The header of a new API token of the public tenant, made the operator's way."""
    code, out = stack.exec("web", ["python", "manage.py", "create_api_token", "--tenant",
                                   "public", "--name", f"test-apps-{uuid.uuid4().hex[:6]}"])
    assert code == 0, out
    return {"Authorization": f"Bearer {out.strip().splitlines()[-1]}"}


def test_task_enqueued_over_fastapi_runs_in_the_same_workers(stack, auth):
    response = requests.post(url(stack, "fastapi", 8001, "/tasks"), headers=auth,
                             json={"operation": "echo", "payload": [1, 2, 3]}, timeout=10)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]

    def done():
        state = requests.get(url(stack, "fastapi", 8001, f"/tasks/{task_id}"), headers=auth,
                             timeout=10).json()
        return state if state.get("state") in ("SUCCESS", "FAILURE") else None

    state = wait_for(done, 60, describe=lambda: stack.logs("celery"))
    assert state["state"] == "SUCCESS", state
    # The worker recorded it as a TaskRun in Postgres, found by its Celery id.
    report = wait_final(stack, task_id)
    assert report["database"]["record"]["status"] == "SUCCESS", report
    assert report["database"]["record"]["result"] == [1, 2, 3]


def test_task_enqueued_over_django_http(stack, auth):
    response = requests.post(url(stack, "web", 8000, "/api/task-runs/"), headers=auth,
                             json={"operation": "noop"}, timeout=10)
    assert response.status_code == 201, response.text
    body = response.json()
    wait_final(stack, body["celery_task_id"])
    detail = requests.get(url(stack, "web", 8000, f"/api/task-runs/{body['id']}/"),
                          headers=auth, timeout=10)
    assert detail.json()["status"] == "SUCCESS", detail.text


@pytest.mark.parametrize("body", [{"operation": "no-such-op"}, {"payload": 1}, "not json"])
def test_bad_bodies_are_rejected_and_nothing_is_enqueued(stack, auth, body):
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    headers = {**auth, "Content-Type": "application/json"}
    fast = requests.post(url(stack, "fastapi", 8001, "/tasks"), headers=headers, timeout=10,
                         **kwargs)
    assert fast.status_code == 422, fast.text
    web = requests.post(url(stack, "web", 8000, "/api/task-runs/"), headers=headers, timeout=10,
                        **kwargs)
    assert web.status_code == 400, web.text
    assert "error" in web.json()


def test_celery_status_answers_ok_for_every_worker(stack):
    code, out = stack.exec("celery", CELERY + ["status", "--timeout", "10"])
    assert code == 0, out
    nodes = re.findall(r"^->\s+(\S+): OK", out, re.M)
    assert len(nodes) >= len(stack.containers("celery")), out


def test_worker_consumes_the_default_cpu_and_io_queues(stack):
    code, out = stack.exec("celery", CELERY + ["inspect", "active_queues", "--timeout", "10",
                                               "--json"])
    assert code == 0, out
    replies = json.loads(out.strip().splitlines()[-1])
    for node, queues in replies.items():
        assert QUEUES <= {q["name"] for q in queues}, (node, queues)


def test_validate_passes_every_step_on_the_running_stack(stack, validate_passes):
    validate_passes(stack)


@pytest.mark.parametrize("operation,payload,queue", [
    ("primes", 20000, "trinity.tasks.cpu"),
    ("sleep", 0.2, "trinity.tasks.io"),
    ("noop", None, "trinity.tasks"),
])
def test_operations_run_from_the_queue_of_their_kind(stack, auth, operation, payload, queue):
    response = requests.post(url(stack, "fastapi", 8001, "/tasks"), headers=auth,
                             json={"operation": operation, "payload": payload}, timeout=10)
    assert response.json()["queue"] == queue
    task_id = response.json()["task_id"]
    wait_final(stack, task_id)
    # The worker's own record of where it took the message from (result_extended).
    got = django_shell(stack, "from celery.result import AsyncResult; "
                              f"print(AsyncResult({task_id!r}).queue)")
    assert got.splitlines()[-1] == queue


def test_inspect_commands_of_the_runbook_answer(stack):
    [run] = stack.enqueue("noop")
    task_id = run["task_id"]
    wait_final(stack, task_id)
    for args in (["query_task", task_id], ["reserved"], ["scheduled"]):
        code, out = stack.exec("celery", CELERY + ["inspect", *args, "--timeout", "10"])
        assert code == 0 and "OK" in out, (args, out)


def test_monitor_prints_celery_state_beside_the_record_for_success_and_failure(stack):
    [ok], [bad] = stack.enqueue("echo", "fine"), stack.enqueue("fail", "on purpose")
    ok_id, bad_id = ok["task_id"], bad["task_id"]
    wait_final(stack, ok_id), wait_final(stack, bad_id)
    for task_id, state in ((ok_id, "SUCCESS"), (bad_id, "FAILURE")):
        code, out = monitor(stack, task_id)
        assert code == 0, out
        assert re.search(rf"[Cc]elery.*{state}", out), out
        assert re.search(rf"(TaskRun|record|status).*{state}", out, re.S), out
    row = task_run_row(stack, bad["task_run_id"])
    assert row["status"] == "FAILURE" and "on purpose" in row["error"], row


def test_second_tenant_schema_runs_in_its_own_schema(stack):
    schema = f"tenant_{uuid.uuid4().hex[:6]}"
    code, out = stack.exec("web", ["python", "manage.py", "create_tenant_schema", schema])
    assert code == 0, out
    tenant_pk = create_task_run(stack, "echo", "tenant", schema=schema)
    # Make sure a public row with the same id exists, so "which row changed" is a real question.
    public_pk = create_task_run(stack, "echo", "public")
    if public_pk < tenant_pk:
        stack.enqueue("echo", "public", "--no-send", "--count", str(tenant_pk - public_pk))
    before = task_run_row(stack, tenant_pk, "public")
    task_id = enqueue_as_the_runbook_does(stack, tenant_pk, schema)
    assert wait_final(stack, task_id, schema)["result_backend"]["state"] == "SUCCESS"
    assert task_run_row(stack, tenant_pk, schema)["status"] == "SUCCESS"
    assert task_run_row(stack, tenant_pk, "public") == before


@pytest.mark.parametrize("args,named", [([987654321, "public"], "987654321"),
                                        ([1, "no_such_schema"], "no_such_schema")])
def test_unknown_task_run_or_schema_fails_naming_it(stack, args, named):
    before = django_shell(stack, "from apps.orchestration.models import TaskRun; "
                                 "print(sorted(TaskRun.objects.values_list('pk', 'status', 'attempts')))")
    task_id = enqueue_as_the_runbook_does(stack, *args)
    report = wait_final(stack, task_id)
    assert report["result_backend"]["state"] == "FAILURE"
    assert named in json.dumps(report["result_backend"]), report
    after = django_shell(stack, "from apps.orchestration.models import TaskRun; "
                                "print(sorted(TaskRun.objects.values_list('pk', 'status', 'attempts')))")
    assert after == before


def test_worker_concurrency_comes_from_the_environment(stack):
    def pool_size():
        code, out = stack.exec("celery", CELERY + ["inspect", "stats", "--timeout", "10",
                                                   "--json"])
        if code != 0:
            return None
        stats = json.loads(out.strip().splitlines()[-1])
        return [s["pool"]["max-concurrency"] for s in stats.values()]

    try:
        stack.compose("up", "-d", "celery", env={"CELERY_WORKER_CONCURRENCY": "3"})
        stack.wait_healthy(["celery"], timeout=120)
        assert wait_for(lambda: pool_size() == [3], 30, describe=lambda: str(pool_size()))
    finally:
        stack.compose("up", "-d", "celery")
        stack.wait_healthy(["celery"], timeout=120)


def test_invalid_worker_concurrency_stops_the_worker_naming_it(stack):
    proc = stack.compose("run", "--rm", "--no-deps", "-e", "CELERY_WORKER_CONCURRENCY=abc",
                         "celery", "start-celery", check=False, timeout=60)
    assert proc.returncode != 0
    assert "CELERY_WORKER_CONCURRENCY" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_beat_started_as_the_runbook_does_sends_to_the_beat_queue(stack):
    """`run --rm celery celery -A config.celery beat`, with CELERY_BEAT_QUEUE pointed at a queue
    no worker consumes, so the message it sends stays there to be seen."""
    queue = f"trinity.tasks.beat.probe-{uuid.uuid4().hex[:6]}"
    beat = subprocess.Popen(
        stack.compose_cmd("run", "--rm", "--no-deps", "-e", f"CELERY_BEAT_QUEUE={queue}",
                          "-e", "CELERY_STUCK_SCAN_INTERVAL=2",
                          "celery", *CELERY, "beat", "--loglevel=info"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def queued():
            code, out = stack.exec("redis", ["redis-admin", "LLEN", queue])
            return code == 0 and out.strip().isdigit() and int(out) > 0

        wait_for(queued, 60, describe=lambda: beat_output(beat))
    finally:
        beat.terminate()
        try:
            beat.wait(timeout=30)
        except subprocess.TimeoutExpired:
            beat.kill()
        stack.exec("redis", ["redis-admin", "DEL", queue])


def beat_output(proc) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return f"---- beat output ----\n{out}"


@pytest.mark.parametrize("service", ["web", "fastapi"])
def test_the_app_suites_pass_inside_their_images(stack, service):
    """Django's and FastAPI's own tests, run in the image against the stack's Postgres/Redis."""
    code, out = stack.exec(service, ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"])
    assert code == 0, out[-5000:]
    assert re.search(r"\d+ passed", out), out[-2000:]


@pytest.mark.parametrize("service", ["web", "fastapi"])
def test_the_test_tools_come_after_the_runtime_packages(stack, service):
    """The -test images append /opt/test-packages to sys.path: a package in both places (here
    `packaging`) is always the runtime one."""
    code, out = stack.exec(service, ["python", "-c", "import json, sys, packaging, pytest; "
                                     "print(json.dumps(sys.path)); print(packaging.__file__)"])
    assert code == 0, out
    path, packaging_file = out.splitlines()[-2:]
    path = json.loads(path)
    assert path.index("/opt/test-packages") > path.index("/opt/venv/lib/python3.13/site-packages")
    assert packaging_file.startswith("/opt/venv/"), packaging_file
