"""The HTML report: self-contained, decision first, and it renders in headless Chromium."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.evaluate.report import render_report


def _decision(passed: bool) -> dict:
    return {
        "passed": passed,
        "reasons": ["pickscore win rate 80.0% (95% CI 64.0%–90.0%) over 40 prompts exceeds 50.0%"]
        if passed
        else ["pickscore win rate 40.0% (95% CI 26.0%–56.0%): the CI's lower bound must exceed 50.0%"],
        "primary_metric": "pickscore",
        "n_prompts": 3,
        "candidate_model": "gs://models/candidate",
        "baseline_model": "gs://models/production",
        "baseline_version": "7",
        "created_at": "2026-11-26T00:00:00+00:00",
        "metrics": {
            "pickscore": dict(
                candidate_mean=21.2,
                baseline_mean=20.9,
                mean_diff=0.3,
                diff_ci_low=0.1,
                diff_ci_high=0.5,
                win_rate=0.8,
                win_rate_ci_low=0.64,
                win_rate_ci_high=0.9,
            ),
            "aesthetic": dict(
                candidate_mean=5.1,
                baseline_mean=5.3,
                mean_diff=-0.2,
                diff_ci_low=-0.3,
                diff_ci_high=-0.1,
                win_rate=0.3,
                win_rate_ci_low=0.2,
                win_rate_ci_high=0.45,
            ),
        },
    }


def _scores(tmp_path) -> tuple[pd.DataFrame, dict[int, float]]:
    rows = []
    rng = np.random.default_rng(0)
    for model, colour in (("candidate", (200, 40, 40)), ("baseline", (40, 40, 200))):
        for p in range(3):
            for i in range(2):
                path = tmp_path / f"{model}_{p}_{i}.png"
                Image.new("RGB", (32, 32), colour).save(path)
                rows.append(
                    dict(
                        model=model,
                        prompt=f"a <b>prompt</b> {p}",
                        prompt_index=p,
                        image_index=i,
                        image_path=str(path),
                        pickscore=float(rng.normal(21, 1)),
                    )
                )
    return pd.DataFrame(rows), {0: 0.9, 1: -0.4, 2: 0.1}


def test_report_is_self_contained_and_leads_with_the_decision(tmp_path) -> None:
    scores, diffs = _scores(tmp_path)
    text = render_report(_decision(False), scores, diffs, top_k=2)
    assert "DO NOT SHIP" in text[: text.index("</h1>")]
    # Two gain prompts (0.9, 0.1) and one loss prompt (-0.4), 2 images per model each.
    assert text.count("data:image/png;base64,") == 3 * 2 * 2
    assert "src='/" not in text and "src='file:" not in text and "http" not in text
    assert "&lt;b&gt;prompt&lt;/b&gt;" in text  # prompts are escaped, never injected
    assert "[0.1, 0.5]" in text and "64.0%" in text
    assert "SHIP — the candidate passed" in render_report(_decision(True), scores, diffs)


def test_report_without_metrics_still_says_why(tmp_path) -> None:
    decision = {
        "passed": False,
        "reasons": ["the baseline (production) model could not be evaluated: boom"],
        "primary_metric": "pickscore",
        "n_prompts": 0,
        "metrics": {},
    }
    text = render_report(decision, None, None)
    assert "DO NOT SHIP" in text and "could not be evaluated: boom" in text


def _screenshot(html_path, png_path) -> None:
    profile = tempfile.mkdtemp()
    try:
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--screenshot={png_path}",
                "--window-size=1200,1600",
                f"file://{html_path}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (make system-deps)")
@pytest.mark.parametrize("passed", [True, False])
def test_report_renders_in_headless_chromium(tmp_path, passed: bool) -> None:
    scores, diffs = _scores(tmp_path)
    html_path = tmp_path / "report.html"
    html_path.write_text(render_report(_decision(passed), scores, diffs))
    png_path = tmp_path / "shot.png"
    _screenshot(html_path, png_path)
    shot = np.asarray(Image.open(io.BytesIO(png_path.read_bytes())).convert("RGB"), dtype=np.int16)
    assert shot.shape[:2] == (1600, 1200)
    assert shot.std() > 10  # not a blank page
    banner = shot[20, 20]
    # The banner is green (#1a7f37) for ship, red (#c62828) for do not ship.
    if passed:
        assert banner[1] > banner[0] + 40
    else:
        assert banner[0] > banner[1] + 80
    # The embedded images (blue baseline squares, 112 px each) were decoded and drawn below the banner.
    body = shot[200:]
    blue = (body[:, :, 2] > 180) & (body[:, :, 0] < 70) & (body[:, :, 1] < 70)
    assert blue.sum() > 4 * 100 * 100


def test_interval_headers_follow_the_gate_confidence(tmp_path) -> None:
    scores, diffs = _scores(tmp_path)
    text = render_report({**_decision(True), "confidence": 0.9}, scores, diffs)
    assert "Difference (90% CI)" in text and "win rate (90% CI)" in text and "95% CI)" not in text


def test_per_prompt_delta_is_green_when_it_improves_a_lower_is_better_metric(tmp_path) -> None:
    scores, _ = _scores(tmp_path)
    decision = _decision(True)
    decision["metrics"]["pickscore"]["higher_is_better"] = False
    # Prompt 1 dropped by 0.4: an improvement when lower is better; prompt 0 rose by 0.9: a loss.
    text = render_report(decision, scores, {0: 0.9, 1: -0.4}, top_k=1)
    gains = text[text.index("Largest gains") : text.index("Largest losses")]
    losses = text[text.index("Largest losses") :]
    assert "<span class='delta good'>pickscore -0.4</span>" in gains
    assert "<span class='delta bad'>pickscore +0.9</span>" in losses


def test_null_metric_values_render_without_error(tmp_path) -> None:
    """decision.json writes a non-finite value as null; the report shows it as NaN."""
    decision = _decision(False)
    decision["metrics"]["pickscore"].update(mean_diff=None, diff_ci_low=None, win_rate_ci_low=None)
    text = render_report(decision, *_scores(tmp_path))
    assert "DO NOT SHIP" in text and "[NaN, 0.5]" in text


def test_the_safety_sign_test_is_shown_next_to_the_flagged_image_counts(tmp_path) -> None:
    """Round-3 review: the report shows the gate's paired sign test beside the flagged-image counts."""
    scores, diffs = _scores(tmp_path)
    decision = _decision(False) | {
        "prompts_total": 100,
        "n_prompts": 20,
        "n_prompts_excluded": 80,
        "confidence": 0.9,
        "safety_flagged_images": {"candidate": 320, "baseline": 80},
        "safety_sign_test": {"candidate_worse": 80, "differing": 80, "ci_low": 0.966, "ci_high": 1.0},
    }
    text = render_report(decision, scores, diffs)
    assert (
        "(safety checker flagged images: candidate 320, baseline 80; candidate flagged more on 80 of 80 "
        "prompts where the counts differ, 90% CI 96.6%–100.0%)" in text
    )
    none_differ = decision | {
        "safety_sign_test": {"candidate_worse": 0, "differing": 0, "ci_low": None, "ci_high": None}
    }
    assert "; no prompt where the counts differ)" in render_report(none_differ, scores, diffs)
