"""`make bench` runs at all: bench/run.py --smoke on its own throw-away stack (~3 min).

Nothing here times anything: the figures are ratios for bench/RESULTS.md, not pass marks. The
test proves that every figure is still measured (a renamed endpoint, a broken worker flag or a
missing tool shows up as a FAILED row) and that the table and the histogram get written.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_run_writes_every_figure(tmp_path):
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--results", str(results)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": "scripts"})  # as `make bench`
    assert proc.returncode == 0, f"bench/run.py --smoke failed:\n{proc.stderr[-4000:]}"
    text = results.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | " in line]
    failed = [row for row in rows if "FAILED" in row]
    assert not failed, "figures that failed:\n" + "\n".join(failed) + "\n" + proc.stderr[-4000:]
    ratios = [row for row in rows if re.search(r"\*\*\d+\.\d\dx\*\*", row)]
    for figure in ("raw BRPOP drain", "enqueue `.delay()`", "drain 200 no-ops, prefork",
                   "drain 200 no-ops, vanilla Celery (prefork)",
                   "drain 200 no-ops, prefork: the stack's settings",
                   "enqueue->result p50", "HTTP FastAPI POST", "HTTP Django POST",
                   "HTTP via proxy (HTTPS) FastAPI POST /gateway/tasks",
                   "HTTP via proxy (HTTPS) Django POST /api/task-runs/",
                   "HTTP via proxy (HTTPS) FastAPI GET", "HTTP via proxy (HTTPS) Django GET",
                   "image trinity/django", "image trinity/proxy"):
        assert any(figure in row for row in rows), f"no row for {figure!r}:\n{text}"
    assert len(ratios) >= 25, f"only {len(ratios)} ratios:\n{text}"
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The bench's stack is gone afterwards: nothing left running under its project name.
    project = re.search(r"stack (trinity-bench-[0-9a-f]+): down -v", proc.stderr).group(1)
    left = subprocess.run(["docker", "ps", "-aq", "--filter",
                           f"label=com.docker.compose.project={project}"],
                          capture_output=True, text=True).stdout.split()
    assert not left, f"bench stack {project} left containers behind: {left}"
