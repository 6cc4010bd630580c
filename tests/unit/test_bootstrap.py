"""The bootstrap's pure parts (what it runs, how it decides to skip) and the locks it reads."""
import re
from pathlib import Path

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
    cmd = bootstrap.mmdebstrap_command("trixie", ("python3",), ['Acquire::Check-Valid-Until "false"'])
    hooks = " ".join(c for c in cmd if c.startswith("--customize-hook"))
    assert "/etc/resolv.conf" in hooks and "/etc/hostname" in hooks
    assert "--skip=output/dev" in cmd
    assert cmd[-2:] == ["trixie", "-"]
    # only validity switches go in (mmdebstrap writes every --aptopt into the image)
    assert [c for c in cmd if c.startswith("--aptopt")] == ['--aptopt=Acquire::Check-Valid-Until "false"']


def test_docker_import_gives_the_image_a_path_and_our_label():
    cmd = bootstrap.docker_import_command("debian:trixie-slim")
    changes = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--change"]
    assert any(c.startswith("ENV PATH=") for c in changes)
    assert f"LABEL {bootstrap.PROJECT_LABEL}" in changes
    assert cmd[-2:] == ["-", "debian:trixie-slim"]


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
