"""`manage.py validate_stack`: its judgements on what workers answer, and its report.

The whole command against real workers is a stack test (tests/test_apps.py and
tests/test_prod.py at the repository's root, through `make validate`).
"""

import io
from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import CommandError, call_command

from apps.orchestration.management.commands import validate_stack as v
from apps.orchestration.models import TaskRun


def test_workers_are_the_nodes_that_answered_pong():
    assert v.judge_workers({"io@b": {"ok": "pong"}, "cpu@a": {"ok": "pong"}}) == ["cpu@a", "io@b"]
    with pytest.raises(v.StepFailed, match="no worker node answered"):
        v.judge_workers({})


def test_every_declared_queue_needs_a_consumer():
    active = {"default@a": [{"name": "q"}, {"name": "q.beat"}], "io@b": [{"name": "q.io"}]}
    assert v.judge_queues(["q", "q.io"], active) == "q (1), q.io (1)"
    with pytest.raises(v.StepFailed, match="no worker consumes q.cpu$"):
        v.judge_queues(["q", "q.cpu", "q.io"], active)


def test_a_task_held_by_a_worker_is_named():
    assert v.judge_held({"a": []}, {"a": []}) == "nothing reserved or scheduled"
    with pytest.raises(v.StepFailed, match=r"t1 \(reserved on a\), t2 \(scheduled on b\)"):
        v.judge_held({"a": [{"id": "t1"}]}, {"b": [{"request": {"id": "t2"}, "eta": "x"}]})


def run(operation="echo", status="SUCCESS", result=None, error=""):
    return TaskRun(operation=operation, status=status, result=result, error=error)


def test_a_probe_passes_when_it_succeeded_from_its_queue_with_its_payload():
    assert v.judge_run(run(result={"k": 1}), "SUCCESS", "q", "q", {"k": 1}) == "echo on q"
    with pytest.raises(v.StepFailed, match=r"result \{'k': 2\} != payload"):
        v.judge_run(run(result={"k": 2}), "SUCCESS", "q", "q", {"k": 1})
    with pytest.raises(v.StepFailed, match="taken from q.io, routed to q.cpu"):
        v.judge_run(run("primes"), "SUCCESS", "q.io", "q.cpu", 1000)
    with pytest.raises(v.StepFailed, match=r"TaskRun FAILURE, Celery FAILURE \(boom\)"):
        v.judge_run(run("sleep", "FAILURE", error="boom"), "FAILURE", "q.io", "q.io", 0.1)


def test_the_monitor_must_see_success_in_every_view():
    report = {"task_id": "t", "result_backend": {"state": "SUCCESS"}, "inspect": {"workers": {}},
              "database": {"found": True, "record": {"id": 7, "status": "SUCCESS"}}}
    assert v.judge_monitor(report) == "task t: Celery SUCCESS, TaskRun 7 SUCCESS"
    report["inspect"] = {"error": "no answer within 5 s", "workers": {}}
    with pytest.raises(v.StepFailed, match="inspect no answer within 5 s"):
        v.judge_monitor(report)


def test_beat_is_skipped_without_its_lock_and_fails_when_a_job_is_late():
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    periods = {"scan": 60.0}
    with pytest.raises(v.StepSkipped, match="no beat holds the RedBeat lock"):
        v.judge_beat(-2, {}, periods, now)
    assert "sent within its period" in v.judge_beat(20000, {"scan": now - timedelta(seconds=50)},
                                                    periods, now)
    with pytest.raises(v.StepFailed, match="scan last sent 2026-01-01T11:58"):
        v.judge_beat(20000, {"scan": now - timedelta(seconds=120)}, periods, now)
    with pytest.raises(v.StepFailed, match="scan last sent None"):
        v.judge_beat(20000, {}, periods, now)


def test_the_report_has_a_line_per_step_skips_what_a_failure_blocks_and_exits_1(monkeypatch):
    def no_worker(self):
        raise v.StepFailed("no worker node answered ping")

    monkeypatch.setattr(v.Checks, "workers", no_worker)
    monkeypatch.setattr(v.Checks, "beat", lambda self: "lock held")
    out = io.StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("validate_stack", stdout=out)
    assert failed.value.returncode == 1
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["FAIL", "workers"], ["SKIP", "queues"], ["SKIP", "tasks"], ["SKIP", "monitor"],
        ["SKIP", "stuck"], ["PASS", "beat"]]
    assert lines[0].endswith("no worker node answered ping")
    assert lines[2].endswith("needs queues")
    assert lines[-1] == "validate: 1 passed, 1 failed, 4 skipped"


def test_an_error_in_a_step_is_its_fail_not_a_traceback(monkeypatch):
    def broker_down(self):
        raise ConnectionError("Error 111 connecting to redis:6379")

    for name, _ in v.STEPS:
        monkeypatch.setattr(v.Checks, name, lambda self: "ok")
    monkeypatch.setattr(v.Checks, "stuck", broker_down)
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("validate_stack", stdout=out)
    assert "FAIL  stuck" in out.getvalue()
    assert "ConnectionError: Error 111 connecting to redis:6379" in out.getvalue()
