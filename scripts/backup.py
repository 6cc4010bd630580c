"""Back up, list and restore the stack's PostgreSQL database: every tenant schema, in one dump.

    backup.py --file docker-compose.yml [--env-file envs/prod.env] backup
    backup.py --file ... list
    backup.py --file ... restore BACKUP_DIR/trinity-20261204T180000.123Z.dump

pg_dump and pg_restore run inside the stack's own postgres container, so the client always
matches the server, and the dump (custom format, one consistent snapshot of the whole database)
streams out to BACKUP_DIR on the host with a .sha256 file beside it. A backup is verified
(`pg_restore --list`) before it counts; the oldest beyond BACKUP_KEEP are removed. The time of
the last verified backup goes to Redis (LAST_SUCCESS_KEY), where the monitoring profile reads it
(alert TrinityBackupTooOld).

A restore checks the file first (checksum, `pg_restore --list`) and refuses a damaged one before
anything is touched. Then it stops the writers (web, fastapi, workers, beat, flower) with their
warm shutdown, restores in one transaction (a failure leaves the database as it was), and starts
again the writers that were running. TaskRuns the dump holds as QUEUED or RUNNING are not lost:
the stuck-task scan republishes or fails them (README, "Backups").
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from stack import ROOT, Stack, StackError

WRITERS = ["web", "fastapi", "celery", "celery-cpu", "celery-io", "beat", "flower"]
PREFIX, SUFFIX = "trinity-", ".dump"
CHUNK = 1 << 20
# Inside the postgres container: its superuser over the local socket, which trusts it there.
PG = 'exec {tool} -U "${{POSTGRES_USER:-postgres}}" {args}'
DATABASE = '-d "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}"'


# Unix time of the last verified backup; the Redis exporter reads it (images/monitoring).
LAST_SUCCESS_KEY = "trinity.backup.last_success"


class BackupError(Exception):
    pass


def postgres(stack: Stack, tool: str, args: str, **popen) -> subprocess.Popen:
    """`tool args` in the stack's postgres container, its streams as ``popen`` says."""
    script = PG.format(tool=tool, args=args)
    return subprocess.Popen(stack.compose_cmd("exec", "-T", "postgres", "sh", "-c", script),
                            cwd=ROOT, **popen)


def running(stack: Stack) -> list[str]:
    return stack.compose("ps", "--services", "--status", "running").stdout.split()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_file(dump: Path) -> Path:
    return dump.with_name(dump.name + ".sha256")


def verify(stack: Stack, dump: Path) -> int:
    """The checksum matches and pg_restore reads the whole table of contents: the number of
    table-data entries. BackupError, naming what is wrong, otherwise."""
    if not dump.is_file():
        raise BackupError(f"{dump}: no such file")
    sums = checksum_file(dump)
    if not sums.is_file():
        raise BackupError(f"{dump}: its checksum file {sums.name} is missing")
    expected = sums.read_text().split()[0]
    actual = sha256_of(dump)
    if actual != expected:
        raise BackupError(f"{dump}: checksum mismatch (file {actual[:12]}..., recorded "
                          f"{expected[:12]}...): the file is damaged")
    with dump.open("rb") as f:
        proc = postgres(stack, "pg_restore", "--list", stdin=f, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise BackupError(f"{dump}: pg_restore cannot read it: {err.decode().strip()[-400:]}")
    return out.decode().count(" TABLE DATA ")


def backup(stack: Stack, directory: Path, keep: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
    dump = directory / f"{PREFIX}{stamp}{SUFFIX}"
    partial = dump.with_name(dump.name + ".partial")
    digest, size = hashlib.sha256(), 0
    started = time.monotonic()
    proc = postgres(stack, "pg_dump", f"--format=custom {DATABASE}", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    with partial.open("wb") as out:
        while chunk := proc.stdout.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    err = proc.stderr.read().decode()
    if proc.wait() != 0:
        partial.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {err.strip()[-800:]}")
    partial.rename(dump)
    checksum_file(dump).write_text(f"{digest.hexdigest()}  {dump.name}\n")
    tables = verify(stack, dump)
    print(f"backup: {dump} ({size / 1e6:.1f} MB, {tables} tables, "
          f"{time.monotonic() - started:.1f}s), verified")
    record_success(stack)
    for old in backups(directory)[:-keep] if keep > 0 else []:
        old.unlink()
        checksum_file(old).unlink(missing_ok=True)
        print(f"backup: removed {old.name} (BACKUP_KEEP={keep})")
    return dump


def record_success(stack: Stack) -> None:
    """The time of this backup into Redis, as the operator inside the Redis container (its
    admin user; no credential leaves it). A failure does not undo the backup: it is reported,
    and the monitoring's backup alert will say the same in time."""
    proc = stack.compose("exec", "-T", "redis", "redis-admin", "SET", LAST_SUCCESS_KEY,
                         str(int(time.time())), check=False, timeout=60)
    if proc.returncode != 0 or proc.stdout.strip() != "OK":
        print(f"backup: could not record the time in Redis ({LAST_SUCCESS_KEY}): "
              f"{(proc.stdout + proc.stderr).strip()[-300:]}", file=sys.stderr)
    else:
        print(f"backup: recorded in Redis ({LAST_SUCCESS_KEY})")


def backups(directory: Path) -> list[Path]:
    """The backups in ``directory``, oldest first (their names sort by time)."""
    return sorted(directory.glob(f"{PREFIX}*{SUFFIX}")) if directory.is_dir() else []


def list_backups(directory: Path) -> None:
    found = backups(directory)
    if not found:
        print(f"no backups in {directory}")
    for dump in found:
        sums = checksum_file(dump)
        ok = sums.is_file() and sums.read_text().split()[0] == sha256_of(dump)
        print(f"{dump}  {dump.stat().st_size / 1e6:8.1f} MB  "
              f"{'checksum ok' if ok else 'CHECKSUM BAD OR MISSING'}")


def restore(stack: Stack, dump: Path) -> None:
    tables = verify(stack, dump)  # refuse a damaged file before anything is touched
    stopped = [s for s in running(stack) if s in WRITERS]
    if stopped:
        started = time.monotonic()
        stack.compose("stop", "--timeout", "60", *stopped, timeout=600)
        print(f"restore: writers stopped ({', '.join(stopped)}) in "
              f"{time.monotonic() - started:.1f}s")
    try:
        started = time.monotonic()
        with dump.open("rb") as f:
            proc = postgres(
                stack, "pg_restore", f"--clean --if-exists --single-transaction --exit-on-error "
                f"{DATABASE}", stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise BackupError(f"pg_restore failed, the database is unchanged: "
                              f"{err.decode().strip()[-800:]}")
        print(f"restore: {dump} ({tables} tables) restored in {time.monotonic() - started:.1f}s")
    finally:
        if stopped:
            started = time.monotonic()
            stack.compose("up", "-d", "--wait", "--no-recreate", *stopped, timeout=600)
            print(f"restore: writers healthy again in {time.monotonic() - started:.1f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True, action="append",
                        help="the stack's compose file (again for each overlay)")
    parser.add_argument("--env-file", help="its env file (production)")
    parser.add_argument("--project", help="its compose project name, if not the default")
    parser.add_argument("--dir", default=os.environ.get("BACKUP_DIR") or "backups",
                        help="where backups are kept (BACKUP_DIR, default ./backups)")
    parser.add_argument("--keep", type=int, default=int(os.environ.get("BACKUP_KEEP") or 7),
                        help="how many backups to keep (BACKUP_KEEP, default 7)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backup", help="dump, verify, apply retention")
    commands.add_parser("list", help="the backups, oldest first, with their checksum state")
    restore_cmd = commands.add_parser("restore", help="verify FILE, then restore it")
    restore_cmd.add_argument("backup_file", metavar="FILE")
    args = parser.parse_args(argv)
    stack = Stack(args.file, args.env_file, args.project)
    directory = Path(args.dir)
    try:
        if args.command == "backup":
            backup(stack, directory, args.keep)
        elif args.command == "list":
            list_backups(directory)
        else:
            restore(stack, Path(args.backup_file))
    except (BackupError, StackError) as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
