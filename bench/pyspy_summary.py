"""Summarise a py-spy raw profile of a Celery prefork worker: where the parent and the children spend time.

Profile a drain on the host (root; py-spy from PyPI in a throw-away venv; nothing is installed in
the images), while `bench/inner.py drain` runs in a one-off container named NAME:

    python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy
    pid=$(docker top NAME -eo pid,args | grep 'celery -A bench_app worker' | head -1 | awk '{print $1}')
    /tmp/pyspy/bin/py-spy record -p $pid --subprocesses -d 10 -r 200 -f raw -o prof.txt --nonblocking
    python3 bench/pyspy_summary.py prof.txt

Samples of the pool children are those under `Worker.workloop`; the rest is the parent (the
consumer: BRPOP, unacked bookkeeping, acks, events, pool IPC).
"""
import collections
import re
import sys

BUCKETS = [  # (label, frame substring) for the parent's busy time; first match wins
    ("idle in epoll", "_epoll.poll"),
    ("task events (publish)", "EventDispatcher"),
    ("ack (MULTI ZREM HDEL EXEC)", "QoS.ack"),
    ("unacked bookkeeping (MULTI ZADD HSET EXEC)", "QoS.append"),
    ("BRPOP read/parse", "_brpop_read"),
    ("BRPOP (re)register", "_register_BRPOP"),
    ("pool IPC (jobs to children, results back)", "asynpool.py"),
]
CHILD_BUCKETS = [
    ("idle: waiting for a job from the parent", "_SimpleQueue.get_payload"),
    ("result backend writes (GET + SETEX/PUBLISH)", "store_result"),
    ("task body and tracing", "trace_task"),
]


def main(path):
    parent, child = collections.Counter(), collections.Counter()
    totals = collections.Counter()
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        n = int(n)
        is_child = any("Worker.workloop" in f for f in frames)
        kind, buckets, counter = (("child", CHILD_BUCKETS, child) if is_child
                                  else ("parent", BUCKETS, parent))
        if not is_child and not any("Hub.create_loop" in f for f in frames):
            kind = "parent outside the event loop (start/stop)"
            totals[kind] += n
            continue
        totals[kind] += n
        label = next((lab for lab, sub in buckets if any(sub in f for f in frames)), "other")
        counter[label] += n
    for kind, counter in (("parent (event loop)", parent), ("children (all)", child)):
        total = sum(counter.values()) or 1
        print(f"{kind}: {total} samples")
        for label, c in counter.most_common():
            print(f"  {100 * c / total:5.1f} %  {label}")
    other = totals.get("parent outside the event loop (start/stop)")
    if other:
        print(f"(parent outside the event loop: {other} samples, ignored)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "prof.txt")
