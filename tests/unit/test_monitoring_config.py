"""The monitoring files agree with the code they watch, without containers: the keys the Redis
exporter reads are the queues, RedBeat's lock and the backup record the code writes; the monitor
Redis user may read exactly those; every alert has a promtool test that makes it fire.
(The promtool tests themselves run in the image: tests/test_monitoring.py.)"""
from __future__ import annotations

import fnmatch
import re

import yaml

import backup
import check_config
from stack import ROOT

MONITORING = ROOT / "images/monitoring"
DJANGO = ROOT / "services/TrinityBackendDjango"


def expected_keys() -> set[str]:
    default = check_config.load_variables().BY_NAME["CELERY_TASK_DEFAULT_QUEUE"].default
    settings = (DJANGO / "config/celery_settings.py").read_text()
    redbeat = re.search(r'^REDBEAT_KEY_PREFIX = "([^"]+)"', settings, re.M).group(1)
    # The queues' default names (config/celery_settings.py: queue_names).
    assert re.search(r'f"\{default\}\.cpu"', settings) and re.search(r'f"\{default\}\.io"', settings)
    return {default, f"{default}.cpu", f"{default}.io", f"{default}.beat",
            f"{redbeat}:lock", backup.LAST_SUCCESS_KEY}


def exporter_keys() -> set[str]:
    """The keys redis-keys.lua reads (every string literal that is a key of ours)."""
    script = (MONITORING / "redis-keys.lua").read_text()
    return set(re.findall(r'"(trinity\.[^"]+)"', script))


def test_the_redis_exporter_reads_the_queues_the_lock_and_the_backup_record():
    assert "--script=/etc/trinity-monitoring/redis-keys.lua" in (
        MONITORING / "start-redis-exporter").read_text()
    assert exporter_keys() == expected_keys()


def test_the_monitor_redis_user_may_read_those_keys_and_no_other_kind():
    entrypoint = (ROOT / "images/redis/docker-entrypoint.sh").read_text()
    rules = re.search(r"user monitor REDIS_MONITOR_PASSWORD '([^']+)'", entrypoint).group(1)
    patterns = re.findall(r"%R~(\S+)", rules)
    assert "resetkeys" in rules and "-@all" in rules and not re.search(r"(?<![%R])~", rules)
    for key in expected_keys():
        assert any(fnmatch.fnmatchcase(key, p) for p in patterns), key
    for other in ("trinity.gateway.owner:abc", "celery-task-meta-1", "unacked", "_kombu.binding.x"):
        assert not any(fnmatch.fnmatchcase(other, p) for p in patterns), other
    allowed = set(re.findall(r"\+(\S+)", rules))
    # EVAL runs redis-keys.lua; Redis checks each of its commands against these same rules.
    assert allowed == {"ping", "hello", "select", "client|setname", "info", "latency|latest",
                       "eval", "llen", "exists", "get"}, allowed


def test_every_alert_has_a_promtool_test_where_it_fires():
    rules = yaml.safe_load((MONITORING / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    fired = {case["alertname"] for name in ("rules.test.yml", "rules.slow.test.yml")
             for t in yaml.safe_load((MONITORING / name).read_text())["tests"]
             for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts and alerts == fired, (alerts - fired, fired - alerts)


def test_prometheus_scrapes_flower_redis_postgres_and_both_apps():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text()
                            .replace("@SCRAPE_INTERVAL@", "15s"))
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs == {"prometheus": ["localhost:9090"], "flower": ["flower:5555"],
                    "redis": ["redis-exporter:9121"], "postgres": ["postgres-exporter:9187"],
                    "web": ["web:9100"], "fastapi": ["fastapi:9100"]}
    assert config["rule_files"] == ["/etc/trinity-monitoring/rules.yml"]


def test_the_on_call_page_shows_every_queue_the_exporter_reads():
    page = (MONITORING / "consoles/trinity.html").read_text()
    shown = dict(re.findall(r'template "queue" \(args "(\w+)" "([^"]+)"\)', page))
    script = (MONITORING / "redis-keys.lua").read_text()
    read = dict(re.findall(r'(\w+) = "(trinity\.tasks[^"]*)"', script))
    assert shown == {kind: name for kind, name in read.items() if kind != "beat"}, (shown, read)
