"""Unit tests of config/celery_settings.py: pure functions, no broker, no database."""

import os

import pytest
from kombu import Queue

from apps.orchestration.operations import (
    MARK_STUCK_TASK_RUNS,
    OPERATIONS,
    RUN_OPERATION,
    UnknownOperation,
)
from config.celery_settings import load_settings, queue_for_operation, queue_names, worker_queues
from config.variables import SettingsError

BASE = {"REDIS_URL": "redis://redis:6379/0"}


def settings(**env):
    return load_settings({**BASE, **env})


def test_defaults():
    conf = settings()
    assert conf["broker_url"] == "redis://redis:6379/0"
    assert conf["result_backend"] == "redis://redis:6379/0"
    assert conf["task_default_queue"] == "trinity.tasks"
    assert conf["worker_concurrency"] == (os.cpu_count() or 1)
    assert [q.name for q in conf["task_queues"]] == [
        "trinity.tasks", "trinity.tasks.cpu", "trinity.tasks.io", "trinity.tasks.beat"]
    assert all(isinstance(q, Queue) for q in conf["task_queues"])
    assert conf["broker_transport_options"]["visibility_timeout"] == 3600
    assert conf["result_backend_transport_options"]["visibility_timeout"] == 3600
    assert conf["task_time_limit"] < 3600


def test_reliability_settings():
    conf = settings()
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == ["json"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_connection_retry_on_startup"] is True
    assert conf["task_publish_retry_policy"]["max_retries"] == 3
    assert conf["broker_transport_options"]["max_retries"] == 3
    assert conf["broker_transport_options"]["socket_connect_timeout"] <= 5
    # A dead worker's message is swept back every 10 s, not every 10 x 10 s (kombu default).
    assert conf["broker_transport_options"]["unacked_restore_throttle"] == 1
    assert conf["broker_transport_options"]["unacked_restore_interval"] == 10
    assert conf["result_expires"] == 86400
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"] is True
    assert conf["result_extended"]
    # Per-task costs that only some tasks or a watching Flower need: off by default.
    assert not conf["task_track_started"]
    assert not conf["worker_send_task_events"] and not conf["task_send_sent_event"]
    assert conf["beat_scheduler"] == "redbeat.RedBeatScheduler"
    assert conf["redbeat_redis_url"] == conf["broker_url"]
    entry = conf["beat_schedule"]["mark-stuck-task-runs"]
    assert entry["task"] == MARK_STUCK_TASK_RUNS
    assert entry["schedule"] == 60
    assert entry["options"]["queue"] == "trinity.tasks.beat"


def test_urls_default_to_redis_url_and_can_be_overridden():
    conf = settings(CELERY_BROKER_URL="redis://b:6379/1", CELERY_RESULT_BACKEND="")
    assert conf["broker_url"] == "redis://b:6379/1"
    assert conf["result_backend"] == "redis://redis:6379/0"


def test_redis_url_not_needed_when_both_urls_set():
    conf = load_settings({"CELERY_BROKER_URL": "redis://b:6379/1",
                          "CELERY_RESULT_BACKEND": "rediss://r:6380/2"})
    assert conf["result_backend"] == "rediss://r:6380/2"


def test_queue_names_follow_the_default_queue():
    names = queue_names({"CELERY_TASK_DEFAULT_QUEUE": "jobs"})
    assert names == {"default": "jobs", "cpu": "jobs.cpu", "io": "jobs.io", "beat": "jobs.beat"}
    names = queue_names({"CELERY_CPU_QUEUE": "heavy", "CELERY_IO_QUEUE": "light",
                         "CELERY_BEAT_QUEUE": "cron"})
    assert names == {"default": "trinity.tasks", "cpu": "heavy", "io": "light", "beat": "cron"}


def test_concurrency_and_visibility_from_env():
    conf = settings(CELERY_WORKER_CONCURRENCY="8", CELERY_VISIBILITY_TIMEOUT="120")
    assert conf["worker_concurrency"] == 8
    assert conf["broker_transport_options"]["visibility_timeout"] == 120


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"REDIS_URL": ""}, "REDIS_URL"),
        ({"REDIS_URL": "http://redis:6379/0"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://redis:port/0"}, "REDIS_URL"),
        ({"REDIS_URL": "redis:///0"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://redis:6379/zero"}, "REDIS_URL"),
        ({"CELERY_BROKER_URL": "amqp://guest@rabbit//"}, "CELERY_BROKER_URL"),
        ({"CELERY_RESULT_BACKEND": "db+postgresql://x"}, "CELERY_RESULT_BACKEND"),
        ({"CELERY_WORKER_CONCURRENCY": "abc"}, "CELERY_WORKER_CONCURRENCY"),
        ({"CELERY_WORKER_CONCURRENCY": "0"}, "CELERY_WORKER_CONCURRENCY"),
        ({"CELERY_WORKER_CONCURRENCY": "-2"}, "CELERY_WORKER_CONCURRENCY"),
        ({"CELERY_VISIBILITY_TIMEOUT": "1h"}, "CELERY_VISIBILITY_TIMEOUT"),
        ({"CELERY_VISIBILITY_TIMEOUT": "0"}, "CELERY_VISIBILITY_TIMEOUT"),
        ({"CELERY_TASK_DEFAULT_QUEUE": "two words"}, "CELERY_TASK_DEFAULT_QUEUE"),
    ],
)
def test_invalid_values_name_the_variable(env, variable):
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, **env})
    assert str(caught.value).startswith(f"{variable}: ")


def test_concurrency_message_is_exact():
    with pytest.raises(SettingsError, match=r"^CELERY_WORKER_CONCURRENCY: must be a positive "
                                            r"integer, got 'abc'$"):
        settings(CELERY_WORKER_CONCURRENCY="abc")


def test_missing_redis_url():
    with pytest.raises(SettingsError, match="^REDIS_URL: required"):
        load_settings({})


def test_password_is_not_echoed():
    with pytest.raises(SettingsError) as caught:
        load_settings({"REDIS_URL": "redis://:s3cret@redis:port/0"})
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("operation, queue", [
    ("noop", "trinity.tasks"), ("echo", "trinity.tasks"), ("fail", "trinity.tasks"),
    ("sleep", "trinity.tasks.io"), ("primes", "trinity.tasks.cpu"),
])
def test_queue_for_operation(operation, queue):
    assert queue_for_operation(operation, {}) == queue


def test_unknown_operation():
    with pytest.raises(UnknownOperation, match="unknown operation 'nope'"):
        queue_for_operation("nope", {})
    with pytest.raises(ValueError):
        queue_for_operation(None, {})


def test_router():
    conf = settings(CELERY_TASK_DEFAULT_QUEUE="q")
    (route,) = conf["task_routes"]
    assert route(RUN_OPERATION, ["primes", 10, "public"], {}, {}) == {"queue": "q.cpu"}
    assert route(RUN_OPERATION, [], {"operation": "sleep"}, {}) == {"queue": "q.io"}
    assert route(MARK_STUCK_TASK_RUNS, [], {}, {}) == {"queue": "q.beat"}
    assert route("apps.orchestration.tasks.execute_task", [1, "public"], {}, {}) is None
    # An unknown operation still goes somewhere: its worker records the FAILURE.
    assert route(RUN_OPERATION, ["nope"], {}, {}) == {"queue": "q"}


def test_every_operation_has_a_queue():
    queues = queue_names({})
    for name, operation in OPERATIONS.items():
        assert queue_for_operation(name, {}) == queues[operation.kind]


def test_app_is_configured():
    from config.celery import app

    assert app.conf.task_default_queue
    assert app.conf.task_acks_late is True
    app.loader.import_default_modules()  # what a worker does at start: autodiscovery
    assert {"apps.orchestration.tasks.execute_task", "apps.orchestration.tasks.run_operation",
            "apps.orchestration.tasks.mark_stuck_task_runs"} <= set(app.tasks)


@pytest.mark.parametrize("env, message", [
    ({"CELERY_WORKER_CONCURRENCY": "abc"},
     "configuration error: CELERY_WORKER_CONCURRENCY: must be a positive integer, got 'abc'"),
    ({"REDIS_URL": "", "CELERY_BROKER_URL": ""},
     "configuration error: REDIS_URL: required (or set both CELERY_BROKER_URL and "
     "CELERY_RESULT_BACKEND)"),
    ({"DJANGO_SECRET_KEY": ""},
         "configuration error: DJANGO_SECRET_KEY: required, not set (nor DJANGO_SECRET_KEY_FILE)"),
])
def test_start_fails_with_one_line(env, message):
    """What `celery -A config.celery ...` does on a bad variable: one line, exit code 2."""
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run(
        [sys.executable, "-c", "import config.celery"],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, **env},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == message


def test_worker_queues_resolve_kinds_and_keep_names():
    assert worker_queues({}) == "trinity.tasks,trinity.tasks.cpu,trinity.tasks.io,trinity.tasks.beat"
    assert worker_queues({"CELERY_WORKER_QUEUES": "default,beat"}) == "trinity.tasks,trinity.tasks.beat"
    env = {"CELERY_TASK_DEFAULT_QUEUE": "q", "CELERY_WORKER_QUEUES": "cpu, custom"}
    assert worker_queues(env) == "q.cpu,custom"


def test_a_bad_variable_stops_configure_celery_app(capsys):
    from celery import Celery

    from config.celery_settings import configure_celery_app

    with pytest.raises(SystemExit) as stopped:
        configure_celery_app(Celery("t"), {**BASE, "CELERY_WORKER_LOST_MAX": "0"})
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "configuration error: CELERY_WORKER_LOST_MAX: must be a positive integer, got '0'\n")
