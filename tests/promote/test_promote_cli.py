"""``dkto register/promote/rollback/models`` on an embedded registry: each prints what it changed."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from components.promote.cli import register


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_promote_rollback_and_models_commands(
    embedded_registry_uri: str, model_name: str, tmp_path: Path, make_model, make_decision
) -> None:
    app, runner = _app(), CliRunner()
    base = ["--set", f"registry_uri={embedded_registry_uri}", "--set", f"model_name={model_name}"]

    def promote(seed: int, passed: bool, baseline: str | None) -> object:
        decision = make_decision(tmp_path / f"d{seed}.json", passed=passed, baseline_version=baseline)
        model = make_model(tmp_path / f"m{seed}", seed=seed)
        args = ["promote", *base, "--set", f"candidate_model={model}", "--set", f"decision={decision}"]
        return runner.invoke(app, args)

    first = promote(1, True, None)
    assert first.exit_code == 0, first.output
    assert "promoted: production nothing -> 1" in first.output
    second = promote(2, True, "1")
    assert second.exit_code == 0 and "production 1 -> 2" in second.output
    rejected = promote(3, False, "2")
    assert (
        rejected.exit_code == 0
        and "rejected: gate rejected version 3; production stays at 2" in rejected.output
    )
    stale = promote(4, True, "1")  # evaluated against version 1, but production is 2 now
    assert stale.exit_code == 3 and "conflict" in stale.output

    back = runner.invoke(
        app,
        ["rollback", "--model", model_name, "--registry", embedded_registry_uri, "--reason", "regression"],
    )
    assert back.exit_code == 0, back.output
    assert "production 2 -> 1 (rollback)" in back.output

    table = runner.invoke(app, ["models", model_name, "--registry", embedded_registry_uri])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:4] == ["version", "aliases", "gate", "metric"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"1", "2", "3", "4"}
    assert "production" in rows["1"] and "restored from v2" in rows["1"]
    # Version 1 replaced nothing, so after rolling back to it there is no previous-production.
    assert "previous-production" not in table.output
    assert "replaced by v1 (rollback)" in rows["2"] and "rolled back: regression" in rows["2"]
    assert "rejected" in rows["3"] and "no gain" in rows["3"]
    assert "candidate" in rows["4"] and "promotion conflict" in rows["4"]
    assert "0.64" in rows["1"]  # the gate's win rate

    as_json = json.loads(
        runner.invoke(app, ["models", model_name, "--registry", embedded_registry_uri, "--json"]).output
    )
    assert [v["version"] for v in as_json] == ["1", "2", "3", "4"]

    missing = runner.invoke(
        app, ["rollback", "--model", model_name, "--registry", embedded_registry_uri, "--to", "9"]
    )
    assert missing.exit_code == 1 and "no version '9'" in missing.output
    bad = runner.invoke(app, ["promote", *base, "--set", "decision=x.json"])
    assert bad.exit_code == 2 and "exactly one of candidate_model" in bad.output
