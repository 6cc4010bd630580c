#!/usr/bin/env python3
"""Bring a machine from "Docker Engine + Python 3 + apt" to "can build, run and test Trinity".

    scripts/bootstrap [--for stack|tools|bench|test] [STEP ...]

Idempotent: every step first checks whether its result is already there and skips if so. Each
step prints one line (its name, how long it took, what it did); what apt, dpkg, pip and docker
print goes to the log file named at the start (artifacts/bootstrap.log), and when a step fails
the end of that log is printed with its path.

Steps (in this order, each needs the one before):
  base-image       the base of every image. Where a registry answers: Docker's official
                   debian:trixie-slim. Where none does: trinity/base:trixie, the same minbase
                   trixie (no python3, no CA certificates) built from Debian packages with
                   mmdebstrap and `docker import`ed under our own name, never an official one. The
                   choice is written to .base-image, which the Makefile exports as BASE_IMAGE.
  compose          the `docker compose` v2 and buildx CLI plugins, taken from Debian's own trixie
                   packages (apt-get download inside the base image) when `docker compose` is
                   missing.
  wheelhouse       wheelhouse/<lock>/ filled on the host from requirements/<lock>.lock (exact
                   versions, hashes) for the app images (django, fastapi), so image builds need
                   no network for Python packages.
  test-wheelhouse  the same for the test tools of the -test images that the stack tests build.
  host-venv        .venv with the host-side tools from requirements/host.lock (pytest, the
                   config check, validate, bench).
  browser          headless Chromium (Debian's chromium-headless-shell) for the Flower page test;
                   installed with apt when run as root, otherwise that one test is skipped.

Each make target asks only for what it needs (--for): `stack` builds and runs a stack (make
dev-up, make prod-up; the default), `tools` runs the host-side tools (make check-config, make
validate), `bench` both, `test` everything (make test, make bootstrap).

Standard library only: it runs before anything else is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_BASE_IMAGE = "debian:trixie-slim"
# Our own name for the base we build: importing it under the official name would change what
# every other project on this engine gets as debian:trixie-slim.
LOCAL_BASE_IMAGE = "trinity/base:trixie"
BASE_IMAGE_FILE = ROOT / ".base-image"
# What the commands of the steps print (git-ignored, like the Flower screenshot beside it).
LOG_FILE = ROOT / "artifacts" / "bootstrap.log"
LOG_TAIL_LINES = 30
# Label on everything this project builds, so `make clean` removes only ours.
PROJECT_LABEL = "org.trinity.project=trinity"
IMAGE_PYTHON = "3.13"  # Debian trixie's python3; locks are resolved for it.
# Locks whose wheels the image builds install (images/python/Dockerfile): the two apps, and the
# test tools of their -test targets, which only the stack tests build.
APP_LOCKS = ("django", "fastapi")
TEST_LOCKS = ("test",)
IMAGE_LOCKS = APP_LOCKS + TEST_LOCKS
ALL_STEPS = ("base-image", "compose", "wheelhouse", "test-wheelhouse", "host-venv", "browser")
# The steps each kind of make target needs, and no other: a dev or production host that only
# builds and runs a stack gets no test tools and no browser.
PLANS = {
    "stack": ("base-image", "compose", "wheelhouse"),
    "tools": ("host-venv",),
    "bench": ("base-image", "compose", "wheelhouse", "host-venv"),
    "test": ALL_STEPS,
}
DEFAULT_PLAN = "stack"
# Steps that talk to the Docker Engine (the others run without one).
DOCKER_STEPS = {"base-image", "compose"}
# Paths a slim image leaves out (the same idea as the Hub's -slim variants).
SLIM_DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
# Variables of the host that must not leak into a chroot or image build (they point at host
# paths, certificates or package indexes).
LEAKY_ENV_PREFIXES = ("PIP_", "UV_", "PYTHON", "REQUESTS_CA", "SSL_CERT", "CURL_CA", "VIRTUAL_ENV")


class StepFailed(RuntimeError):
    pass


class CommandLog:
    """Where the output of every command goes: one file, rewritten by each bootstrap run."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file: IO[str] = path.open("w", encoding="utf-8", errors="replace")

    def command(self, cmd: list[str]) -> IO[str]:
        self.file.write(f"\n$ {' '.join(cmd)}\n")
        self.file.flush()
        return self.file

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        self.file.flush()
        return "\n".join(self.path.read_text(errors="replace").splitlines()[-lines:])


LOG: CommandLog | None = None  # set by main()


def run(cmd: list[str], *, env: dict | None = None,
        capture: bool = False) -> subprocess.CompletedProcess:
    """Run a step's command with its output in the log (stdout returned instead if capture)."""
    out = LOG.command(cmd) if LOG else subprocess.DEVNULL
    try:
        return subprocess.run(cmd, env=env, check=True, text=True, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE if capture else out, stderr=out)
    except subprocess.CalledProcessError as exc:
        raise StepFailed(f"{short(cmd)} exited {exc.returncode}") from None


def short(cmd: list[str]) -> str:
    """A command as a failure line names it: the program and its first arguments."""
    return " ".join([Path(cmd[0]).name, *cmd[1:4]]) + (" ..." if len(cmd) > 4 else "")


def succeeds(cmd: list[str], timeout: float = 120) -> bool:
    try:
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout).returncode == 0
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return False


# ---- pure helpers (unit-tested in tests/unit/test_bootstrap.py) -------------------------------

def clean_env(environ: dict[str, str]) -> dict[str, str]:
    """The host environment minus what would leak host pip/CA/proxy-to-python settings."""
    return {k: v for k, v in environ.items() if not k.startswith(LEAKY_ENV_PREFIXES)}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheelhouse_is_current(lock: Path, wheel_dir: Path) -> bool:
    """True when wheel_dir was filled from exactly this lock file (stamp = the lock's sha256)."""
    stamp = wheel_dir / ".lock-sha256"
    return stamp.is_file() and stamp.read_text().strip() == sha256_of(lock)


def pip_download_command(python: str, lock: Path, dest: Path) -> list[str]:
    """Fetch exactly the locked wheels for the image's Python and platform, nothing else.

    --no-deps: the lock is already complete and resolved for the image's Python, so the host's
    Python must not re-judge environment markers.
    """
    return [python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", IMAGE_PYTHON, "--implementation", "cp",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64",
            "--platform", "any",
            "--require-hashes", "-r", str(lock), "-d", str(dest)]


def plan(name: str) -> tuple[str, ...]:
    """The steps of a plan (see PLANS), in the order they must run."""
    if name not in PLANS:
        raise ValueError(f"unknown plan {name!r}; known: {', '.join(PLANS)}")
    return tuple(step for step in ALL_STEPS if step in PLANS[name])


def mmdebstrap_command(suite: str, apt_opts: list[str]) -> list[str]:
    """A minbase trixie rootfs as a tar on stdout, like Docker's official debian:trixie-slim:
    Priority required only (no python3, no CA certificates: each Dockerfile installs what it
    needs), slim, nothing of the host kept.

    `apt_opts` hold for this build only: mmdebstrap writes them to 99mmdebstrap in the rootfs,
    which a hook removes, so no build-time switch reaches an image.
    """
    cmd = ["mmdebstrap", "--quiet", "--variant=minbase", "--format=tar", "--skip=output/dev"]
    cmd += [f"--aptopt={opt}" for opt in apt_opts]
    cmd += [f"--dpkgopt={opt}" for opt in SLIM_DPKG_OPTS]
    # The chroot got the host's resolv.conf and hostname for the build; Docker supplies its own.
    # mmdebstrap's own apt cleanup leaves pkgcache.bin/srcpkgcache.bin (85 MB) behind: skip it
    # and empty the apt lists and caches here, and add the docker-clean snippet of the Hub's
    # images so that every later apt run in a Dockerfile cleans up after itself too.
    cmd += ["--skip=cleanup/apt",
            "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
            "--customize-hook=rm -f \"$1/etc/resolv.conf\" \"$1/etc/hostname\" "
            "\"$1/etc/apt/apt.conf.d/99mmdebstrap\"",
            "--customize-hook=printf '%s\\n' "
            "'DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb "
            "/var/cache/apt/*.bin || true\"; };' "
            "'APT::Update::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb "
            "/var/cache/apt/*.bin || true\"; };' "
            "'Dir::Cache::pkgcache \"\"; Dir::Cache::srcpkgcache \"\";' "
            "> \"$1/etc/apt/apt.conf.d/docker-clean\"",
            suite, "-"]
    return cmd


def docker_import_command(image: str) -> list[str]:
    # An imported image has no config: give it PATH and a shell like the Hub's debian image.
    return ["docker", "import",
            "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change", "ENV LANG=C.UTF-8",
            "--change", f"LABEL {PROJECT_LABEL}",
            "--change", "LABEL org.trinity.base=mmdebstrap",
            "--change", 'CMD ["bash"]',
            "-", image]


def cli_plugins_dir(environ: dict[str, str]) -> Path:
    config = environ.get("DOCKER_CONFIG") or str(Path(environ.get("HOME", "/root")) / ".docker")
    return Path(config) / "cli-plugins"


# ---- steps ------------------------------------------------------------------------------------

def image_exists(image: str) -> bool:
    return succeeds(["docker", "image", "inspect", image], timeout=30)


def choose_base_image(requested: str | None) -> str:
    """The base to use: BASE_IMAGE if the operator set it; else the official image where it is
    present or can be pulled; else our own build (built by step_base_image)."""
    if requested:
        return requested
    chosen = BASE_IMAGE_FILE.read_text().strip() if BASE_IMAGE_FILE.is_file() else ""
    if chosen and image_exists(chosen):
        return chosen
    if image_exists(OFFICIAL_BASE_IMAGE) or succeeds(["docker", "pull", "-q", OFFICIAL_BASE_IMAGE],
                                                     timeout=120):
        return OFFICIAL_BASE_IMAGE
    return LOCAL_BASE_IMAGE


def apt_install(*packages: str) -> None:
    """Install Debian packages on the host (the caller checked for root and apt)."""
    env = clean_env(dict(os.environ))
    env["DEBIAN_FRONTEND"] = "noninteractive"
    run(["apt-get", "update"], env=env)
    run(["apt-get", "install", "-y", *packages], env=env)


def step_base_image(image: str) -> str:
    BASE_IMAGE_FILE.write_text(image + "\n")
    if image_exists(image):
        return f"{image} present (written to {BASE_IMAGE_FILE.name})"
    if image != LOCAL_BASE_IMAGE:
        if succeeds(["docker", "pull", "-q", image], timeout=300):
            return f"{image} pulled"
        raise StepFailed(f"BASE_IMAGE={image} is not on this engine and cannot be pulled")
    # No registry answers: build the same minbase trixie from Debian's packages.
    if shutil.which("mmdebstrap") is None:
        apt_install("mmdebstrap")
    # Validity switch for this build only (a snapshot mirror's Release files may be past
    # Valid-Until); the image does not keep it (see mmdebstrap_command).
    apt_opts = ['Acquire::Check-Valid-Until "false"']
    build_cmd, import_cmd = mmdebstrap_command("trixie", apt_opts), docker_import_command(image)
    build = subprocess.Popen(build_cmd, stdout=subprocess.PIPE, stderr=LOG.command(build_cmd),
                             env=clean_env(dict(os.environ)))
    out = LOG.command(import_cmd)
    imported = subprocess.run(import_cmd, stdin=build.stdout, stdout=out, stderr=out)
    build.stdout.close()
    if build.wait() != 0 or imported.returncode != 0:
        raise StepFailed(f"no registry answers, and building {image} with mmdebstrap failed "
                         f"(mmdebstrap exit {build.returncode}, docker import exit "
                         f"{imported.returncode})")
    return (f"{image} built from Debian trixie packages: no registry answers "
            f"(written to {BASE_IMAGE_FILE.name})")


def step_compose(image: str) -> str:
    if succeeds(["docker", "compose", "version"], timeout=30):
        return "docker compose present"
    dest = cli_plugins_dir(dict(os.environ))
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        script = ("set -e; apt-get update; cd /tmp; "
                  "apt-get download docker-compose docker-buildx; "
                  "for deb in *.deb; do dpkg-deb -x \"$deb\" /tmp/x; done; "
                  "cp /tmp/x/usr/libexec/docker/cli-plugins/docker-* /out/")
        run(["docker", "run", "--rm", "--network", "bridge", "-v", f"{tmp}:/out", image,
             "sh", "-c", script])
        for plugin in ("docker-compose", "docker-buildx"):
            target = dest / plugin
            shutil.copy2(Path(tmp) / plugin, target)
            target.chmod(0o755)
    version = run(["docker", "compose", "version", "--short"], capture=True).stdout.strip()
    return f"docker compose {version} installed into {dest} from Debian's packages"


def fill_wheelhouse(locks: tuple[str, ...]) -> str:
    done = []
    for name in locks:
        lock = ROOT / "requirements" / f"{name}.lock"
        dest = ROOT / "wheelhouse" / name
        if wheelhouse_is_current(lock, dest):
            continue
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob("*.whl"):  # wheels of an older lock
            old.unlink()
        run(pip_download_command(sys.executable, lock, dest))
        (dest / ".lock-sha256").write_text(sha256_of(lock) + "\n")
        done.append(f"{name}: {len(list(dest.glob('*.whl')))} wheels")
    return ", ".join(done) if done else "current"


def step_host_venv() -> str:
    lock = ROOT / "requirements" / "host.lock"
    venv = ROOT / ".venv"
    stamp = venv / ".lock-sha256"
    if stamp.is_file() and stamp.read_text().strip() == sha256_of(lock):
        return "current"
    run([sys.executable, "-m", "venv", "--clear", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "--require-hashes", "-r", str(lock)])
    stamp.write_text(sha256_of(lock) + "\n")
    return f"{venv.name} created"


BROWSERS = ("chromium-headless-shell", "chromium")


def step_browser() -> str:
    found = next((b for b in BROWSERS if shutil.which(b)), None)
    if found:
        return f"{found} present"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "skipped (needs root and apt): the Flower page test will be skipped"
    apt_install(BROWSERS[0])
    return f"{BROWSERS[0]} installed from Debian's packages"


def step_functions(image: str) -> dict:
    return {"base-image": lambda: step_base_image(image), "compose": lambda: step_compose(image),
            "wheelhouse": lambda: fill_wheelhouse(APP_LOCKS),
            "test-wheelhouse": lambda: fill_wheelhouse(TEST_LOCKS),
            "host-venv": step_host_venv, "browser": step_browser}


def say(text: str, end: str = "\n", file=None) -> None:
    print(text, end=end, file=file or sys.stdout, flush=True)


def main(argv: list[str] | None = None) -> int:
    global LOG
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--for", dest="plan", choices=sorted(PLANS), default=DEFAULT_PLAN,
                        help="what the caller needs: " + "; ".join(
                            f"{name}: {', '.join(plan(name))}" for name in PLANS))
    parser.add_argument("steps", nargs="*", metavar="STEP",
                        help=f"run only these steps (of {', '.join(ALL_STEPS)})")
    args = parser.parse_args(argv)
    for name in args.steps:
        if name not in ALL_STEPS:
            parser.error(f"unknown step {name!r}; known: {', '.join(ALL_STEPS)}")
    steps = [s for s in ALL_STEPS if s in args.steps] if args.steps else plan(args.plan)
    image = ""
    if DOCKER_STEPS & set(steps):
        if not succeeds(["docker", "info"], timeout=30):
            say("bootstrap: the Docker Engine does not answer (`docker info` failed): start it "
                "first", file=sys.stderr)
            return 1
        image = choose_base_image(os.environ.get("BASE_IMAGE"))
    LOG = CommandLog(LOG_FILE)
    functions = step_functions(image)
    total = time.monotonic()
    for name in steps:
        started = time.monotonic()
        say(f"bootstrap: {name:<15}", end=" ")
        try:
            outcome = functions[name]()
        except StepFailed as exc:
            say(f"{time.monotonic() - started:6.1f}s  FAILED: {exc}")
            say(f"---- the last {LOG_TAIL_LINES} lines of {LOG.path} ----\n{LOG.tail()}\n"
                f"---- bootstrap: step {name} failed; its commands' output: {LOG.path}",
                file=sys.stderr)
            return 1
        say(f"{time.monotonic() - started:6.1f}s  {outcome}")
    logged = f" (commands' output: {LOG.path})" if LOG.path.stat().st_size else ""
    say(f"bootstrap: done in {time.monotonic() - total:.1f}s{logged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
