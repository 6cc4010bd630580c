"""The stack's own Celery app (config.celery: same settings, same broker) plus one pure no-op task.

Loaded from the mounted bench/ folder (PYTHONPATH=/bench:/app) by the bench driver and by the
workers it starts, so nothing in services/ changes. `bench.noop` goes to its own queue,
`trinity.bench`, which no stack worker consumes.

The stack's settings apply as they are; three switches measure what they replaced:
  BENCH_LEGACY=1          the settings before the throughput tuning (README, "Throughput"):
                          task events sent by workers and producers, a STARTED write per task (inner.py also drops the
                          workers' --without-gossip --without-mingle)
  BENCH_IGNORE_RESULT=1   the no-op stores no result (fire-and-forget)
  BENCH_VANILLA=1         not the stack's app at all: a new Celery app on the same Redis, as a
                          new user would start one (VANILLA below; inner.py starts its workers
                          with Celery's default flags)
Acknowledgement settings (acks_late, reject_on_worker_lost, visibility timeout) are never touched,
except by BENCH_VANILLA, which has Celery's own (early acks).
"""
import os

from celery import Celery

BENCH_QUEUE = "trinity.bench"

# What a new user runs: Celery's defaults (early acks, prefetch multiplier 4, gossip, mingle,
# heartbeats) plus the Celery block that cookiecutter-django generates for a new project
# (results in the broker's Redis with extended metadata, task events from workers and producers
# for Flower, time limits of 5 min / 60 s). No kombu or Celery fixes of the stack.
VANILLA = {
    "result_extended": True,
    "result_backend_always_retry": True,
    "result_backend_max_retries": 10,
    "accept_content": ["json"],
    "task_serializer": "json",
    "result_serializer": "json",
    "task_time_limit": 5 * 60,
    "task_soft_time_limit": 60,
    "worker_send_task_events": True,
    "task_send_sent_event": True,
    "worker_hijack_root_logger": False,
    "timezone": "UTC",
}


def flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


if flag("BENCH_VANILLA"):
    # Only the broker's URL (with this service's Redis user and password) comes from the
    # stack's settings; cookiecutter-django keeps results in the broker's Redis too.
    from config.celery_settings import load_settings

    broker_url = load_settings()["broker_url"]
    app = Celery("bench", broker=broker_url, backend=broker_url)
    app.conf.update(VANILLA)
else:
    from config.celery import app  # the stack's app: settings from celery_settings.py

    if flag("BENCH_LEGACY"):
        app.conf.worker_send_task_events = True
        app.conf.task_send_sent_event = True
        app.conf.task_track_started = True


@app.task(name="bench.noop", queue=BENCH_QUEUE, ignore_result=flag("BENCH_IGNORE_RESULT"))
def noop():
    return None
