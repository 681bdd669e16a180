"""etc/prometheus/presence-alerts.yml and etc/grafana/presence.json: promtool checks the
rules, runs their unit tests and parses every dashboard query; and every metric either
names is one the daemon exports (read from its own registry, built in memory)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet.task import Clock

from presence.app import build
from presence.cluster.options import ClusterConfig, RedisURL
from presence.config import Config
from tests.support.daemon import ROOT

pytestmark = pytest.mark.e2e

RULES = ROOT / "etc" / "prometheus" / "presence-alerts.yml"
RULE_TESTS = ROOT / "etc" / "prometheus" / "presence-alerts.test.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "presence.json"
# Series Prometheus itself makes for every target, not the daemon.
PROMETHEUS_OWN = {"up"}

PROMTOOL = shutil.which("promtool")
if PROMTOOL is None and os.environ.get("CI") == "true":
    raise RuntimeError("promtool is missing: .ci/run installs Debian's prometheus package")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    value = json.loads(DASHBOARD.read_text())
    assert isinstance(value, dict)
    return value


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return [p for p in out if p["type"] != "row"]


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in panels(board) for t in p["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"])
            assert found, variable
            queries.append(found.group(1))
    return queries


def as_promql(query: str) -> str:
    """A dashboard query as Prometheus sees it once Grafana filled in its variables."""
    return query.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def metric_names(query: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are neither a
    function or aggregation (followed by "("), nor a label, nor a keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?\b", "", text)  # numbers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for found in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = found.group(0)
        after = text[found.end() :].lstrip()
        if name.lower() in KEYWORDS or after.startswith("("):
            continue
        if text[: found.start()].rstrip().endswith(("$", "{{")):
            continue
        names.add(name)
    return names


def exported() -> set[str]:
    """Every sample name the daemon's /metrics can show, cluster families included."""
    cluster = ClusterConfig(RedisURL.parse("redis://127.0.0.1:1/0"), "n")
    daemon = build(Config(ports=(), cluster=cluster), Clock())
    return {
        sample.name for family in daemon.metrics.registry.collect() for sample in family.samples
    }


def test_metric_names_are_found_in_promql() -> None:
    query = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{job=~"x"}[5m]))) '
        "/ clamp_min(b_total, 1) > 0.5 and on (job) c unless d offset 5m"
    )
    assert metric_names(query) == {"a_bucket", "b_total", "c", "d"}


def test_every_metric_the_dashboard_and_rules_name_is_exported() -> None:
    named = {name for q in dashboard_queries(dashboard()) for name in metric_names(q)}
    named |= {name for rule in rules() for name in metric_names(rule["expr"])}
    assert len(named) > 15
    unknown = sorted(named - exported() - PROMETHEUS_OWN)
    assert unknown == [], f"not exported by the daemon: {unknown}"


def test_the_dashboard_shows_what_operators_need() -> None:
    named = {name for q in dashboard_queries(dashboard()) for name in metric_names(q)}
    for name in (
        "ws_connections_current",
        "presence_users_online",
        "ws_messages_total",
        "ws_errors_total",
        "ws_latency_seconds_bucket",
        "presence_diffs_sent_total",
        "presence_redis_up",
        "presence_nodes_current",
        "presence_webhook_pending",
    ):
        assert name in named, name
    queries = " ".join(dashboard_queries(dashboard()))
    assert "histogram_quantile(0.5," in queries and "histogram_quantile(0.99," in queries


def test_the_dashboard_imports_as_it_is() -> None:
    """What Grafana's import needs: a schema version, a uid, and no data source of
    someone else's: every query goes to the ${datasource} variable (a Prometheus)."""
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] and board["title"] and board["id"] is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in board["panels"]] + [p["id"] for p in panels(board)]
    assert len(set(ids)) == len(set(map(id, board["panels"] + panels(board))))
    for panel in panels(board):
        assert panel["datasource"] == source, panel["title"]
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == source


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_runs_the_rule_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired, quiet = set(), set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules()}
    assert fired == alerts
    assert quiet


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    queries = dashboard_queries(dashboard())
    as_rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_promql(q)}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(as_rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


@needs_promtool
def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The checks above can fail."""
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("up{job=", "up{{job=", 1))
    assert promtool("check", "rules", str(broken)).returncode != 0
