"""`dkto metrics cleanup` deletes every step's group of one run from a real Pushgateway."""

from __future__ import annotations

from typer.testing import CliRunner

from components.shared.telemetry import StepTelemetry, list_groups
from pipelines.cli import app


def test_cleanup_deletes_only_that_runs_groups(pushgateway: str) -> None:
    for run_id in ("run-a", "run-b"):
        for step in ("ingest", "label"):
            tel = StepTelemetry(step, run_id=run_id, pushgateway=pushgateway)
            tel.counter("events_read_total", "events read").inc(3)
            assert tel.push()

    result = CliRunner().invoke(
        app, ["metrics", "cleanup", "--run-id", "run-a", "--pushgateway", pushgateway]
    )
    assert result.exit_code == 0, result.output
    assert "2 group(s) of run run-a deleted" in result.output
    left = {(g.get("run_id"), g.get("step")) for g in list_groups(pushgateway)}
    assert ("run-b", "ingest") in left and ("run-b", "label") in left
    assert not any(run == "run-a" for run, _ in left)


def test_cleanup_needs_a_gateway(monkeypatch) -> None:
    monkeypatch.delenv("DKTO_PUSHGATEWAY", raising=False)
    result = CliRunner().invoke(app, ["metrics", "cleanup", "--run-id", "x"])
    assert result.exit_code != 0
    assert "Pushgateway" in result.output
