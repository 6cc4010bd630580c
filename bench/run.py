"""`make bench`: bring up a throw-away dev stack, measure every figure as a ratio to a baseline taken
in the same run on the same containers, print one table, write bench/RESULTS.md and
bench/latency.png, then `down -v` the stack (also on failure or Ctrl-C).

    make bench                       # the real run: N=20000 no-ops, 10 s of wrk per URL
    make bench BENCH_ARGS=--quick    # N=2000, 3 s of wrk: a few minutes, for development
    make bench BENCH_ARGS=--no-tune  # skip the tuning variants (before/after table)
    make bench BENCH_ARGS=--no-swarm # skip the drain on a 3-node sandbox swarm (~6 min)

Host side: the host venv (the stack harness scripts/stack.py, Pillow for the histograms) + docker
CLI (compose v2) + wrk (installed from Debian when missing and root; else the HTTP figure is
skipped with the reason). Everything next to Redis runs in one-off
containers of the django image (bench/inner.py, with bench/ mounted at /bench).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

# scripts/stack.py: `make bench` and tests/test_bench.py put scripts/ on PYTHONPATH.
from stack import Stack as ComposeProject, base_image, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
FILES = ["docker-compose-dev.example.yml", "compose/bench.yml"]
ENV_FILE = "envs/dev.env"
SERVICES = ["postgres", "redis", "migrate", "web", "fastapi", "celery", "proxy"]
NOTES_MARKER = "<!-- notes below this line are kept when run.py rewrites the file -->"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Skip(Exception):
    """A figure that cannot be measured here; the reason goes into the table."""


# ---- the stack ----------------------------------------------------------------------------------
class Stack(ComposeProject):
    """The bench's own compose project: the one harness (scripts/stack.py), plus running
    bench/inner.py."""

    def __init__(self, project: str):
        super().__init__(files=FILES, env_file=ENV_FILE, project=project)

    def port(self, service: str, port: int) -> str:
        return self.compose("port", service, str(port)).stdout.strip()

    def api_token(self, label: str) -> str:
        """A token of the public tenant, made the operator's way (the last line printed)."""
        out = self.compose("exec", "-T", "web", "python", "manage.py", "create_api_token",
                           "--tenant", "public", "--name", label, timeout=120).stdout
        lines = out.strip().splitlines()
        if not lines or not lines[-1].startswith("trn_"):
            raise RuntimeError(f"create_api_token printed no token:\n{out}")
        return lines[-1].strip()

    def inner(self, figure: str, *args: str, env: dict | None = None, name: str | None = None,
              on_start=None, timeout=1800) -> dict:
        """Run bench/inner.py in a one-off container of the celery service; return its JSON."""
        extra = []
        for k, v in (env or {}).items():
            extra += ["-e", f"{k}={v}"]
        name = name or f"{self.project}-inner-{uuid.uuid4().hex[:6]}"
        c = self.compose_cmd("run", "--rm", "--no-deps", "-T", "--name", name,
                     "-v", f"{BENCH}:/bench:ro", "-e", "PYTHONPATH=/bench:/app", *extra,
                     "celery", "python", "/bench/inner.py", figure, *args)
        log(f"inner {figure} {' '.join(args)} {env or ''}")
        proc = subprocess.Popen(c, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        watcher = on_start(name, proc) if on_start else None
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
            raise RuntimeError(f"inner {figure} timed out after {timeout}s")
        if watcher:
            watcher.join(30)
        lines = out.strip().splitlines()
        if proc.returncode or not lines:
            raise RuntimeError(f"inner {figure} failed ({proc.returncode}):\n{err[-3000:]}")
        return json.loads(lines[-1])


# ---- docker stats ------------------------------------------------------------------------------
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def mem_mib(container: str) -> float | None:
    """`docker stats` memory of one container (usage minus page cache, as the CLI shows it)."""
    p = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container],
                       capture_output=True, text=True, timeout=60)
    m = re.match(r"\s*([\d.]+)\s*([A-Za-z]+)", p.stdout)
    if p.returncode or not m:
        return None
    return float(m.group(1)) * UNITS.get(m.group(2), 1) / 1024**2


def stats_watcher(samples: list):
    """on_start hook for Stack.inner: sample `docker stats` of the one-off container while it runs."""
    def start(name, proc):
        def loop():
            while proc.poll() is None:
                v = mem_mib(name)
                if v:
                    samples.append(v)
                time.sleep(0.2)
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        return t
    return start


# ---- wrk -----------------------------------------------------------------------------------------
def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Skip("wrk missing and not root with apt-get: `apt-get install wrk`")
    log("installing wrk from Debian (apt-get install -y wrk)")
    p = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "wrk"],
                       capture_output=True, text=True, env={**os.environ,
                                                            "DEBIAN_FRONTEND": "noninteractive"})
    if p.returncode:
        raise Skip(f"apt-get install wrk failed: {p.stderr.strip().splitlines()[-1:]}")
    return shutil.which("wrk") or "wrk"


def wrk(url: str, seconds: int, connections: int, body: str | None = None,
        headers: dict | None = None) -> dict:
    """wrk -t2 against url (http:// or https://: wrk speaks TLS, HTTP/1.1 keep-alive, and does not
    check the certificate). With a body: POST it as JSON. headers: added to every request."""
    wrk_bin = ensure_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        if body is not None:
            f.write('wrk.method = "POST"\n'
                    f"wrk.body = {json.dumps(body)}\n"
                    'wrk.headers["Content-Type"] = "application/json"\n')
        for k, v in (headers or {}).items():  # JSON strings of ASCII are Lua string literals
            f.write(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n")
        script = f.name
    try:
        p = subprocess.run([wrk_bin, "-t", "2", "-c", str(connections), "-d", f"{seconds}s",
                            "--latency", "-s", script, url],
                           capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(script)
    out = p.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if p.returncode or not m:
        raise RuntimeError(f"wrk {url} failed:\n{out}\n{p.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    p50 = re.search(r"\s50%\s+([\d.]+\w+)", out)
    total = re.search(r"(\d+) requests in", out)
    r = {"rps": float(m.group(1)), "non2xx": int(bad.group(1)) if bad else 0,
         "socket_errors": errors.group(1).strip() if errors else "", "p50": p50.group(1)
         if p50 else "?", "requests": int(total.group(1)) if total else 0}
    # A figure of error answers (401 without a valid token, 429 from the proxy's limiter) would
    # look fast and mean nothing: more than 1 % of them fails the figure.
    if r["non2xx"] > 0.01 * max(r["requests"], 1):
        raise RuntimeError(f"wrk {url}: {r['non2xx']} of {r['requests']} answers were not "
                           f"2xx/3xx:\n{out}")
    return r


def probe(url: str, body: str | None = None, headers: dict | None = None,
          expect: int = 200) -> None:
    """One request before a wrk run: fail the figure at once, with the answer, when the endpoint
    does not answer as expected (wrong token, proxy route, ...)."""
    import ssl
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, data=body.encode() if body is not None else None,
                                 headers={**({"Content-Type": "application/json"} if body
                                             is not None else {}), **(headers or {})})
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the proxy's self-signed cert
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx)).open(
                req, timeout=30) as resp:
            code, text = resp.status, resp.read(500).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        code, text = exc.code, exc.read(500).decode(errors="replace")
    if code != expect:
        raise RuntimeError(f"{'POST' if body is not None else 'GET'} {url}: {code} "
                           f"(expected {expect}): {text}")


# ---- CPU per request -----------------------------------------------------------------------
# On 2 shared cores a req/s ratio moves with whatever else runs; the CPU that each part of the
# path spends per request does not (much): cgroup CPU of each container, wrk's own CPU, and the
# docker-proxy processes of the published ports used, read before and after one wrk run.
def cgroup_cpu_ns(container_id: str) -> int | None:
    for path in (f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage",  # v1, cgroupfs
                 f"/sys/fs/cgroup/cpu,cpuacct/docker/{container_id}/cpuacct.usage",
                 f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat",  # v2
                 f"/sys/fs/cgroup/docker/{container_id}/cpu.stat"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("cpu.stat"):
            m = re.search(r"^usage_usec (\d+)", text, re.M)
            return int(m.group(1)) * 1000 if m else None
        return int(text.strip())
    return None


def proc_cpu_ns(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return (int(fields[11]) + int(fields[12])) * 10**9 // os.sysconf("SC_CLK_TCK")


def children_cpu_ns() -> int:
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((ru.ru_utime + ru.ru_stime) * 1e9)


class CpuMeter:
    """CPU nanoseconds of the stack's containers, of this process's children (wrk, while it runs)
    and of the docker-proxy processes that forward the given host ports; dockerd apart (it is
    shared with every other stack on the machine: its figure is only indicative)."""

    def __init__(self, stack: "Stack", services: list[str], host_ports: list[str]):
        self.ids = {svc: stack.container(svc).id for svc in services}
        ports = {hp.rsplit(":", 1)[-1] for hp in host_ports}
        self.proxies = []
        for pid in (int(x) for x in sh("pgrep", "-x", "docker-proxy").split()):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-host-port" in argv and argv[argv.index(b"-host-port") + 1].decode() in ports:
                self.proxies.append(pid)
        self.dockerd = [int(x) for x in sh("pgrep", "-x", "dockerd").split()]
        self.ok = all(cgroup_cpu_ns(i) is not None for i in self.ids.values())

    def snap(self) -> dict:
        out = {svc: cgroup_cpu_ns(i) or 0 for svc, i in self.ids.items()}
        out["wrk"] = children_cpu_ns()
        out["docker-proxy"] = sum(proc_cpu_ns(p) for p in self.proxies)
        out["dockerd"] = sum(proc_cpu_ns(p) for p in self.dockerd)
        return out

    def run(self, func, *args, **kwargs) -> dict:
        """func(...) -> a wrk result; adds cpu_us: CPU microseconds per request of each part,
        and "total" (everything but dockerd)."""
        before = self.snap()
        r = func(*args, **kwargs)
        after = self.snap()
        n = max(r["requests"], 1)
        if self.ok:
            cpu = {k: (after[k] - before[k]) / 1e3 / n for k in before}
            cpu["total"] = sum(v for k, v in cpu.items() if k != "dockerd")
            r["cpu_us"] = cpu
        return r


def cpu_note(r: dict, parts: list[str]) -> str:
    cpu = r.get("cpu_us")
    if not cpu:
        return "no cgroup CPU figures here"
    return ", ".join(f"{k} {cpu[k]:,.0f}" for k in parts + ["wrk", "docker-proxy"]
                     if k in cpu) + f" us/req (dockerd {cpu['dockerd']:,.0f}, shared)"


# ---- histograms (Pillow) -------------------------------------------------------------------------
def histogram_png(path: Path, series: list[tuple[list[int], tuple]], x_max_us: int,
                  bins: int = 100, tick_us: int = 1000) -> float:
    """Bars of each series' histogram (counts normalised to the series' own peak), 0..x_max_us,
    later series drawn over earlier ones; a grey tick every tick_us along the x axis. Returns
    the bin width in microseconds."""
    from PIL import Image, ImageDraw

    width, height, margin = 800, 300, 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    bin_us, column = x_max_us / bins, (width - 2 * margin) / bins
    floor, tallest = height - margin, height - 2 * margin
    for samples, rgb in series:
        counts = [0] * bins
        for s in samples:
            counts[min(int(s / bin_us), bins - 1)] += 1  # the last bin holds the rest
        peak = max(counts) or 1
        for i, c in enumerate(counts):
            if c:
                left = margin + i * column
                draw.rectangle([left, floor - tallest * c / peak, left + column - 1, floor],
                               fill=rgb)
    draw.line([margin, floor, width - margin, floor], fill="black")
    for t in range(0, x_max_us + 1, tick_us):
        x = margin + t / bin_us * column
        draw.line([x, floor, x, floor + 8], fill=(90, 90, 90))
    image.save(path, "PNG", optimize=True)
    return bin_us


# ---- machine ---------------------------------------------------------------------------------------
def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                              timeout=30).stdout.strip()
    except Exception:
        return "?"


def other_containers() -> list[str]:
    """Containers of other stacks (contention on the same cores), e.g. trinity-chaos-*."""
    return [n for n in sh("docker", "ps", "--format", "{{.Names}}").split()
            if not n.startswith("trinity-bench-")]


def machine() -> dict:
    mem = "?"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024**2:.1f} GiB"
    except Exception:
        pass
    cpu = "?"
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except Exception:
        pass
    rev = sh("git", "rev-parse", "--short", "HEAD")
    # Its own outputs (RESULTS.md, the PNGs) do not count as a change of what is measured.
    if sh("git", "status", "--porcelain", "--untracked-files=no", "--", ".",
          ":!bench/RESULTS.md", ":!bench/*.png"):
        rev += " (+ uncommitted changes)"
    others = other_containers()
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": os.cpu_count(), "memory": mem, "cpu": cpu,
            "kernel": platform.release(),
            "docker": sh("docker", "version", "--format", "{{.Server.Version}}"),
            "compose": sh("docker", "compose", "version", "--short"), "git": rev,
            "other_containers": others}


# ---- the run -------------------------------------------------------------------------------------------
class Table:
    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, figure, value, baseline_name="", baseline=None, ratio=None, note=""):
        self.rows.append((figure, value, baseline_name, baseline, ratio, note))

    def ratio(self, figure, value, unit, baseline_name, baseline, note="", fmt="{:,.0f}"):
        r = value / baseline if baseline else None
        self.add(figure, f"{fmt.format(value)} {unit}", baseline_name,
                 f"{fmt.format(baseline)} {unit}" if baseline else "", r, note)
        return r

    def skip(self, figure, reason):
        self.add(figure, "skipped", "", None, None, reason)

    def markdown(self) -> str:
        out = ["| figure | measured | baseline | baseline value | ratio | note |",
               "|---|---:|---|---:|---:|---|"]
        for f, v, bn, b, r, n in self.rows:
            rs = "" if r is None else f"**{r:.2f}x**"
            out.append(f"| {f} | {v} | {bn} | {b or ''} | {rs} | {n} |")
        return "\n".join(out)

    def text(self) -> str:
        hdr = ("figure", "measured", "baseline", "base value", "ratio", "note")
        rows = [hdr] + [(f, v, bn, b or "", "" if r is None else f"{r:.2f}x", n)
                        for f, v, bn, b, r, n in self.rows]
        widths = [min(max(len(str(r[i])) for r in rows), 60) for i in range(5)]
        lines = []
        for r in rows:
            lines.append("  ".join(str(r[i]).ljust(widths[i]) for i in range(5)) + "  " + r[5])
        return "\n".join(lines)


SEEN_OTHERS: set[str] = set()


def section(table: Table, name: str, func, *args):
    SEEN_OTHERS.update(other_containers())  # contention, checked at every figure
    t = time.monotonic()
    try:
        func(table, *args)
    except Skip as exc:
        table.skip(name, str(exc))
        log(f"{name}: skipped: {exc}")
    except Exception as exc:  # one broken figure must not lose the others
        first = str(exc).strip().splitlines()[0][:150] if str(exc).strip() else type(exc).__name__
        table.skip(name, f"FAILED: {first}")
        log(f"{name}: FAILED:\n{exc}")
    log(f"{name}: {time.monotonic() - t:.0f}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=2000, short wrk runs")
    ap.add_argument("--n", type=int, help="no-ops per drain/enqueue figure (default 20000)")
    ap.add_argument("--rounds", type=int, help="latency samples (default 2000, quick 300)")
    ap.add_argument("--seconds", type=int, help="wrk duration per URL (default 10, quick 3)")
    ap.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    ap.add_argument("--no-tune", action="store_true", help="skip the tuning variants")
    ap.add_argument("--no-start", action="store_true",
                    help="skip the start/build figures (cold + warm `make dev-up`, ~5 min)")
    ap.add_argument("--no-swarm", action="store_true",
                    help="skip the drain by 1-3 worker replicas on a sandbox swarm (~6 min)")
    ap.add_argument("--smoke", action="store_true",
                    help="does it run at all: N=200, 1 s of wrk, no tuning, no start or "
                         "Swarm figures")
    ap.add_argument("--keep", action="store_true", help="leave the stack up (prints its name)")
    ap.add_argument("--results", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args()
    if args.smoke:
        args.no_tune = args.no_start = args.no_swarm = True
    n = args.n or (200 if args.smoke else 2000 if args.quick else 20000)
    rounds = args.rounds or (50 if args.smoke else 300 if args.quick else 2000)
    seconds = args.seconds or (1 if args.smoke else 3 if args.quick else 10)

    project = f"trinity-bench-{uuid.uuid4().hex[:8]}"
    stack = Stack(project)
    table, tuning = Table(), Table()
    ctx: dict = {"n": n, "rounds": rounds, "inflight": 16}
    info = machine()
    started = time.monotonic()

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    try:
        log(f"stack {project}: up {' '.join(SERVICES)}")
        t = time.monotonic()
        stack.up(SERVICES)  # builds the tree as it is (cached: seconds)
        log(f"stack healthy in {time.monotonic() - t:.0f}s")
        time.sleep(5)  # let start-up settle before the idle footprint
        section(table, "footprint (idle)", fig_footprint_idle, stack, ctx)
        # The stack's worker consumes trinity.tasks, not the bench queue; stopped so its
        # healthcheck (a Python process every 5 s) and HTTP-enqueued work do not eat the 2 cores.
        stack.compose("stop", "celery")
        section(table, "raw Redis baselines", fig_raw, stack, ctx)
        section(table, "enqueue", fig_enqueue, stack, ctx)
        section(table, "drain", fig_drain, stack, ctx)
        section(table, "drain, vanilla Celery", fig_vanilla, stack, ctx)
        section(table, "latency", fig_latency, stack, ctx)
        section(table, "HTTP enqueue", fig_http, stack, ctx, seconds, args.connections)
        section(table, "image size", fig_images, stack, ctx)
        if not args.no_tune:
            section(tuning, "tuning", fig_tuning, stack, ctx)
    finally:
        if args.keep:
            log(f"--keep: stack {project} left up; `docker compose -p {project} down -v`")
        else:
            log(f"stack {project}: down -v")
            stack.down()
    # After the stack is gone: it would compete for the 2 cores.
    if not args.no_swarm:
        section(table, "Swarm drain", fig_swarm, ctx)
    if not args.no_start:
        section(table, "start and build", fig_start, project, ctx)

    info["other_containers"] = sorted(set(info["other_containers"]) | set(other_containers())
                                     | SEEN_OTHERS)
    info["wall"] = f"{time.monotonic() - started:.0f}s"
    info["args"] = " ".join(sys.argv[1:]) or "(full run)"
    print("\n" + table.text())
    if tuning.rows:
        print("\ntuning (same run, same Redis):\n" + tuning.text())
    png = None
    if ctx.get("latency_samples") and ctx.get("pingpong_samples"):
        png = Path(args.results).parent / "latency.png"
        x_max = int(max(sorted(ctx["latency_samples"])[int(len(ctx["latency_samples"]) * .99)]
                        * 1.2, 2000))
        ctx["png_bin_us"] = histogram_png(
            png, [(ctx["latency_samples"], (46, 104, 196)),
                  (ctx["pingpong_samples"], (230, 120, 20))], x_max)
        ctx["png_x_max_us"] = x_max
    if ctx.get("saturated_samples"):
        s = sorted(ctx["saturated_samples"])
        x_max = int(s[int(len(s) * .99)] * 1.2)
        ctx["png2_bin_us"] = histogram_png(Path(args.results).parent / "latency-saturated.png",
                                           [(s, (46, 104, 196))], x_max, tick_us=10000)
        ctx["png2_x_max_us"] = x_max
    write_results(Path(args.results), info, table, tuning, ctx, png)
    log(f"wrote {args.results}" + (f" and {png}" if png else ""))
    return 0


# ---- figures ---------------------------------------------------------------------------------------------
def fig_footprint_idle(table: Table, stack: Stack, ctx):
    name = f"{stack.project}-bare-python"
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "--entrypoint", "python",
                    stack.container("web").image.id, "-c", "import time; time.sleep(300)"],
                   capture_output=True, check=True)
    try:
        time.sleep(2)
        bare = mem_mib(name)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    ctx["bare_python_mib"] = bare
    for svc in ("web", "fastapi", "celery", "postgres", "redis", "proxy"):
        v = mem_mib(stack.container(svc).id)
        if v is None:
            table.skip(f"idle memory: {svc}", "docker stats gave nothing")
        elif svc in ("postgres", "redis", "proxy"):
            table.add(f"idle memory: {svc}", f"{v:.1f} MiB",
                      note="no Python baseline" + ("; nginx, master + worker_processes auto"
                                                   if svc == "proxy" else ""))
        else:
            note = {"web": "gunicorn, 2 workers x 4 threads (+ master)",
                    "fastapi": "gunicorn, 2 uvicorn workers (+ master)",
                    "celery": "prefork, default concurrency"}[svc]
            table.ratio(f"idle memory: {svc}", v, "MiB", "bare `python` container", bare,
                        note, fmt="{:,.1f}")
            ctx[f"idle_{svc}_mib"] = v


def fig_raw(table: Table, stack: Stack, ctx):
    r = stack.inner("raw", "--n", str(ctx["n"]), "--rounds", str(ctx["rounds"]))
    ctx["raw"] = r
    ctx["pingpong_samples"] = r["pingpong"].pop("samples")
    table.add("raw BRPOP drain (baseline)", f"{r['brpop_drain_rate']:,.0f} /s", note=(
        f"payload {r['payload_bytes']} B = one real bench.noop message; "
        f"reliable BLMOVE+LREM: {r['reliable_drain_rate']:,.0f} /s"))
    table.add("raw LPUSH (baseline)", f"{r['lpush_rate']:,.0f} /s",
              note=f"pipelined by 1000: {r['lpush_pipelined_rate']:,.0f} /s")
    pp = r["pingpong"]
    table.add("BLPOP ping-pong p50 (baseline)", f"{pp['p50'] * 1e3:.3f} ms",
              note=f"p95 {pp['p95'] * 1e3:.3f} ms, p99 {pp['p99'] * 1e3:.3f} ms, two processes")


def fig_enqueue(table: Table, stack: Stack, ctx):
    r = stack.inner("enqueue", "--n", str(ctx["n"]))
    ctx["enqueue"] = r
    raw = ctx["raw"]["lpush_rate"]
    table.ratio("enqueue `.delay()`", r["delay_rate"], "/s", "raw LPUSH", raw,
                "reference ~3,100/s")
    table.ratio("enqueue grouped `apply_async` (group of 1000)", r["group_rate"], "/s",
                "raw LPUSH", raw)
    table.ratio("enqueue `apply_async` on one held producer", r["producer_rate"], "/s",
                "raw LPUSH", raw, f"vs pipelined LPUSH: "
                f"{r['producer_rate'] / ctx['raw']['lpush_pipelined_rate']:.3f}x")


def fig_drain(table: Table, stack: Stack, ctx):
    raw = ctx["raw"]["brpop_drain_rate"]
    samples: list[float] = []
    for pool, note in (("prefork", "reference ~1,100/s; target >= 0.50x"),
                       ("threads", "reference ~1,700/s"), ("solo", "reference only")):
        watch = stats_watcher(samples) if pool == "prefork" else None
        try:
            r = stack.inner("drain", "--n", str(ctx["n"]), "--pool", pool, on_start=watch)
        except Exception as exc:
            table.skip(f"drain {ctx['n']:,} no-ops, {pool}", f"FAILED: {str(exc)[:150]}")
            continue
        ctx[f"drain_{pool}"] = r
        table.ratio(f"drain {ctx['n']:,} no-ops, {pool}", r["rate"], "/s", "raw BRPOP drain",
                    raw, f"{note}; {r['redis_cmds_per_task']:.1f} Redis commands/task")
        ctx.setdefault("redis_top", {})[pool] = r["redis_top"]
        if pool == "prefork":
            if samples and ctx.get("idle_celery_mib"):
                table.ratio("memory: prefork worker under load", max(samples), "MiB",
                            "idle `celery` service", ctx["idle_celery_mib"],
                            f"docker stats peak of the drain container (incl. the bench driver);"
                            f" worker tree RSS {r['worker_rss_mb']:.0f} MiB", fmt="{:,.1f}")
            else:
                table.add("memory: prefork worker under load", f"{r['worker_rss_mb']:.0f} MiB",
                          note="worker tree RSS (/proc); docker stats gave no sample")


VANILLA = {"BENCH_VANILLA": "1"}  # Celery as a new user starts it (bench_app.py)


def fig_vanilla(table: Table, stack: Stack, ctx):
    """The same prefork drain with the settings a new user would pick instead of the stack's:
    Celery's defaults and cookiecutter-django's Celery block (bench_app.py, VANILLA)."""
    mine = ctx.get("drain_prefork")
    if not mine:
        raise Skip("no prefork drain with the stack's settings to compare with")
    r = stack.inner("drain", "--n", str(ctx["n"]), "--pool", "prefork", env=VANILLA)
    ctx.setdefault("redis_top", {})["vanilla Celery"] = r["redis_top"]
    table.ratio(f"drain {ctx['n']:,} no-ops, vanilla Celery (prefork)", r["rate"], "/s",
                "raw BRPOP drain", ctx["raw"]["brpop_drain_rate"],
                f"early acks, prefetch x4, task events, gossip/mingle, results extended; "
                f"{r['redis_cmds_per_task']:.1f} Redis commands/task; done = queue empty and "
                "every message acked (early acks: the last few may still run)")
    table.ratio(f"drain {ctx['n']:,} no-ops, prefork: the stack's settings", mine["rate"], "/s",
                "the same drain, vanilla Celery", r["rate"],
                f"late acks, prefetch 1, no events, no gossip/mingle; "
                f"{mine['redis_cmds_per_task']:.1f} vs {r['redis_cmds_per_task']:.1f} Redis "
                "commands/task")


def fig_swarm(table: Table, ctx):
    """Drain rate with 1, 2, 3 worker replicas, each on its own node of a sandbox swarm, as
    ratios to 1 replica; Redis's own CPU and the machine's busy cores beside (swarm_drain.py)."""
    import swarm_drain

    results = swarm_drain.measure(ctx["n"])
    ctx["swarm"] = results
    one = results[1]["rate"]
    cores = os.cpu_count()
    for replicas, r in sorted(results.items()):
        nodes = sorted({w.split("@", 1)[1].rsplit("-", 1)[0] for w in r["workers"]})
        table.ratio(f"Swarm drain {r['n']:,} no-ops, {replicas} worker replica"
                    f"{'s' if replicas > 1 else ''} (prefork) on {len(nodes)} node"
                    f"{'s' if len(nodes) > 1 else ''}", r["rate"], "/s",
                    "1 replica, same run", one,
                    f"Redis {r['redis_cpu']:.2f} cores ({r['redis_cpu'] / cores:.0%} of the "
                    f"machine), {r['host_busy']:.2f} of {cores} cores busy; "
                    f"{r['redis_cmds_per_task']:.1f} Redis commands/task; the stack's settings")


def fig_latency(table: Table, stack: Stack, ctx):
    r = stack.inner("latency", "--rounds", str(ctx["rounds"]))
    ctx["latency_samples"] = r.pop("samples")
    ctx["latency_p50"] = r["p50"]
    pp = ctx["raw"]["pingpong"]
    for p in ("p50", "p95", "p99"):
        table.ratio(f"enqueue->result {p}, 1 in flight (prefork)", r[p] * 1e3, "ms",
                    "BLPOP ping-pong", pp[p] * 1e3,
                    "target p50 <= 3x" if p == "p50" else "", fmt="{:.3f}")
    k = ctx["inflight"]
    r = stack.inner("latency", "--rounds", str(ctx["rounds"]), "--inflight", str(k))
    ctx["saturated_samples"] = r.pop("samples")
    for p in ("p50", "p95", "p99"):
        table.ratio(f"enqueue->result {p}, {k} in flight (saturating)", r[p] * 1e3, "ms",
                    "BLPOP ping-pong", pp[p] * 1e3,
                    f"closed loop, {r['throughput']:,.0f} tasks/s; time to SUCCESS published"
                    if p == "p50" else "", fmt="{:.2f}")


def fig_http(table: Table, stack: Stack, ctx, seconds, conns):
    """POST enqueue vs GET /healthz and vs GET /livez of the same production server (gunicorn,
    compose/bench.yml). /healthz makes one round trip to each dependency (Django: SELECT 1 and
    a PING; FastAPI: a PING), /livez none: what an enqueue adds to a request, two ways.

    Then the same POST through the proxy (HTTPS on its 8443, HTTP/1.1 keep-alive from wrk, the
    same token) as a ratio to the direct path: direct, proxied, direct again, the baseline is
    the mean of the two direct runs (the drift of a shared 2-core box shows as their gap).
    GET /livez through the proxy vs direct is what the proxy costs a request with no app work."""
    ensure_wrk()
    token = ctx.get("token") or stack.api_token(f"bench-{stack.project}")
    ctx["token"] = token
    auth = {"Authorization": f"Bearer {token}"}
    body = '{"operation": "noop", "payload": null}'
    edge = "https://" + stack.port("proxy", 8443)
    ctx["http"] = {}
    for svc, port, path, prefix, code in (("fastapi", 8001, "/tasks", "/gateway", "202"),
                                          ("web", 8000, "/api/task-runs/", "", "201")):
        host_port = stack.port(svc, port)
        base = "http://" + host_port
        probe(base + path, body, auth, int(code))
        probe(edge + prefix + path, body, auth, int(code))
        probe(edge + prefix + "/livez")
        meter = CpuMeter(stack, [svc, "proxy", "postgres", "redis"],
                         [host_port, stack.port("proxy", 8443)])
        live = wrk(base + "/livez", seconds, conns)
        health = wrk(base + "/healthz", seconds, conns)
        e = meter.run(wrk, base + path, seconds, conns, body=body, headers=auth)
        pe = meter.run(wrk, edge + prefix + path, seconds, conns, body=body, headers=auth)
        e2 = meter.run(wrk, base + path, seconds, conns, body=body, headers=auth)
        plive = meter.run(wrk, edge + prefix + "/livez", seconds, conns)
        ctx["http"][svc] = {"live": live, "health": health, "direct": e, "proxy": pe,
                            "direct_after": e2, "proxy_live": plive}
        bad = ""
        if e["non2xx"] or live["non2xx"] or health["non2xx"]:
            bad = (f"; NON-2xx: {e['non2xx']} enqueue, {live['non2xx']} livez, "
                   f"{health['non2xx']} healthz")
        name = ("FastAPI POST /tasks (gunicorn, 2 uvicorn workers)" if svc == "fastapi"
                else "Django POST /api/task-runs/ (gunicorn, 2 workers x 4 threads)")
        table.ratio(f"HTTP {name}, -c{conns}", e["rps"], "req/s", "same server GET /healthz",
                    health["rps"], f"{code}; p50 {e['p50']} vs {health['p50']}; /healthz makes "
                    f"one round trip to each dependency; target >= 0.60x{bad}")
        table.ratio(f"HTTP {name}, -c{conns}", e["rps"], "req/s", "same server GET /livez",
                    live["rps"], f"p50 {e['p50']} vs {live['p50']}; /livez does no work at all")
        direct = (e["rps"] + e2["rps"]) / 2
        pbad = f"; NON-2xx: {pe['non2xx']}" if pe["non2xx"] else ""
        table.ratio(f"HTTP via proxy {edge_name(svc, prefix + path)}, -c{conns}", pe["rps"],
                    "req/s", "same endpoint direct (plain HTTP)", direct,
                    f"{code}; HTTPS, HTTP/1.1 keep-alive, token; p50 {pe['p50']} vs "
                    f"{e['p50']}/{e2['p50']}; direct before/after {e['rps']:,.0f}/"
                    f"{e2['rps']:,.0f} req/s; target >= 0.80x{pbad}")
        if "cpu_us" in pe and "cpu_us" in e and "cpu_us" in e2:
            d_cpu = (e["cpu_us"]["total"] + e2["cpu_us"]["total"]) / 2
            table.ratio(f"CPU per request via proxy {edge_name(svc, prefix + path)}",
                            pe["cpu_us"]["total"], "us", "same endpoint direct", d_cpu,
                            f"1/ratio = {d_cpu / pe['cpu_us']['total']:.2f}x, the req/s ratio "
                            f"on saturated cores; via proxy: "
                            f"{cpu_note(pe, [svc, 'proxy', 'postgres', 'redis'])}; direct: "
                            f"{cpu_note(e2, [svc, 'postgres', 'redis'])}", fmt="{:,.0f}")
        table.ratio(f"HTTP via proxy {edge_name(svc, prefix + '/livez')}, -c{conns}",
                    plive["rps"], "req/s", "same server GET /livez direct", live["rps"],
                    f"p50 {plive['p50']} vs {live['p50']}; the proxy's cost with no app work; "
                    f"CPU: {cpu_note(plive, [svc, 'proxy'])}")
    nginx = wrk(edge + "/proxy-healthz", seconds, conns)
    table.add(f"HTTP proxy GET /proxy-healthz (nginx alone, HTTPS), -c{conns}",
              f"{nginx['rps']:,.0f} req/s", note=f"p50 {nginx['p50']}; answered by nginx "
              "itself: the ceiling of TLS + HTTP on this box")


def edge_name(svc: str, path: str) -> str:
    server = "FastAPI" if svc == "fastapi" else "Django"
    return f"(HTTPS) {server} {'POST' if 'livez' not in path else 'GET'} {path}"


def fig_images(table: Table, stack: Stack, ctx):
    def size(img):
        p = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", img],
                           capture_output=True, text=True)
        if p.returncode:
            raise Skip(f"image {img} not found")
        return int(p.stdout.strip()) / 1e6
    # The base the images were built on (what compose got: the shell's BASE_IMAGE, else the
    # bootstrap's choice, else the templates' default).
    base_name = os.environ.get("BASE_IMAGE") or base_image() or "debian:trixie-slim"
    base = size(base_name)
    for service in ("web", "fastapi", "postgres", "redis", "proxy"):
        img = stack.container(service).image.tags[0]  # as compose tagged it (TRINITY_TAG)
        s = size(img)
        target = "; target <= base + 90 MB" if "django" in img or "fastapi" in img else ""
        table.ratio(f"image {img}", s, "MB", base_name, base,
                    f"base + {s - base:.0f} MB{target}", fmt="{:,.0f}")


LEGACY = {"BENCH_LEGACY": "1"}  # the settings before this tuning (bench_app.py)
FIRE_AND_FORGET = {"BENCH_IGNORE_RESULT": "1"}
TUNINGS = [
    # (label, env, extra worker args, pool, workers, concurrency)
    ("before: task events, STARTED state, gossip, mingle", LEGACY, "", "prefork", 1, 0),
    ("after: the stack's settings now (none of those)", {}, "", "prefork", 1, 0),
    ("after + ignore_result (fire-and-forget task)", FIRE_AND_FORGET, "", "prefork", 1, 0),
    ("after + ignore_result + no heartbeat", FIRE_AND_FORGET, "--without-heartbeat",
     "prefork", 1, 0),
    ("after + ignore_result + prefetch multiplier 16", FIRE_AND_FORGET,
     "--prefetch-multiplier 16", "prefork", 1, 0),
    ("after + ignore_result, 2 solo worker nodes (2 consumers)", FIRE_AND_FORGET, "",
     "solo", 2, 0),
    ("after + ignore_result, 2 prefork nodes of 1 process", FIRE_AND_FORGET, "",
     "prefork", 2, 1),
]


def fig_tuning(table: Table, stack: Stack, ctx):
    raw = ctx["raw"]["brpop_drain_rate"]
    for label, env, extra, pool, workers, conc in TUNINGS:
        a = ["--n", str(ctx["n"]), "--pool", pool, "--workers", str(workers)]
        if conc:
            a += ["--concurrency", str(conc)]
        if extra:
            a += ["--extra=" + extra]
        try:
            r = stack.inner("drain", *a, env=env)
        except Exception as exc:
            table.skip(f"drain: {label}", f"FAILED: {str(exc)[:150]}")
            continue
        table.ratio(f"drain: {label}", r["rate"], "/s", "raw BRPOP drain", raw,
                    f"{r['redis_cmds_per_task']:.1f} Redis cmds/task; "
                    f"worker RSS {r['worker_rss_mb']:.0f} MiB")
        ctx.setdefault("redis_top", {})[label] = r["redis_top"]
    raw_lpush = ctx["raw"]["lpush_rate"]
    for label, env in (("before (task-sent events)", LEGACY),
                       ("after + ignore_result (no result subscription)", FIRE_AND_FORGET)):
        try:
            r = stack.inner("enqueue", "--n", str(ctx["n"]), env=env)
            table.ratio(f"enqueue `.delay()`: {label}", r["delay_rate"], "/s", "raw LPUSH",
                        raw_lpush, f"after: {ctx['enqueue']['delay_rate']:,.0f} /s")
        except Exception as exc:
            table.skip(f"enqueue: {label}", f"FAILED: {str(exc)[:150]}")
    pp = ctx["raw"]["pingpong"]
    for label, env, pool in (("before", LEGACY, "prefork"), ("after, threads pool", {}, "threads"),
                             ("after, solo pool", {}, "solo")):
        try:
            r = stack.inner("latency", "--rounds", str(ctx["rounds"]), "--pool", pool, env=env)
            table.ratio(f"enqueue->result p50: {label}", r["p50"] * 1e3, "ms",
                        "BLPOP ping-pong", pp["p50"] * 1e3,
                        f"p99 {r['p99'] * 1e3:.2f} ms; after, prefork: "
                        f"{ctx['latency_p50'] * 1e3:.3f} ms", fmt="{:.3f}")
        except Exception as exc:
            table.skip(f"latency: {label}", f"FAILED: {str(exc)[:150]}")


# ---- start and build ------------------------------------------------------------------------------
START_TIMEOUT = 900


def fresh_clone(dest: Path) -> None:
    """Copy what a clone of this checkout holds (tracked files plus untracked, not ignored
    ones): no wheelhouse, no .venv, no operator copies of the templates."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def timed(cmd: list[str], cwd: Path, env: dict, until: str | None = None) -> tuple[float, str]:
    """Run cmd; seconds until a line containing `until` appeared (or until it exited), and its
    output. Fails with the output's tail if the command fails."""
    t = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    seen, lines = None, []
    killer = threading.Timer(START_TIMEOUT, proc.kill)
    killer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if until and seen is None and until in line:
                seen = time.monotonic() - t
    finally:
        killer.cancel()
    code = proc.wait()
    out = "".join(lines)
    if code or (until and seen is None):
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{out[-2000:]}")
    return (seen if until else time.monotonic() - t), out


def fig_start(table: Table, project: str, ctx):
    """`make dev-up` to first SUCCESS on a fresh clone: cold (empty wheelhouse and venv, every
    image layer rebuilt) and warm (images built, fresh volumes); rebuild after a one-line edit."""
    tag = project.removeprefix("trinity-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "MAKE"))}
    env.update(COMPOSE_PROJECT_NAME=f"{project}-start", TRINITY_TAG=tag, WEB_PORT=str(free_port()),
               FASTAPI_PORT=str(free_port()))
    first = "dev-up: first SUCCESS"
    with tempfile.TemporaryDirectory(prefix="trinity-bench-clone-") as tmp:
        clone = Path(tmp)
        fresh_clone(clone)
        compose = ["docker", "compose", "-f", "docker-compose-dev.yml"]
        try:
            cold, out = timed(["make", "dev-up", "BUILD_FLAGS=--no-cache"], clone, env, first)
            steps = "; ".join(re.sub(r"\s+", " ", m) for m in
                              re.findall(r"^bootstrap: (\S+\s+[\d.]+s)", out, re.M))
            timed([*compose, "down", "-v"], clone, env)
            warm, _ = timed(["make", "dev-up"], clone, env, first)
            images = sorted({i for i in sh_in(clone, env, *compose, "config", "--images").split()
                             if i.startswith("trinity/")})
            bare = 0.0
            for image in images:
                bare += timed(["docker", "run", "--rm", "--entrypoint", "true", image],
                              clone, env)[0]
            table.ratio("`make dev-up` to first SUCCESS, cold", cold, "s",
                        f"bare `docker run` of its {len(images)} images", bare,
                        f"fresh clone, `BUILD_FLAGS=--no-cache`; bootstrap steps: {steps or '-'};"
                        " target <= 300 s", fmt="{:.1f}")
            table.ratio("`make dev-up` to first SUCCESS, warm", warm, "s",
                        f"bare `docker run` of its {len(images)} images", bare,
                        "images built, volumes new (initdb + migrations run); target <= 20 s",
                        fmt="{:.1f}")
            for service, edited in (("web", "services/TrinityBackendDjango/apps/orchestration/"
                                            "views.py"),
                                    ("fastapi", "services/TrinityBackendFastAPI/app/main.py")):
                unchanged = timed([*compose, "build", service], clone, env)[0]
                with open(clone / edited, "a") as f:
                    # unique per run: an edit seen before would be a build-cache hit
                    f.write(f"# one-line edit made by bench/run.py ({project})\n")
                rebuilt = timed([*compose, "build", service], clone, env)[0]
                table.ratio(f"rebuild `{service}` after a one-line edit", rebuilt, "s",
                            "the same build with no change", unchanged, f"edited {edited}",
                            fmt="{:.1f}")
        finally:
            subprocess.run([*compose, "down", "-v", "--rmi", "all", "--remove-orphans"],
                           cwd=clone, env=env, capture_output=True, timeout=300)


def sh_in(cwd: Path, env: dict, *cmd: str) -> str:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout


def write_results(path: Path, info: dict, table: Table, tuning: Table, ctx: dict, png):
    notes = ""
    if path.exists():
        old = path.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    contention = ""
    if info["other_containers"]:
        contention = (f"\n**Contention:** other containers were running on this machine during "
                      f"the run (checked before every figure) ({len(info['other_containers'])}: "
                      f"{', '.join(sorted(info['other_containers'])[:8])}"
                      f"{', ...' if len(info['other_containers']) > 8 else ''}). Ratios hold better "
                      f"than absolute numbers, but even ratios are noisy under such load.\n")
    lines = [
        "# Benchmarks",
        "",
        f"`make bench` (= `.venv/bin/python bench/run.py {info['args'] if info['args'] != '(full run)' else ''}"
        .rstrip() + "`), written by bench/run.py.",
        "",
        f"- date: {info['date']}; wall time {info['wall']}",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"kernel {info['kernel']}",
        f"- docker {info['docker']}, compose {info['compose']}",
        f"- git revision: {info['git']}",
        f"- N = {ctx['n']:,} no-ops per drain/enqueue figure, {ctx['rounds']:,} latency samples; "
        "dev template + compose/bench.yml (web and fastapi on their production servers, the "
        "nginx proxy in front of both), Redis 8 with AOF everysec; HTTP enqueues carry an API "
        "token (`create_api_token --tenant public`)",
        contention,
        "Every ratio divides a figure by a baseline measured in the same run on the same "
        "containers (baseline value in the next column). `bench.noop` is a pure no-op task "
        "(bench/bench_app.py) on its own queue; the stack's settings (acks_late, prefetch 1, "
        "results kept, no task events, no STARTED state, workers without gossip/mingle) apply "
        "unless a tuning row says otherwise.",
        "",
        table.markdown(),
        "",
    ]
    if tuning.rows:
        lines += ["## Tuning: before/after (same run, same Redis, acks_late and visibility "
                  "timeout untouched)", "", tuning.markdown(), ""]
    if png:
        lines += ["## Latency histogram", "",
                  f"![latency](latency.png)", "",
                  f"`latency.png`: blue = Celery enqueue->result ({len(ctx['latency_samples'])} "
                  f"samples), orange = BLPOP ping-pong ({len(ctx['pingpong_samples'])}); x from 0 "
                  f"to {ctx['png_x_max_us'] / 1000:.1f} ms, bins of {ctx['png_bin_us']:.0f} us, "
                  "grey ticks every 1 ms; each series scaled to its own peak; the last bin holds "
                  "everything beyond the axis.", ""]
    if ctx.get("png2_x_max_us"):
        lines += ["![latency at saturation](latency-saturated.png)", "",
                  f"`latency-saturated.png`: Celery enqueue->result with {ctx['inflight']} tasks "
                  f"in flight ({len(ctx['saturated_samples'])} samples); x from 0 to "
                  f"{ctx['png2_x_max_us'] / 1000:.0f} ms, bins of {ctx['png2_bin_us'] / 1000:.1f} ms,"
                  " grey ticks every 10 ms.", ""]
    if ctx.get("redis_top"):
        lines += ["## Redis commands per drained task (INFO commandstats delta / N)", ""]
        for label, top in ctx["redis_top"].items():
            lines.append(f"- {label}: " + ", ".join(f"{k} {v}" for k, v in top.items()))
        lines.append("")
    lines += [NOTES_MARKER]
    path.write_text("\n".join(lines) + (notes if notes else "\n"))


if __name__ == "__main__":
    sys.exit(main())
