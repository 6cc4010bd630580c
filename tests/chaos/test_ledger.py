"""One run per TaskRun, none failed while it can still run: a backlog waits for its worker, a
lost message is published again, a poison task is bounded, two deliveries at once start the
operation once, and every pool enforces the time limit."""
from __future__ import annotations

import json
import time

import pytest

from chaos.harness import (QUEUED_GRACE, SCAN_INTERVAL, VISIBILITY, django, post, queue_lengths,
                           report, taskruns, wait_final, wait_workers_healthy, workers_stopped)
from stack import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.chaos]

# Rows made as a shell user would: `send` publishes execute_task to `queue` that many times
# (0: the message is "lost", as if Redis lost it), each under its own task id unless `task_id`.
MAKE = """
import json
from celery import uuid
from django_tenants.utils import schema_context
from apps.orchestration.models import TaskRun
from apps.orchestration.tasks import execute_task
specs = json.loads({specs!r})
ids = []
with schema_context("public"):
    for spec in specs:
        run = TaskRun.objects.create(operation=spec["op"], payload=spec.get("payload"),
                                     status=spec.get("status", "PENDING"),
                                     celery_task_id=spec.get("task_id", ""))
        for _ in range(spec.get("send", 1)):
            execute_task.apply_async(args=[run.pk, "public"], queue=spec["queue"],
                                     task_id=spec.get("task_id") or uuid())
        ids.append(run.pk)
print(json.dumps(ids))
"""

RUN_OPERATION_TWICE = """
import json
from celery import uuid
from apps.orchestration.tasks import run_operation
task_id = uuid()
for _ in range(2):
    run_operation.apply_async(args=["sleep", {"seconds": 3}, "public"], task_id=task_id,
                              queue="trinity.tasks.io")
print(json.dumps(task_id))
"""

# SIGKILL every pool process of the worker, as the OOM killer would kill the one that runs the
# task: the children of the Celery main process (PID 1 is docker's init, whose child is celery).
KILL_POOL = """
import os
parent = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    with open(f"/proc/{pid}/stat") as stat:
        parent[int(pid)] = int(stat.read().rsplit(")", 1)[1].split()[1])
main = [pid for pid, ppid in parent.items() if ppid == 1]
for pid, ppid in parent.items():
    if ppid in main:
        os.kill(pid, 9)
"""


def make(stack, specs) -> list[int]:
    return django(stack, MAKE.format(specs=json.dumps(specs)))


def rows(stack, ids) -> dict:
    return {pk: rest for pk, *rest in
            taskruns(stack, "id, status, attempts, worker_lost, republished, error", ids=ids)}


def test_a_backlog_waits_for_its_worker_and_a_lost_message_is_sent_again(chaos):
    """The CPU worker is down longer than the scan's grace: its rows (posted, and one made in a
    shell with create + apply_async, PENDING) stay untouched because their messages are still
    in Redis; a row whose message is gone is published again and runs."""
    with workers_stopped(chaos, ["celery-cpu"]):
        before = queue_lengths(chaos)["trinity.tasks.cpu"]
        posted = []
        for n in (1000, 2000, 3000):
            r, _ = post(chaos, f"{chaos.web}/api/task-runs/",
                        {"operation": "primes", "payload": {"n": n}})
            assert r.status_code == 201, r.text
            posted.append(r.json()["id"])
        shell_made = make(chaos, [{"op": "primes", "queue": "trinity.tasks.cpu"}])
        lost = make(chaos, [{"op": "noop", "queue": "trinity.tasks", "send": 0,
                             "status": "QUEUED", "task_id": "lost-" + str(time.time())}])
        backlog = posted + shell_made
        # Past the grace and two scans: the lost row must have been republished by now ...
        started = time.monotonic()
        wait_final(chaos, lost, QUEUED_GRACE + 4 * SCAN_INTERVAL + 30)
        waited = time.monotonic() - started
        # ... while the backlog, older than the grace too, is left as it was.
        seen = rows(chaos, backlog)
        assert [seen[pk][0] for pk in posted] == ["QUEUED"] * 3, seen
        assert seen[shell_made[0]][0] == "PENDING", seen
        assert all(seen[pk][3] == 0 for pk in backlog), seen  # none republished
        assert queue_lengths(chaos)["trinity.tasks.cpu"] == before + 4  # nothing sent twice
    book = wait_final(chaos, backlog, 60)
    lost_row = rows(chaos, lost)[lost[0]]
    print(f"backlog of 4 left alone {waited:.0f}s (grace {QUEUED_GRACE}s), then "
          f"{book.summary()}; lost row: {lost_row}")
    assert book.count("SUCCESS") == 4 and not book.twice, book.summary()
    assert lost_row[:2] == ["SUCCESS", 1] and lost_row[3] >= 1, lost_row


def test_a_poison_task_is_bounded_and_its_queue_keeps_flowing(chaos):
    wait_workers_healthy(chaos, ["celery-cpu"])
    [pk] = make(chaos, [{"op": "sleep", "payload": {"seconds": 15}, "queue": "trinity.tasks.cpu"}])
    started, kills = time.monotonic(), 0

    def started_again_or_failed():
        status, attempts = rows(chaos, [pk])[pk][:2]
        return (status == "FAILURE" or (status == "RUNNING" and attempts > kills)) and status

    while True:
        status = wait_for(started_again_or_failed, 60, interval=0.3,
                          describe=lambda: str(rows(chaos, [pk])) + report(chaos, ["celery-cpu"]))
        if status == "FAILURE":
            break
        code, out = chaos.exec("celery-cpu", ["python", "-c", KILL_POOL])
        assert code == 0, out
        kills += 1
        assert kills <= 5, rows(chaos, [pk])
    row = rows(chaos, [pk])[pk]
    print(f"poison: {kills} pool kills -> {row} after {time.monotonic() - started:.1f}s")
    assert row[0] == "FAILURE" and row[4].startswith("worker lost 3 times"), row
    assert kills == 3 and row[1] == 3, row
    # Not delivered again, and the queue flows.
    after = make(chaos, [{"op": "primes", "payload": {"n": 100}, "queue": "trinity.tasks.cpu"}])
    assert wait_final(chaos, after, 60).count("SUCCESS") == 1
    assert rows(chaos, [pk])[pk][1] == 3


def test_two_deliveries_at_once_start_the_operation_once(chaos):
    wait_workers_healthy(chaos, ["celery-io"])
    [pk] = make(chaos, [{"op": "sleep", "payload": {"seconds": 3}, "queue": "trinity.tasks.io",
                         "send": 2}])
    task_id = django(chaos, RUN_OPERATION_TWICE)
    book = wait_final(chaos, [pk], 60)
    by_id = wait_final(chaos, [task_id], 60, by_task_id=True)
    print(f"execute_task x2: {rows(chaos, [pk])}; run_operation x2: {by_id.summary()}")
    assert book.count("SUCCESS") == 1 and book.rows[pk]["attempts"] == 1, book.rows
    assert by_id.count("SUCCESS") == 1 and by_id.rows[task_id]["attempts"] == 1, by_id.rows
    assert len(taskruns(chaos, "id", task_ids=[task_id])) == 1  # one row per task id


def test_every_pool_enforces_the_time_limit(chaos):
    """A 60 s sleep on the threads pool (IO) and on prefork (CPU queue) ends FAILURE by the
    task itself at the soft limit (hard limit: 90 % of the visibility timeout)."""
    wait_workers_healthy(chaos, ["celery-io", "celery-cpu"])
    hard = int(VISIBILITY * 0.9)
    ids = make(chaos, [{"op": "sleep", "payload": {"seconds": 60}, "queue": q}
                       for q in ("trinity.tasks.io", "trinity.tasks.cpu")])
    started = time.monotonic()
    book = wait_final(chaos, ids, hard + 30)
    took = time.monotonic() - started
    seen = rows(chaos, ids)
    print(f"time limits (hard {hard}s): {seen} in {took:.1f}s")
    assert book.count("FAILURE") == 2, seen
    assert seen[ids[0]][4].startswith("TimeLimitReached"), seen
    assert seen[ids[1]][4].startswith("SoftTimeLimitExceeded"), seen
    assert took < hard + 15
