"""check_config: each way the env files, compose files, scripts and README drift from the one
declaration of the variables (config/variables.py), on a small repository built from it."""
import subprocess
from pathlib import Path

import pytest
import yaml

import check_config

variables = check_config.load_variables()
DECLARED = variables.VARIABLES
WEB_ROLES = {"celery", "django", "start-web"}


def _compose_works() -> bool:
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


pytestmark = pytest.mark.skipif(not _compose_works(), reason="needs `docker compose` (make bootstrap)")


def env_file(env: str) -> str:
    return "".join(f"{v.name}=\n" for v in DECLARED if env in v.files)


def template(env: str) -> str:
    """One web service that passes every variable its env file sets for what web runs."""
    environment = {v.name: f"${{{v.name}:-}}" for v in DECLARED
                   if env in v.files and WEB_ROLES & set(v.read_by)}
    return yaml.safe_dump({"services": {"web": {
        "image": "trinity/django:${TRINITY_TAG:-dev}", "command": "start-web",
        "environment": environment}}})


def make_repo(root: Path, **files) -> Path:
    content = {
        "envs/dev.env": env_file("dev"),
        "envs/prod.env": env_file("prod"),
        "docker-compose-dev.example.yml": template("dev"),
        "docker-compose.example.yml": template("prod"),
        "images/django/start-web": '#!/bin/sh\nexec gunicorn --workers "${WEB_WORKERS:-2}"\n',
        "README.md": "# Trinity\n\n## Environment\n\n" + variables.markdown() + "\nMore.\n",
        **files,
    }
    for rel, text in content.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def problems_of(root: Path) -> list[str]:
    return check_config.check(root).problems


def test_a_consistent_repository_passes(tmp_path, capsys):
    root = make_repo(tmp_path)
    assert problems_of(root) == []
    assert check_config.main(["--root", str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"check-config: OK ({len(DECLARED)} variables, 6 files)")


def test_an_env_file_naming_an_undeclared_variable(tmp_path, capsys):
    root = make_repo(tmp_path, **{"envs/prod.env": env_file("prod") + "CELERY_IO_QUEUES=x\n"})
    assert problems_of(root) == [
        "envs/prod.env: CELERY_IO_QUEUES is not declared in config/variables.py"]
    assert check_config.main(["--root", str(root)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "check-config: 1 problem"


def test_an_env_file_missing_a_variable_declared_for_it(tmp_path):
    text = env_file("dev").replace("CELERY_LOGLEVEL=\n", "# CELERY_LOGLEVEL=debug\n")
    assert problems_of(make_repo(tmp_path, **{"envs/dev.env": text})) == [
        "envs/dev.env: missing CELERY_LOGLEVEL (declared for it in config/variables.py)"]


def test_a_secret_may_be_named_as_its_file_but_nothing_else_may(tmp_path):
    extra = "DJANGO_SECRET_KEY_FILE=/run/secrets/k\nDJANGO_DEBUG_FILE=/x\n"
    assert problems_of(make_repo(tmp_path, **{"envs/dev.env": env_file("dev") + extra})) == [
        "envs/dev.env: DJANGO_DEBUG_FILE is not declared in config/variables.py"]


def test_a_compose_file_interpolating_an_undeclared_variable(tmp_path):
    text = template("dev") + "x-note: ${WEB_WROKERS}\n# ${IN_A_COMMENT:-} is documentation\n"
    assert problems_of(make_repo(tmp_path, **{"docker-compose-dev.example.yml": text})) == [
        "docker-compose-dev.example.yml: WEB_WROKERS is not declared in config/variables.py"]


def test_compose_leaves_a_coded_default_to_the_code(tmp_path):
    text = template("prod").replace("${CELERY_VISIBILITY_TIMEOUT:-}",
                                    "${CELERY_VISIBILITY_TIMEOUT:-3600}")
    assert problems_of(make_repo(tmp_path, **{"docker-compose.example.yml": text})) == [
        "docker-compose.example.yml: CELERY_VISIBILITY_TIMEOUT defaults to '3600' here; leave "
        "the default to the code (${CELERY_VISIBILITY_TIMEOUT:-})"]


def test_a_script_default_must_be_the_declared_one(tmp_path):
    script = '#!/bin/sh\nexec gunicorn --workers "${WEB_WORKERS:-3}" --x "${WEB_WROKERS:-}"\n'
    assert problems_of(make_repo(tmp_path, **{"images/django/start-web": script})) == [
        "images/django/start-web: WEB_WROKERS is not declared in config/variables.py",
        "images/django/start-web: WEB_WORKERS defaults to '3' here, '2' in config/variables.py"]


def test_a_service_that_does_not_receive_a_variable_of_its_env_file(tmp_path):
    data = yaml.safe_load(template("dev"))
    del data["services"]["web"]["environment"]["DJANGO_LOG_LEVEL"]
    text = yaml.safe_dump(data)
    assert problems_of(make_repo(tmp_path, **{"docker-compose-dev.example.yml": text})) == [
        "docker-compose-dev.example.yml: service web: lacks DJANGO_LOG_LEVEL, which "
        "envs/dev.env sets (pass it: ${DJANGO_LOG_LEVEL:-})"]


def test_a_fixed_value_hides_the_env_files(tmp_path):
    text = template("prod").replace("${WEB_TIMEOUT:-}", "'60'")
    assert problems_of(make_repo(tmp_path, **{"docker-compose.example.yml": text})) == [
        "docker-compose.example.yml: service web: WEB_TIMEOUT is fixed to '60', so "
        "envs/prod.env's WEB_TIMEOUT is ignored"]


def test_a_secret_given_as_a_file_counts_and_other_images_are_not_asked(tmp_path):
    data = yaml.safe_load(template("dev"))
    environment = data["services"]["web"]["environment"]
    del environment["DJANGO_SECRET_KEY"]
    environment["DJANGO_SECRET_KEY_FILE"] = "/run/secrets/django-secret-key"
    data["services"]["cache"] = {"image": "memcached:1", "environment": {"MEMCACHED_X": "1"}}
    text = yaml.safe_dump(data)
    assert problems_of(make_repo(tmp_path, **{"docker-compose-dev.example.yml": text})) == [
        "docker-compose-dev.example.yml: service cache: MEMCACHED_X is not declared in "
        "config/variables.py"]


def test_the_readme_table_is_the_declarations_and_can_be_rewritten(tmp_path, capsys):
    readme = "# Trinity\n\n| variable | default | meaning |\n|---|---|---|\n| `OLD` | x | y |\n\nMore.\n"
    root = make_repo(tmp_path, **{"README.md": readme})
    assert problems_of(root) == [
        "README.md: the Environment table differs from config/variables.py "
        "(scripts/check_config.py --write-readme rewrites it)"]
    assert check_config.main(["--root", str(root), "--write-readme"]) == 0
    text = (root / "README.md").read_text()
    assert variables.markdown() in text and text.endswith("\nMore.\n") and "`OLD`" not in text
    assert problems_of(root) == []


def test_missing_files_are_named(tmp_path):
    root = make_repo(tmp_path)
    (root / "envs/prod.env").unlink()
    (root / "docker-compose.example.yml").unlink()
    assert problems_of(root) == ["envs/prod.env: missing", "docker-compose.example.yml: missing"]


def test_the_real_repository_passes(capsys):
    assert check_config.main([]) == 0, capsys.readouterr().out
