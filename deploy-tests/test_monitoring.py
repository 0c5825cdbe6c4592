"""Self-monitoring: the alert rules pass `promtool check rules` and the unit tests of
alerts_test.yaml, carry a runbook and are documented; the Grafana dashboards are what
helm/dashboards.py builds with grafana-foundation-sdk and decode with its models; every
PromQL expression of rules and dashboards parses and names only metrics that the node and
router binaries export."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from conftest import CHART, ROOT

RULES = CHART / "files" / "alerts.yaml"
RULE_TESTS = Path(__file__).parent / "alerts_test.yaml"
DASHBOARDS = CHART / "dashboards"
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    """The path of promtool."""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool (Debian package prometheus) is needed; scripts/setup --tests installs it")
    return found


def alerts() -> list[dict]:
    """Every alerting rule of the rule file."""
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def exported_metrics() -> set[str]:
    """The metric families the node and router register, read from their sources: every
    string literal naming a sentinel_ or process_ metric (histograms add their series
    suffixes)."""
    names = set()
    for source in [*ROOT.glob("node/src/**/*.rs"), *ROOT.glob("router/src/**/*.rs")]:
        names |= set(re.findall(r'"((?:sentinel|process)_[a-z0-9_]+)"', source.read_text()))
    return names


def series_names(expr: str) -> set[str]:
    """The metric names an expression selects, from its parse tree."""
    names = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def family(series: str, exported: set[str]) -> str:
    """The metric family a series name belongs to."""
    if series in exported:
        return series
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in exported:
            return series.removesuffix(suffix)
    return series


def dashboard_expressions() -> list[tuple[str, str]]:
    """(dashboard file, expression) of every query, Grafana's interval variables replaced
    by what Grafana substitutes, so that Prometheus' parser sees the final query."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "5m").replace("$__interval", "1m")
                found.append((path.name, expr))
    return found


def test_the_rules_pass_promtool_check():
    checked = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_the_rules_pass_their_unit_tests(tmp_path):
    # The unit tests expect labels only: the rules are loaded without their annotations,
    # which the test below checks.
    stripped = yaml.safe_load(RULES.read_text())
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(stripped))
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yaml")
    tested = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested_firing():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in alerts()}


def test_every_alert_has_a_severity_a_summary_a_runbook_and_a_place_in_the_docs():
    operations = (ROOT / "docs" / "operations.md").read_text()
    for rule in alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert len(rule["annotations"]["runbook"]) >= 150, f"{rule['alert']}: the runbook says too little"
        assert f"`{rule['alert']}`" in operations, f"{rule['alert']} is not explained in docs/operations.md"


def test_the_dashboards_are_what_the_builder_makes(tmp_path):
    spec = importlib.util.spec_from_file_location("dashboards", ROOT / "helm" / "dashboards.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.main(tmp_path)
    built = sorted(p.name for p in tmp_path.glob("*.json"))
    assert built == sorted(p.name for p in DASHBOARDS.glob("*.json"))
    for name in built:
        assert (tmp_path / name).read_text() == (DASHBOARDS / name).read_text(), (
            f"helm/sentinel/dashboards/{name} is not what helm/dashboards.py builds: run it"
        )


def test_the_dashboards_decode_with_grafanas_models():
    register_default_plugins()
    uids = set()
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = Dashboard.from_json(json.loads(path.read_text()))
        uids.add(dashboard.uid)
        panels = [p for p in dashboard.panels if getattr(p, "targets", None)]
        assert len(panels) >= 4, path.name
        assert [p.id_val for p in dashboard.panels] == list(range(1, len(dashboard.panels) + 1)), path.name
        for panel in panels:
            assert panel.title and panel.description, path.name
            assert len({t.ref_id for t in panel.targets}) == len(panel.targets), f"{path.name}: {panel.title}"
    assert len(uids) == len(list(DASHBOARDS.glob("*.json"))) >= 4


def test_every_expression_parses_and_names_only_exported_metrics():
    exported = exported_metrics()
    assert {"sentinel_raft_is_leader", "sentinel_router_kafka_consumer_lag", "sentinel_alert_breaker_open"} <= exported
    expressions = [(RULES.name, rule["expr"]) for rule in alerts()] + dashboard_expressions()
    assert len(expressions) > 40
    unknown = []
    for where, expr in expressions:
        for series in series_names(expr):
            if family(series, exported) not in exported | PROMETHEUS_SERIES:
                unknown.append(f"{where}: {series} in {expr}")
    assert unknown == []


def test_the_metric_check_catches_an_unknown_metric_and_a_broken_expression():
    exported = exported_metrics()
    assert family("sentinel_ingest_commit_seconds_bucket", exported) in exported
    assert family("sentinel_no_such_metric_total", exported) not in exported
    assert series_names('sum(rate(sentinel_x_total{job="a"}[5m])) / on () group_left () max(up)') == {
        "sentinel_x_total",
        "up",
    }
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(sentinel_events_received_total[5m])")
