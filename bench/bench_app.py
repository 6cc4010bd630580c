"""The stack's own Celery app (config.celery: same settings, same broker) plus one pure no-op task.

Loaded from the mounted bench/ folder (PYTHONPATH=/bench:/app) by the bench driver and by the
workers it starts, so nothing in services/ changes. `bench.noop` goes to its own queue,
`trinity.bench`, which no stack worker consumes.

The stack's settings apply as they are; two switches measure what they replaced:
  BENCH_LEGACY=1          the settings before the throughput tuning (README, "Throughput"):
                          task events sent by workers and producers, a STARTED write per task (inner.py also drops the
                          workers' --without-gossip --without-mingle)
  BENCH_IGNORE_RESULT=1   the no-op stores no result (fire-and-forget)
Acknowledgement settings (acks_late, reject_on_worker_lost, visibility timeout) are never touched.
"""
import os

from config.celery import app  # noqa: F401  (the stack's app: settings from celery_settings.py)

BENCH_QUEUE = "trinity.bench"


def flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


if flag("BENCH_LEGACY"):
    app.conf.worker_send_task_events = True
    app.conf.task_send_sent_event = True
    app.conf.task_track_started = True


@app.task(name="bench.noop", queue=BENCH_QUEUE, ignore_result=flag("BENCH_IGNORE_RESULT"))
def noop():
    return None
