"""check_config: every way the env files, the compose anchor and celery_settings.py drift apart."""
from pathlib import Path

import pytest

import check_config

SETTINGS_SOURCE = '''"""Settings.

REDIS_URL                  required
CELERY_BROKER_URL          default REDIS_URL
CELERY_IO_QUEUE            default "<default queue>.io"
CELERY_VISIBILITY_TIMEOUT  default 3600
"""
import os


def _get(environ, name):
    return environ.get(name)


def load(environ):
    redis_url = _get(environ, "REDIS_URL")
    broker = _get(environ, "CELERY_BROKER_URL")
    io = _queue_name(environ, "CELERY_IO_QUEUE", "x.io")
    vt = _positive_int(environ, "CELERY_VISIBILITY_TIMEOUT", 3600)
    other = environ.get("DJANGO_DEBUG")  # not a Celery/Redis name: ignored
'''
VARIABLES = ["REDIS_URL", "CELERY_BROKER_URL", "CELERY_IO_QUEUE", "CELERY_VISIBILITY_TIMEOUT"]
ENV = "POSTGRES_PASSWORD=x\n" + "".join(f"{name}=\n" for name in VARIABLES)
ANCHOR = "".join(f"  {name}: ${{{name}:-}}\n" for name in VARIABLES)
COMPOSE = f"""\
name: trinity
x-celery-env: &celery-env
{ANCHOR}
x-django: &django
  image: trinity/django:${{TRINITY_TAG:-dev}}
  environment:
    <<: *celery-env
    DJANGO_DEBUG: "false"

services:
  redis:
    image: trinity/redis:dev
    environment:
      REDIS_PASSWORD: x
  web:
    <<: *django
  celery:
    <<: *django
    command: start-celery
  fastapi:
    build: {{context: ., target: fastapi}}
    environment: *celery-env
"""


def make_repo(root: Path, prod: bool = False, **overrides) -> Path:
    files = {
        str(check_config.SETTINGS): SETTINGS_SOURCE,
        "envs/dev.env": ENV,
        "docker-compose-dev.example.yml": COMPOSE,
    }
    if prod:
        files["envs/prod.env"] = ENV
        files["docker-compose.example.yml"] = COMPOSE
    files.update(overrides)
    for rel, text in files.items():
        if text is None:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def problems_of(root: Path) -> list[str]:
    return check_config.check(root)[0]


# ---- reading celery_settings.py ----------------------------------------------------------------

def test_code_variables_come_from_the_helpers_calls():
    assert check_config.variables_in_code(SETTINGS_SOURCE) == set(VARIABLES)


def test_code_variables_include_plain_environ_lookups():
    source = ('import os\nA = os.environ.get("CELERY_A")\nB = os.getenv("CELERY_B", "1")\n'
              'C = os.environ["REDIS_URL"]\nD = _redis_url("CELERY_RESULT_BACKEND", x)\n'
              'E = options.get("visibility_timeout")\n')
    assert check_config.variables_in_code(source) == {
        "CELERY_A", "CELERY_B", "REDIS_URL", "CELERY_RESULT_BACKEND"}


def test_docstring_table_rows_only():
    source = '"""Title mentions CELERY_NOT_A_ROW inline.\n\nCELERY_X   default 1\nREDIS_URL\n"""\n'
    assert check_config.variables_in_docstring(source) == {"CELERY_X", "REDIS_URL"}


def test_the_real_settings_module_reads_what_its_table_lists():
    source = (Path(check_config.ROOT) / check_config.SETTINGS).read_text()
    variables, problems = check_config.settings_variables(source)
    assert problems == []
    assert {"REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_TASK_DEFAULT_QUEUE",
            "CELERY_CPU_QUEUE", "CELERY_IO_QUEUE", "CELERY_BEAT_QUEUE",
            "CELERY_WORKER_CONCURRENCY"} <= variables


def test_code_and_table_disagreeing_is_a_problem(tmp_path):
    source = SETTINGS_SOURCE.replace("CELERY_IO_QUEUE            default", "CELERY_IO_QUEUES   d")
    root = make_repo(tmp_path, **{str(check_config.SETTINGS): source})
    problems = problems_of(root)
    assert ("config/celery_settings.py: reads CELERY_IO_QUEUE but its docstring table does not "
            "list it") in problems
    assert ("config/celery_settings.py: docstring table lists CELERY_IO_QUEUES but the code "
            "never reads it") in problems


# ---- the repository as a whole ------------------------------------------------------------------

def test_a_consistent_repository_passes(tmp_path, capsys):
    root = make_repo(tmp_path, prod=True)
    assert problems_of(root) == []
    assert check_config.main(["--root", str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "check-config: OK (4 variables, 5 files)"


def test_prod_files_are_optional_until_the_prod_template_exists(tmp_path, capsys):
    root = make_repo(tmp_path)
    assert problems_of(root) == []
    assert check_config.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("check-config: not present, not checked: envs/prod.env, "
                      "docker-compose.example.yml")
    assert out[-1] == "check-config: OK (4 variables, 3 files)"


def test_prod_template_without_prod_env_fails(tmp_path):
    root = make_repo(tmp_path, **{"docker-compose.example.yml": COMPOSE})
    assert problems_of(root) == [
        "envs/prod.env: missing (required: docker-compose.example.yml exists)"]


@pytest.mark.parametrize("env_file", ["envs/dev.env", "envs/prod.env"])
def test_a_variable_missing_from_an_env_file(tmp_path, capsys, env_file):
    text = ENV.replace("CELERY_IO_QUEUE=\n", "# CELERY_IO_QUEUE=trinity.io\n")
    root = make_repo(tmp_path, prod=True, **{env_file: text})
    assert problems_of(root) == [
        f"{env_file}: missing CELERY_IO_QUEUE (named by config/celery_settings.py)"]
    assert check_config.main(["--root", str(root)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "check-config: 1 problem"


@pytest.mark.parametrize("compose", ["docker-compose-dev.example.yml", "docker-compose.example.yml"])
def test_a_variable_missing_from_the_anchor(tmp_path, compose):
    text = COMPOSE.replace("  CELERY_VISIBILITY_TIMEOUT: ${CELERY_VISIBILITY_TIMEOUT:-}\n", "")
    root = make_repo(tmp_path, prod=True, **{compose: text})
    assert problems_of(root) == [f"{compose}: x-celery-env: missing CELERY_VISIBILITY_TIMEOUT "
                                 "(named by config/celery_settings.py)"]


def test_an_unknown_celery_key_in_the_anchor(tmp_path):
    text = COMPOSE.replace("x-celery-env: &celery-env\n",
                           "x-celery-env: &celery-env\n  CELERY_IO_QUEUES: ${CELERY_IO_QUEUES:-}\n")
    assert problems_of(make_repo(tmp_path, **{"docker-compose-dev.example.yml": text})) == [
        "docker-compose-dev.example.yml: x-celery-env: CELERY_IO_QUEUES is not read by "
        "config/celery_settings.py"]


def test_an_anchor_value_that_ignores_its_own_variable(tmp_path):
    text = COMPOSE.replace("CELERY_BROKER_URL: ${CELERY_BROKER_URL:-}", "CELERY_BROKER_URL: ${REDIS_URL}")
    problems = problems_of(make_repo(tmp_path, **{"docker-compose-dev.example.yml": text}))
    assert len(problems) == 1
    assert problems[0].startswith("docker-compose-dev.example.yml: x-celery-env: CELERY_BROKER_URL:")
    assert "does not read ${CELERY_BROKER_URL}" in problems[0]


def test_no_anchor_at_all(tmp_path):
    text = COMPOSE.replace("x-celery-env: &celery-env", "x-other-env: &celery-env")
    assert problems_of(make_repo(tmp_path, **{"docker-compose-dev.example.yml": text})) == [
        "docker-compose-dev.example.yml: no x-celery-env mapping (the shared Celery environment)"]


def test_a_django_service_not_merging_the_anchor(tmp_path):
    text = COMPOSE.replace("    command: start-celery\n",
                           "    command: start-celery\n    environment:\n      DJANGO_DEBUG: 'x'\n")
    assert problems_of(make_repo(tmp_path, **{"docker-compose-dev.example.yml": text})) == [
        "docker-compose-dev.example.yml: service celery: environment lacks CELERY_BROKER_URL, "
        "CELERY_IO_QUEUE, CELERY_VISIBILITY_TIMEOUT, REDIS_URL of x-celery-env (merge the anchor: "
        "<<: *celery-env)"]


def test_a_fastapi_service_with_a_partial_list_environment(tmp_path):
    text = COMPOSE.replace("    environment: *celery-env\n",
                           "    environment:\n      - REDIS_URL=${REDIS_URL}\n"
                           "      - CELERY_BROKER_URL\n      - CELERY_IO_QUEUE=x\n")
    assert problems_of(make_repo(tmp_path, **{"docker-compose-dev.example.yml": text})) == [
        "docker-compose-dev.example.yml: service fastapi: environment lacks "
        "CELERY_VISIBILITY_TIMEOUT of x-celery-env (merge the anchor: <<: *celery-env)"]


def test_prod_worker_services_by_image_and_compose_tags(tmp_path):
    text = COMPOSE + """\
  celery-cpu:
    image: registry.example.com/trinity/django:1.2.3
    environment:
      CELERY_WORKER_QUEUES: trinity.tasks.cpu
    ports: !override []
"""
    problems = problems_of(make_repo(tmp_path, prod=True, **{"docker-compose.example.yml": text}))
    assert len(problems) == 1
    assert problems[0].startswith("docker-compose.example.yml: service celery-cpu: environment "
                                  "lacks CELERY_BROKER_URL")


def test_services_that_do_not_run_the_apps_are_left_alone():
    assert not check_config.is_app_service({"image": "trinity/redis:dev"})
    assert not check_config.is_app_service({"image": "mongo:7"})
    assert check_config.is_app_service({"build": {"target": "django"}})
    assert check_config.is_app_service({"image": "trinity/fastapi:${TRINITY_TAG:-dev}"})


def test_env_file_names_ignore_comments_and_accept_export():
    assert check_config.env_file_names("# A=1\nB=\nexport C=2\n  D = 3\nnot a line\n") == {
        "B", "C", "D"}


def test_the_real_repository_passes(capsys):
    assert check_config.main([]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("check-config: OK (") and last.endswith(" files)")


def test_per_worker_rows_are_not_required_in_shared_files(tmp_path):
    source = SETTINGS_SOURCE.replace(
        '"""\nimport os',
        'CELERY_WORKER_QUEUES       per worker: queue kinds or names; empty = all\n"""\nimport os'
    ) + '    queues = _get(environ, "CELERY_WORKER_QUEUES")\n'
    assert check_config.per_service_variables(source) == {"CELERY_WORKER_QUEUES"}
    variables, problems = check_config.settings_variables(source)
    assert problems == [] and variables == set(VARIABLES)
    with_key = COMPOSE.replace("x-celery-env: &celery-env\n",
                               "x-celery-env: &celery-env\n  CELERY_WORKER_QUEUES: ''\n")
    root = make_repo(tmp_path, **{str(check_config.SETTINGS): source,
                                  "docker-compose-dev.example.yml": with_key})
    assert problems_of(root) == []
