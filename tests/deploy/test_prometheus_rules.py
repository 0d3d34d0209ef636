"""The Prometheus files are valid and the alert rules behave as documented, checked by promtool.

`promtool test rules deploy/prometheus/alerts_test.yml` holds the behaviour (when each alert
fires and when it must not); these tests run it, plus `check config` / `check rules`, and check
that every PromQL expression of the Grafana dashboard parses. promtool comes with the Debian
package `prometheus` (.ci/run installs it); without it these tests are skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "equiprune-dashboard.json"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not on PATH (apt-get install prometheus)")


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"promtool failed:\n{result.stdout}\n{result.stderr}"


def test_scrape_config_is_valid_and_loads_the_rules():
    result = _promtool("check", "config", "deploy/prometheus/prometheus.yml")
    _assert_ok(result)
    assert "1 rule files found" in result.stdout + result.stderr


def test_alert_rules_are_valid():
    _assert_ok(_promtool("check", "rules", "deploy/prometheus/alerts.yml"))


def test_alert_rules_unit_tests_pass():
    result = _promtool("test", "rules", "deploy/prometheus/alerts_test.yml")
    _assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_catch_a_rule_that_fires_too_early(tmp_path):
    """The unit tests can fail: with 14 minutes instead of 15 the excess-gap test must break."""
    rules = (PROMETHEUS / "alerts.yml").read_text()
    assert rules.count("for: 15m") >= 1
    (tmp_path / "alerts.yml").write_text(rules.replace("for: 15m", "for: 14m"))
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "EquipruneGroupExcessGapAboveTolerance" in result.stdout + result.stderr


def test_rule_unit_tests_catch_a_rule_that_ignores_sufficient_data(tmp_path):
    rules = (PROMETHEUS / "alerts.yml").read_text()
    weakened = rules.replace('(equiprune_group_sufficient_data{window="1h"} == 1)',
                             '(equiprune_group_sufficient_data{window="1h"} >= 0)')
    assert weakened != rules
    (tmp_path / "alerts.yml").write_text(weakened)
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path / "alerts_test.yml")
    assert _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path).returncode != 0


# Grafana's own variables, replaced by plausible values so the expressions are plain PromQL.
_GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$model": "digits",
    "$window": "1h",
    "$group": "a",
}


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _substitute(expr: str) -> str:
    for name in sorted(_GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, _GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_every_dashboard_query_is_valid_promql(tmp_path):
    expressions = _dashboard_expressions()
    assert len(expressions) >= 10
    # promtool has no expression checker; recording rules are parsed as PromQL by `check rules`.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": _substitute(e)} for i, e in enumerate(expressions)]}]}
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules, allow_unicode=True))
    result = _promtool("check", "rules", str(path))
    _assert_ok(result)
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout


def test_the_promql_check_rejects_a_broken_query(tmp_path):
    """The check above would catch a typo: promtool refuses an unbalanced expression."""
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "x:y", "expr": "sum(rate(equiprune_model_predictions_total[5m])"}]}]}))
    assert _promtool("check", "rules", str(path)).returncode != 0

