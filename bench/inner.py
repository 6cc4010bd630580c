"""Bench driver that runs next to Redis, in a one-off container of the django image.

    python /bench/inner.py FIGURE [options]      (PYTHONPATH=/bench:/app, env of the celery service)

Prints progress on stderr and ONE JSON object on the last line of stdout; bench/run.py reads it.
Figures:
  raw       raw redis-py baselines: LPUSH rate (one by one, pipelined), BRPOP drain rate,
            a reliable BLMOVE+LREM drain, and a BLPOP ping-pong round trip between two processes
  enqueue   Celery enqueue rate: `.delay()` one by one, and grouped `apply_async`
  drain     N no-ops queued first, then a worker (pool/concurrency/flags given) drains them
  latency   enqueue -> result visible, one task in flight, against a worker started here
  fill      (the Swarm figure, bench/swarm_drain.py) N no-ops queued and set aside under
            another key, so that workers started later find nothing yet
  release   (the Swarm figure) once K bench workers answer a ping, the set-aside queue is put
            back in one RENAME and drained by them; the drain rate, Redis's own CPU and the
            host's busy cores over the drain
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import redis

QUEUE = "trinity.bench"
RAW_QUEUE = "bench.raw"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def client() -> redis.Redis:
    """The broker as the stack's Celery app reaches it: its URL with this service's Redis user
    and password (from the variable, or the secret file on the Swarm)."""
    from config.celery_settings import load_settings

    return redis.Redis.from_url(load_settings()["broker_url"])


def pct(values, p):
    s = sorted(values)
    if not s:
        return None
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def clean(r: redis.Redis) -> None:
    """Empty the bench queues and drop stored results so figures do not leak into each other."""
    r.delete(QUEUE, RAW_QUEUE, RAW_QUEUE + ".processing", "bench.ping", "bench.pong")
    keys = []
    for key in r.scan_iter(match="celery-task-meta-*", count=5000):
        keys.append(key)
        if len(keys) >= 5000:
            r.delete(*keys)
            keys = []
    if keys:
        r.delete(*keys)


def celery_message(r: redis.Redis) -> bytes:
    """One real Celery message of bench.noop, as it sits in the Redis list."""
    from bench_app import noop

    r.delete(QUEUE)
    noop.apply_async()
    raw = r.lindex(QUEUE, 0)
    r.delete(QUEUE)
    return raw


# ---- raw baselines ----------------------------------------------------------------------------
def _ponger(ready, rounds):
    r = client()
    ready.set()
    for _ in range(rounds):
        _, msg = r.blpop("bench.ping", timeout=10)
        r.lpush("bench.pong", msg)


def pingpong(r, rounds, msg):
    ready = mp.Event()
    p = mp.Process(target=_ponger, args=(ready, rounds))
    p.start()
    ready.wait(10)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        r.lpush("bench.ping", msg)
        r.blpop("bench.pong", timeout=10)
        times.append(time.perf_counter() - t)
    p.join(10)
    return times


def fig_raw(args):
    r = client()
    clean(r)
    msg = celery_message(r)
    n = args.n
    out = {"payload_bytes": len(msg)}

    t = time.perf_counter()
    for _ in range(n):
        r.lpush(RAW_QUEUE, msg)
    out["lpush_rate"] = n / (time.perf_counter() - t)

    t = time.perf_counter()
    got = 0
    while got < n:
        if r.brpop(RAW_QUEUE, timeout=5) is None:
            break
        got += 1
    out["brpop_drain_rate"] = got / (time.perf_counter() - t)

    t = time.perf_counter()
    for i in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for _ in range(min(1000, n - i)):
            pipe.lpush(RAW_QUEUE, msg)
        pipe.execute()
    out["lpush_pipelined_rate"] = n / (time.perf_counter() - t)

    # A minimal reliable queue: move to a processing list, then remove (ack): 2 round trips.
    t = time.perf_counter()
    got = 0
    while got < n:
        m = r.blmove(RAW_QUEUE, RAW_QUEUE + ".processing", 5, "RIGHT", "LEFT")
        if m is None:
            break
        r.lrem(RAW_QUEUE + ".processing", 1, m)
        got += 1
    out["reliable_drain_rate"] = got / (time.perf_counter() - t)

    rounds = args.rounds
    pingpong(r, 50, msg)  # warm up
    times = pingpong(r, rounds, msg)
    out["pingpong"] = {"p50": pct(times, 50), "p95": pct(times, 95), "p99": pct(times, 99),
                       "samples": [round(x * 1e6) for x in times]}
    clean(r)
    return out


# ---- Celery enqueue -------------------------------------------------------------------------------
def fill_grouped(n, chunk=1000):
    from celery import group

    from bench_app import noop

    for i in range(0, n, chunk):
        group(noop.s() for _ in range(min(chunk, n - i))).apply_async()


def fill_producer(n):
    """apply_async in a loop on one producer held open (no pool acquire per message)."""
    from bench_app import app, noop

    with app.producer_or_acquire() as producer:
        for _ in range(n):
            noop.apply_async(producer=producer)


def fig_enqueue(args):
    from bench_app import noop

    r = client()
    clean(r)
    n = args.n
    noop.delay()  # connect, declare, warm up
    r.delete(QUEUE)
    t = time.perf_counter()
    for _ in range(n):
        noop.delay()
    delay_rate = n / (time.perf_counter() - t)
    assert r.llen(QUEUE) == n, r.llen(QUEUE)
    r.delete(QUEUE)
    t = time.perf_counter()
    fill_grouped(n)
    group_rate = n / (time.perf_counter() - t)
    assert r.llen(QUEUE) == n, r.llen(QUEUE)
    r.delete(QUEUE)
    t = time.perf_counter()
    fill_producer(n)
    producer_rate = n / (time.perf_counter() - t)
    assert r.llen(QUEUE) == n, r.llen(QUEUE)
    clean(r)
    return {"delay_rate": delay_rate, "group_rate": group_rate, "producer_rate": producer_rate}


# ---- Celery workers ---------------------------------------------------------------------------------
# The flags of images/django/start-celery, so a bench worker runs as the stack's workers do.
STACK_WORKER_FLAGS = ["--without-gossip", "--without-mingle"]


def start_worker(pool, concurrency, extra, name):
    from bench_app import flag

    cmd = ["celery", "-A", "bench_app", "worker", "--loglevel", "warning", "-Q", QUEUE,
           "--hostname", f"{name}@%h", "--pool", pool]
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    if not (flag("BENCH_LEGACY") or flag("BENCH_VANILLA")):
        cmd += STACK_WORKER_FLAGS
    cmd += extra
    log("worker:", " ".join(cmd))
    return subprocess.Popen(cmd, start_new_session=True)


def stop_worker(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tree_rss_kb(pid) -> int:
    """RSS of a process and its descendants (kB), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def fig_drain(args):
    r = client()
    clean(r)
    n = args.n
    fill_producer(n)
    assert r.llen(QUEUE) == n, r.llen(QUEUE)
    r.delete("unacked", "unacked_index")  # nobody else holds messages in this throw-away stack
    before = r.info("commandstats")
    polls = 0
    extra = args.extra.split() if args.extra else []
    procs = [start_worker(args.pool, args.concurrency, extra, f"bench-{args.pool}-{i}")
             for i in range(args.workers)]
    deadline = time.monotonic() + 120 + n / 100
    t0 = None
    rss = 0
    next_rss = 0.0
    try:
        while True:
            left = r.llen(QUEUE)
            polls += 1
            now = time.perf_counter()
            if t0 is None and left < n:
                t0 = now
            if t0 is not None:
                if now >= next_rss:
                    rss = max(rss, sum(tree_rss_kb(p.pid) for p in procs))
                    next_rss = now + 0.5
                polls += 1
                if left == 0 and r.hlen("unacked") == 0:
                    t1 = now
                    break
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"drain not finished: {left} queued, "
                                   f"{r.hlen('unacked')} unacked")
            time.sleep(0.01)
        rss = max(rss, sum(tree_rss_kb(p.pid) for p in procs))
    finally:
        for proc in procs:
            stop_worker(proc)
    # t0 is seen up to one poll after the first fetch; the drain started ~5 ms before t0.
    elapsed = t1 - t0 + 0.005
    after = r.info("commandstats")
    calls = {k.split("_", 1)[1]: v["calls"] - before.get(k, {}).get("calls", 0)
             for k, v in after.items()}
    calls["llen"] = calls.get("llen", 0) - polls
    calls["hlen"] = calls.get("hlen", 0) - polls
    calls.pop("info", None)
    calls = {k: v for k, v in calls.items() if v > 0}
    per_task = sum(calls.values()) / n  # includes worker start-up and stop: small for large n
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
    clean(r)
    return {"redis_cmds_per_task": per_task,
            "redis_top": {k: round(v / n, 2) for k, v in top},"pool": args.pool, "workers": args.workers, "n": n, "seconds": elapsed, "rate": n / elapsed,
            "worker_rss_mb": rss / 1024}


# ---- the Swarm figure: workers that run as a service, on other nodes -----------------------------
HOLD = QUEUE + ".hold"


def fig_fill(args):
    """N no-ops queued, then moved aside (RENAME), so that the workers started next find an
    empty queue and the drain begins for all of them at once, in `release`."""
    r = client()
    clean(r)
    r.delete(HOLD)
    fill_producer(args.n)
    assert r.llen(QUEUE) == args.n, r.llen(QUEUE)
    r.rename(QUEUE, HOLD)
    return {"n": args.n}


def bench_workers() -> list[str]:
    """Names of the bench workers that answer a ping (`bench@<node>-<slot>`)."""
    from bench_app import app

    replies = app.control.ping(timeout=2.0) or []
    return sorted(name for reply in replies for name in reply if name.startswith("bench@"))


def host_busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine: /proc/stat is not namespaced, so a
    container on a sandbox node reads the host's."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def redis_cpu_seconds(r: redis.Redis) -> float:
    info = r.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def fig_release(args):
    """Wait until exactly K bench workers answer, put the N messages back under the queue's name
    in one RENAME (a BRPOP blocked on it wakes at once), and time the drain to the last ack."""
    r = client()
    assert r.llen(HOLD) == args.n, f"{r.llen(HOLD)} set aside, expected {args.n}"
    deadline = time.monotonic() + args.timeout
    while len(workers := bench_workers()) != args.workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(workers)} bench workers answer, expected {args.workers}: "
                               f"{workers}")
        time.sleep(0.5)
    r.delete("unacked", "unacked_index")  # no other consumer holds messages on this stack
    before, cpu0, (busy0, total0) = r.info("commandstats"), redis_cpu_seconds(r), host_busy_jiffies()
    t0 = time.perf_counter()
    r.rename(HOLD, QUEUE)
    polls = 0
    while True:
        polls += 1
        left, unacked = r.llen(QUEUE), r.hlen("unacked")
        if left == 0 and unacked == 0:
            break
        if time.perf_counter() - t0 > 60 + args.n / 20:
            raise RuntimeError(f"drain not finished: {left} queued, {unacked} unacked")
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    cpu1, (busy1, total1) = redis_cpu_seconds(r), host_busy_jiffies()
    after = r.info("commandstats")
    calls = sum(v["calls"] - before.get(k, {}).get("calls", 0) for k, v in after.items()
                if k not in ("cmdstat_info", "cmdstat_llen", "cmdstat_hlen"))
    clean(r)
    cores = os.cpu_count() or 1
    return {"n": args.n, "workers": workers, "seconds": elapsed, "rate": args.n / elapsed,
            "redis_cpu": (cpu1 - cpu0) / elapsed,  # cores' worth of Redis's own CPU
            "host_busy": (busy1 - busy0) / max(total1 - total0, 1) * cores,  # busy cores
            "redis_cmds_per_task": calls / args.n}


def _saturated(noop, rounds, inflight):
    """K tasks always in flight; a result counts when its SUCCESS is published (pattern
    subscription on the result channels), so there is no polling in the measurement."""
    import threading
    import uuid

    r = client()
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("celery-task-meta-*")
    sent, times = {}, []
    window = threading.Semaphore(inflight)
    done = threading.Event()
    total = rounds + inflight * 4  # the first inflight*4 are warm-up

    def listen():
        got = 0
        while got < total:
            msg = pubsub.get_message(timeout=10)
            if msg is None:
                continue
            now = time.perf_counter()
            body = json.loads(msg["data"])
            if body.get("status") != "SUCCESS":
                continue
            t = sent.pop(body["task_id"], None)
            if t is None:
                continue
            got += 1
            if got > inflight * 4:
                times.append(now - t)
            window.release()
        done.set()

    th = threading.Thread(target=listen, daemon=True)
    th.start()
    t0 = time.perf_counter()
    for _ in range(total):
        if not window.acquire(timeout=30):
            raise RuntimeError("no result within 30 s at saturation")
        tid = str(uuid.uuid4())
        sent[tid] = time.perf_counter()
        noop.apply_async(task_id=tid)
    if not done.wait(60):
        raise RuntimeError("results missing at saturation")
    elapsed = time.perf_counter() - t0
    pubsub.close()
    return times, total / elapsed


def fig_latency(args):
    from bench_app import noop

    r = client()
    clean(r)
    extra = args.extra.split() if args.extra else []
    proc = start_worker(args.pool, args.concurrency, extra, "bench-latency")
    throughput = None
    try:
        deadline = time.monotonic() + 90
        while True:  # the worker is ready when a task comes back
            try:
                noop.apply_async().get(timeout=2)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("latency worker did not answer")
        if args.inflight > 1:
            times, throughput = _saturated(noop, args.rounds, args.inflight)
        else:
            for _ in range(50):  # warm up
                noop.apply_async().get(timeout=10)
            times = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                noop.apply_async().get(timeout=10)
                times.append(time.perf_counter() - t)
    finally:
        stop_worker(proc)
    clean(r)
    return {"p50": pct(times, 50), "p95": pct(times, 95), "p99": pct(times, 99),
            "inflight": args.inflight, "throughput": throughput,
            "samples": [round(x * 1e6) for x in times]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("figure", choices=["raw", "enqueue", "drain", "latency", "fill", "release"])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--pool", default="prefork")
    ap.add_argument("--concurrency", type=int, default=0, help="0: the stack's default")
    ap.add_argument("--inflight", type=int, default=1, help="latency: tasks kept in flight")
    ap.add_argument("--workers", type=int, default=1, help="worker nodes started at once")
    ap.add_argument("--extra", default="", help="more worker arguments")
    ap.add_argument("--timeout", type=float, default=180,
                    help="release: seconds to wait for the workers to answer")
    args = ap.parse_args()
    result = {"raw": fig_raw, "enqueue": fig_enqueue, "drain": fig_drain,
              "latency": fig_latency, "fill": fig_fill, "release": fig_release}[args.figure](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
