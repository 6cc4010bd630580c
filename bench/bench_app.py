"""The stack's own Celery app (config.celery: same settings, same broker) plus one pure no-op task.

Loaded from the mounted bench/ folder (PYTHONPATH=/bench:/app) by the bench driver and by the
workers it starts, so nothing in services/ changes. `bench.noop` goes to its own queue,
`trinity.bench`, which no stack worker consumes.

Tunings are read from the environment so the same code measures "as configured" and "tuned":
  BENCH_IGNORE_RESULT=1   the no-op stores no result (fire-and-forget)
  BENCH_NO_EVENTS=1       no task events (worker_send_task_events / task_send_sent_event off)
  BENCH_NO_TRACK_STARTED=1  no STARTED state write before the task runs
Acknowledgement settings (acks_late, reject_on_worker_lost, visibility timeout) are never touched.
"""
import os

from config.celery import app  # noqa: F401  (the stack's app: settings from celery_settings.py)

BENCH_QUEUE = "trinity.bench"


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


if _flag("BENCH_NO_EVENTS"):
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False
if _flag("BENCH_NO_TRACK_STARTED"):
    app.conf.task_track_started = False


@app.task(name="bench.noop", queue=BENCH_QUEUE, ignore_result=_flag("BENCH_IGNORE_RESULT"))
def noop():
    return None
