"""Backups an operator can restore (scripts/backup.py): TaskRuns in two tenant schemas, a backup,
the stack's volumes gone, a fresh stack, a restore: every row is back in its own schema and a new
task runs. A damaged backup is refused before anything is dropped. The scheduled backup (the
`backup` profile) makes the same dump every interval and turns unhealthy when it cannot.

This module has a stack of its own: it takes its volumes down, which the session's stack must
never see."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stack import ROOT, Stack, running, wait_for

pytestmark = pytest.mark.stack

FILES = ["docker-compose-dev.example.yml", "compose/test.yml"]
SERVICES = ["postgres", "redis", "migrate", "web", "celery"]
SCHEMAS = ["public", "acme"]

# Prints {schema: [[id, operation, status, result], ...]} for every TaskRun of both schemas.
ROWS = f"""
import json
from django_tenants.utils import schema_context
from apps.orchestration.models import TaskRun
rows = {{}}
for schema in {SCHEMAS!r}:
    with schema_context(schema):
        rows[schema] = [[r.pk, r.operation, r.status, r.result]
                        for r in TaskRun.objects.order_by("pk")]
print(json.dumps(rows))
"""

def shell(stack: Stack, code: str):
    out = stack.compose("exec", "-T", "web", "python", "manage.py", "shell", "-c", code).stdout
    return json.loads(out.strip().splitlines()[-1])


def all_final(stack: Stack):
    rows = shell(stack, ROWS)
    return all(r[2] in ("SUCCESS", "FAILURE") for s in SCHEMAS for r in rows[s]) and rows


def backup_tool(stack: Stack, directory, *args: str) -> subprocess.CompletedProcess:
    files = [arg for f in stack.files for arg in ("--file", f)]
    return subprocess.run(
        [sys.executable, "scripts/backup.py", *files, "--env-file", stack.env_file,
         "--project", stack.project, "--dir", str(directory), *args],
        cwd=ROOT, text=True, capture_output=True, timeout=600)


def send_echo(stack: Stack) -> dict[str, int]:
    """One `echo` TaskRun in each schema, with the schema as payload: {schema: its id}."""
    return {s: stack.enqueue("echo", s, "--schema", s)[0]["task_run_id"] for s in SCHEMAS}


@pytest.fixture(scope="module")
def restorable(request):
    with running(Stack(files=FILES), SERVICES,
                 show_logs=lambda: request.session.testsfailed) as stack:
        yield stack


def test_a_backup_restores_every_schema_into_a_fresh_stack(restorable, tmp_path):
    stack = restorable
    stack.compose("exec", "-T", "web", "python", "manage.py", "create_tenant_schema", "acme")
    for _ in range(3):
        send_echo(stack)
    before = wait_for(lambda: all_final(stack), 60, interval=1,
                      describe=lambda: stack.logs("celery"))
    assert all(len(before[s]) == 3 for s in SCHEMAS), before

    made = backup_tool(stack, tmp_path, "backup")
    assert made.returncode == 0, made.stderr
    dump = tmp_path / made.stdout.split()[1]
    assert dump.is_file() and "verified" in made.stdout, made.stdout

    stack.down()  # every volume gone: an empty database
    stack.up(SERVICES)
    assert shell(stack, ROWS)["public"] == []

    restored = backup_tool(stack, tmp_path, "restore", str(dump))
    print(restored.stdout)
    assert restored.returncode == 0, restored.stderr
    assert "writers stopped (celery, web)" in restored.stdout, restored.stdout
    assert "writers healthy again" in restored.stdout, restored.stdout
    assert shell(stack, ROWS) == before  # every row back, in its own schema

    sent = send_echo(stack)
    after = wait_for(lambda: all_final(stack), 60, interval=1,
                     describe=lambda: stack.logs("celery"))
    for schema in SCHEMAS:
        new = [r for r in after[schema] if r[0] == sent[schema]]
        assert new and new[0][2:] == ["SUCCESS", schema], after[schema]


def test_a_damaged_backup_is_refused_before_anything_is_dropped(restorable, tmp_path):
    stack = restorable
    made = backup_tool(stack, tmp_path, "backup")
    assert made.returncode == 0, made.stderr
    dump = tmp_path / made.stdout.split()[1]
    before = shell(stack, ROWS)

    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(data)
    refused = backup_tool(stack, tmp_path, "restore", str(dump))
    assert refused.returncode == 1
    assert "checksum mismatch" in refused.stderr and "damaged" in refused.stderr, refused.stderr

    # A file cut short whose checksum was recorded anew: pg_restore itself refuses it.
    dump.write_bytes(bytes(data[:len(data) // 2]))
    (tmp_path / (dump.name + ".sha256")).write_text(
        subprocess.run(["sha256sum", str(dump)], capture_output=True, text=True).stdout)
    refused = backup_tool(stack, tmp_path, "restore", str(dump))
    assert refused.returncode == 1
    assert "pg_restore cannot read it" in refused.stderr, refused.stderr

    assert "writers stopped" not in refused.stdout
    assert shell(stack, ROWS) == before
    assert {s: stack.health(s) for s in ["web", "celery"]} == {"web": "healthy",
                                                                "celery": "healthy"}


def test_retention_keeps_the_newest(restorable, tmp_path):
    stack = restorable
    for _ in range(3):
        made = backup_tool(stack, tmp_path, "--keep", "2", "backup")
        assert made.returncode == 0, made.stderr
        last = made.stdout.split()[1]
    kept = sorted(p.name for p in tmp_path.glob("trinity-*.dump"))
    assert len(kept) == 2 and kept[-1] == last.split("/")[-1], kept
    listed = backup_tool(stack, tmp_path, "list")
    assert listed.stdout.count("checksum ok") == 2, listed.stdout


def test_the_scheduled_backup_runs_every_interval_and_turns_unhealthy_when_it_cannot(restorable,
                                                                                     tmp_path):
    stack = restorable
    interval = {"BACKUP_INTERVAL": "3", "BACKUP_KEEP": "2"}
    stack.compose("--profile", "backup", "up", "-d", "--wait", "backup", env=interval)
    logs = lambda: stack.logs("backup", tail=200)  # noqa: E731
    wait_for(lambda: logs().count("verified") >= 3, 60, interval=1, describe=logs)
    assert "removed trinity-" in logs(), logs()
    code, out = stack.exec("backup", ["sh", "-c", "ls /backups"])
    kept = sorted(n for n in out.split() if n.endswith(".dump"))
    assert code == 0 and len(kept) == 2 and len(out.split()) == 4, out  # two dumps, two sums

    # Copied out, it is what `make restore` takes: the checksum holds on the host too.
    for name in (kept[-1], kept[-1] + ".sha256"):
        stack.compose("cp", f"backup:/backups/{name}", str(tmp_path / name))
    listed = backup_tool(stack, tmp_path, "list")
    assert listed.stdout.count("checksum ok") == 1, listed.stdout + listed.stderr

    # Without the database no backup is made, and two intervals later the healthcheck says so.
    stack.compose("stop", "postgres")
    try:
        failing = lambda: stack.exec("backup", ["healthcheck-backup"])  # noqa: E731
        code, out = wait_for(lambda: (r := failing())[0] != 0 and r, 30, interval=1, describe=logs)
        assert "old (BACKUP_INTERVAL=3s)" in out, out
        assert "pg_dump failed" in logs(), logs()
    finally:
        stack.compose("start", "postgres")
        stack.wait_healthy(["postgres"])
