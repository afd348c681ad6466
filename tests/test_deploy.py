"""The operating files: systemd units (and `systemd-analyze verify` where it exists),
Supervisor and Redis configs, and the Prometheus rules and Grafana dashboard naming only
metrics that btsguru.metrics defines."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from btsguru import metrics
from btsguru.server import DRAIN_S, STOP_DEADLINE_S

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
UNITS = ["btsguru.service", "btsguru@.service", "btsguru-poller.service",
         "btsguru-refresh.service", "btsguru-refresh.timer"]
HARDENING = ("NoNewPrivileges=true", "ProtectSystem=strict", "PrivateTmp=true",
             "ProtectHome=true", "ReadWritePaths=/var/lib/btsguru")
METRIC_RE = re.compile(r"\bbtsguru_[a-z0-9_]+")


def unit(name: str) -> str:
    return (SYSTEMD / name).read_text()


@pytest.mark.parametrize("name", [u for u in UNITS if u.endswith(".service")])
def test_services_are_hardened_and_stop_after_the_drain(name):
    text = unit(name)
    assert "User=btsguru" in text and "EnvironmentFile=/etc/btsguru/btsguru.env" in text
    for line in HARDENING:
        assert line in text, (name, line)
    if name != "btsguru-refresh.service":
        assert "Restart=on-failure" in text
        stop_s = int(re.search(r"TimeoutStopSec=(\d+)", text).group(1))
        assert stop_s > STOP_DEADLINE_S > DRAIN_S
        assert "ExecStartPre=/opt/btsguru/venv/bin/btsguru migrate" in text
    if name in ("btsguru.service", "btsguru@.service"):
        assert "LimitNOFILE=262144" in text
    assert "serve --port %i" in unit("btsguru@.service")
    assert "ExecStart=/opt/btsguru/venv/bin/btsguru poll" in unit("btsguru-poller.service")


def test_the_timer_runs_the_static_refresh_daily():
    assert "refresh --scope static" in unit("btsguru-refresh.service")
    timer = unit("btsguru-refresh.timer")
    assert re.search(r"OnCalendar=\*-\*-\* \d\d:\d\d:\d\d", timer) and "Persistent=true" in timer


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_passes(tmp_path):
    btsguru = Path(sys.executable).parent / "btsguru"
    for name in UNITS:
        # the units' paths point at the install location; verify needs a real executable
        (tmp_path / name).write_text(unit(name).replace("/opt/btsguru/venv/bin/btsguru",
                                                        str(btsguru)))
    (tmp_path / "btsguru@8081.service").write_text((tmp_path / "btsguru@.service").read_text())
    names = [n for n in UNITS if n != "btsguru@.service"] + ["btsguru@8081.service"]
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *names],
                          check=False, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if "btsguru" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def test_supervisor_config_parses_and_drains():
    parser = configparser.RawConfigParser()
    parser.read(ROOT / "deploy" / "supervisor" / "btsguru.conf")
    server = parser["program:btsguru"]
    assert "btsguru serve --port %(process_num)d" in server["command"]
    assert int(server["stopwaitsecs"]) > STOP_DEADLINE_S
    assert server["stopsignal"] == "TERM" and server["user"] == "btsguru"
    assert "btsguru poll" in parser["program:btsguru-poller"]["command"]


def test_redis_config_persists_and_bounds_memory():
    settings: dict[str, list[str]] = {}
    for line in (ROOT / "deploy" / "redis.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            settings.setdefault(key, []).append(value)
    assert settings["appendonly"] == ["yes"] and settings["appendfsync"] == ["everysec"]
    assert len(settings["save"]) >= 1 and settings["dbfilename"] == ["dump.rdb"]
    assert settings["maxmemory-policy"] == ["volatile-lru"] and settings["maxmemory"]


def test_prometheus_rules_name_only_real_metrics():
    known = metrics.metric_names()
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert len(rules) >= 10
    for rule in rules:
        assert {"alert", "expr", "labels"} <= set(rule)
        assert rule["labels"]["severity"] in ("warning", "critical")
        used = set(METRIC_RE.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= known, (rule["alert"], used - known)
    names = {rule["alert"] for rule in rules}
    for needed in ("BtsguruQuotaDay80", "BtsguruQuotaDay95", "BtsguruDataStale",
                   "BtsguruPollerFailing", "BtsguruCircuitOpen", "BtsguruDisconnectSpike",
                   "BtsguruDependencyDown", "BtsguruUpstreamRateLimited",
                   "BtsguruAuthFailureBurst", "BtsguruCacheBusting"):
        assert needed in names


def test_the_grafana_dashboard_names_only_real_metrics():
    known = metrics.metric_names()
    dash = json.loads((ROOT / "deploy" / "grafana" / "btsguru.json").read_text())
    exprs = [t["expr"] for panel in dash["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in METRIC_RE.findall(expr)}
    assert used <= known, used - known
    # every family the issue lists is on the dashboard
    for family in ("btsguru_upstream_requests_total", "btsguru_quota_remaining_requests",
                   "btsguru_cache_requests_total", "btsguru_poll_runs_total",
                   "btsguru_poll_task_lag_seconds", "btsguru_send_queue_frames",
                   "btsguru_data_age_seconds", "btsguru_live_games",
                   "btsguru_stream_connections", "btsguru_stream_disconnects_total",
                   "btsguru_stream_bytes_sent_total", "btsguru_fanout_duration_seconds_bucket",
                   "btsguru_http_requests_total", "btsguru_rate_limit_rejections_total"):
        assert family in used, family
