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


def test_the_production_plan_has_no_browser_no_host_venv_no_test_wheels():
    steps, locks = bootstrap.plan(production=True)
    assert steps == ("base-image", "compose", "wheelhouse")
    assert "browser" not in steps and "host-venv" not in steps
    assert locks == ("django", "fastapi")
    all_steps, all_locks = bootstrap.plan(production=False)
    assert set(steps) < set(all_steps) and "test" in all_locks


def test_bootstrap_production_runs_only_the_production_steps(monkeypatch, capsys):
    """`scripts/bootstrap --production` (make prod-up): the steps really run, and no other."""
    ran = []
    monkeypatch.setattr(bootstrap, "succeeds", lambda cmd, timeout=120: True)  # docker info
    monkeypatch.setattr(bootstrap, "choose_base_image", lambda requested: "trinity/base:trixie")
    monkeypatch.setattr(bootstrap, "step_base_image", lambda image: ran.append("base-image") or "ok")
    monkeypatch.setattr(bootstrap, "step_compose", lambda image: ran.append("compose") or "ok")
    monkeypatch.setattr(bootstrap, "step_wheelhouse",
                        lambda locks: ran.append(("wheelhouse", locks)) or "ok")
    monkeypatch.setattr(bootstrap, "step_host_venv", lambda: ran.append("host-venv") or "ok")
    monkeypatch.setattr(bootstrap, "step_browser", lambda: ran.append("browser") or "ok")
    assert bootstrap.main(["--production"]) == 0
    assert ran == ["base-image", "compose", ("wheelhouse", ("django", "fastapi"))]
    ran.clear()
    assert bootstrap.main([]) == 0
    assert ran == ["base-image", "compose", ("wheelhouse", ("django", "fastapi", "test")),
                   "host-venv", "browser"]


def _make_target(makefile: str, name: str) -> tuple[list[str], str]:
    target = re.search(rf"^{re.escape(name)}:(.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert target, f"no {name} target in the Makefile"
    return target.group(1).split("##")[0].split(), target.group(2)


def test_the_makefile_prod_up_runs_the_production_bootstrap():
    """As a prerequisite: make computes a target's environment once, before its first recipe
    line, so only a prerequisite's .base-image reaches prod-up's BASE_IMAGE."""
    makefile = (bootstrap.ROOT / "Makefile").read_text()
    prerequisites, _ = _make_target(makefile, "prod-up")
    assert "bootstrap" not in prerequisites  # the full one: browser, host venv, test wheels
    assert prerequisites[0] == "bootstrap-prod"
    _, recipe = _make_target(makefile, "bootstrap-prod")
    assert recipe.split() == ["@scripts/bootstrap", "--production"]


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
