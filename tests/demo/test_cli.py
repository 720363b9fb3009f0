"""`dkto demo` wiring: the command is registered, its config is a valid pipeline file, the summary reads well."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipelines.demo.cli import DEMO_CONFIG, format_summary, wilson_interval, write_eval_prompts
from pipelines.demo.world import held_out_scenes


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2


def test_demo_yaml_is_a_valid_pipeline_parameter_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.params import PipelineParams

    prompts = write_eval_prompts(tmp_path / "p.txt")
    assert prompts.read_text().split("\n")[:-1] == [s.prompt for s in held_out_scenes()]
    params = PipelineParams.from_yaml(
        str(DEMO_CONFIG),
        [f"feedback_sources=[{tmp_path}/f.jsonl]", f"base_model={tmp_path}", f"eval_prompts={prompts}"],
    )
    assert params.objective == "kto" and params.scorers == ["colour_match"]
    assert params.gate_primary_metric == "colour_match"
    assert params.eval_options["guidance_scale"] == 1.0
    assert params.gate_min_prompts <= len(held_out_scenes())


def test_dkto_demo_is_registered() -> None:
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0, result.output
    assert "--n-feedback" in result.output


def test_summary_names_counts_gate_like_rates_and_report() -> None:
    result = {
        "workdir": "/w",
        "feedback": {"n_events": 10, "n_likes": 6, "n_dislikes": 4, "n_flipped": 0},
        "summary": {"registered_version": "1", "promoted": True, "production_after": "1", "steps": {}},
        "decision": {
            "passed": True,
            "n_prompts": 12,
            "reasons": ["colour_match win rate CI low 0.6 > 0.5"],
            "metrics": {"colour_match": {"win_rate": 0.9, "win_rate_ci_low": 0.6, "win_rate_ci_high": 0.98}},
        },
        "like_rates": {"baseline": (0.5, 192, 0.43, 0.57), "candidate": (0.8, 192, 0.74, 0.85)},
        "report": "/w/report.html",
        "seconds_total": 300.0,
        "seconds_feedback": 20.0,
        "seconds_pipeline": 280.0,
    }
    text = format_summary(result)
    assert "6 likes, 4 dislikes" in text
    assert "PASSED on 12 held-out prompts" in text
    assert "50.0% of 192 images (95% CI 43.0%-57.0%)" in text and "80.0%" in text
    assert "/w/report.html" in text and "took 300s" in text
