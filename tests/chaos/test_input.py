"""Bad input stops a service at start with the variable's name, and bad HTTP gets a 4xx with a
reason while nothing is enqueued."""
from __future__ import annotations

import datetime as dt

import pytest

from chaos.harness import count_taskruns, post, queue_lengths, workers_stopped

pytestmark = [pytest.mark.stack, pytest.mark.chaos]


# ---- a. bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("service,name,value", [
    ("celery", "CELERY_WORKER_CONCURRENCY", "abc"),
    ("celery", "REDIS_URL", "redis://redis:notaport/0"),
    ("fastapi", "REDIS_URL", "redis://redis:notaport/0"),
    ("web", "REDIS_URL", "redis://redis:notaport/0"),
    ("web", "DJANGO_SECRET_KEY_FILE", "/run/secrets/no-such-file"),
    ("celery", "DATABASE_URL", ""),
])
def test_a_bad_environment_stops_the_service_at_start(chaos, service, name, value):
    """The process exits with status 2 (config/celery_settings.py's configuration error, as
    for a command-line usage error) within 5 s (container StartedAt -> FinishedAt, without
    compose's own overhead), and its log names the variable."""
    proc = chaos.compose("run", "-d", "--no-deps", "-e", f"{name}={value}", service, timeout=60)
    container = chaos.client.containers.get(proc.stdout.strip().splitlines()[-1])
    try:
        status = container.wait(timeout=30)
        container.reload()
        state = container.attrs["State"]
        logs = container.logs().decode(errors="replace")
        took = _seconds(state["FinishedAt"]) - _seconds(state["StartedAt"])
        print(f"{service} with bad {name}: exit {status['StatusCode']} after {took:.2f}s")
        assert status["StatusCode"] == 2, logs
        assert name in logs, logs
        assert "Traceback" not in logs, logs
        assert took < 5, f"{took:.2f}s\n{logs}"
    finally:
        container.remove(force=True)


def _seconds(stamp: str) -> float:
    # 2026-11-25T15:17:26.123456789Z -> seconds since the epoch
    head, _, frac = stamp.rstrip("Z").partition(".")
    t = dt.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return t.timestamp() + float(f"0.{frac or 0}")


BAD_BODIES = [
    "{not json",
    "[1, 2]",
    {"operation": "rm -rf"},
    {"operation": "echo", "surprise": 1},
    {"operation": "echo", "schema": "no_such_tenant"},
    {"payload": 1},
]


def test_a_bad_http_input_gets_4xx_with_a_reason_and_enqueues_nothing(chaos):
    with workers_stopped(chaos):  # nothing consumes: a queued message would stay visible
        before, rows_before = queue_lengths(chaos), count_taskruns(chaos)
        answers = []
        for body in BAD_BODIES:
            for url in (f"{chaos.web}/api/task-runs/", f"{chaos.fastapi}/tasks"):
                r, _ = post(chaos, url, body)
                answers.append((url, body, r.status_code, r.text[:200]))
                assert 400 <= r.status_code < 500, answers[-1]
                reason = r.json().get("error") or r.json().get("detail")
                assert reason, answers[-1]
        after, rows_after = queue_lengths(chaos), count_taskruns(chaos)
        assert after == before, (before, after, answers)
        assert rows_after == rows_before
        # The control: a good request does show up in the same counters.
        r, _ = post(chaos, f"{chaos.fastapi}/tasks", {"operation": "noop"})
        assert r.status_code == 202, r.text
        assert queue_lengths(chaos)["trinity.tasks"] == before["trinity.tasks"] + 1
    print(f"{len(answers)} bad requests refused, queues {after}")
