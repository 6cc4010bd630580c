"""Enqueues stop at ENQUEUE_MEMORY_LIMIT of Redis's maxmemory (config/broker_room.py)."""
from unittest import mock

import pytest

from config import broker_room

URL = "redis://redis:6379/0"


@pytest.fixture
def memory():
    """Redis's INFO memory as the test sets it; counts the INFO calls."""
    reading = {"used_memory": 0, "maxmemory": 1000}
    client = mock.Mock()
    client.info.side_effect = lambda section: dict(reading)
    broker_room._readings.clear()
    with mock.patch.object(broker_room, "redis_client", return_value=client):
        yield reading, client
    broker_room._readings.clear()


def test_below_the_limit_there_is_room(memory):
    reading, _ = memory
    reading["used_memory"] = 899
    broker_room.check_room(URL)


def test_at_the_limit_new_tasks_are_refused_with_the_reason(memory):
    reading, _ = memory
    reading["used_memory"] = 950
    with pytest.raises(broker_room.BrokerFull) as refused:
        broker_room.check_room(URL)
    assert str(refused.value).startswith("Redis memory at 95% of maxmemory: new tasks are refused")


def test_without_maxmemory_there_is_always_room(memory):
    reading, _ = memory
    reading.update(used_memory=10**12, maxmemory=0)
    broker_room.check_room(URL)


def test_one_reading_per_second(memory):
    reading, client = memory
    with mock.patch.object(broker_room.time, "monotonic", side_effect=[100.0, 100.5, 101.2]):
        broker_room.check_room(URL)
        reading["used_memory"] = 999  # not seen until the reading is a second old
        broker_room.check_room(URL)
        with pytest.raises(broker_room.BrokerFull):
            broker_room.check_room(URL)
    assert client.info.call_count == 2


def test_redis_errors_pass_through(memory):
    _, client = memory
    client.info.side_effect = ConnectionError("Error 111 connecting to redis:6379")
    with pytest.raises(ConnectionError):
        broker_room.check_room(URL)
