"""Redis stopped, restarted and unreachable: 503s that are fast, workers that come back alone,
queued messages that survive."""
from __future__ import annotations

import time

import pytest

from chaos.harness import (enqueue, healthcheck, post, queue_lengths, report, started_at,
                           wait_final, wait_workers_healthy, workers_stopped)
from stack import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.chaos]


# ---- b. Redis stopped: the enqueue endpoints answer 503 fast, then recover -----------------
def test_b_enqueue_endpoints_answer_503_fast_while_redis_is_down(chaos):
    web_started, api_started = started_at(chaos, "web"), started_at(chaos, "fastapi")
    chaos.compose("stop", "redis")
    try:
        for url, body in [(f"{chaos.web}/api/task-runs/", {"operation": "echo", "payload": 1}),
                          (f"{chaos.fastapi}/tasks", {"operation": "echo", "payload": 1})]:
            r, took = post(chaos, url, body)
            print(f"{url} with Redis down: {r.status_code} in {took:.2f}s: {r.text[:160]}")
            assert r.status_code == 503, r.text
            # A refused connection ends kombu's retries in about 1 s; a slow name lookup of the
            # stopped container can take the publish to its 2.5 s deadline in either app.
            assert took < 3, f"{took:.2f}s"
            reason = r.json().get("error") or r.json().get("detail")
            assert reason and "broker" in reason, r.text
            assert "Traceback" not in r.text
    finally:
        chaos.compose("start", "redis")
    chaos.wait_healthy(["redis"], timeout=60)

    def accepted():
        a, _ = post(chaos, f"{chaos.web}/api/task-runs/", {"operation": "echo", "payload": 2})
        b, _ = post(chaos, f"{chaos.fastapi}/tasks", {"operation": "echo", "payload": 2})
        return a.status_code == 201 and b.status_code == 202 and a.json()["id"]
    run_id = wait_for(accepted, 30, interval=1, describe=lambda: report(chaos, ["web", "fastapi"]))
    assert started_at(chaos, "web") == web_started, "web was restarted"
    assert started_at(chaos, "fastapi") == api_started, "fastapi was restarted"
    wait_workers_healthy(chaos)
    book = wait_final(chaos, [run_id], 60)
    assert book.count("SUCCESS") == 1, book.summary()


# ---- e/f. Redis away: healthcheck says so, workers come back alone, even if started first -----
def test_ef_workers_report_redis_loss_and_reconnect_without_help(chaos):
    wait_workers_healthy(chaos)
    before = {w: started_at(chaos, w) for w in ["celery", "celery-cpu"]}
    chaos.compose("stop", "redis")
    try:
        t0 = time.monotonic()
        code, out = healthcheck(chaos, "celery")
        took = time.monotonic() - t0
        print(f"healthcheck-celery with Redis down: exit {code} in {took:.1f}s: {out.strip()[-160:]}")
        assert code != 0 and "unhealthy" in out, out
        assert took < 20, f"{took:.1f}s: above the compose healthcheck timeout"
        # f: a worker (re)started while Redis is down keeps trying instead of exiting.
        io = chaos.container("celery-io")
        since = int(time.time())
        io.restart(timeout=30)
        wait_for(lambda: "Cannot connect to redis" in io.logs(since=since).decode(), 30,
                 interval=1, describe=lambda: report(chaos, ["celery-io"]))
        time.sleep(3)  # a few more connection attempts: the worker must still be there
        io.reload()
        assert io.status == "running", report(chaos, ["celery-io"])
    finally:
        chaos.compose("start", "redis")
    back = time.monotonic()
    chaos.wait_healthy(["redis"], timeout=60)
    wait_workers_healthy(chaos, timeout=90)
    print(f"all workers healthy again {time.monotonic() - back:.1f}s after Redis started")
    assert {w: started_at(chaos, w) for w in before} == before, "a worker was restarted"
    ids = enqueue(chaos, [("noop", None), ("primes", {"n": 1000}), ("sleep", {"seconds": 0.1})])
    book = wait_final(chaos, ids, 60)
    assert book.count("SUCCESS") == 3, book.summary()


# ---- e. Redis restarted with 200 tasks queued ---------------------------------------------------
def test_e_redis_restart_keeps_200_queued_tasks(chaos):
    specs = [("noop", None)] * 120 + [("primes", {"n": 1000})] * 40 + [("sleep", {"seconds": 0.1})] * 40
    with workers_stopped(chaos):
        ids = enqueue(chaos, specs)
        queued = queue_lengths(chaos)
        assert sum(queued.values()) >= 200, queued
        chaos.compose("restart", "--no-deps", "redis")
        chaos.wait_healthy(["redis"], timeout=60)
        after = queue_lengths(chaos)
        assert after == queued, (queued, after)
    started = time.monotonic()
    book = wait_final(chaos, ids, 120)
    print(f"Redis restart with 200 queued ({queued}): {book.summary()}, "
          f"{time.monotonic() - started:.1f}s after the workers started")
    assert book.count("SUCCESS") == 200, book.summary()
    assert book.twice == [], book.summary()
