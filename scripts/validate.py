#!/usr/bin/env python3
"""`make validate`: the operator guide's "Validating workers and queues", against the RUNNING stack.

    .venv/bin/python scripts/validate.py --file docker-compose-dev.yml [--project NAME]
        [--env-file PATH] [--worker-service celery] [--web-service web]

Every check runs inside the stack with `docker compose -f FILE [-p P] [--env-file E] exec -T`:

  status      celery -A config.celery status: at least one node, every node OK
  queues      inspect active_queues: the default, CPU, IO and beat queues (names asked from the
              stack: config.celery_settings.queue_names() in the web container) each have a worker
  enqueue     a fresh TaskRun (operation echo, unique payload), sent as the guide does:
              execute_task.apply_async(args=[ID, 'public'])
  query_task  inspect query_task TASK_ID answers
  monitor     monitor_orchestration_tasks --watch: Celery state and TaskRun both SUCCESS and the
              result equals the payload
  stuck       inspect reserved + inspect scheduled: nothing left waiting

Each step prints PASS/FAIL/SKIP, its name and its time; a FAIL gives the reason, the command and
the tail of its output; a step whose prerequisite did not pass is `SKIP (needs X)`. The last line
is `validate: N passed, N failed`; the exit status is 1 when a step failed (2: bad usage).
Every subprocess has a timeout: validate never hangs on a dead worker or broker.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

CELERY = ["celery", "-A", "config.celery"]
STATUS_TIMEOUT = 10.0  # `celery status --timeout`: the broadcast waits this long for replies
INSPECT_TIMEOUT = 5.0  # `celery inspect --timeout`
TASK_TIMEOUT = 60.0  # monitor_orchestration_tasks --watch --timeout
EXEC_OVERHEAD = 45.0  # docker compose exec + interpreter start-up, on top of the inner timeouts
TAIL_LINES = 8
QUEUE_KINDS = ("default", "cpu", "io", "beat")

QUEUE_NAMES_CODE = ("from config.celery_settings import queue_names; import json; "
                    "print(json.dumps(queue_names()))")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STATUS_LINE = re.compile(r"^->\s+(?P<node>\S+?):\s+(?P<state>\S+)")


# ---- outcomes of one step ----------------------------------------------------------------------

class StepFailed(Exception):
    """The check ran and its answer was wrong (or the command failed)."""

    def __init__(self, reason: str, output: str = "", command: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.output = output
        self.command = command


class StepSkipped(Exception):
    """The step cannot run meaningfully; the message says what it needs."""


@dataclass
class Result:
    name: str
    status: str  # PASS, FAIL or SKIP
    seconds: float | None = None
    detail: str = ""  # PASS: what was seen; FAIL: the reason; SKIP: what is needed
    output: str = ""  # FAIL: tail of the command's output
    command: str = ""  # FAIL: the command that failed


@dataclass
class Step:
    name: str
    func: Callable[[dict], str]  # returns the PASS detail; raises StepFailed / StepSkipped
    needs: tuple[str, ...] = ()


# ---- pure parsing ------------------------------------------------------------------------------

def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text or "")


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last non-empty lines of ``text``."""
    kept = [line.rstrip() for line in strip_ansi(text).splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def parse_json_reply(text: str):
    """The first JSON object in ``text`` (celery's --json output, a shell's print)."""
    text = strip_ansi(text)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        return value
    raise ValueError("no JSON object in the output")


def parse_status(text: str) -> dict[str, str]:
    """Node -> state from `celery status` output (text `->  node: OK` lines, or --json)."""
    nodes: dict[str, str] = {}
    for line in strip_ansi(text).splitlines():
        match = _STATUS_LINE.match(line.strip())
        if match:
            nodes[match["node"]] = match["state"]
    if nodes:
        return nodes
    try:
        replies = parse_json_reply(text)
    except ValueError:
        return {}
    if isinstance(replies, list):  # older celery: [{node: reply}, ...]
        merged = {}
        for item in replies:
            if isinstance(item, dict):
                merged.update(item)
        replies = merged
    if not isinstance(replies, dict):
        return {}
    for node, reply in replies.items():
        ok = isinstance(reply, dict) and "ok" in reply and "error" not in reply
        nodes[node] = "OK" if ok else "ERROR"
    return nodes


def judge_status(nodes: dict[str, str]) -> str:
    """PASS detail, or StepFailed when no node answered or one is not OK."""
    if not nodes:
        raise StepFailed("no worker node answered")
    bad = {node: state for node, state in nodes.items() if state.upper() != "OK"}
    if bad:
        raise StepFailed("not OK: " + ", ".join(f"{n} {s}" for n, s in sorted(bad.items())))
    count = len(nodes)
    return f"{count} node{'s' if count != 1 else ''} OK: {', '.join(sorted(nodes))}"


def queue_consumers(active_queues: dict) -> dict[str, list[str]]:
    """Queue name -> the nodes consuming it, from `inspect active_queues --json`."""
    consumers: dict[str, list[str]] = {}
    for node, queues in (active_queues or {}).items():
        for queue in queues or ():
            name = queue.get("name") if isinstance(queue, dict) else None
            if name:
                consumers.setdefault(name, []).append(node)
    return {name: sorted(nodes) for name, nodes in consumers.items()}


def judge_queues(expected: dict[str, str], active_queues: dict) -> str:
    """Each expected queue (kind -> name) has a consumer; else StepFailed naming the missing."""
    if not active_queues:
        raise StepFailed("no worker node answered")
    consumers = queue_consumers(active_queues)
    missing = [(kind, name) for kind, name in expected.items() if name not in consumers]
    if missing:
        raise StepFailed("no worker consumes " + ", ".join(
            f"the {kind} queue {name}" for kind, name in missing))
    return ", ".join(f"{name} ({len(consumers[name])})" for name in dict.fromkeys(expected.values()))


def task_ids_held(replies: dict) -> list[tuple[str, str]]:
    """(node, task id) of every task in an `inspect reserved` / `inspect scheduled` reply."""
    held = []
    for node, tasks in (replies or {}).items():
        for task in tasks or ():
            if not isinstance(task, dict):
                continue
            request = task.get("request") if isinstance(task.get("request"), dict) else task
            held.append((node, str(request.get("id") or "?")))
    return held


def describe_queues(active_queues: dict) -> str:
    """One line per node: the queues it consumes (a FAIL's evidence)."""
    lines = []
    for node, queues in sorted((active_queues or {}).items()):
        names = [q.get("name", "?") for q in queues or () if isinstance(q, dict)]
        lines.append(f"{node} consumes: {', '.join(names) or 'nothing'}")
    return "\n".join(lines)


def describe_held(reserved: dict, scheduled: dict) -> str:
    """One line per held task: where, which kind, its name and (scheduled) its ETA."""
    lines = []
    for kind, replies in (("reserved", reserved), ("scheduled", scheduled)):
        for node, tasks in sorted((replies or {}).items()):
            for task in tasks or ():
                if not isinstance(task, dict):
                    continue
                request = task.get("request") if isinstance(task.get("request"), dict) else task
                line = f"{kind} on {node}: {request.get('id')} {request.get('name')}"
                line += f"{tuple(request.get('args') or ())}"
                if task.get("eta"):
                    line += f" eta {task['eta']}"
                lines.append(line)
    return tail("\n".join(lines))


def judge_stuck(reserved: dict, scheduled: dict) -> str:
    """PASS when no worker holds a reserved or scheduled task."""
    stuck = [("reserved", node, task) for node, task in task_ids_held(reserved)]
    stuck += [("scheduled", node, task) for node, task in task_ids_held(scheduled)]
    if stuck:
        raise StepFailed("tasks waiting on a worker: " + ", ".join(
            f"{task} ({kind} on {node})" for kind, node, task in stuck))
    nodes = sorted(set(reserved or {}) | set(scheduled or {}))
    return f"nothing reserved or scheduled on {len(nodes)} node{'s' if len(nodes) != 1 else ''}"


def judge_query_task(task_id: str, replies: dict) -> str:
    """What `inspect query_task` said about ``task_id`` (an answer is all this step needs)."""
    seen = []
    for node, tasks in (replies or {}).items():
        if isinstance(tasks, dict) and task_id in tasks:
            entry = tasks[task_id]
            state = entry[0] if isinstance(entry, (list, tuple)) and entry else "?"
            seen.append(f"{state} on {node}")
    if seen:
        return ", ".join(seen)
    return (f"{len(replies or {})} node(s) answered; none holds it now "
            "(already finished, or not received yet)")


def parse_monitor_output(text: str) -> dict:
    """The last JSON report printed by `monitor_orchestration_tasks --json` (one per poll)."""
    last = None
    for line in strip_ansi(text).splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                last = json.loads(line)
            except ValueError:
                continue
    if not isinstance(last, dict):
        raise ValueError("no JSON report in the output")
    return last


def _outcome_result(value):
    """execute_task returns {"status", "result", ...}: the operation's result is inside."""
    if isinstance(value, dict) and "result" in value and "status" in value:
        return value["result"]
    return value


def judge_monitor(report: dict, payload) -> str:
    """PASS only when Celery and the TaskRun both say SUCCESS and both results equal payload."""
    backend = report.get("result_backend") or {}
    database = report.get("database") or {}
    record = database.get("record") or {}
    state, status = backend.get("state"), record.get("status")
    problems = []
    if state != "SUCCESS":
        problems.append(f"Celery state {state}" + (f" ({backend['error']})" if backend.get("error")
                                                   else ""))
    if not database.get("found"):
        problems.append("no TaskRun found" + (f" ({database['error']})" if database.get("error")
                                              else ""))
    elif status != "SUCCESS":
        problems.append(f"TaskRun status {status}"
                        + (f" ({record['error']})" if record.get("error") else ""))
    if state == "SUCCESS" and _outcome_result(backend.get("result")) != payload:
        problems.append(f"Celery result {_outcome_result(backend.get('result'))!r} "
                        f"!= payload {payload!r}")
    if status == "SUCCESS" and record.get("result") != payload:
        problems.append(f"TaskRun result {record.get('result')!r} != payload {payload!r}")
    if problems:
        raise StepFailed("; ".join(problems))
    return f"Celery SUCCESS, TaskRun {record.get('id')} SUCCESS, result == payload"


# ---- report ------------------------------------------------------------------------------------

def format_result(result: Result) -> str:
    seconds = "-" if result.seconds is None else f"{result.seconds:.1f}s"
    detail = f"(needs {result.detail})" if result.status == "SKIP" else result.detail
    lines = [f"{result.status:<4}  {result.name:<10}  {seconds:>6}  {detail}".rstrip()]
    if result.status == "FAIL":
        if result.command:
            lines.append(f"      $ {result.command}")
        for line in (result.output or "").splitlines():
            lines.append(f"      | {line}")
    return "\n".join(lines)


def summary_line(results: list[Result]) -> str:
    passed = sum(r.status == "PASS" for r in results)
    failed = sum(r.status == "FAIL" for r in results)
    return f"validate: {passed} passed, {failed} failed"


def exit_status(results: list[Result]) -> int:
    return 1 if any(r.status == "FAIL" for r in results) else 0


def run_steps(steps: list[Step], ctx: dict, emit: Callable[[Result], None] = lambda r: None,
              clock: Callable[[], float] = time.monotonic) -> list[Result]:
    """Run the steps in order; a step whose prerequisite did not PASS is skipped."""
    results: list[Result] = []
    status: dict[str, str] = {}
    for step in steps:
        unmet = [need for need in step.needs if status.get(need) != "PASS"]
        if unmet:
            result = Result(step.name, "SKIP", detail=", ".join(unmet))
        else:
            started = clock()
            try:
                detail = step.func(ctx)
                result = Result(step.name, "PASS", detail=detail or "")
            except StepFailed as exc:
                result = Result(step.name, "FAIL", detail=exc.reason, output=exc.output,
                                command=exc.command)
            except StepSkipped as exc:
                result = Result(step.name, "SKIP", detail=str(exc))
            except Exception as exc:  # a bug or an unexpected answer: a FAIL, never a traceback
                result = Result(step.name, "FAIL", detail=f"{type(exc).__name__}: {exc}")
            if result.status != "SKIP":
                result.seconds = clock() - started
        status[step.name] = result.status
        results.append(result)
        emit(result)
    return results


# ---- the stack ---------------------------------------------------------------------------------

@dataclass
class Completed:
    returncode: int | None  # None: timed out (killed)
    stdout: str = ""
    stderr: str = ""
    command: str = ""

    @property
    def output(self) -> str:
        return tail("\n".join(part for part in (self.stdout, self.stderr) if part))


@dataclass
class Compose:
    file: str
    project: str | None = None
    env_file: str | None = None
    runner: Callable = field(default=subprocess.run, repr=False)

    def base(self) -> list[str]:
        cmd = ["docker", "compose", "-f", self.file]
        if self.project:
            cmd += ["-p", self.project]
        if self.env_file:
            cmd += ["--env-file", self.env_file]
        return cmd

    def exec(self, service: str, argv: list[str], timeout: float) -> Completed:
        cmd = self.base() + ["exec", "-T", service] + argv
        shown = f"{service}: {' '.join(_quote(a) for a in argv)}"
        try:
            proc = self.runner(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            return Completed(None, _text(exc.stdout), _text(exc.stderr), shown)
        except FileNotFoundError as exc:
            return Completed(127, "", f"{exc}", shown)
        return Completed(proc.returncode, proc.stdout or "", proc.stderr or "", shown)


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def _quote(arg: str) -> str:
    if arg and re.fullmatch(r"[\w@%+=:,./-]+", arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def _must_succeed(done: Completed, timeout: float, what: str) -> Completed:
    if done.returncode is None:
        raise StepFailed(f"{what}: no answer within {timeout:g} s (killed)", done.output,
                         done.command)
    if done.returncode != 0:
        reason = _last_error_line(done) or f"exit status {done.returncode}"
        raise StepFailed(f"{what}: {reason}", done.output, done.command)
    return done


def _last_error_line(done: Completed) -> str:
    lines = [line.strip() for line in strip_ansi(done.stderr or done.stdout).splitlines()
             if line.strip()]
    for line in reversed(lines):
        if line.startswith("Error:") or "not running" in line or "no such service" in line:
            return line
    return lines[-1][:200] if lines else ""


def build_steps(compose: Compose, worker: str, web: str, status_timeout: float = STATUS_TIMEOUT,
                inspect_timeout: float = INSPECT_TIMEOUT,
                task_timeout: float = TASK_TIMEOUT) -> list[Step]:
    def celery(args: list[str], timeout: float) -> Completed:
        return compose.exec(worker, CELERY + args, timeout + EXEC_OVERHEAD)

    def inspect_json(command: list[str], what: str) -> tuple[dict, Completed]:
        args = ["inspect", *command, "--timeout", f"{inspect_timeout:g}", "--json"]
        done = _must_succeed(celery(args, inspect_timeout), inspect_timeout + EXEC_OVERHEAD, what)
        try:
            replies = parse_json_reply(done.stdout)
        except ValueError:
            raise StepFailed(f"{what}: answer is not JSON", done.output, done.command) from None
        if not isinstance(replies, dict):
            raise StepFailed(f"{what}: unexpected answer", done.output, done.command)
        return replies, done

    def manage_shell(code: str, what: str, timeout: float = 60.0) -> str:
        done = _must_succeed(
            compose.exec(web, ["python", "manage.py", "shell", "-c", code], timeout),
            timeout, what)
        lines = [line.strip() for line in strip_ansi(done.stdout).splitlines() if line.strip()]
        if not lines:
            raise StepFailed(f"{what}: printed nothing", done.output, done.command)
        return lines[-1]

    def status(ctx: dict) -> str:
        args = ["status", "--timeout", f"{status_timeout:g}"]
        done = celery(args, status_timeout)
        if done.returncode is None:
            raise StepFailed(f"no answer within {status_timeout + EXEC_OVERHEAD:g} s (killed)",
                             done.output, done.command)
        nodes = parse_status(done.stdout)
        if done.returncode != 0 and not nodes:
            reason = _last_error_line(done) or f"exit status {done.returncode}"
            raise StepFailed(reason, done.output, done.command)
        try:
            detail = judge_status(nodes)
        except StepFailed as exc:
            raise StepFailed(exc.reason, done.output, done.command) from None
        ctx["nodes"] = nodes
        return detail

    def queues(ctx: dict) -> str:
        timeout = 60.0
        done = _must_succeed(compose.exec(web, ["python", "-c", QUEUE_NAMES_CODE], timeout),
                             timeout, f"queue names from {web}")
        try:
            expected = parse_json_reply(done.stdout)
            expected = {kind: expected[kind] for kind in QUEUE_KINDS}
        except (ValueError, KeyError, TypeError):
            raise StepFailed(f"queue names from {web}: unexpected answer", done.output,
                             done.command) from None
        ctx["expected_queues"] = expected
        active, done = inspect_json(["active_queues"], "inspect active_queues")
        ctx["consumers"] = queue_consumers(active)
        try:
            return judge_queues(expected, active)
        except StepFailed as exc:
            raise StepFailed(exc.reason, describe_queues(active), done.command) from None

    def enqueue(ctx: dict) -> str:
        expected, consumers = ctx.get("expected_queues"), ctx.get("consumers")
        if expected and consumers is not None and expected["default"] not in consumers:
            raise StepSkipped(f"a worker on the default queue {expected['default']}")
        payload = {"validate": uuid.uuid4().hex, "sent_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        run_id = manage_shell(
            "from apps.orchestration.models import TaskRun; "
            f"print(TaskRun.objects.create(operation='echo', payload={payload!r}).pk)",
            "create TaskRun")
        if not run_id.isdigit():
            raise StepFailed(f"create TaskRun: expected an id, got {run_id[:80]!r}")
        task_id = manage_shell(
            "from apps.orchestration.tasks import execute_task; "
            f"result = execute_task.apply_async(args=[{run_id}, 'public']); print(result.id)",
            "enqueue execute_task")
        if not re.fullmatch(r"[0-9a-fA-F-]{32,36}", task_id):
            raise StepFailed(f"enqueue execute_task: expected a task id, got {task_id[:80]!r}")
        ctx.update(payload=payload, task_run_id=int(run_id), task_id=task_id)
        return f"TaskRun {run_id} (echo) sent as task {task_id}"

    def query_task(ctx: dict) -> str:
        replies, _ = inspect_json(["query_task", ctx["task_id"]], "inspect query_task")
        return judge_query_task(ctx["task_id"], replies)

    def monitor(ctx: dict) -> str:
        argv = ["python", "manage.py", "monitor_orchestration_tasks", "--task-id", ctx["task_id"],
                "--watch", "--timeout", f"{task_timeout:g}", "--json"]
        done = compose.exec(web, argv, task_timeout + EXEC_OVERHEAD)
        if done.returncode is None:
            raise StepFailed(f"no answer within {task_timeout + EXEC_OVERHEAD:g} s (killed)",
                             done.output, done.command)
        try:
            report = parse_monitor_output(done.stdout)
        except ValueError:
            reason = _last_error_line(done) or f"exit status {done.returncode}"
            raise StepFailed(reason, done.output, done.command) from None
        try:
            detail = judge_monitor(report, ctx["payload"])
        except StepFailed as exc:
            prefix = {3: f"not final after {task_timeout:g} s: ",
                      1: "not found: "}.get(done.returncode, "")
            raise StepFailed(prefix + exc.reason, tail(done.stdout, 2), done.command) from None
        if done.returncode != 0:
            raise StepFailed(f"exit status {done.returncode}", done.output, done.command)
        return detail

    def stuck(ctx: dict) -> str:
        reserved, first = inspect_json(["reserved"], "inspect reserved")
        scheduled, _ = inspect_json(["scheduled"], "inspect scheduled")
        try:
            return judge_stuck(reserved, scheduled)
        except StepFailed as exc:
            command = first.command.replace(" reserved ", " reserved|scheduled ")
            raise StepFailed(exc.reason, describe_held(reserved, scheduled), command) from None

    return [
        Step("status", status),
        Step("queues", queues, needs=("status",)),
        Step("enqueue", enqueue, needs=("status",)),
        Step("query_task", query_task, needs=("enqueue",)),
        Step("monitor", monitor, needs=("enqueue",)),
        Step("stuck", stuck, needs=("status",)),
    ]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Check the running stack's Celery workers, queues and one task end to end.")
    parser.add_argument("--file", "-f", required=True, help="compose file of the running stack")
    parser.add_argument("--project", "-p", help="compose project name (docker compose -p)")
    parser.add_argument("--env-file", help="passed to docker compose --env-file")
    parser.add_argument("--worker-service", default="celery",
                        help="service to run the celery CLI in (default: celery)")
    parser.add_argument("--web-service", default="web",
                        help="Django service for manage.py (default: web)")
    parser.add_argument("--status-timeout", type=float, default=STATUS_TIMEOUT,
                        help=f"celery status --timeout (default {STATUS_TIMEOUT:g})")
    parser.add_argument("--inspect-timeout", type=float, default=INSPECT_TIMEOUT,
                        help=f"celery inspect --timeout (default {INSPECT_TIMEOUT:g})")
    parser.add_argument("--task-timeout", type=float, default=TASK_TIMEOUT,
                        help=f"seconds the test task may take (default {TASK_TIMEOUT:g})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not os.path.isfile(args.file):
        print(f"validate: {args.file} not found (copy it from its .example.yml template)",
              file=sys.stderr)
        return 2
    compose = Compose(args.file, args.project, args.env_file)
    print(f"validate: {' '.join(compose.base())} (workers: {args.worker_service}, "
          f"Django: {args.web_service})", flush=True)
    steps = build_steps(compose, args.worker_service, args.web_service, args.status_timeout,
                        args.inspect_timeout, args.task_timeout)
    results = run_steps(steps, {}, emit=lambda r: print(format_result(r), flush=True))
    print(summary_line(results), flush=True)
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
