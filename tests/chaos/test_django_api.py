"""Django's POST /api/task-runs/ under faults, through the proxy: Postgres stopped, bodies Postgres
would refuse, Redis hung, and one Idempotency-Key sent twenty times at once."""
from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chaos.harness import (count_taskruns, django, ledger, literal, post, queue_lengths, report,
                           select_taskruns, wait_final, wait_workers_healthy)
from stack import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.chaos]

UNAVAILABLE = "database unavailable, try again later"


def _post_key(chaos, body, key: str, timeout: float = 15) -> tuple[requests.Response, float]:
    started = time.monotonic()
    r = requests.post(f"{chaos.web}/api/task-runs/", data=json.dumps(body), timeout=timeout,
                      verify=False, headers={"Content-Type": "application/json",
                                             "Authorization": f"Bearer {chaos.token}",
                                             "Idempotency-Key": key})
    return r, time.monotonic() - started


def _accepting(chaos):
    """Wait until web answers a POST with 201 again; return (task run id, seconds)."""
    started = time.monotonic()

    def accepted():
        try:
            r, _ = post(chaos, f"{chaos.web}/api/task-runs/", {"operation": "noop"}, timeout=10)
        except requests.RequestException:
            return None
        return r.status_code == 201 and r.json()["id"]
    run_id = wait_for(accepted, 60, interval=0.5, describe=lambda: report(chaos, ["web"]))
    return run_id, time.monotonic() - started


# ---- h. Postgres stopped: 503 with a reason, fast, before and in the view ----------------------
def test_h_postgres_stopped_answers_503_with_a_reason(chaos):
    run_id, _ = _accepting(chaos)
    chaos.compose("stop", "--timeout", "10", "postgres")
    answers = []
    try:
        for method, url, body in [
            ("POST", f"{chaos.web}/api/task-runs/", {"operation": "noop"}),
            ("POST", f"{chaos.web}/api/task-runs/", {"operation": "echo", "payload": [1]}),
            ("GET", f"{chaos.web}/api/task-runs/{run_id}/", None),
        ]:
            started = time.monotonic()
            r = requests.request(method, url, timeout=15, verify=False,
                                 data=None if body is None else json.dumps(body),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {chaos.token}"})
            answers.append((method, r.status_code, round(time.monotonic() - started, 2),
                            r.text.strip()))
        print(f"Postgres stopped: {answers}")
        for method, code, took, text in answers:
            assert code == 503, (answers, report(chaos, ["web"]))
            assert json.loads(text) == {"error": UNAVAILABLE}, answers
            assert took < 6, answers  # connect_timeout is 5 s; a stopped host fails at once
        # No host, role or database name (postgres, trinity, trinity_gateway): the driver's
        # text goes to web's log only.
        for word in ("postgres", "trinity", "password", "FATAL"):
            assert all(word not in text for *_, text in answers), (word, answers)
        assert "database unavailable: " in chaos.logs("web", tail=40)
    finally:
        stopped = time.monotonic()
        chaos.compose("start", "postgres")
    chaos.wait_healthy(["postgres"], timeout=60)
    new_id, took = _accepting(chaos)
    print(f"web accepting again {time.monotonic() - stopped:.1f}s after Postgres was started "
          f"({took:.1f}s after it was healthy)")
    book = wait_final(chaos, [new_id], 90)
    assert book.count("SUCCESS") == 1, book.summary()


# ---- i. bodies Postgres would refuse: 400 naming the problem, nothing stored ------------------
def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


STORABLE = [
    (r'"a\u0000b"', "NUL"),
    (r'{"k\u0000": 1}', "NUL"),
    (r'"\ud800"', "lone surrogates"),
    (r'{"\udfff": 1}', "lone surrogates"),
    ("NaN", "finite"),
    ("[Infinity, 1]", "finite"),
    ('{"a": -Infinity}', "finite"),
    ("1e400", "finite"),
    (_nested(33), "nesting deeper than 32"),
    (_nested(100_000), "nests too deeply"),  # Python's own parser gives up (RecursionError)
]


def test_i_bodies_postgres_would_refuse_are_400_with_the_reason(chaos):
    before = count_taskruns(chaos)
    bodies = [(f'{{"operation": "echo", "payload": {payload}}}', reason)
              for payload, reason in STORABLE]
    for raw, reason in bodies:
        r, took = post(chaos, f"{chaos.web}/api/task-runs/", raw)
        assert r.status_code == 400 and reason in r.json()["error"], (raw[:60], r.text)
        assert took < 3, (raw[:60], took)
    assert count_taskruns(chaos) == before
    # The gateway applies the same check (config/payloads.py): 422, its validation errors' code.
    gateway = []
    for raw, reason in bodies:
        g, _ = post(chaos, f"{chaos.fastapi}/tasks", raw)
        gateway.append((reason, g.status_code))
        assert 400 <= g.status_code < 500, (raw[:60], g.status_code, g.text[:300])
    print(f"{len(bodies)} bodies refused by Django with 400; the gateway answered {gateway}")


# ---- j. Redis hung: an answer within 5 s, and a 503 that is true ------------------------------
STATES = """
import json
from celery.result import AsyncResult
from django_tenants.utils import schema_context
from apps.orchestration.models import TaskRun
with schema_context("public"):
    rows = TaskRun.objects.filter(pk__in={ids!r})
    print(json.dumps({{r.pk: [r.celery_task_id, AsyncResult(r.celery_task_id).state]
                      for r in rows}}))
"""


def test_j_redis_paused_answers_within_5s_and_a_503_never_runs(chaos):
    wait_workers_healthy(chaos)
    redis = chaos.container("redis")
    # While Redis hangs each POST holds a gunicorn thread for the publish deadline (2.5 s); more
    # requests than one gunicorn worker's threads (WEB_THREADS=4) would also wait for a thread.
    n = 4
    redis.pause()
    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            answers = list(pool.map(
                lambda i: post(chaos, f"{chaos.web}/api/task-runs/",
                               {"operation": "echo", "payload": i}, timeout=30), range(n)))
    finally:
        redis.unpause()
        unpaused = time.monotonic()
    codes = [r.status_code for r, _ in answers]
    latency = sorted(round(t, 2) for _, t in answers)
    print(f"Redis paused, {n} parallel POSTs: codes {codes}, latency {latency}")
    assert max(latency) < 5, latency
    refused = [r.json() for r, _ in answers if r.status_code == 503]
    accepted = [r.json()["id"] for r, _ in answers if r.status_code == 201]
    assert len(refused) + len(accepted) == n, [r.text for r, _ in answers]
    for body in refused:
        assert body["error"].startswith("broker unavailable: "), body
        assert "result backend" not in body["error"], body
    new_id, _ = _accepting(chaos)
    print(f"web accepting again {time.monotonic() - unpaused:.1f}s after the unpause")
    # After the unpause the hung publishes go through: workers get those messages and must
    # not run them. Wait until the queues are drained, then read the ledger.
    chaos.wait_healthy(["redis"], timeout=60)
    wait_for(lambda: not any(queue_lengths(chaos).values()), 60, interval=1,
             describe=lambda: f"{queue_lengths(chaos)}\n{report(chaos)}")
    ids = [body["id"] for body in refused]
    book = ledger(chaos, ids)
    states = django(chaos, STATES.format(ids=ids))
    late = sum(state == "FAILURE" for _, state in states.values())
    print(f"after unpause: 503 rows {book.summary()}; late messages refused by a worker: "
          f"{late}, never sent: {sum(s == 'PENDING' for _, s in states.values())}")
    assert not book.missing
    assert all(r["status"] == "FAILURE" and r["attempts"] == 0 and
               r["error"].startswith("broker unavailable") for r in book.rows.values()), \
        book.rows
    if accepted:  # a publish confirmed in time: it runs, once
        assert wait_final(chaos, accepted, 60).count("SUCCESS") == len(accepted)
    assert wait_final(chaos, [new_id], 60).count("SUCCESS") == 1
    wait_workers_healthy(chaos)


# ---- k. one Idempotency-Key, twenty requests at once: one row -----------------------------------
def test_k_twenty_parallel_posts_with_one_key_make_one_row(chaos):
    key = f"chaos-{secrets.token_hex(8)}"
    body = {"operation": "echo", "payload": {"order": key}}
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: _post_key(chaos, body, key), range(20)))
    codes = sorted(r.status_code for r, _ in answers)
    ids = {r.json().get("id") for r, _ in answers}
    task_ids = {r.json().get("celery_task_id") for r, _ in answers}
    print(f"20 parallel POSTs, one key: codes {codes}, ids {ids}, "
          f"slowest {max(t for _, t in answers):.2f}s")
    assert codes == [200] * 19 + [201], [r.text for r, _ in answers]
    assert len(ids) == 1 and len(task_ids) == 1 and None not in ids
    rows = select_taskruns(chaos, "id, status, attempts", f"idempotency_key = {literal(key)}")
    assert len(rows) == 1 and rows[0][0] in ids, rows
    book = wait_final(chaos, list(ids), 60)
    assert book.count("SUCCESS") == 1 and book.twice == [], book.summary()
    other, _ = _post_key(chaos, {"operation": "echo", "payload": "else"}, key)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"], other.text
