"""Review of the gate's fail-closed promise: inputs that must never let a candidate through."""

from __future__ import annotations

import math

import pytest

from components.evaluate.gate import Comparison, GatePolicy, MetricComparison, decide
from components.evaluate.step import EvaluateConfig, run
from components.promote.step import load_decision
from components.shared import storage


def _clear_win(name: str) -> MetricComparison:
    return MetricComparison(
        candidate_mean=21.0,
        baseline_mean=20.0,
        mean_diff=1.0,
        diff_ci_low=0.5,
        diff_ci_high=1.5,
        win_rate=0.8,
        win_rate_ci_low=0.65,
        win_rate_ci_high=0.9,
        n_prompts=50,
    )


@pytest.mark.parametrize(
    "policy",
    [
        {"max_regression": {"aesthetic": math.nan}},
        {"floors": {"aesthetic": math.nan}},
        {"max_regression": {"pickscore": math.nan}},
    ],
)
def test_nan_threshold_fails_closed(policy: dict) -> None:
    """A NaN limit or floor makes its comparison always False, which silently skipped the check."""
    comparison = Comparison(
        n_prompts=50, metrics={"pickscore": _clear_win("pickscore"), "aesthetic": _clear_win("aesthetic")}
    )
    verdict = decide(GatePolicy.model_validate({"min_prompts": 20, **policy}), comparison)
    assert verdict.passed is False
    assert any("NaN" in r for r in verdict.reasons), verdict.reasons


def test_crashed_evaluation_does_not_leave_an_old_passing_decision(tmp_path) -> None:
    """An evaluation that stops early must not leave an earlier run's passing decision.json in place,
    where promotion would read it as this candidate's verdict."""
    out = tmp_path / "eval"
    storage.write_json(
        str(out / "decision.json"), {"passed": True, "reasons": ["old run"], "baseline_version": None}
    )
    config = EvaluateConfig(
        candidate_model=str(tmp_path / "new-candidate"),
        baseline_model=str(tmp_path / "base"),
        prompts=str(tmp_path / "missing-prompts.txt"),
        scorers=["pickscore"],
        output_dir=str(out),
    )
    with pytest.raises(Exception):  # noqa: B017 - any failure; what matters is what it leaves behind
        run(config)
    decision = load_decision(str(out))
    assert decision["passed"] is False
    assert decision["candidate_model"] == config.candidate_model


def test_placeholder_decision_has_every_contract_key(tmp_path) -> None:
    """The failing decision an interrupted run leaves behind is a complete decision.json."""
    config = EvaluateConfig(
        candidate_model=str(tmp_path / "new-candidate"),
        baseline_model=str(tmp_path / "base"),
        prompts=str(tmp_path / "missing-prompts.txt"),
        scorers=["clip_score"],
        gate=GatePolicy(primary_metric="clip_score"),
        output_dir=str(tmp_path / "eval"),
    )
    with pytest.raises(Exception):  # noqa: B017 - the prompts are missing; what it leaves behind matters
        run(config)
    decision = load_decision(str(tmp_path / "eval"))
    assert set(decision) >= {
        "passed",
        "reasons",
        "primary_metric",
        "n_prompts",
        "candidate_model",
        "baseline_model",
        "baseline_version",
        "metrics",
        "created_at",
    }
    assert decision["primary_metric"] == "clip_score" and decision["n_prompts"] == 0
    assert decision["metrics"] == {} and decision["passed"] is False
