"""The evaluate step end to end on tiny models: artifacts, reproducible decision, failures fail closed."""

from __future__ import annotations

import json
import math
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from components.evaluate.gate import compare, decide, wilson_interval
from components.evaluate.scorers.base import SCORERS, Scorer
from components.evaluate.step import EvaluateConfig, run
from components.shared import storage
from components.shared.config import ConfigError

DECISION_KEYS = {
    "passed",
    "reasons",
    "primary_metric",
    "n_prompts",
    "prompts_total",
    "n_prompts_excluded",
    "excluded_prompts",
    "safety_flagged_images",
    "safety_flagged_prompts",
    "safety_sign_test",
    "candidate_model",
    "baseline_model",
    "baseline_version",
    "metrics",
    "created_at",
}
METRIC_KEYS = {
    "candidate_mean",
    "baseline_mean",
    "mean_diff",
    "diff_ci_low",
    "diff_ci_high",
    "win_rate",
    "win_rate_ci_low",
    "win_rate_ci_high",
}


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\na blue square\na green star\n")
    return str(path)


def _config(tmp_path, candidate, baseline, prompts, clip, **overrides) -> EvaluateConfig:
    data = dict(
        candidate_model=str(candidate),
        baseline_model=str(baseline),
        prompts=prompts,
        images_per_prompt=2,
        num_inference_steps=2,
        output_dir=str(tmp_path / "eval"),
        scorers=["pickscore", "clip_score", "aesthetic"],
        scorer_models={name: str(clip) for name in ("pickscore", "clip_score", "aesthetic")},
        gate={"min_prompts": 3, "max_regression": {"aesthetic": 1.0}},
    )
    data.update(overrides)
    return EvaluateConfig.from_dict(data)


@pytest.mark.slow
def test_run_writes_every_artifact_and_the_decision_is_reproducible(
    tmp_path, tiny_sd, tiny_sd_other, tiny_clip, prompts_file
) -> None:
    config = _config(tmp_path, tiny_sd, tiny_sd_other, prompts_file, tiny_clip, baseline_version="3")
    result = run(config)
    out = tmp_path / "eval"
    decision = json.loads((out / "decision.json").read_text())
    assert set(decision) >= DECISION_KEYS
    assert decision["baseline_version"] == "3" and decision["n_prompts"] == 3
    assert set(decision["metrics"]) == {"pickscore", "clip_score", "aesthetic"}
    for stats in decision["metrics"].values():
        assert set(stats) >= METRIC_KEYS
    assert result.passed == decision["passed"] and result.reasons == decision["reasons"]

    scores = storage.read_parquet(str(out / "scores.parquet")).to_pandas()
    assert len(scores) == 2 * 3 * 2 == result.n_images
    assert {"model", "prompt", "prompt_index", "image_index", "seed", "image_path", "pickscore"} <= set(
        scores
    )
    # Paired: both models used the same seed for each (prompt, image).
    seeds = scores.pivot_table(index=["prompt_index", "image_index"], columns="model", values="seed")
    assert (seeds["candidate"] == seeds["baseline"]).all()
    # The decision follows from scores.parquet alone (same policy, same seeded bootstrap).
    again = decide(config.gate, compare(scores, ["pickscore", "clip_score", "aesthetic"], config.gate))
    assert again.passed == decision["passed"] and again.reasons == decision["reasons"]
    assert again.metrics["pickscore"]["diff_ci_low"] == pytest.approx(
        decision["metrics"]["pickscore"]["diff_ci_low"]
    )

    flat = json.loads((out / "metrics.json").read_text())
    assert flat["gate_passed"] == float(decision["passed"]) and flat["n_prompts"] == 3.0
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["pickscore_win_rate"] == pytest.approx(decision["metrics"]["pickscore"]["win_rate"])
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert len(list((out / "images" / "candidate").glob("*.png"))) == 6


@pytest.mark.slow
def test_identical_models_tie_and_do_not_pass(tmp_path, tiny_sd, tiny_clip, prompts_file) -> None:
    config = _config(
        tmp_path,
        tiny_sd,
        tiny_sd,
        prompts_file,
        tiny_clip,
        scorers=["pickscore"],
        scorer_models={"pickscore": str(tiny_clip)},
        gate={"min_prompts": 1},
    )
    result = run(config)
    scores = pd.read_parquet(result.scores_path)
    cand = scores[scores["model"] == "candidate"]["pickscore"].to_numpy()
    base = scores[scores["model"] == "baseline"]["pickscore"].to_numpy()
    np.testing.assert_array_equal(cand, base)  # same weights + same noise = same images
    assert not result.passed
    assert result.metrics["pickscore_win_rate"] == 0.5


def test_unloadable_baseline_is_a_failed_decision_not_an_exception(
    tmp_path, tiny_sd, tiny_clip, prompts_file
) -> None:
    config = _config(
        tmp_path,
        tiny_sd,
        tmp_path / "no-such-production-model",
        prompts_file,
        tiny_clip,
        images_per_prompt=1,
        num_inference_steps=1,
    )
    result = run(config)
    assert not result.passed
    assert any(
        "baseline (production) model could not be evaluated" in r and "no-such-production-model" in r
        for r in result.reasons
    )
    decision = json.loads((tmp_path / "eval" / "decision.json").read_text())
    assert decision["passed"] is False and decision["metrics"] == {}
    assert "DO NOT SHIP" in (tmp_path / "eval" / "report.html").read_text()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["gate_passed"] == 0.0


def test_scorer_failure_is_a_failed_decision(tmp_path, tiny_sd, tiny_clip, prompts_file) -> None:
    config = _config(
        tmp_path,
        tiny_sd,
        tiny_sd,
        prompts_file,
        tiny_clip,
        images_per_prompt=1,
        num_inference_steps=1,
        scorers=["clip_score", "aesthetic"],
        scorer_models={"clip_score": str(tiny_clip), "aesthetic": str(tmp_path / "missing-aesthetic")},
        gate={"primary_metric": "clip_score", "min_prompts": 1, "min_win_rate_ci_low": 0.0},
    )
    result = run(config)
    assert not result.passed
    assert any(r.startswith("scorer 'aesthetic' failed") and "missing-aesthetic" in r for r in result.reasons)
    decision = json.loads((tmp_path / "eval" / "decision.json").read_text())
    assert "aesthetic" in decision["scorer_errors"] and "clip_score" in decision["metrics"]


def test_config_rejects_a_gate_metric_that_is_not_scored(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not in scorers"):
        EvaluateConfig.from_dict(
            dict(
                candidate_model="c",
                baseline_model="b",
                prompts="p",
                output_dir=str(tmp_path),
                scorers=["clip_score"],
                gate={"primary_metric": "pickscore"},
            )
        )
    with pytest.raises(ConfigError, match="unknown scorer"):
        EvaluateConfig.from_dict(
            dict(
                candidate_model="c",
                baseline_model="b",
                prompts="p",
                output_dir=str(tmp_path),
                scorers=["fid"],
            )
        )


def test_telemetry_gauges_are_pushed(tmp_path, tiny_sd, tiny_clip, prompts_file) -> None:
    """The metric gauges and the gate decision reach a real Pushgateway, when one is installed."""
    import shutil
    import subprocess
    import urllib.request

    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway is not installed (make system-deps)")
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        config = _config(
            tmp_path,
            tiny_sd,
            tiny_sd,
            prompts_file,
            tiny_clip,
            images_per_prompt=1,
            num_inference_steps=1,
            scorers=["clip_score"],
            scorer_models={"clip_score": str(tiny_clip)},
            gate={"primary_metric": "clip_score", "min_prompts": 1},
            pushgateway=f"127.0.0.1:{port}",
            run_id="test-run",
        )
        run(config)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "dkto_evaluate_gate_passed{" in text and 'run_id="test-run"' in text
    assert (
        "dkto_evaluate_metric_mean{" in text and 'metric="clip_score"' in text and 'model="baseline"' in text
    )


def test_dkto_evaluate_command_prints_the_verdict_and_can_fail_the_shell(
    tmp_path, tiny_sd, tiny_clip, prompts_file
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    config = tmp_path / "evaluate.yaml"
    config.write_text(
        f"candidate_model: {tiny_sd}\nbaseline_model: {tmp_path / 'missing'}\nprompts: {prompts_file}\n"
        f"output_dir: {tmp_path / 'out'}\nscorers: [clip_score]\nscorer_models: {{clip_score: {tiny_clip}}}\n"
        "gate: {primary_metric: clip_score}\n"
    )
    args = [
        "evaluate",
        "--config",
        str(config),
        "--set",
        "images_per_prompt=1",
        "--set",
        "num_inference_steps=1",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "gate FAILED on 0 prompts" in result.output and "baseline (production) model" in result.output
    strict = CliRunner().invoke(app, [*args, "--fail-on-reject"])
    assert strict.exit_code == 1
    bad = CliRunner().invoke(app, [*args, "--set", "gate.primary_metric=pickscore"])
    assert bad.exit_code == 2 and "not in scorers" in bad.output


def test_unloadable_candidate_fails_and_skips_the_baseline(
    tmp_path, tiny_sd, tiny_clip, prompts_file
) -> None:
    config = _config(tmp_path, tmp_path / "no-candidate", tiny_sd, prompts_file, tiny_clip)
    result = run(config)
    assert not result.passed and result.n_images == 0
    assert any("candidate model could not be evaluated" in r and "no-candidate" in r for r in result.reasons)
    assert not (tmp_path / "eval" / "images" / "baseline").exists()


@pytest.mark.slow
def test_run_with_models_and_outputs_on_gcs(
    tmp_path, tiny_sd, tiny_clip, prompts_file, gcs_bucket, monkeypatch
) -> None:
    monkeypatch.setenv("DKTO_CACHE_DIR", str(tmp_path / "cache"))
    storage.upload_dir(tiny_sd, f"{gcs_bucket}/models/candidate")
    storage.upload_dir(tiny_clip, f"{gcs_bucket}/scorers/clip")
    out = f"{gcs_bucket}/runs/eval-1"
    config = _config(
        tmp_path,
        f"{gcs_bucket}/models/candidate",
        tiny_sd,
        prompts_file,
        tiny_clip,
        images_per_prompt=1,
        num_inference_steps=1,
        output_dir=out,
        scorers=["clip_score"],
        scorer_models={"clip_score": f"{gcs_bucket}/scorers/clip"},
        gate={"primary_metric": "clip_score", "min_prompts": 1},
    )
    result = run(config)
    decision = storage.read_json(f"{out}/decision.json")
    assert decision["candidate_model"] == f"{gcs_bucket}/models/candidate"
    assert decision["n_prompts"] == 3 and result.decision_path == f"{out}/decision.json"
    # Same weights and noise from GCS and from disk: every prompt ties.
    assert decision["metrics"]["clip_score"]["win_rate"] == 0.5 and not decision["passed"]
    scores = storage.read_parquet(f"{out}/scores.parquet").to_pandas()
    assert scores["image_path"].str.startswith(f"{out}/images/").all()
    assert "DO NOT SHIP" in storage.read_text(f"{out}/report.html")
    assert set(storage.read_json(f"{out}/metrics.json")) >= {"gate_passed", "clip_score_win_rate"}


# ---------------------------------------------------------------- review fixes


def _strict_json(path) -> dict:
    """Parse with a parser that rejects NaN/Infinity, as JavaScript's JSON.parse and Go's encoding/json do."""

    def reject(constant: str) -> None:
        raise ValueError(f"{path}: non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


class NaNOnCircles(Scorer):
    """A rule scorer: NaN for images of prompts that mention a circle, else the image's mean pixel value."""

    name = "nan_on_circles"

    def score_batch(self, images, prompts) -> np.ndarray:
        return np.array(
            [
                math.nan if "circle" in p else float(np.asarray(im).mean())
                for im, p in zip(images, prompts, strict=True)
            ]
        )


class LiveImageCounter(Scorer):
    """A rule scorer (mean pixel value) that records how many decoded PIL images are alive in the process
    while each batch is scored."""

    name = "live_image_counter"
    live_counts: ClassVar[list[int]] = []

    def score_batch(self, images, prompts) -> np.ndarray:
        import gc

        from PIL import Image

        gc.collect()
        LiveImageCounter.live_counts.append(sum(isinstance(o, Image.Image) for o in gc.get_objects()))
        return np.array([float(np.asarray(im).mean()) for im in images])


def test_non_finite_metrics_are_null_in_strict_json(tmp_path, tiny_sd, monkeypatch) -> None:
    monkeypatch.setitem(SCORERS, "nan_on_circles", f"{__name__}:NaNOnCircles")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    config = _config(
        tmp_path,
        tiny_sd,
        tiny_sd,
        str(prompts),
        None,
        images_per_prompt=1,
        num_inference_steps=1,
        scorers=["nan_on_circles"],
        scorer_models={},
        gate={"primary_metric": "nan_on_circles", "min_prompts": 1},
    )
    result = run(config)
    out = tmp_path / "eval"
    decision = _strict_json(out / "decision.json")
    stats = decision["metrics"]["nan_on_circles"]
    assert stats["candidate_mean"] is None and stats["mean_diff"] is None
    assert "nan_on_circles.candidate_mean" in decision["non_finite"]
    assert all(stats[f.split(".", 1)[1]] is None for f in decision["non_finite"])
    assert not result.passed and decision["passed"] is False
    flat = _strict_json(out / "metrics.json")
    assert "nan_on_circles_candidate_mean" not in flat and flat["gate_passed"] == 0.0
    assert "DO NOT SHIP" in (out / "report.html").read_text()


def _copy_with_scheduler(model, path, scheduler_class: str):
    """A copy of a diffusers model directory whose own scheduler is ``scheduler_class``."""
    import shutil

    import diffusers

    shutil.copytree(model, path)
    own = diffusers.DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    getattr(diffusers, scheduler_class).from_config(own.config).save_pretrained(path / "scheduler")
    # The pipeline builds each component from the class model_index.json names.
    index = json.loads((path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", scheduler_class]
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def test_default_scheduler_fails_closed_when_the_models_schedulers_differ(
    tmp_path, tiny_sd, prompts_file
) -> None:
    baseline = _copy_with_scheduler(tiny_sd, tmp_path / "baseline-ddim", "DDIMScheduler")
    own = json.loads((tiny_sd / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    assert own != "DDIMScheduler"
    common = dict(
        images_per_prompt=1,
        num_inference_steps=1,
        scorers=["colour_match"],
        scorer_models={},
        gate={"primary_metric": "colour_match", "min_prompts": 1},
    )
    default = run(_config(tmp_path, tiny_sd, baseline, prompts_file, None, scheduler="default", **common))
    assert not default.passed
    named = [r for r in default.reasons if "scheduler" in r]
    assert named and own in named[0] and "DDIMScheduler" in named[0]
    decision = json.loads((tmp_path / "eval" / "decision.json").read_text())
    assert decision["scheduler"]["requested"] == "default"
    assert decision["scheduler"]["candidate"]["class"] == own
    assert decision["scheduler"]["baseline"]["class"] == "DDIMScheduler"

    # Named explicitly, both models sample with it: no scheduler reason, and the record says which.
    out = tmp_path / "explicit"
    ddim = run(
        _config(
            tmp_path, tiny_sd, baseline, prompts_file, None, scheduler="ddim", output_dir=str(out), **common
        )
    )
    assert not any("scheduler" in r for r in ddim.reasons), ddim.reasons
    decision = json.loads((out / "decision.json").read_text())
    assert decision["scheduler"]["candidate"]["class"] == "DDIMScheduler"
    assert decision["scheduler"]["baseline"] == decision["scheduler"]["candidate"]
    assert "num_train_timesteps" in decision["scheduler"]["candidate"]
    assert "DDIMScheduler (ddim)" in (out / "report.html").read_text()


def test_scoring_holds_one_batch_of_decoded_images_at_a_time(tmp_path, tiny_sd, monkeypatch) -> None:
    monkeypatch.setitem(SCORERS, "live_image_counter", f"{__name__}:LiveImageCounter")
    monkeypatch.setattr(LiveImageCounter, "live_counts", [])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green star\n")
    config = _config(
        tmp_path,
        tiny_sd,
        tiny_sd,
        str(prompts),
        None,
        images_per_prompt=2,
        num_inference_steps=1,
        scorers=["live_image_counter"],
        scorer_models={},
        scorer_batch_size=2,
        gate={"primary_metric": "live_image_counter", "min_prompts": 1},
    )
    result = run(config)
    assert result.n_images == 12 and len(LiveImageCounter.live_counts) == 6
    # 12 images were scored; never more than one batch of them was decoded at once.
    assert max(LiveImageCounter.live_counts) <= 2, LiveImageCounter.live_counts


def test_safety_flagged_images_are_recorded_counted_and_their_prompts_excluded(
    tmp_path, tiny_sd, tiny_sd_other, prompts_file
) -> None:
    """A candidate with SD v1.5's safety checker (diffusers' real class, tiny random tower, loaded from
    the model directory) that blacks out one image: prompts in = compared + excluded with a reason."""
    from components.evaluate.generate import read_image
    from components.evaluate.tiny_scorers import add_safety_checker, build_tiny_safety_checker

    common = dict(
        images_per_prompt=2,
        num_inference_steps=2,
        scorers=["colour_match"],
        scorer_models={},
        gate={"primary_metric": "colour_match", "min_prompts": 3},
    )
    # First with a checker that flags nothing: the flag column is there, all False, nothing excluded.
    quiet = add_safety_checker(tiny_sd, tmp_path / "quiet", *build_tiny_safety_checker())
    first = tmp_path / "first"
    run(_config(tmp_path, quiet, tiny_sd_other, prompts_file, None, output_dir=str(first), **common))
    decision = json.loads((first / "decision.json").read_text())
    assert decision["safety_flagged_images"] == {"candidate": 0, "baseline": 0}
    assert (
        decision["prompts_total"] == 3 and decision["n_prompts"] == 3 and decision["n_prompts_excluded"] == 0
    )
    scores = storage.read_parquet(str(first / "scores.parquet")).to_pandas()
    assert scores["safety_flagged"].dtype == bool and not scores["safety_flagged"].any()

    # Then a checker that flags the candidate's image 0 of prompt 1 (and none of its other images).
    cand = scores[scores["model"] == "candidate"].sort_values(["prompt_index", "image_index"])
    images = [read_image(p) for p in cand["image_path"]]
    target = [
        i
        for i, (p, k) in enumerate(zip(cand["prompt_index"], cand["image_index"], strict=True))
        if (p, k) == (1, 0)
    ]
    checker = build_tiny_safety_checker(
        flag_images=[images[target[0]]], pass_images=[im for i, im in enumerate(images) if i != target[0]]
    )
    flagging = add_safety_checker(tiny_sd, tmp_path / "flagging", *checker)
    out = tmp_path / "eval"
    result = run(_config(tmp_path, flagging, tiny_sd_other, prompts_file, None, **common))

    scores = storage.read_parquet(str(out / "scores.parquet")).to_pandas()
    flagged = scores[scores["safety_flagged"]]
    assert [
        (m, p, i)
        for m, p, i in zip(flagged["model"], flagged["prompt_index"], flagged["image_index"], strict=True)
    ] == [("candidate", 1, 0)]
    assert np.asarray(read_image(flagged["image_path"].iloc[0])).max() == 0
    decision = json.loads((out / "decision.json").read_text())
    assert decision["safety_flagged_images"] == {"candidate": 1, "baseline": 0}
    assert decision["safety_flagged_prompts"] == {"candidate": 1, "baseline": 0}
    # One prompt differs, the candidate's: too little for the paired sign test to say it is flagged more.
    low, high = wilson_interval(1, 1, 0.95)
    assert decision["safety_sign_test"] == {
        "candidate_worse": 1,
        "differing": 1,
        "ci_low": pytest.approx(low),
        "ci_high": pytest.approx(high),
    }
    assert (
        decision["prompts_total"] == 3 and decision["n_prompts"] == 2 and decision["n_prompts_excluded"] == 1
    )
    assert decision["excluded_prompts"] == [
        {
            "prompt_index": 1,
            "prompt": "a blue square",
            "reason": "safety_checker_flagged",
            "flagged_images": {"candidate": 1, "baseline": 0},
        }
    ]
    # Too few prompts left: the gate's min_prompts fails it, naming the exclusion.
    assert not result.passed and result.n_prompts == 2
    assert not any("safety checker flagged more" in r for r in result.reasons), result.reasons
    assert any(
        "only 2 prompts were compared (1 more excluded: 1 safety_checker_flagged)" in r
        for r in result.reasons
    )
    assert json.loads((out / "metrics.json").read_text())["n_prompts_excluded"] == 1.0
    report = (out / "report.html").read_text()
    assert "3 prompts in, 2 compared, 1 excluded" in report
    assert "candidate flagged more on 1 of 1 prompts where the counts differ, 95% CI 20.7%–100.0%" in report
    assert "safety checker flagged images: candidate 1, baseline 0" in report
    assert "Prompts left out (1)" in report and "safety_checker_flagged" in report


def test_the_failing_decision_written_at_start_has_a_null_safe_safety_sign_test(tmp_path) -> None:
    """A run that stops before its verdict (here: its prompts file is missing) leaves the failing
    decision written at start, which carries every decision.json key, the sign test with no interval."""
    config = _config(tmp_path, tmp_path / "none", tmp_path / "none", str(tmp_path / "missing.txt"), None)
    with pytest.raises(storage.StorageError, match="missing.txt"):
        run(config)
    decision = json.loads((tmp_path / "eval" / "decision.json").read_text())
    assert not decision["passed"] and set(decision) >= DECISION_KEYS
    assert decision["safety_sign_test"] == {
        "candidate_worse": 0,
        "differing": 0,
        "ci_low": None,
        "ci_high": None,
    }
