"""The whole pipeline on this machine (kfp.local, SubprocessRunner): promote, reject, fail.

Each run executes every task as a subprocess on the tiny model (2 training steps, 3 prompts, 1 image
per prompt), against a SQLite registry, so the runs are slow-marked but small.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.promote.registry import open_registry
from pipelines.commands import localize, run_local
from pipelines.params import load_params

pytestmark = pytest.mark.slow

# Gate policies the tiny random model passes or fails for sure: the colour judge scores both models'
# noise images alike, so every prompt is a tie (win rate 1/2, Wilson lower bound > 0 over 3 prompts).
GATE_PASSES = ["gate_min_win_rate_ci_low=0.0", "gate_min_prompts=1"]
GATE_FAILS = ["gate_min_win_rate_ci_low=0.0", "gate_min_prompts=1000"]


def test_gate_pass_promotes_then_gate_fail_leaves_production(local_run_args: list[str]) -> None:
    params = load_params(None, [*local_run_args, *GATE_PASSES])
    summary = run_local(params)
    assert summary["state"] == "SUCCEEDED", summary
    assert summary["steps_recorded"] == ["evaluate", "ingest", "label", "promote", "register", "train"]
    assert summary["gate_passed"] is True
    assert summary["promoted"] is True, "the gate passed, so promotion must have run (kfp.local If trap)"
    first = summary["registered_version"]
    registry = open_registry(localize(params).registry_uri)
    production = registry.get_alias(params.model_name, "production")
    assert production is not None and production.version == first
    assert summary["steps"]["ingest"]["accepted"] == 6
    assert summary["steps"]["train"]["steps"] == 2.0

    params = load_params(None, [*local_run_args, *GATE_FAILS])
    summary = run_local(params)
    assert summary["state"] == "SUCCEEDED", summary
    assert summary["gate_passed"] is False
    assert "promote" not in summary["steps_recorded"]
    second = summary["registered_version"]
    assert second != first, "every candidate is registered, rejected ones too"
    registry = open_registry(localize(params).registry_uri)
    production = registry.get_alias(params.model_name, "production")
    assert production is not None and production.version == first, "a rejected candidate moved production"
    versions = {v.version: v for v in registry.list_versions(params.model_name)}
    assert versions[second].tags.get("gate") == "rejected"


def test_failing_step_triggers_exit_handler(local_run_args: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-feedback" / "*.jsonl"
    params = load_params(None, [*local_run_args, f"feedback_sources=[{missing}]"])
    with pytest.raises(RuntimeError, match="ingest-feedback"):
        run_local(params)
    summaries = list(Path(localize(params).outputs_root).glob("runs/*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["state"] == "FAILED"
    assert summary["succeeded"] is False
    assert summary["steps_recorded"] == []
    assert summary["promoted"] is False
