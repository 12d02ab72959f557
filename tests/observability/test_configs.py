"""The observability configs as shipped: rules and their unit tests, Alertmanager routes, scrape config, dashboard."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.render import RULES_FILE, render_alertmanager, render_prometheus
from spiral_common.config import REPO_ROOT, load_settings

OBSERVABILITY = REPO_ROOT / "observability"
pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with `make test`'s apt step")


def _run(*command: str, cwd: Path = REPO_ROOT) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_are_valid_and_every_alert_has_severity_summary_and_runbook():
    _run("promtool", "check", "rules", str(RULES_FILE))
    alerts = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"] if "alert" in r]
    for alert in alerts:
        assert alert["labels"]["severity"] in ("critical", "page"), alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        runbook = REPO_ROOT / alert["annotations"]["runbook_url"]
        assert runbook.is_file(), f"{alert['alert']}: no runbook at {runbook}"


def test_every_alert_has_unit_tests_firing_and_not_firing():
    _run("promtool", "test", "rules", "spiral.rules.test.yml", cwd=OBSERVABILITY / "rules")
    tests = yaml.safe_load((OBSERVABILITY / "rules" / "spiral.rules.test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    alerts = [r["alert"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"] if "alert" in r]
    for alert in alerts:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in mine), f"{alert} is never tested firing"
        assert any(not c["exp_alerts"] for c in mine), f"{alert} is never tested not firing"


@pytest.mark.parametrize(
    "secrets", [{}, {"SLACK_WEBHOOK_URL": "https://hooks.example/x", "PAGERDUTY_ROUTING_KEY": "k"}]
)
def test_alertmanager_config_passes_amtool_and_keeps_secrets_out_of_it(tmp_path, secrets):
    settings = load_settings({"SPIRAL_RUN_DIR": str(tmp_path)})
    config = tmp_path / "alertmanager.yml"
    config.write_text(render_alertmanager(settings, secrets))
    _run("amtool", "check-config", str(config))
    text = config.read_text()
    assert "hooks.example" not in text and "routing_key: " not in text
    routes = {r["matchers"][0]: r["receiver"] for r in yaml.safe_load(text)["route"]["routes"]}
    assert routes == {'severity="page"': "pagerduty", 'severity="critical"': "slack"}
    if secrets:
        assert (tmp_path / "secrets" / "slack_api_url").stat().st_mode & 0o777 == 0o600


def test_prometheus_config_scrapes_every_service(tmp_path):
    settings = load_settings({"SPIRAL_RUN_DIR": str(tmp_path)})
    config = tmp_path / "prometheus.yml"
    config.write_text(render_prometheus(settings))
    _run("promtool", "check", "config", str(config))
    jobs = {j["job_name"] for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert jobs == {
        f"spiral-{n}"
        for n in ("gateway", "router-main", "router-canary", "head", "trainer", "miner", "envoy", "pushgateway")
    }


def test_every_dashboard_query_parses(tmp_path):
    """promtool parses each panel's expression (as a recording rule), so a typo cannot ship."""
    dashboard = json.loads((OBSERVABILITY / "grafana" / "dashboards" / "spiral.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 12
    rules = {
        "groups": [{"name": "dashboard", "rules": [{"record": f"panel:q{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    _run("promtool", "check", "rules", str(path))
