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


def _memory(chaos) -> tuple[int, int]:
    info = dict(line.split(":", 1) for line in redis_cli(chaos, "INFO", "memory").split()
                if ":" in line)
    return int(info["used_memory"]), int(info["maxmemory"])


# Redis is filled with strings of just under 1 MiB, one allocation each. (One SETRANGE of
# hundreds of MB overshoots by tens of MB: Redis grows a string 1 MB beyond what it needs, and
# the allocator's size classes that large are 32 MB apart.)
FILL = "trinity.chaos.fill"
FILL_CHUNK = 2**20 - 64
FILL_SCRIPT = ("local chunk = string.rep('x', tonumber(ARGV[2])) "
               "for i = 1, tonumber(ARGV[1]) do redis.call('SET', KEYS[1] .. ':' .. i, chunk) end")
EMPTY_SCRIPT = "for i = 1, tonumber(ARGV[1]) do redis.call('DEL', KEYS[1] .. ':' .. i) end"


def test_redis_nearly_full_refuses_enqueues_with_503_while_the_workers_drain(chaos):
    """Redis filled to 95 % of maxmemory while sleeps run: both POSTs answer 503 with the
    reason (the apps stop enqueueing at 90 %), the running workers keep the room that is left
    for their own writes and finish every task accepted before, and none of them restarts."""
    wait_workers_healthy(chaos)
    lives = worker_lives(chaos)
    since = time.time()
    ids = enqueue(chaos, [("sleep", {"seconds": 5})] * 8 + [("noop", None)] * 20)
    used, limit = _memory(chaos)
    assert limit > 0, "the production template sets maxmemory"
    chunks = (int(0.95 * limit) - used) // 2**20
    try:
        redis_cli(chaos, "EVAL", FILL_SCRIPT, "1", FILL, str(chunks), str(FILL_CHUNK))
        used, _ = _memory(chaos)
        assert 0.9 * limit <= used < limit, (used, limit)
        time.sleep(1.5)  # each app process reads Redis's memory at most once a second
        refused = []
        for url, body in [(f"{chaos.web}/api/task-runs/", {"operation": "noop"}),
                          (f"{chaos.fastapi}/tasks", {"operation": "noop"})]:
            r, took = post(chaos, url, body)
            print(f"{url} at {100 * used / limit:.0f}% of maxmemory: {r.status_code} in "
                  f"{took:.2f}s: {r.text[:160]}")
            assert r.status_code == 503, r.text
            assert "of maxmemory" in r.text, r.text
            refused.append(r.json().get("id"))
        book = wait_final(chaos, ids, RECOVERY_BOUND)  # drained while Redis stays at 95 %
        assert _memory(chaos)[0] >= 0.9 * limit
    finally:
        redis_cli(chaos, "EVAL", EMPTY_SCRIPT, "1", FILL, str(chunks))
    print(f"Redis at 95%: {len(ids)} accepted before, {book.summary()}")
    assert book.count("SUCCESS") == len(ids) and not book.missing, book.summary()
    assert book.twice == [], book.summary()
    # The refused Django row never ran: the 503 was the truth.
    assert ledger(chaos, [refused[0]]).rows[refused[0]]["attempts"] == 0
    logs = service_logs(chaos, WORKERS, since)
    assert "Unrecoverable error" not in logs and "OOM" not in logs, logs[-2000:]
    assert worker_lives(chaos) == lives, "a worker restarted"
    # Room again: enqueues are accepted once the apps read Redis's memory anew.
    wait_for(lambda: post(chaos, f"{chaos.web}/api/task-runs/", {"operation": "noop"})[0]
             .status_code == 201, 10, interval=0.5, describe=lambda: report(chaos, ["web"]))
