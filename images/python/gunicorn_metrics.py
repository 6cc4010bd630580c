"""gunicorn hooks of start-web and start-fastapi (their `--config`): the request metrics of
every worker process, summed, served by the master on :9100 for the monitoring profile's
Prometheus.

gunicorn runs several worker processes, each with its own counters; a scrape of the app's own
port would reach one of them at random. prometheus_client's multiprocess mode has each process
write its values to files in PROMETHEUS_MULTIPROC_DIR (the start script sets and empties it
before anything imports prometheus_client), and the master serves their sum. Port 9100 is not
the app's: the proxy forwards only to 8000 and 8001, so these metrics never reach the internet.
"""
import os

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

METRICS_PORT = 9100


def when_ready(server):
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(METRICS_PORT, registry=registry)
    server.log.info("request metrics on :%d (%s)", METRICS_PORT,
                    os.environ["PROMETHEUS_MULTIPROC_DIR"])


def child_exit(server, worker):
    # A dead worker's gauges leave the sum; its counters stay in it (they are history).
    multiprocess.mark_process_dead(worker.pid)
