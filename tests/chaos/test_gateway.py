"""FastAPI's POST /tasks: a 202 means the task runs, a 503 that it does not, also when Redis hangs
(docker pause: connections stay open and nothing answers); Idempotency-Key makes one run of
many parallel requests."""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chaos.harness import (FINAL, QUEUED_GRACE, SCAN_INTERVAL, literal, queue_lengths, redis_cli,
                           report, select_taskruns, wait_final, workers_stopped)
from stack import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.chaos]

BUDGET = 5.0  # every POST is answered within this, whatever Redis does
PAUSE = 6.0  # long enough for two rounds of 503s per client

# Every row whose payload carries this run's marker: rows of 503'd requests have no task id
# the test knows, so requests are told apart by the "n" in their payload.
def send(stack, body: dict, key: str | None = None) -> dict:
    """POST /tasks through the proxy; the answer as a dict (status None: no answer at all)."""
    headers = {"Authorization": f"Bearer {stack.token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    started = time.monotonic()
    try:
        r = requests.post(f"{stack.fastapi}/tasks", json=body, headers=headers, timeout=15,
                          verify=False)
        status, answer = r.status_code, r.json()
    except (requests.RequestException, ValueError) as exc:
        status, answer = None, {"error": repr(exc)}
    return {"n": body["payload"]["n"], "status": status, "task_id": answer.get("task_id"),
            "error": answer.get("error"), "took": time.monotonic() - started}


def sleep_task(run: str, n: str) -> dict:
    # The IO queue (a threads pool): messages that wait for an acceptance record that never
    # comes hold a thread each for ACCEPTANCE_WAIT, not one of the default worker's processes.
    return {"operation": "sleep", "payload": {"seconds": 0.05, "run": run, "n": n}}


def marked_rows(stack, run: str) -> list[dict]:
    rows = select_taskruns(stack, "celery_task_id, payload->>'n', status, attempts, error",
                           f"payload->>'run' = {literal(run)}")
    return [dict(task_id=t, n=n, status=s, attempts=a, error=e) for t, n, s, a, e in rows]


def settled_rows(stack, run: str, timeout: float = 90) -> list[dict]:
    """The marked rows once the queues are empty and every row is final (rows of unaccepted
    messages end FAILURE after the workers' ACCEPTANCE_WAIT)."""
    found = []

    def settled():
        found[:] = marked_rows(stack, run)
        return (sum(queue_lengths(stack).values()) == 0
                and all(r["status"] in FINAL for r in found))
    wait_for(settled, timeout, interval=2, describe=lambda: f"{found}\n{report(stack)}")
    return found


def unpause(stack) -> None:
    redis = stack.container("redis")
    redis.reload()
    if redis.status == "paused":
        redis.unpause()


def test_hung_redis_answers_within_budget_and_a_503_never_runs(chaos):
    run, stop, answers = uuid.uuid4().hex, threading.Event(), []
    lock = threading.Lock()

    def client(i: int) -> None:
        j = 0
        while not stop.is_set():
            answer = send(chaos, sleep_task(run, f"{i}-{j}"))
            answer["at"] = time.monotonic()
            with lock:
                answers.append(answer)
            j += 1

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    redis = chaos.container("redis")
    idem_key, idem_body = f"chaos-{run}", sleep_task(run, "idem")
    for w in workers:
        w.start()
    try:
        time.sleep(1.5)  # a stream of 202s first
        paused = time.monotonic()
        redis.pause()
        refused = send(chaos, idem_body, idem_key)  # with a key: 503, and the key is freed
        time.sleep(max(0.0, PAUSE - (time.monotonic() - paused)))
    finally:
        unpause(chaos)
    resumed = time.monotonic()

    def accepted_again():  # the stream gets a 202 sent after Redis came back
        with lock:
            return any(a["status"] == 202 and a["at"] - a["took"] > resumed for a in answers)
    try:
        wait_for(accepted_again, 30, interval=0.2, describe=lambda: report(chaos, ["fastapi"]))
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=20)
    recovered = min(a["at"] for a in answers if a["status"] == 202 and a["at"] > resumed)
    chaos.wait_healthy(["redis", "fastapi"], timeout=60)

    # The retry with the key goes through once the refused request's thread has freed it.
    def retry():
        answer = send(chaos, idem_body, idem_key)
        return answer if answer["status"] == 202 else None
    retried = wait_for(retry, 30, interval=0.5, describe=lambda: report(chaos, ["fastapi"]))

    codes = {}
    for a in answers:
        codes[a["status"]] = codes.get(a["status"], 0) + 1
    in_pause = [a for a in answers if a["at"] > paused and a["at"] - a["took"] < resumed]
    slowest = max(a["took"] for a in answers)
    print(f"\nhung Redis ({PAUSE:.0f} s pause): {len(answers)} POSTs, codes {codes}, "
          f"slowest {slowest:.2f}s, slowest during the pause "
          f"{max(a['took'] for a in in_pause):.2f}s, first 202 "
          f"{recovered - resumed:.2f}s after unpause; with a key: {refused['status']} "
          f"in {refused['took']:.2f}s, retry {retried['status']}")
    for a in sorted(answers, key=lambda a: a["at"] - a["took"]):
        if a["at"] < paused:  # answered before the pause: nothing to see
            continue
        print(f"  sent {a['at'] - a['took'] - paused:+6.2f}s from the pause: {a['status']} "
              f"in {a['took']:.2f}s {a['error'] or ''}")
    assert set(codes) <= {202, 503}, codes
    assert codes.get(503) and codes.get(202), codes
    assert slowest < BUDGET and refused["took"] < BUDGET, slowest
    assert refused["status"] == 503, refused
    assert all(a["error"].startswith("broker unavailable: ")
               for a in answers if a["status"] == 503), answers

    # The ledger: every 202 ran once; no 503 ran (no row, or FAILURE "not accepted" unrun).
    ok = [a for a in answers if a["status"] == 202] + [retried]
    book = wait_final(chaos, [a["task_id"] for a in ok], 90, by_task_id=True)
    rows = settled_rows(chaos, run)
    told = {a["n"]: a for a in answers}
    phantoms = [r for r in rows if r["n"] in told and told[r["n"]]["status"] == 503
                and (r["status"] != "FAILURE" or r["attempts"] != 0)]
    unaccepted = [r for r in rows if r["status"] == "FAILURE"]
    idem_rows = sorted((r["status"], r["attempts"]) for r in rows if r["n"] == "idem")
    print(f"ledger: {book.summary()}; {len(rows)} marked rows, {len(unaccepted)} FAILURE "
          f"not accepted (of {codes[503]} 503s), phantoms: {len(phantoms)}, "
          f"ran twice: {len(book.twice)}; rows of the keyed request: {idem_rows}")
    assert book.count("SUCCESS") == len(ok) and book.twice == [], book.summary()
    assert phantoms == [], phantoms
    assert all(r["error"].startswith("not accepted") and r["attempts"] == 0
               for r in unaccepted), unaccepted
    assert ("SUCCESS", 1) in idem_rows and idem_rows.count(("SUCCESS", 1)) == 1, idem_rows


def test_twenty_parallel_posts_with_one_idempotency_key_make_one_run(chaos):
    run, key = uuid.uuid4().hex, f"chaos-{uuid.uuid4()}"
    body = sleep_task(run, "one")
    barrier = threading.Barrier(20)

    def together(_):
        barrier.wait(timeout=30)
        return send(chaos, body, key)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(together, range(20)))
    codes = sorted(a["status"] for a in answers)
    ids = {a["task_id"] for a in answers if a["status"] == 202}
    print(f"\n20 parallel POSTs, one key: codes {codes}, task ids {ids}, slowest "
          f"{max(a['took'] for a in answers):.2f}s")
    assert set(codes) <= {202, 409} and len(ids) == 1, answers
    assert all("in progress" in a["error"] for a in answers if a["status"] == 409), answers
    task_id = ids.pop()

    book = wait_final(chaos, [task_id], 60, by_task_id=True)
    rows = settled_rows(chaos, run)
    assert [(r["task_id"], r["status"], r["attempts"]) for r in rows] == [
        (task_id, "SUCCESS", 1)], (rows, book.summary())
    # Later: the same key and body is that task again; another body is refused.
    assert send(chaos, body, key)["task_id"] == task_id
    other = send(chaos, sleep_task(run, "other"), key)
    assert other["status"] == 422 and "different body" in other["error"], other
    assert len(marked_rows(chaos, run)) == 1


def test_a_202_whose_message_redis_lost_before_any_row_is_sent_again(chaos):
    """Redis loses a gateway task's message before a worker made its TaskRun row (data lost, or
    a worker's connection closed while Redis was handing the message to it): the stuck-task
    scan finds the gateway's note of the task, publishes it again under the same task id, and
    it runs once."""
    run = uuid.uuid4().hex
    with workers_stopped(chaos, ["celery-cpu"]):
        answer = send(chaos, {"operation": "primes", "payload": {"n": 1000, "run": run}})
        assert answer["status"] == 202, answer
        assert queue_lengths(chaos)["trinity.tasks.cpu"] == 1
        redis_cli(chaos, "DEL", "trinity.tasks.cpu")  # the message is gone, the note is not
        started = time.monotonic()
        wait_for(lambda: queue_lengths(chaos)["trinity.tasks.cpu"] == 1,
                 QUEUED_GRACE + 4 * SCAN_INTERVAL + 30, interval=1,
                 describe=lambda: report(chaos, ["celery", "beat"]))
        resent = time.monotonic() - started
    book = wait_final(chaos, [answer["task_id"]], 60, by_task_id=True)
    rows = marked_rows(chaos, run)
    print(f"\nlost gateway message sent again {resent:.0f}s after the loss (grace "
          f"{QUEUED_GRACE}s, scan every {SCAN_INTERVAL}s): {rows}")
    assert [(r["task_id"], r["status"], r["attempts"]) for r in rows] == [
        (answer["task_id"], "SUCCESS", 1)], (rows, book.summary())
