"""Two beats, one lock: the holder SIGKILLed or frozen, the other takes over within RedBeat's
lock timeout plus one interval, and a frozen beat that wakes up after losing its lock sends
nothing. Sends are read from the beats' own logs ("Sending due task mark-stuck-task-runs")."""
from __future__ import annotations

import datetime as dt
import time

import pytest

from chaos.harness import BEAT_MAX_LOOP, BEAT_SEND as SEND, REDBEAT_LOCK_TIMEOUT, SCAN_INTERVAL
from stack import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.chaos]

# A waiting beat retries the lock every loop; once it lapses, the next due tick sends.
TAKEOVER_BOUND = REDBEAT_LOCK_TIMEOUT + SCAN_INTERVAL + BEAT_MAX_LOOP + 10


def sends(container, since: dt.datetime) -> list[dt.datetime]:
    text = container.logs(since=int(since.timestamp()))
    times = (dt.datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=dt.timezone.utc)
             for t in SEND.findall(text.decode(errors="replace")))
    return sorted(t for t in times if t >= since)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def beats(chaos):
    """The beat service scaled to two; back to one (and healthy) afterwards."""
    chaos.compose("up", "-d", "--no-deps", "--scale", "beat=2", "beat")
    try:
        wait_for(lambda: len(chaos.containers("beat")) == 2, 60, interval=1)
        yield
    finally:
        for c in chaos.containers("beat", all=True):
            if c.status == "paused":
                c.unpause()
        chaos.compose("up", "-d", "--no-deps", "--scale", "beat=1", "beat")
        chaos.wait_healthy(["beat"], timeout=120)


def holder(chaos):
    """(the beat that sent the last tick, the other one), once one has sent."""
    def find():
        since = now() - dt.timedelta(seconds=2 * SCAN_INTERVAL)
        running = chaos.containers("beat")
        sending = [c for c in running if sends(c, since)]
        if len(running) == 2 and len(sending) == 1:
            return sending[0], next(c for c in running if c.id != sending[0].id)
        return None
    return wait_for(find, 60, interval=1, describe=lambda: chaos.logs("beat"))


def takeover(chaos, other, since) -> float:
    first = wait_for(lambda: sends(other, since), TAKEOVER_BOUND, interval=1,
                     describe=lambda: chaos.logs("beat"))[0]
    return (first - since).total_seconds()


def test_a_sigkilled_beat_is_replaced_by_the_waiting_one(chaos, beats):
    old, other = holder(chaos)
    killed = now()
    old.kill(signal="SIGKILL")  # a docker kill: not restarted, as a dead host would not be
    took = takeover(chaos, other, killed)
    print(f"beat SIGKILLed: the other beat sent {took:.1f}s later (bound {TAKEOVER_BOUND}s)")
    assert took <= TAKEOVER_BOUND


def test_a_paused_beat_that_lost_its_lock_sends_nothing_when_it_resumes(chaos, beats):
    chaos.compose("up", "-d", "--no-deps", "--scale", "beat=2", "beat")  # after the kill above
    old, other = holder(chaos)
    paused = now()
    old.pause()
    try:
        took = takeover(chaos, other, paused)
    finally:
        old.unpause()
    resumed = now()
    time.sleep(3 * SCAN_INTERVAL)  # the window in which a stale holder would send
    until = now()
    old.reload()
    stale = sends(old, resumed) if old.status == "running" else []
    timeline = sorted(sends(other, resumed) + stale)
    gaps = [(b - a).total_seconds() for a, b in zip(timeline, timeline[1:])]
    print(f"beat paused: the other beat sent {took:.1f}s later; after the resume: "
          f"{len(stale)} sends by the resumed beat (now {old.status}, "
          f"{old.attrs['RestartCount']} restarts), {len(timeline)} sends in "
          f"{(until - resumed).total_seconds():.0f}s, gaps {gaps}")
    assert took <= TAKEOVER_BOUND
    assert stale == [], chaos.logs("beat")
    assert min(gaps, default=SCAN_INTERVAL) >= SCAN_INTERVAL / 2, gaps  # one send per tick
