"""Workers killed or stopped mid-work: every task ends SUCCESS, only in-flight ones run twice."""
from __future__ import annotations

import time

import pytest

from chaos.harness import (VISIBILITY, duplicate_task_ids, enqueue, ledger, report, restarted,
                           sigkill_worker, unacked_on, wait_final, wait_workers_healthy)
from stack import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.chaos]


# ---- c. SIGKILL of the IO worker mid-task ----------------------------------------------------
def test_c_sigkilled_worker_task_is_redelivered_and_succeeds(chaos):
    wait_workers_healthy(chaos, ["celery-io"])
    ids = enqueue(chaos, [("sleep", {"seconds": 8})] * 3)
    wait_for(lambda: ledger(chaos, ids).count("RUNNING") == 3, 30, interval=0.5,
             describe=lambda: ledger(chaos, ids).summary() + report(chaos, ["celery-io"]))
    restarts = chaos.container("celery-io").attrs["RestartCount"]
    killed = time.monotonic()
    sigkill_worker(chaos, "celery-io")
    wait_for(lambda: restarted(chaos, "celery-io", restarts), 30, interval=1,
             describe=lambda: report(chaos, ["celery-io"]))
    book = wait_final(chaos, ids, VISIBILITY + 60)
    took = time.monotonic() - killed
    print(f"SIGKILL mid-sleep: enqueued 3, {book.summary()}, final {took:.1f}s after the kill")
    assert book.count("SUCCESS") == 3, book.summary()
    assert all(r["attempts"] == 2 for r in book.rows.values()), book.rows  # killed run + rerun


# ---- d. docker compose stop of the workers during a burst and long tasks --------------------
def test_d_stopping_the_worker_mid_burst_loses_and_repeats_nothing(chaos):
    """`docker stop` sends SIGTERM, which is Celery's WARM shutdown: the worker stops taking
    messages and waits for the running tasks, however long (worker_soft_shutdown_timeout
    bounds only the soft shutdown that a cold one, SIGQUIT, starts with), within compose's
    stop_grace_period (60 s), after which Docker would SIGKILL. So 15 s sleeps, longer than
    the 10 s soft shutdown, finish once and the stop waits for them; the burst's unstarted
    messages stay queued for the next start."""
    wait_workers_healthy(chaos, ["celery", "celery-io"])
    started = time.monotonic()
    sleeps = enqueue(chaos, [("sleep", {"seconds": 15})] * 4)
    wait_for(lambda: ledger(chaos, sleeps).count("RUNNING") == 4, 30, interval=0.5,
             describe=lambda: ledger(chaos, sleeps).summary() + report(chaos, ["celery-io"]))
    running_since = time.monotonic()
    ids = enqueue(chaos, [("noop", None)] * 500)
    stopping = time.monotonic()
    chaos.compose("stop", "--timeout", "60", "celery", "celery-io")  # as a deploy does
    stop_took = time.monotonic() - stopping
    at_stop, long_at_stop = ledger(chaos, ids), ledger(chaos, sleeps)
    chaos.compose("start", "celery", "celery-io")
    book, long = wait_final(chaos, ids, 120), wait_final(chaos, sleeps, 60)
    took = time.monotonic() - started
    print(f"stop mid-burst: 500 noops + 4 x 15 s sleeps; stop took {stop_took:.1f}s "
          f"({stopping - running_since:.1f}s into the sleeps); at the stop {at_stop.final} "
          f"noops and {long_at_stop.count('SUCCESS')} sleeps final; {book.summary()}; "
          f"sleeps {long.summary()}; {took:.1f}s")
    assert at_stop.final < 500, "the worker finished the burst before it was stopped"
    assert long_at_stop.count("SUCCESS") == 4, long_at_stop.summary()  # warm: finished first
    assert stop_took > 15 - (stopping - running_since) - 2, stop_took  # it waited for them
    assert book.count("SUCCESS") == 500 and long.count("SUCCESS") == 4
    assert book.twice == [] and long.twice == [], (book.summary(), long.summary())
    assert duplicate_task_ids(chaos, ids + sleeps) == []


# ---- h. 1,000 mixed tasks, one worker SIGKILLed in the middle -----------------------------------
def test_h_thousand_mixed_tasks_one_worker_killed_none_lost(chaos):
    wait_workers_healthy(chaos)
    kinds = [("noop", None), ("noop", None), ("primes", {"n": 20000}), ("sleep", {"seconds": 0.2})]
    specs = [kinds[i % 4] for i in range(1000)]
    started = time.monotonic()
    ids = enqueue(chaos, specs)
    wait_for(lambda: ledger(chaos, ids).final >= 300, 120, interval=1,
             describe=lambda: ledger(chaos, ids).summary())
    at_kill = ledger(chaos, ids)
    restarts = chaos.container("celery").attrs["RestartCount"]
    in_flight = unacked_on(chaos, "trinity.tasks")  # delivered to the default worker, unacked
    sigkill_worker(chaos, "celery")
    wait_for(lambda: restarted(chaos, "celery", restarts), 30, interval=1,
             describe=lambda: report(chaos, ["celery"]))
    book = wait_final(chaos, ids, VISIBILITY + 150)
    twice_ops = sorted({book.rows[pk]["op"] for pk in book.twice})
    print(f"1000 mixed, default worker SIGKILLed at {at_kill.final} final with {in_flight} "
          f"unacked on its queue: {book.summary()} "
          f"(twice: {twice_ops}), {time.monotonic() - started:.1f}s")
    assert in_flight > 0, "nothing was in flight when the worker died"
    assert book.count("SUCCESS") == 1000, book.summary()
    assert not book.missing
    assert duplicate_task_ids(chaos, ids) == []
    # Only the killed worker's in-flight tasks may run twice, and they are idempotent (noop).
    assert set(twice_ops) <= {"noop"}, twice_ops
    assert len(book.twice) <= 4, book.summary()  # concurrency 2 x prefetch 1, plus reserved
