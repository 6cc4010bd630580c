"""POST /tasks against the real Redis (publishing mocked): a 202 only once the acceptance record
is written, a 503 never followed by one, and Idempotency-Key claims."""

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError

from app import owners
from app.main import app
from app.routes import tasks
from apps.orchestration.operations import GATEWAY_OWNER_KEY_PREFIX, GATEWAY_SENT_KEY
from tests.helpers import AUTH_A, AUTH_B

pytestmark = pytest.mark.usefixtures("live_redis", "token_lookup")

SENT = {"operation": "noop", "payload": None, "queue": "trinity.tasks"}


@pytest.fixture
def redis():
    return owners._client()


@pytest.fixture
def api():
    # A persistent event loop, as under uvicorn: a thread the handler gave up on keeps running.
    with TestClient(app) as client:
        yield client


@pytest.fixture
def short_deadlines(monkeypatch):
    monkeypatch.setattr(tasks, "PUBLISH_TIMEOUT", 0.3)
    monkeypatch.setattr(tasks, "ACCEPT_TIMEOUT", 0.8)
    monkeypatch.setattr(tasks, "REPLY_MARGIN", 0.1)


def key() -> str:
    return f"test-{uuid.uuid4()}"


def post(api, body=None, idem=None, headers=AUTH_A):
    headers = {**headers, **({"Idempotency-Key": idem} if idem is not None else {})}
    return api.post("/tasks", json=body or {"operation": "noop"}, headers=headers)


def accepted(redis, task_id) -> bool:
    return redis.exists(GATEWAY_OWNER_KEY_PREFIX + task_id) == 1


def claim_of(redis, schema, idem):
    held = redis.get(f"{owners.IDEM_PREFIX}{schema}:{idem}")
    return json.loads(held) if held is not None else None


def wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# -- the acceptance record ----------------------------------------------------------------

def test_the_owner_prefix_is_the_shared_contract():
    assert owners.KEY_PREFIX == GATEWAY_OWNER_KEY_PREFIX


def test_a_202_means_the_record_is_written_after_the_publish(api, redis, send_task):
    send_task.side_effect = lambda *a, task_id, **k: (
        pytest.fail("record before publish") if accepted(redis, task_id) else None)
    response = post(api)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert send_task.call_args.kwargs["kwargs"] == {"await_acceptance": True}
    assert redis.get(GATEWAY_OWNER_KEY_PREFIX + task_id) == b"public"
    assert 86000 < redis.ttl(GATEWAY_OWNER_KEY_PREFIX + task_id) <= 86400


def test_a_202_leaves_a_note_of_what_was_sent_for_the_stuck_task_scan(api, redis, send_task):
    response = post(api, {"operation": "sleep", "payload": {"seconds": 1}})
    assert response.status_code == 202, response.text
    note = json.loads(redis.hget(GATEWAY_SENT_KEY, response.json()["task_id"]))
    assert note.pop("at") == pytest.approx(time.time(), abs=5)
    assert note == {"operation": "sleep", "payload": {"seconds": 1},
                    "queue": response.json()["queue"], "schema": "public"}


def test_a_publish_past_the_deadline_is_503_and_never_accepted(api, redis, send_task,
                                                               short_deadlines):
    """Redis hung during the publish: 503 at the deadline; the publish completing afterwards
    (Redis back) writes no record, so the worker will not run the message."""
    published = threading.Event()
    task_ids = []

    def slow_publish(*args, task_id, **kwargs):
        task_ids.append(task_id)
        time.sleep(1.0)
        published.set()

    send_task.side_effect = slow_publish
    response = post(api)
    assert not published.is_set(), "the answer waited for the publish"
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "broker unavailable: no answer within 0.3 s"
    assert published.wait(5)
    time.sleep(0.3)  # the thread's next step would be the record: it must not come
    assert not accepted(redis, task_ids[0])


def test_a_record_write_under_way_at_the_deadline_is_waited_for(api, redis, send_task,
                                                                 short_deadlines, monkeypatch):
    real_accept = owners.accept

    def slow_accept(*args):
        time.sleep(0.4)  # begun before the 0.3 s publish deadline, ends after it
        return real_accept(*args)

    monkeypatch.setattr(owners, "accept", slow_accept)
    started = time.monotonic()
    response = post(api)
    assert response.status_code == 202, response.text
    assert time.monotonic() - started > 0.3  # past the publish deadline, and still a 202
    assert accepted(redis, response.json()["task_id"])


def test_a_record_write_past_the_whole_budget_is_503_within_it(api, send_task, short_deadlines,
                                                                monkeypatch):
    """Redis hung between the publish and the record: 503 within the budget (a record that
    Redis writes later is already expired: tested below)."""
    written = threading.Event()

    def hung_accept(*args):
        time.sleep(1.5)
        written.set()

    monkeypatch.setattr(owners, "accept", hung_accept)
    response = post(api)
    assert not written.is_set(), "the answer waited past its budget"
    assert response.status_code == 503
    assert response.json()["error"] == "broker unavailable: no answer within 0.8 s"


def test_a_record_that_reaches_redis_after_its_deadline_is_not_written(api, redis, send_task,
                                                                        monkeypatch):
    """Redis ran the write too late (it hung): the record is gone at once, and the answer is
    a 503, never a 202 for a task no worker will run."""
    monkeypatch.setattr(tasks, "REPLY_MARGIN", tasks.ACCEPT_TIMEOUT + 1)  # deadline passed
    response = post(api)
    assert response.status_code == 503, response.text
    assert response.json()["error"] == (
        "broker unavailable: Redis took the acceptance record too late")
    task_id = send_task.call_args.kwargs["task_id"]
    assert not accepted(redis, task_id)
    assert owners.accept(task_id, "public", None, time.time() - 1, SENT) is False
    assert not accepted(redis, task_id)
    assert owners.accept(task_id, "public", None, time.time() + 1, SENT) is True
    assert 86000 < redis.ttl(GATEWAY_OWNER_KEY_PREFIX + task_id) <= 86400


def test_handoff_decides_once():
    handoff = tasks.Handoff()
    assert handoff.begin_write() and not handoff.give_up()
    handoff = tasks.Handoff()
    assert handoff.give_up() and not handoff.begin_write() and handoff.given_up


# -- Idempotency-Key ----------------------------------------------------------------------

def test_a_repeat_after_acceptance_gets_the_same_task(api, redis, send_task):
    idem = key()
    first = post(api, {"operation": "echo", "payload": {"a": 1, "b": 2}}, idem)
    # The same body, spelled in another key order.
    again = post(api, {"payload": {"b": 2, "a": 1}, "operation": "echo"}, idem)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert first.json() == again.json()
    send_task.assert_called_once()
    assert claim_of(redis, "public", idem)["task_id"] == first.json()["task_id"]
    assert 86000 < redis.ttl(f"{owners.IDEM_PREFIX}public:{idem}") <= 86400


def test_the_same_key_with_another_body_is_422(api, send_task):
    idem = key()
    assert post(api, {"operation": "echo", "payload": 1}, idem).status_code == 202
    response = post(api, {"operation": "echo", "payload": 2}, idem)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == (
        "header.Idempotency-Key: this key was used with a different body")
    send_task.assert_called_once()


def test_a_repeat_while_the_first_is_in_progress_is_409(api, redis, send_task):
    idem = key()
    digest = tasks.TaskRequest(operation="noop").digest()
    assert owners.claim("public", idem, "first-not-yet-accepted", digest) is None
    response = post(api, idem=idem)
    assert response.status_code == 409, response.text
    assert "in progress" in response.json()["error"]
    send_task.assert_not_called()
    assert 0 < redis.ttl(f"{owners.IDEM_PREFIX}public:{idem}") <= owners.CLAIM_TTL_SECONDS


def test_keys_are_per_tenant(api, send_task):
    idem = key()
    a, b = post(api, idem=idem), post(api, idem=idem, headers=AUTH_B)
    assert a.status_code == b.status_code == 202
    assert a.json()["task_id"] != b.json()["task_id"]


def test_a_503_frees_the_key_for_a_retry(api, redis, send_task):
    idem = key()
    send_task.side_effect = OperationalError("Error 111 connecting to redis:6379. Refused")
    assert post(api, idem=idem).status_code == 503
    assert claim_of(redis, "public", idem) is None
    send_task.side_effect = None
    retry = post(api, idem=idem)
    assert retry.status_code == 202, retry.text
    assert claim_of(redis, "public", idem)["task_id"] == retry.json()["task_id"]


def test_a_503_at_the_deadline_frees_the_key_once_the_publish_ends(api, redis, send_task,
                                                                    short_deadlines):
    idem = key()
    send_task.side_effect = lambda *a, **k: time.sleep(1.0)
    assert post(api, idem=idem).status_code == 503
    assert claim_of(redis, "public", idem) is not None  # the thread still holds it...
    wait(lambda: claim_of(redis, "public", idem) is None)  # ...and frees it when it ends


def test_a_claim_sent_twice_finds_itself(api, redis, send_task, monkeypatch):
    """A retried SET NX GET (the reply of the first was lost while Redis hung) answers this
    request's own claim: that is no repeat."""
    real_claim = owners.claim

    def twice(*args):
        real_claim(*args)
        return real_claim(*args)

    monkeypatch.setattr(owners, "claim", twice)
    idem = key()
    response = post(api, idem=idem)
    assert response.status_code == 202, response.text
    assert claim_of(redis, "public", idem)["task_id"] == response.json()["task_id"]


def test_a_failed_claim_is_freed(api, redis, send_task, monkeypatch):
    """The claim's SET landed but its reply was lost (an error here): freed all the same."""
    real_claim = owners.claim

    def lost_reply(*args):
        real_claim(*args)
        raise TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(owners, "claim", lost_reply)
    idem = key()
    assert post(api, idem=idem).status_code == 503
    assert claim_of(redis, "public", idem) is None
    send_task.assert_not_called()


def test_release_keeps_a_claim_whose_task_was_accepted(redis):
    idem = key()
    assert owners.claim("public", idem, "t1", "h") is None
    assert owners.accept("t1", "public", idem, time.time() + 5, SENT)
    owners.release("public", idem, "t1")
    assert claim_of(redis, "public", idem) == {"task_id": "t1", "body": "h"}
    owners.release("public", idem, "another-task")
    assert claim_of(redis, "public", idem) is not None


@pytest.mark.parametrize("idem, status", [("", 400), ("x" * 256, 400), ("x" * 255, 202)])
def test_key_length(api, send_task, idem, status):
    response = post(api, idem=idem)
    assert response.status_code == status, response.text
    if status == 400:
        assert "Idempotency-Key must be 1 to 255 characters" in response.json()["error"]
        send_task.assert_not_called()


def test_twenty_parallel_posts_with_one_key_publish_once(api, send_task):
    idem = key()
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: post(api, {"operation": "echo", "payload": 7}, idem),
                                range(20)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {202, 409}, codes
    assert len({r.json()["task_id"] for r in answers if r.status_code == 202}) == 1, codes
    send_task.assert_called_once()
