"""Postgres restarted while tasks run and FastAPI requests keep coming."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from chaos.harness import (SCAN_INTERVAL, VISIBILITY, WORKERS, enqueue, ledger, post,
                           service_logs, wait_final, wait_workers_healthy)
from stack import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.chaos]


# ---- g. Postgres restarted while tasks run ------------------------------------------------------
def test_g_postgres_restart_leaves_no_task_running_forever(chaos):
    """Sleeps are running and FastAPI requests keep coming (their worker creates the row, so
    it needs the database) while Postgres restarts: every task ends SUCCESS, or FAILURE with
    a recorded error; none stays QUEUED/RUNNING, no FastAPI task is without its row."""
    wait_workers_healthy(chaos)
    ids = enqueue(chaos, [("sleep", {"seconds": 4})] * 10)
    wait_for(lambda: ledger(chaos, ids).count("RUNNING") >= 5, 30, interval=0.5,
             describe=lambda: ledger(chaos, ids).summary())
    task_ids, errors, stop = [], [], threading.Event()

    def keep_posting():
        while not stop.is_set():
            try:
                r, _ = post(chaos, f"{chaos.fastapi}/tasks", {"operation": "noop"}, timeout=5)
                if r.status_code == 202:
                    task_ids.append(r.json()["task_id"])
                else:
                    errors.append(r.text)
            except requests.RequestException as exc:
                errors.append(str(exc))
            time.sleep(0.05)

    poster = threading.Thread(target=keep_posting, daemon=True)
    poster.start()
    try:
        time.sleep(1)
        since, started = time.time(), time.monotonic()
        chaos.compose("restart", "--no-deps", "postgres")
        time.sleep(2)
    finally:
        stop.set()
        poster.join(10)
    assert not errors, errors[:3]  # FastAPI trusts tokens it verified recently (stale-if-error)
    book = wait_final(chaos, ids, 2 * VISIBILITY + 10 + SCAN_INTERVAL + 60)
    api = wait_final(chaos, task_ids, 2 * VISIBILITY + 10 + SCAN_INTERVAL + 60, by_task_id=True)
    rows = {**book.rows, **api.rows}
    # Proof that the outage reached a task: a database retry in a worker's log (execute_task's
    # autoretry on OperationalError/InterfaceError), or a row whose operation started twice.
    retries = service_logs(chaos, WORKERS, since).count("retry: Retry in")
    failed = {k: r for k, r in rows.items() if r["status"] == "FAILURE"}
    print(f"Postgres restart: 10 sleeps enqueued, {book.summary()}; {len(task_ids)} FastAPI "
          f"noops, {api.summary()}; all final {time.monotonic() - started:.1f}s after the "
          f"restart; {retries} database retries logged; "
          f"errors: {sorted({r['error'][:80] for r in failed.values()})}")
    assert retries or book.twice or api.twice, "no task met the outage: the test proved nothing"
    assert len(task_ids) >= 20, task_ids
    assert all(r["error"] for r in failed.values()), failed
    assert not api.missing
    # With the database retries of execute_task/run_operation, the outage costs a rerun only.
    assert book.count("SUCCESS") == len(ids) and api.count("SUCCESS") == len(task_ids), failed
