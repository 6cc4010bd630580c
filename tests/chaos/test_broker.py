"""Redis cut off, restarted and full while tasks are in flight: every task ends SUCCESS, no
worker restarts, and the test says how many ran twice and how long recovery took.

What a worker does when its broker link drops mid-task (worker_cancel_long_running_tasks_on_
connection_loss = True in celery_settings): it cancels running late-ack tasks. The IO worker
runs a threads pool, which cannot cancel a thread: its sleeps run to the end, their ack is
lost with the connection, and the message stays in Redis' unacked index until kombu's sweep
redelivers it after the visibility timeout; the redelivered copy finds its TaskRun final and
does not run the operation again (attempts stays 1).
"""
from __future__ import annotations

import time

import pytest

from chaos.harness import (CANCELLED, GUARD_SKIP, UNACKED_RESTORE_INTERVAL, VISIBILITY, WORKERS,
                           enqueue, ledger, post, queue_lengths, redis_cli, redis_cut_off,
                           report, service_logs, wait_final, wait_workers_healthy,
                           worker_lives, workers_stopped)
from stack import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.chaos]

# After Redis is back, a task whose ack was lost is redelivered within one visibility timeout
# plus one sweep of the unacked index; the slack covers reconnects (5 s socket timeouts) and
# the rerun itself on a shared 2-core machine.
RECOVERY_BOUND = VISIBILITY + UNACKED_RESTORE_INTERVAL + 30


def _running(stack, ids, n):
    wait_for(lambda: ledger(stack, ids).count("RUNNING") >= n, 30, interval=0.5,
             describe=lambda: ledger(stack, ids).summary() + report(stack, ["celery-io"]))


def _after_fault(stack, ids, lives, since, what):
    """Common checks once the fault is over: every row SUCCESS within the bound, the workers
    never restarted and consume again; returns (ledger, seconds to all-final, worker log)."""
    back = time.monotonic()
    book = wait_final(stack, ids, RECOVERY_BOUND)
    took = time.monotonic() - back
    wait_workers_healthy(stack, timeout=90)
    logs = service_logs(stack, WORKERS, since)
    attempts = sorted(r["attempts"] for r in book.rows.values())
    print(f"{what}: sent {len(ids)}, {book.summary()}, attempts {attempts}, all final "
          f"{took:.1f}s after the fault ended; cancelled on loss: {logs.count(CANCELLED)}, "
          f"kombu guard skips: {logs.count(GUARD_SKIP)}")
    assert book.count("SUCCESS") == len(ids), book.summary()
    assert worker_lives(stack) == lives, "a worker restarted\n" + report(stack, WORKERS)
    assert took < RECOVERY_BOUND
    probe = enqueue(stack, [("sleep", {"seconds": 0.1}), ("noop", None)])
    assert wait_final(stack, probe, 60).count("SUCCESS") == 2  # the workers consume again
    return book, took, logs


def test_redis_cut_off_the_network_while_io_tasks_run(chaos):
    wait_workers_healthy(chaos)
    lives = worker_lives(chaos)
    ids = enqueue(chaos, [("sleep", {"seconds": 7})] * 4)
    _running(chaos, ids, 4)
    since = time.time()
    with redis_cut_off(chaos):
        time.sleep(12)  # the partition itself: tasks end and try to ack while it lasts
    book, _, logs = _after_fault(chaos, ids, lives, since, "Redis cut off 12 s")
    # The threads pool cannot cancel: each sleep ran once, to the end.
    assert all(r["attempts"] == 1 for r in book.rows.values()), book.rows


def test_redis_restarted_with_unacknowledged_tasks_in_flight(chaos):
    wait_workers_healthy(chaos)
    lives = worker_lives(chaos)
    # Long enough to outlast a ledger poll on a loaded host (a 6 s sleep ended unseen).
    ids = enqueue(chaos, [("sleep", {"seconds": 12})] * 4)
    _running(chaos, ids, 4)
    assert int(redis_cli(chaos, "HLEN", "unacked")) >= 4  # in flight, persisted in Redis
    since = time.time()
    chaos.compose("restart", "--no-deps", "redis")
    chaos.wait_healthy(["redis"], timeout=60)
    # Redis replays its append-only file at start: the transactions in it (RedBeat's schedule,
    # kombu's unacked index) must come back, and beat must go on sending.
    assert int(redis_cli(chaos, "ZCARD", "trinity.redbeat::schedule")) >= 1
    assert "NOPERM" not in chaos.logs("redis", tail=200)
    wait_for(lambda: "Sending due task" in service_logs(chaos, ["beat"], since + 1), 30,
             interval=1, describe=lambda: report(chaos, ["beat", "redis"]))
    book, _, _ = _after_fault(chaos, ids, lives, since, "Redis restarted")
    # A rerun is allowed (idempotent tasks), a third run is not.
    assert max(r["attempts"] for r in book.rows.values()) <= 2, book.rows


def test_redis_at_maxmemory_refuses_enqueues_with_503_and_loses_nothing(chaos):
    """Redis full: both POSTs answer 503 with Redis's reason, and the tasks accepted before
    wait in Redis and all run once memory is free.

    The workers are stopped while Redis is full. A running worker whose own bookkeeping write
    (its unacked index, a result) Redis refuses treats the refusal as unrecoverable: measured,
    it once exited and restarted, once hung in shutdown and stopped consuming until it was
    restarted by hand (README, "Limits of Celery on Redis")."""
    limit = int(redis_cli(chaos, "CONFIG", "GET", "maxmemory").split()[-1])
    assert limit > 0, "the production template sets maxmemory"
    fill = "trinity.chaos.fill"
    with workers_stopped(chaos):
        ids = enqueue(chaos, [("sleep", {"seconds": 3})] * 6 + [("noop", None)] * 20)
        queued = queue_lengths(chaos)
        try:
            # One write below the limit may pass it (Redis checks before the command): a
            # string of `limit` bytes leaves Redis above maxmemory, so every later write is
            # refused.
            redis_cli(chaos, "SETRANGE", fill, str(limit), "x")
            refused = redis_cli(chaos, "SET", "trinity.chaos.probe", "1")
            assert refused.startswith("OOM"), refused
            for url, body in [(f"{chaos.web}/api/task-runs/", {"operation": "noop"}),
                              (f"{chaos.fastapi}/tasks", {"operation": "noop"})]:
                r, took = post(chaos, url, body)
                print(f"{url} at maxmemory: {r.status_code} in {took:.2f}s: {r.text[:160]}")
                assert r.status_code == 503, r.text
                assert "OOM" in r.text and "maxmemory" in r.text, r.text
            assert queue_lengths(chaos) == queued  # nothing refused was enqueued
        finally:
            redis_cli(chaos, "DEL", fill)
    book = wait_final(chaos, ids, RECOVERY_BOUND)
    print(f"maxmemory: sent {len(ids)} before the fill, {book.summary()}")
    assert book.count("SUCCESS") == len(ids) and not book.missing, book.summary()
    assert book.twice == [], book.summary()
