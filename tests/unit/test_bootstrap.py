"""The bootstrap: what each plan runs, what it prints and logs, how it decides to skip, and the
locks it reads."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bootstrap


def test_clean_env_drops_host_pip_and_ca_settings():
    env = {"PATH": "/usr/bin", "HOME": "/root", "PIP_FIND_LINKS": "/opt/wheels",
           "PIP_CERT": "/etc/ssl/x.crt", "REQUESTS_CA_BUNDLE": "/x", "SSL_CERT_FILE": "/y",
           "PYTHONPATH": "/z", "UV_INDEX_URL": "u"}
    assert bootstrap.clean_env(env) == {"PATH": "/usr/bin", "HOME": "/root"}


def test_wheelhouse_is_current_follows_the_lock(tmp_path: Path):
    lock = tmp_path / "x.lock"
    lock.write_text("a==1 --hash=sha256:00\n")
    wheels = tmp_path / "wheels"
    assert not bootstrap.wheelhouse_is_current(lock, wheels)
    wheels.mkdir()
    (wheels / ".lock-sha256").write_text(bootstrap.sha256_of(lock) + "\n")
    assert bootstrap.wheelhouse_is_current(lock, wheels)
    lock.write_text("a==2 --hash=sha256:01\n")
    assert not bootstrap.wheelhouse_is_current(lock, wheels)


def test_pip_download_targets_the_image_python_not_the_host():
    cmd = bootstrap.pip_download_command("python3", Path("r.lock"), Path("w"))
    assert cmd[cmd.index("--python-version") + 1] == "3.13"
    assert "--no-deps" in cmd and "--require-hashes" in cmd and "--only-binary=:all:" in cmd
    assert cmd[-4:] == ["-r", "r.lock", "-d", "w"]


def test_mmdebstrap_keeps_nothing_of_the_host():
    cmd = bootstrap.mmdebstrap_command("trixie", ['Acquire::Check-Valid-Until "false"'])
    hooks = " ".join(c for c in cmd if c.startswith("--customize-hook"))
    assert "/etc/resolv.conf" in hooks and "/etc/hostname" in hooks
    assert "--skip=output/dev" in cmd
    assert cmd[-2:] == ["trixie", "-"]
    # only validity switches go in, for the build only: mmdebstrap writes every --aptopt to
    # 99mmdebstrap in the rootfs, and a hook removes that file before the tar is written
    assert [c for c in cmd if c.startswith("--aptopt")] == ['--aptopt=Acquire::Check-Valid-Until "false"']
    assert "/etc/apt/apt.conf.d/99mmdebstrap" in hooks
    # and the apt lists of the build are emptied
    assert '/var/lib/apt/lists/*' in hooks


def test_the_base_is_minbase_without_python_or_ca_certificates():
    """Like Docker's debian:trixie-slim: each Dockerfile installs python3/CA certificates."""
    cmd = bootstrap.mmdebstrap_command("trixie", [])
    assert "--variant=minbase" in cmd
    assert not [c for c in cmd if c.startswith("--include")]


def test_docker_import_gives_the_image_a_path_and_our_label():
    cmd = bootstrap.docker_import_command("debian:trixie-slim")
    changes = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--change"]
    assert any(c.startswith("ENV PATH=") for c in changes)
    assert f"LABEL {bootstrap.PROJECT_LABEL}" in changes
    assert cmd[-2:] == ["-", "debian:trixie-slim"]


def test_the_base_image_chosen_offline_is_not_an_official_one(tmp_path, monkeypatch):
    """No registry and nothing on the engine: our own build, under our own namespace, so it can
    never stand in for (or shadow) Docker's official debian image on this engine."""
    monkeypatch.setattr(bootstrap, "BASE_IMAGE_FILE", tmp_path / ".base-image")
    monkeypatch.setattr(bootstrap, "image_exists", lambda image: False)
    monkeypatch.setattr(bootstrap, "succeeds", lambda cmd, timeout=120: False)
    chosen = bootstrap.choose_base_image(None)
    assert chosen == bootstrap.LOCAL_BASE_IMAGE
    repository = chosen.split(":")[0]
    # official images have no namespace (debian, library/debian, docker.io/library/debian)
    assert "/" in repository and not repository.startswith(("library/", "docker.io/"))
    assert repository.split("/")[-1] != "debian" and chosen != bootstrap.OFFICIAL_BASE_IMAGE
    assert bootstrap.docker_import_command(chosen)[-1] == chosen


def test_the_base_image_chosen_online_is_the_official_one(tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "BASE_IMAGE_FILE", tmp_path / ".base-image")
    monkeypatch.setattr(bootstrap, "image_exists", lambda image: False)
    monkeypatch.setattr(bootstrap, "succeeds", lambda cmd, timeout=120: cmd[:2] == ["docker", "pull"])
    assert bootstrap.choose_base_image(None) == bootstrap.OFFICIAL_BASE_IMAGE
    assert bootstrap.choose_base_image("my/base:1") == "my/base:1"


def test_a_stack_needs_no_browser_no_host_venv_and_no_test_tools():
    """What `make dev-up` and `make prod-up` install: enough to build and run a stack."""
    assert bootstrap.plan("stack") == ("base-image", "compose", "wheelhouse")
    assert bootstrap.plan("tools") == ("host-venv",)
    assert set(bootstrap.plan("bench")) == set(bootstrap.plan("stack")) | {"host-venv"}
    assert bootstrap.plan("test") == bootstrap.ALL_STEPS  # everything, in the order they need
    assert bootstrap.DEFAULT_PLAN == "stack"


@pytest.fixture
def steps_ran(monkeypatch, tmp_path):
    """main() with every step replaced by one that records it (and the locks it fills)."""
    ran = []
    monkeypatch.setattr(bootstrap, "LOG_FILE", tmp_path / "bootstrap.log")
    monkeypatch.setattr(bootstrap, "succeeds", lambda cmd, timeout=120: True)  # docker info
    monkeypatch.setattr(bootstrap, "choose_base_image", lambda requested: "trinity/base:trixie")
    monkeypatch.setattr(bootstrap, "step_base_image", lambda image: ran.append("base-image") or "ok")
    monkeypatch.setattr(bootstrap, "step_compose", lambda image: ran.append("compose") or "ok")
    monkeypatch.setattr(bootstrap, "fill_wheelhouse", lambda locks: ran.append(locks) or "ok")
    monkeypatch.setattr(bootstrap, "step_host_venv", lambda: ran.append("host-venv") or "ok")
    monkeypatch.setattr(bootstrap, "step_browser", lambda: ran.append("browser") or "ok")
    return ran


def test_each_plan_runs_its_steps_and_no_other(steps_ran):
    assert bootstrap.main(["--for", "stack"]) == 0
    assert steps_ran == ["base-image", "compose", ("django", "fastapi")]
    steps_ran.clear()
    assert bootstrap.main(["--for", "test"]) == 0
    assert steps_ran == ["base-image", "compose", ("django", "fastapi"), ("test",), "host-venv",
                         "browser"]
    steps_ran.clear()
    assert bootstrap.main(["browser"]) == 0
    assert steps_ran == ["browser"]


def test_the_tools_need_no_docker_engine(steps_ran, monkeypatch):
    """`make check-config` and `make test-unit` work on a machine whose engine is down."""
    monkeypatch.setattr(bootstrap, "succeeds", lambda cmd, timeout=120: False)
    assert bootstrap.main(["--for", "tools"]) == 0
    assert steps_ran == ["host-venv"]
    assert bootstrap.main(["--for", "stack"]) == 1  # but a stack does


def _noisy_step(code: int):
    """A step whose command prints as apt and dpkg do, then exits with `code`. (The lines are
    built at run time: the log also holds the command, which must not pass for its output.)"""
    script = ("import sys; print('Selecting previously unselected package %s.' % 'x'); "
              f"print('dpkg' + ': warning', file=sys.stderr); sys.exit({code})")
    return lambda: bootstrap.run([sys.executable, "-c", script]) and "installed"


def test_one_line_per_step_and_the_commands_output_goes_to_the_log(steps_ran, monkeypatch,
                                                                     capfd):
    monkeypatch.setattr(bootstrap, "step_browser", _noisy_step(0))
    assert bootstrap.main(["host-venv", "browser"]) == 0
    out, err = capfd.readouterr()  # the file descriptors: what the commands print too
    lines = out.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["host-venv", "browser"], out
    assert re.fullmatch(r"bootstrap: browser\s+[\d.]+s  installed", lines[1]), out
    assert lines[-1].startswith("bootstrap: done in") and str(bootstrap.LOG_FILE) in lines[-1]
    assert "Selecting" not in out + err and "dpkg" not in out + err
    log = bootstrap.LOG_FILE.read_text().splitlines()
    assert "Selecting previously unselected package x." in log and "dpkg: warning" in log


def test_a_failed_step_prints_the_end_of_its_log_and_where_the_log_is(steps_ran, monkeypatch,
                                                                       capfd):
    monkeypatch.setattr(bootstrap, "step_browser", _noisy_step(3))
    assert bootstrap.main(["--for", "test"]) == 1
    out, err = capfd.readouterr()
    assert re.search(r"^bootstrap: browser\s+[\d.]+s  FAILED: python\S* -c .* exited 3$", out,
                     re.M), out
    assert "dpkg: warning" in err and str(bootstrap.LOG_FILE) in err
    assert "done in" not in out


def _dry_run(target: str) -> list[str]:
    """The arguments of each bootstrap `make TARGET` would run (make -n runs nothing)."""
    proc = subprocess.run(["make", "-n", "-C", str(bootstrap.ROOT), target], text=True,
                          capture_output=True, check=True)
    return [line.partition(" ")[2] for line in proc.stdout.splitlines()
            if line.startswith("scripts/bootstrap")]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_each_make_target_asks_the_bootstrap_for_what_it_needs_only():
    """dev-up and prod-up get a stack (no browser, no test tools); the tests everything. As a
    prerequisite: make computes a target's environment once, before its first recipe line, so
    only a prerequisite's .base-image reaches the recipe's BASE_IMAGE."""
    assert _dry_run("dev-up") == ["--for stack"]
    assert _dry_run("prod-up") == ["--for stack"]
    assert _dry_run("check-config") == ["--for tools"]
    assert _dry_run("bench") == ["--for bench"]
    assert _dry_run("test")[0] == "--for test"
    assert _dry_run("bootstrap") == ["--for test"]


def test_cli_plugins_dir_honours_docker_config():
    assert bootstrap.cli_plugins_dir({"DOCKER_CONFIG": "/d"}) == Path("/d/cli-plugins")
    assert bootstrap.cli_plugins_dir({"HOME": "/h"}) == Path("/h/.docker/cli-plugins")


def test_the_wheelhouse_covers_every_lock_an_image_build_installs():
    dockerfile = (bootstrap.ROOT / "images/python/Dockerfile").read_text()
    copied = set(re.findall(r"^COPY wheelhouse/([a-z]+)/", dockerfile, re.M))
    assert copied == set(bootstrap.IMAGE_LOCKS)
    for name in bootstrap.IMAGE_LOCKS:
        assert (bootstrap.ROOT / "requirements" / f"{name}.lock").is_file(), name


def _pins(name: str) -> dict[str, str]:
    text = (bootstrap.ROOT / "requirements" / f"{name}.lock").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M))


def test_the_test_tools_keep_every_runtime_pin():
    """test.lock is resolved under the runtime locks (scripts/lock): a package in both has one
    version, and the runtime locks carry no test tool."""
    test = _pins("test")
    for image in ("django", "fastapi"):
        runtime = _pins(image)
        assert {p: v for p, v in test.items() if p in runtime and runtime[p] != v} == {}, image
        assert not {"pytest", "pytest-django", "httpx"} & runtime.keys(), image
