"""validate's pure parts: parsing celery's answers, judging them, the report; no docker."""
import json
import subprocess

import pytest

import validate
from validate import Result, Step, StepFailed, StepSkipped

NODE = "celery@8c4198918b17"
QUEUES = {"default": "trinity.tasks", "cpu": "trinity.tasks.cpu", "io": "trinity.tasks.io",
          "beat": "trinity.tasks.beat"}


def _active(*names, node=NODE):
    return {node: [{"name": n, "exchange": {"name": n}, "routing_key": n} for n in names]}


# ---- celery status ------------------------------------------------------------------------------

def test_parse_status_reads_the_text_output_even_with_colours():
    text = ("\x1b[1;36m->  celery@a: \x1b[0m\x1b[32mOK\x1b[0m\n"
            "->  celery-cpu@b: OK\n\n2 nodes online.\n")
    assert validate.parse_status(text) == {"celery@a": "OK", "celery-cpu@b": "OK"}


def test_parse_status_reads_the_json_output():
    text = json.dumps({"celery@a": {"ok": "pong"}, "celery@b": {"error": "x"}}) + "\n\n2 nodes online.\n"
    assert validate.parse_status(text) == {"celery@a": "OK", "celery@b": "ERROR"}


def test_parse_status_of_no_answer_is_empty():
    assert validate.parse_status("") == {}
    assert validate.parse_status("Error: No nodes replied within time constraint\n") == {}


def test_judge_status_needs_one_node_and_every_node_ok():
    assert validate.judge_status({"celery@a": "OK"}) == "1 node OK: celery@a"
    assert validate.judge_status({"b@x": "OK", "a@x": "OK"}) == "2 nodes OK: a@x, b@x"
    with pytest.raises(StepFailed, match="no worker node answered"):
        validate.judge_status({})
    with pytest.raises(StepFailed, match="not OK: b@x ERROR"):
        validate.judge_status({"a@x": "OK", "b@x": "ERROR"})


# ---- inspect ------------------------------------------------------------------------------------

def test_parse_json_reply_skips_noise_around_the_object():
    assert validate.parse_json_reply('warning: x\n{"a": [1]}\n\n1 node online.\n') == {"a": [1]}
    with pytest.raises(ValueError):
        validate.parse_json_reply("Error: No nodes replied within time constraint")


def test_queues_pass_when_every_kind_has_a_consumer_across_workers():
    active = {**_active("trinity.tasks", "trinity.tasks.beat", node="celery-default@a"),
              **_active("trinity.tasks.cpu", node="celery-cpu@b"),
              **_active("trinity.tasks.io", node="celery-io@c")}
    assert validate.queue_consumers(active)["trinity.tasks.cpu"] == ["celery-cpu@b"]
    detail = validate.judge_queues(QUEUES, active)
    assert detail.startswith("trinity.tasks (1), trinity.tasks.cpu (1)")


def test_queues_fail_naming_the_queue_nobody_consumes():
    active = _active("trinity.tasks", "trinity.tasks.io", "trinity.tasks.beat")
    with pytest.raises(StepFailed) as info:
        validate.judge_queues(QUEUES, active)
    assert info.value.reason == "no worker consumes the cpu queue trinity.tasks.cpu"
    with pytest.raises(StepFailed, match="no worker node answered"):
        validate.judge_queues(QUEUES, {})
    assert validate.describe_queues(active) == (
        f"{NODE} consumes: trinity.tasks, trinity.tasks.io, trinity.tasks.beat")


def test_stuck_reads_reserved_and_scheduled_shapes():
    reserved = {NODE: [{"id": "r-1", "name": "t", "args": [1]}]}
    scheduled = {NODE: [{"eta": "2030-01-01T00:00:00", "priority": 6,
                         "request": {"id": "s-1", "name": "t", "args": [2, "public"]}}]}
    assert validate.task_ids_held(reserved) == [(NODE, "r-1")]
    assert validate.task_ids_held(scheduled) == [(NODE, "s-1")]
    with pytest.raises(StepFailed) as info:
        validate.judge_stuck(reserved, scheduled)
    assert "r-1 (reserved on" in info.value.reason and "s-1 (scheduled on" in info.value.reason
    assert "eta 2030-01-01T00:00:00" in validate.describe_held(reserved, scheduled)


def test_stuck_passes_on_empty_lists():
    assert validate.judge_stuck({NODE: []}, {NODE: []}) == "nothing reserved or scheduled on 1 node"


def test_query_task_reports_what_a_worker_holds():
    assert validate.judge_query_task("t1", {NODE: {"t1": ["active", {"id": "t1"}]}}) == \
        f"active on {NODE}"
    assert "none holds it now" in validate.judge_query_task("t1", {NODE: {}})


# ---- monitor_orchestration_tasks ----------------------------------------------------------------

PAYLOAD = {"validate": "abc"}


def _report(state="SUCCESS", status="SUCCESS", backend_result=PAYLOAD, record_result=PAYLOAD):
    outcome = {"task_run_id": 7, "schema": "public", "operation": "echo", "status": state,
               "result": backend_result}
    return {"task_id": "t", "found": True, "final": True,
            "result_backend": {"state": state, "result": outcome},
            "database": {"found": True, "record": {"id": 7, "status": status,
                                                   "result": record_result, "error": None}}}


def test_parse_monitor_output_takes_the_last_poll():
    first = dict(_report(), final=False)
    first["result_backend"] = {"state": "PENDING"}
    text = json.dumps(first) + "\n" + json.dumps(_report()) + "\n"
    assert validate.parse_monitor_output(text)["result_backend"]["state"] == "SUCCESS"
    with pytest.raises(ValueError):
        validate.parse_monitor_output("CommandError: task t not found\n")


def test_monitor_passes_only_with_both_success_and_the_payload_back():
    assert validate.judge_monitor(_report(), PAYLOAD).startswith("Celery SUCCESS, TaskRun 7 SUCCESS")
    with pytest.raises(StepFailed, match="Celery state FAILURE"):
        validate.judge_monitor(_report(state="FAILURE"), PAYLOAD)
    with pytest.raises(StepFailed, match="TaskRun status RUNNING"):
        validate.judge_monitor(_report(status="RUNNING"), PAYLOAD)
    with pytest.raises(StepFailed, match="TaskRun result"):
        validate.judge_monitor(_report(record_result={"other": 1}), PAYLOAD)
    with pytest.raises(StepFailed, match="Celery result"):
        validate.judge_monitor(_report(backend_result=None), PAYLOAD)
    missing = _report()
    missing["database"] = {"found": False, "schema": "public"}
    with pytest.raises(StepFailed, match="no TaskRun found"):
        validate.judge_monitor(missing, PAYLOAD)


# ---- report -------------------------------------------------------------------------------------

def test_format_pass_fail_skip():
    assert validate.format_result(Result("status", "PASS", 10.94, "1 node OK: c@a")) == \
        "PASS  status       10.9s  1 node OK: c@a"
    failed = validate.format_result(Result("queues", "FAIL", 6.5, "no worker consumes x",
                                           output="line 1\nline 2", command="celery: inspect"))
    assert failed.splitlines() == ["FAIL  queues        6.5s  no worker consumes x",
                                   "      $ celery: inspect", "      | line 1", "      | line 2"]
    assert validate.format_result(Result("monitor", "SKIP", detail="enqueue")) == \
        "SKIP  monitor          -  (needs enqueue)"


def test_summary_and_exit_status():
    results = [Result("a", "PASS"), Result("b", "FAIL"), Result("c", "SKIP")]
    assert validate.summary_line(results) == "validate: 1 passed, 1 failed"
    assert validate.exit_status(results) == 1
    assert validate.exit_status([Result("a", "PASS")] * 6) == 0
    assert validate.summary_line([Result("a", "PASS")] * 6) == "validate: 6 passed, 0 failed"


def test_tail_keeps_the_last_non_empty_lines():
    assert validate.tail("a\n\nb\nc\n", 2) == "b\nc"


def test_run_steps_skips_what_depends_on_a_failure_and_times_each_step():
    ticks = iter(range(100))

    def fail(ctx):
        raise StepFailed("broken", "tail")

    def boom(ctx):
        raise KeyError("x")

    def skip(ctx):
        raise StepSkipped("something else")

    steps = [Step("a", lambda ctx: "fine"), Step("b", fail, needs=("a",)),
             Step("c", lambda ctx: "never", needs=("b",)), Step("d", boom, needs=("a",)),
             Step("e", skip), Step("f", lambda ctx: "never", needs=("e",))]
    seen = []
    results = validate.run_steps(steps, {}, emit=seen.append, clock=lambda: next(ticks))
    assert [(r.name, r.status) for r in results] == [
        ("a", "PASS"), ("b", "FAIL"), ("c", "SKIP"), ("d", "FAIL"), ("e", "SKIP"), ("f", "SKIP")]
    assert seen == results
    assert results[0].seconds == 1 and results[2].seconds is None
    assert results[2].detail == "b" and results[5].detail == "e"
    assert results[3].detail == "KeyError: 'x'"


# ---- the steps against a fake `docker compose` --------------------------------------------------

class FakeDocker:
    """Answers `docker compose ... exec -T SERVICE argv` like a stack would."""

    def __init__(self, worker_running=True, queues=("trinity.tasks", "trinity.tasks.cpu",
                                                    "trinity.tasks.io", "trinity.tasks.beat"),
                 scheduled=(), state="SUCCESS"):
        self.worker_running = worker_running
        self.queues = queues
        self.scheduled = list(scheduled)
        self.state = state
        self.calls = []
        self.payload = None

    def __call__(self, cmd, capture_output, text, timeout, stdin):
        assert capture_output and text and timeout and timeout > 0
        self.calls.append(cmd)
        i = cmd.index("exec")
        assert cmd[i + 1] == "-T"
        service, argv = cmd[i + 2], cmd[i + 3:]
        if service == "celery" and not self.worker_running:
            return self._done(1, "", 'service "celery" is not running\n')
        if argv[:3] == ["celery", "-A", "config.celery"]:
            return self._celery(argv[3:])
        if argv[:2] == ["python", "-c"]:
            return self._done(0, json.dumps(QUEUES) + "\n")
        if argv[:3] == ["python", "manage.py", "shell"]:
            code = argv[4]
            if "TaskRun.objects.create" in code:
                self.payload = eval(code.split("payload=", 1)[1].rsplit(").pk", 1)[0])
                return self._done(0, "42\n")
            assert "execute_task.apply_async(args=[42, 'public'])" in code
            return self._done(0, "0509e569-3ac4-4f43-a801-926383f77530\n")
        if argv[2] == "monitor_orchestration_tasks":
            assert argv[argv.index("--task-id") + 1] == "0509e569-3ac4-4f43-a801-926383f77530"
            report = _report(state=self.state, backend_result=self.payload,
                             record_result=self.payload)
            return self._done(0, json.dumps(report) + "\n")
        raise AssertionError(f"unexpected command {cmd}")

    def _celery(self, args):
        if args[0] == "status":
            assert args[1:] == ["--timeout", "10"]
            return self._done(0, f"->  {NODE}: OK\n\n1 node online.\n")
        command = args[1]
        if command == "active_queues":
            return self._done(0, json.dumps(_active(*self.queues)) + "\n")
        if command == "query_task":
            return self._done(0, json.dumps({NODE: {}}) + "\n")
        if command == "reserved":
            return self._done(0, json.dumps({NODE: []}) + "\n")
        if command == "scheduled":
            return self._done(0, json.dumps({NODE: self.scheduled}) + "\n")
        raise AssertionError(args)

    @staticmethod
    def _done(code, out, err=""):
        return subprocess.CompletedProcess([], code, out, err)


def _run(fake, **kwargs):
    compose = validate.Compose("docker-compose-dev.yml", "trinity-h2", "envs/dev.env", runner=fake)
    return validate.run_steps(validate.build_steps(compose, "celery", "web", **kwargs), {})


def test_a_healthy_stack_passes_every_step():
    fake = FakeDocker()
    results = _run(fake)
    assert [r.status for r in results] == ["PASS"] * 6, [validate.format_result(r) for r in results]
    assert validate.summary_line(results) == "validate: 6 passed, 0 failed"
    assert fake.calls[0][:8] == ["docker", "compose", "-f", "docker-compose-dev.yml",
                                 "-p", "trinity-h2", "--env-file", "envs/dev.env"]


def test_stopped_workers_fail_at_status_and_skip_the_rest():
    results = _run(FakeDocker(worker_running=False))
    assert [(r.name, r.status) for r in results] == [
        ("status", "FAIL"), ("queues", "SKIP"), ("enqueue", "SKIP"), ("query_task", "SKIP"),
        ("monitor", "SKIP"), ("stuck", "SKIP")]
    assert results[0].detail == 'service "celery" is not running'
    assert validate.exit_status(results) == 1


def test_a_missing_queue_fails_queues_only():
    results = _run(FakeDocker(queues=("trinity.tasks", "trinity.tasks.io", "trinity.tasks.beat")))
    assert [r.status for r in results] == ["PASS", "FAIL", "PASS", "PASS", "PASS", "PASS"]
    assert "trinity.tasks.cpu" in results[1].detail


def test_no_consumer_on_the_default_queue_skips_enqueue():
    results = _run(FakeDocker(queues=("trinity.tasks.cpu",)))
    assert [r.status for r in results] == ["PASS", "FAIL", "SKIP", "SKIP", "SKIP", "PASS"]
    assert results[2].detail == "a worker on the default queue trinity.tasks"


def test_a_failed_task_and_a_scheduled_task_fail_their_steps():
    held = [{"eta": "2030-01-01T00:00:00", "request": {"id": "late-1", "name": "t"}}]
    results = _run(FakeDocker(state="FAILURE", scheduled=held))
    assert [r.status for r in results] == ["PASS", "PASS", "PASS", "PASS", "FAIL", "FAIL"]
    assert "Celery state FAILURE" in results[4].detail
    assert "late-1" in results[5].detail


def test_a_hanging_command_is_killed_and_fails():
    def hang(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"], output=b"partial")

    results = _run(hang)
    assert results[0].status == "FAIL" and "no answer within" in results[0].detail
    assert results[0].output == "partial"


def test_main_refuses_a_missing_compose_file(tmp_path, capsys):
    assert validate.main(["--file", str(tmp_path / "nope.yml")]) == 2
    assert "not found" in capsys.readouterr().err
