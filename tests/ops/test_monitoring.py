"""Alert rules, their PrometheusRule twin, the Grafana dashboard and the metric table agree, and promtool
accepts and unit-tests them."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from components.shared.telemetry import StepTelemetry

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "k8s/monitoring"
STEPS = ("ingest", "label", "train", "evaluate", "promote", "pipeline")
# A metric name as written in PromQL; `dkto_[a-z]+_failed` (a regex matcher) is not one.
METRIC_NAME = re.compile(r"\bdkto_[a-z0-9_]*[a-z0-9]\b")


def run_promtool(promtool_bin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool with arguments."""
    return subprocess.run([promtool_bin, *args], capture_output=True, text=True, timeout=120)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def alert_queries() -> list[tuple[str, str]]:
    """(alert name, PromQL) of every rule in alerts.yaml."""
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def emitted_names(step_telemetry: Callable[[str], StepTelemetry]) -> set[str]:
    """Every series name the steps' metric definitions expose."""
    names = set()
    for step in STEPS:
        exposition = step_telemetry(step).exposition().decode()
        for family in text_string_to_metric_families(exposition):
            names.update(sample.name for sample in family.samples)
    return names


def documented_names() -> set[str]:
    """Metric names in the table of k8s/monitoring/README.md (``<step>`` expanded to every step)."""
    names = set()
    for line in (MONITORING / "README.md").read_text().splitlines():
        if line.startswith("| `dkto_"):
            for name in re.findall(r"`(dkto_[a-z0-9_<>]+)`", line.split("|")[1]):
                names.update(name.replace("<step>", step) for step in STEPS)
    return names


def test_alert_rules_pass_promtool(promtool_bin: str) -> None:
    """The plain rules file is valid."""
    result = run_promtool(promtool_bin, "check", "rules", str(MONITORING / "alerts.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_alerts_fire_exactly_when_their_unit_tests_say(promtool_bin: str) -> None:
    """promtool's unit tests of each alert (stall, stale checkpoint excluded, gate streak, quarantine)."""
    result = run_promtool(promtool_bin, "test", "rules", str(MONITORING / "alerts-test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_can_fail(promtool_bin: str, tmp_path: Path) -> None:
    """With the gate streak threshold raised to 4, the expected gate alerts no longer fire: promtool says so."""
    rules = (MONITORING / "alerts.yaml").read_text()
    assert rules.count(") >= 3") == 1
    (tmp_path / "alerts.yaml").write_text(rules.replace(") >= 3", ") >= 4"))
    (tmp_path / "alerts-test.yaml").write_text((MONITORING / "alerts-test.yaml").read_text())
    result = run_promtool(promtool_bin, "test", "rules", str(tmp_path / "alerts-test.yaml"))
    assert result.returncode != 0 and "DktoGateFailingRepeatedly" in result.stdout + result.stderr


def test_prometheus_rule_holds_the_same_groups() -> None:
    """prometheus-rule.yaml wraps exactly alerts.yaml's groups (copy them over after editing alerts.yaml)."""
    plain = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    wrapped = yaml.safe_load((MONITORING / "prometheus-rule.yaml").read_text())
    assert wrapped["kind"] == "PrometheusRule"
    assert wrapped["spec"]["groups"] == plain["groups"]


def test_dashboard_has_the_panels_operators_need() -> None:
    """Training loss, reward margin, samples/s, GPU memory, checkpoint age, quarantine rate, gate
    decisions, promotions/rollbacks, each with a query."""
    titles = {title for title, _ in dashboard_queries()}
    for wanted in (
        "Training loss",
        "Reward margin and reference point",
        "Samples per second",
        "GPU memory",
        "Checkpoint age",
        "Ingest quarantine rate",
        "Gate decisions",
        "Promotions and rollbacks",
        "Training step",
    ):
        assert wanted in titles
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["templating"]["list"][0]["type"] == "datasource"


def test_dashboard_queries_are_valid_promql(promtool_bin: str, tmp_path: Path) -> None:
    """Each panel query parses: promtool checks them as recording rules."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = run_promtool(promtool_bin, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_metric_definitions_are_found(metric_definitions: tuple[Any, ...]) -> None:
    """The source scan finds each step's metrics, and every definition names its metric literally."""
    definitions = metric_definitions
    assert {d.step for d in definitions} >= set(STEPS)
    unresolved = [d.where for d in definitions if d.kind == "unresolved"]
    assert not unresolved, f"metric names that are not string literals cannot be checked: {unresolved}"


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_queries_use_only_emitted_and_documented_metrics(
    source: str, step_telemetry: Callable[[str], StepTelemetry]
) -> None:
    """A query naming a metric no step emits would show nothing forever: every name is emitted and documented."""
    queries = dashboard_queries() if source == "dashboard" else alert_queries()
    emitted = emitted_names(step_telemetry)
    documented = documented_names()
    used = {(where, name) for where, expr in queries for name in METRIC_NAME.findall(expr)}
    assert used
    for where, name in used:
        assert name in emitted, f"{source} {where!r} reads {name}, which no step emits"
        assert name.removesuffix("_total") in {n.removesuffix("_total") for n in documented}, (
            f"{source} {where!r} reads {name}, missing from k8s/monitoring/README.md"
        )


def test_every_emitted_metric_is_documented(step_telemetry: Callable[[str], StepTelemetry]) -> None:
    """The README table lists every metric the steps' code defines."""
    documented = documented_names()
    for step in STEPS:
        for family in text_string_to_metric_families(step_telemetry(step).exposition().decode()):
            name = family.name + ("_total" if family.type == "counter" else "")
            assert name in documented, f"{name} ({step}) is not in the k8s/monitoring/README.md table"
