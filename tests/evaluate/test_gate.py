"""The paired comparison and the fail-closed gate decision: one test per way it must fail, and the pass."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from components.evaluate.gate import (
    Comparison,
    GatePolicy,
    MetricComparison,
    bootstrap_mean_ci,
    compare,
    decide,
    median_image_score,
    wilson_interval,
)


def scores_table(candidate: np.ndarray, baseline: np.ndarray, metric: str = "pickscore") -> pd.DataFrame:
    """Rows for (prompt, image) score arrays of shape (n_prompts, images_per_prompt)."""
    rows = []
    for model, values in (("candidate", candidate), ("baseline", baseline)):
        for p in range(values.shape[0]):
            for i in range(values.shape[1]):
                rows.append({"model": model, "prompt_index": p, "image_index": i, metric: values[p, i]})
    return pd.DataFrame(rows)


def metric(**overrides: float) -> MetricComparison:
    values = dict(
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
    values.update(overrides)
    return MetricComparison(**values)


def good_comparison(**metrics: MetricComparison) -> Comparison:
    return Comparison(n_prompts=50, metrics={"pickscore": metric(), **metrics})


POLICY = GatePolicy(primary_metric="pickscore", min_prompts=20)


# ---------------------------------------------------------------- statistics


def test_median_image_is_a_real_image_score() -> None:
    assert median_image_score(np.array([3.0, 1.0, 2.0])) == 2.0
    assert median_image_score(np.array([4.0, 1.0, 3.0, 2.0])) == 2.0  # lower median, not 2.5


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(8, 10, 0.95)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(5, 5, 0.95)
    assert hi == 1.0 and lo < 0.6  # five wins out of five is not confident evidence


def test_bootstrap_is_seeded_and_covers_the_mean() -> None:
    values = np.random.default_rng(1).normal(0.3, 1.0, size=200)
    a = bootstrap_mean_ci(values, seed=7)
    assert a == bootstrap_mean_ci(values, seed=7)
    assert a[0] < values.mean() < a[1]
    assert a != bootstrap_mean_ci(values, seed=8)


def test_compare_pairs_by_prompt_and_uses_median_images_for_wins() -> None:
    base = np.array([[1.0, 2.0, 3.0]] * 4)
    cand = base.copy()
    cand[0] = [0.0, 2.5, 10.0]  # median 2.5 > 2.0: win, though one image is worse
    cand[1] = [5.0, 1.0, 1.5]  # median 1.5 < 2.0: loss, though the mean is higher
    cand[2] = [1.0, 2.0, 3.0]  # tie: counts half
    cand[3] = [2.0, 3.0, 4.0]  # win
    result = compare(scores_table(cand, base), ["pickscore"], POLICY)
    m = result.metrics["pickscore"]
    assert result.n_prompts == 4
    assert m.win_rate == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert m.candidate_mean == pytest.approx(cand.mean())
    assert m.mean_diff == pytest.approx((cand - base).mean())
    assert m.diff_ci_low <= m.mean_diff <= m.diff_ci_high
    assert result.per_prompt_diff["pickscore"][1] == pytest.approx(cand[1].mean() - 2.0)


def test_compare_orients_wins_for_lower_is_better_metrics() -> None:
    base = np.full((5, 2), 1.0)
    cand = np.full((5, 2), 0.5)
    policy = GatePolicy(primary_metric="fid", higher_is_better={"fid": False}, min_prompts=1)
    m = compare(scores_table(cand, base, "fid"), ["fid"], policy).metrics["fid"]
    assert m.win_rate == 1.0 and m.mean_diff == pytest.approx(-0.5) and not m.higher_is_better


def test_compare_counts_only_prompts_scored_for_both_models() -> None:
    df = scores_table(np.ones((3, 2)), np.ones((3, 2)))
    df = df[~((df["model"] == "baseline") & (df["prompt_index"] == 2))]
    assert compare(df, ["pickscore"], POLICY).n_prompts == 2


# ---------------------------------------------------------------- the decision


def test_clear_win_passes_with_the_reason() -> None:
    d = decide(POLICY, good_comparison())
    assert d.passed is True
    assert "win rate 80.0%" in d.reasons[0]
    assert set(d.metrics["pickscore"]) >= {"mean_diff", "diff_ci_low", "win_rate_ci_low", "win_rate_ci_high"}


def test_end_to_end_clear_improvement_passes_and_no_change_fails() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(20, 1, size=(40, 4))
    better = decide(POLICY, compare(scores_table(base + 1.0, base), ["pickscore"], POLICY))
    same = decide(POLICY, compare(scores_table(base.copy(), base), ["pickscore"], POLICY))
    assert better.passed and not same.passed
    assert "lower bound must exceed" in same.reasons[0]


def test_win_rate_ci_at_threshold_fails() -> None:
    d = decide(POLICY, Comparison(n_prompts=50, metrics={"pickscore": metric(win_rate_ci_low=0.5)}))
    assert not d.passed and "must exceed 50.0%" in d.reasons[0]


def test_missing_primary_metric_fails() -> None:
    d = decide(POLICY, Comparison(n_prompts=50, metrics={"clip_score": metric()}))
    assert not d.passed
    assert any("'pickscore' is required" in r for r in d.reasons)


def test_missing_metric_with_a_regression_limit_fails() -> None:
    policy = GatePolicy(max_regression={"aesthetic": 0.1}, min_prompts=20)
    d = decide(policy, good_comparison())
    assert not d.passed and any("'aesthetic' is required" in r for r in d.reasons)


@pytest.mark.parametrize("field", ["candidate_mean", "win_rate_ci_low", "diff_ci_high"])
def test_nan_anywhere_in_a_gated_metric_fails(field: str) -> None:
    d = decide(POLICY, Comparison(n_prompts=50, metrics={"pickscore": metric(**{field: math.nan})}))
    assert not d.passed and any("non-finite" in r and field in r for r in d.reasons)


def test_nan_scores_propagate_to_a_failed_decision() -> None:
    base = np.full((30, 3), 20.0)
    cand = np.full((30, 3), 25.0)
    cand[4, 1] = np.nan
    d = decide(POLICY, compare(scores_table(cand, base), ["pickscore"], POLICY))
    assert not d.passed and any("non-finite" in r for r in d.reasons)


def test_too_few_prompts_fails() -> None:
    d = decide(GatePolicy(min_prompts=100), good_comparison())
    assert not d.passed and any("only 50 prompts" in r and "at least 100" in r for r in d.reasons)


def test_scorer_error_fails_and_is_named() -> None:
    d = decide(POLICY, good_comparison(), scorer_errors={"aesthetic": "CUDA out of memory"})
    assert not d.passed and any("'aesthetic' failed: CUDA out of memory" in r for r in d.reasons)


def test_unloadable_baseline_fails_and_says_why() -> None:
    d = decide(POLICY, None, baseline_error="gs://models/prod: no files under this prefix")
    assert not d.passed
    assert any("baseline (production) model could not be evaluated" in r for r in d.reasons)
    assert any("no comparison" in r for r in d.reasons)


def test_candidate_error_fails() -> None:
    assert not decide(POLICY, good_comparison(), candidate_error="boom").passed


def test_regression_beyond_the_limit_fails() -> None:
    policy = GatePolicy(max_regression={"aesthetic": 0.1}, min_prompts=20)
    worse = metric(candidate_mean=5.0, baseline_mean=5.3, mean_diff=-0.3)
    d = decide(policy, good_comparison(aesthetic=worse))
    assert not d.passed and any("aesthetic regressed by 0.3" in r for r in d.reasons)
    ok = metric(candidate_mean=5.25, baseline_mean=5.3, mean_diff=-0.05)
    assert decide(policy, good_comparison(aesthetic=ok)).passed


def test_regression_is_oriented_for_lower_is_better_metrics() -> None:
    policy = GatePolicy(max_regression={"latency": 0.1}, min_prompts=20)
    higher_latency = metric(mean_diff=0.5, higher_is_better=False)
    assert not decide(policy, good_comparison(latency=higher_latency)).passed


def test_floor_fails_below_and_passes_above() -> None:
    policy = GatePolicy(floors={"pickscore": 21.5}, min_prompts=20)
    d = decide(policy, good_comparison())
    assert not d.passed and any("below the floor 21.5" in r for r in d.reasons)
    assert decide(GatePolicy(floors={"pickscore": 20.5}, min_prompts=20), good_comparison()).passed


def test_garbage_input_fails_closed_without_raising() -> None:
    d = decide(POLICY, "not a comparison")  # type: ignore[arg-type]
    assert not d.passed and "failing closed" in d.reasons[0]


def test_every_failure_is_listed_not_only_the_first() -> None:
    d = decide(
        GatePolicy(min_prompts=100, floors={"pickscore": 99.0}),
        good_comparison(),
        scorer_errors={"hps": "missing extra"},
    )
    assert not d.passed and len(d.reasons) == 3


# ---------------------------------------------------------------- review fixes


def test_prompts_only_one_model_has_fail_the_gate_and_are_named() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(20, 1, size=(40, 2))
    df = scores_table(base + 1.0, base)
    clear_win = decide(POLICY, compare(df, ["pickscore"], POLICY))
    assert clear_win.passed  # the same table, with every prompt present for both models
    dropped = df[~((df["model"] == "baseline") & (df["prompt_index"] == 7))]
    comparison = compare(dropped, ["pickscore"], POLICY)
    verdict = decide(POLICY, comparison)
    assert comparison.n_prompts == 39 and not verdict.passed
    reason = next(r for r in verdict.reasons if "different prompts" in r)
    assert "1 prompt(s) only for the candidate (prompt_index [7])" in reason


def test_different_image_counts_per_prompt_fail_the_gate() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(20, 1, size=(40, 4))
    df = scores_table(base + 1.0, base)
    # Prompt 3 has one candidate image but four baseline images: the image-level means would weigh it
    # differently from the prompt-level differences.
    uneven = df[~((df["model"] == "candidate") & (df["prompt_index"] == 3) & (df["image_index"] > 0))]
    verdict = decide(POLICY, compare(uneven, ["pickscore"], POLICY))
    assert not verdict.passed
    assert any("prompt_index 3: candidate 1, baseline 4" in r for r in verdict.reasons), verdict.reasons


def test_reasons_name_the_policys_confidence_level() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(20, 1, size=(40, 2))
    for confidence, label in ((0.8, "80% CI"), (0.975, "97.5% CI")):
        policy = POLICY.model_copy(update={"confidence": confidence})
        passed = decide(policy, compare(scores_table(base + 1.0, base), ["pickscore"], policy))
        failed = decide(policy, compare(scores_table(base - 1.0, base), ["pickscore"], policy))
        assert passed.passed and not failed.passed
        assert label in passed.reasons[0] and label in failed.reasons[0]
        assert "95%" not in passed.reasons[0] + failed.reasons[0]
        assert passed.confidence == confidence
    assert "95% CI" not in (GatePolicy.model_fields["min_win_rate_ci_low"].description or "")


def test_prompts_with_a_safety_flagged_image_on_either_side_are_excluded_and_counted() -> None:
    """A flagged image is a black square the safety checker put in place of the model's work."""
    rng = np.random.default_rng(0)
    base = rng.normal(20, 1, size=(25, 2))
    cand = base + 1.0
    # Flagged images score very low (black); scored as ordinary images they would flip these prompts.
    cand[2, 0] = base[4, 1] = base[9, 0] = -100.0
    df = scores_table(cand, base)
    df["prompt"] = [f"prompt {p}" for p in df["prompt_index"]]
    df["safety_flagged"] = False
    flagged = [("candidate", 2, 0), ("baseline", 4, 1), ("baseline", 9, 0)]
    for model, p, i in flagged:
        df.loc[
            (df["model"] == model) & (df["prompt_index"] == p) & (df["image_index"] == i), "safety_flagged"
        ] = True

    comparison = compare(df, ["pickscore"], POLICY)
    assert comparison.n_prompts == 22 and not comparison.mismatches
    assert [(e.prompt_index, e.reason, e.flagged_images) for e in comparison.excluded] == [
        (2, "safety_checker_flagged", {"candidate": 1, "baseline": 0}),
        (4, "safety_checker_flagged", {"candidate": 0, "baseline": 1}),
        (9, "safety_checker_flagged", {"candidate": 0, "baseline": 1}),
    ]
    assert comparison.excluded[0].prompt == "prompt 2"
    # The black images are out of every statistic: the candidate is exactly 1.0 better on each prompt.
    stats = comparison.metrics["pickscore"]
    assert stats.mean_diff == pytest.approx(1.0) and stats.win_rate == 1.0 and stats.n_prompts == 22
    assert set(comparison.per_prompt_diff["pickscore"]) == set(range(25)) - {2, 4, 9}

    verdict = decide(POLICY, comparison)
    assert verdict.passed and verdict.n_prompts == 22
    assert "over 22 prompts (3 more excluded: 3 safety_checker_flagged)" in verdict.reasons[0]
    assert [e["prompt_index"] for e in verdict.excluded_prompts] == [2, 4, 9]
    # Exclusions count against min_prompts like any missing prompt.
    strict = decide(GatePolicy(min_prompts=23), comparison)
    assert not strict.passed
    assert any(
        "only 22 prompts were compared (3 more excluded: 3 safety_checker_flagged)" in r
        and "at least 23" in r
        for r in strict.reasons
    ), strict.reasons


def _flagged_table(n_prompts: int, candidate_flagged: set[int], baseline_flagged: set[int]) -> pd.DataFrame:
    """Two images per prompt, candidate 0.5 better on every unflagged image; a flagged image is black."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_prompts):
        for i in range(2):
            b = rng.normal(20, 1)
            for model, value, flagged in (
                ("candidate", b + 0.5, p in candidate_flagged),
                ("baseline", b, p in baseline_flagged),
            ):
                rows.append(
                    {
                        "model": model,
                        "prompt_index": p,
                        "image_index": i,
                        "prompt": f"p{p}",
                        "pickscore": 5.0 if flagged else value,
                        "safety_flagged": flagged,
                    }
                )
    return pd.DataFrame(rows)


def _flag_count_table(
    n_prompts: int,
    images: int,
    candidate_flags: dict[int, int],
    baseline_flags: dict[int, int],
    seed: int = 0,
) -> pd.DataFrame:
    """``images`` per prompt; per prompt, the first ``*_flags[p]`` images of a model are flagged (black);
    the candidate scores 1.0 above the baseline on every unflagged image."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for model, shift, flags in (("candidate", 1.0, candidate_flags), ("baseline", 0.0, baseline_flags)):
            for i in range(images):
                flagged = i < flags.get(p, 0)
                rows.append(
                    {
                        "model": model,
                        "prompt_index": p,
                        "image_index": i,
                        "prompt": f"p{p}",
                        "pickscore": 0.0 if flagged else rng.normal(shift, 0.1),
                        "safety_flagged": flagged,
                    }
                )
    return pd.DataFrame(rows)


def test_a_candidate_flagged_on_more_prompts_than_the_baseline_fails_the_gate() -> None:
    """Review r6: flagged on 80/100 prompts (baseline none), it passed on the 20 prompts left over."""
    df = _flagged_table(100, candidate_flagged=set(range(80)), baseline_flagged=set())
    comparison = compare(df, ["pickscore"], POLICY)
    verdict = decide(POLICY, comparison)
    assert comparison.n_prompts == 20 and len(comparison.excluded) == 80
    assert not verdict.passed
    assert verdict.safety_flagged_prompts == {"candidate": 80, "baseline": 0}
    assert verdict.safety_sign_test.candidate_worse == 80 and verdict.safety_sign_test.differing == 80
    # The other checks all pass: the safety check alone fails it.
    assert (
        len(verdict.reasons) == 1 and "on 80 of the 80 prompts where the counts differ" in verdict.reasons[0]
    )


def test_a_candidate_blacked_out_more_on_the_same_prompts_fails_the_safety_sign_test() -> None:
    """Review round 3: 4/4 candidate images flagged where the baseline had 1/4, on 80 of 100 prompts, was a
    tie of flagged *prompts* (80 vs 80) and passed with 320 vs 80 flagged images."""
    risky = range(80)
    df = _flag_count_table(100, 4, {p: 4 for p in risky}, {p: 1 for p in risky})
    verdict = decide(POLICY, compare(df, ["pickscore"], POLICY))
    assert not verdict.passed
    assert verdict.safety_flagged_prompts == {"candidate": 80, "baseline": 80}
    test = verdict.safety_sign_test
    assert (test.candidate_worse, test.differing) == (80, 80)
    assert test.ci_low == pytest.approx(wilson_interval(80, 80, 0.95)[0]) and test.ci_low > 0.5
    [reason] = verdict.reasons
    assert "on 80 of the 80 prompts where the counts differ" in reason
    assert "95% CI 95.4%–100.0%" in reason and "candidate 320, baseline 80" in reason
    # No setting can let it through: the reason points at none, and the old one is gone from the policy.
    assert "gate." not in reason
    assert "max_extra_safety_flagged_prompts" not in GatePolicy.model_fields


def test_safety_checker_noise_at_the_same_rate_for_both_models_does_not_fail_a_better_candidate() -> None:
    """Review round 3: an absolute "no more flagged prompts" rule failed such a candidate 40-60% of the time.
    12 prompts where the candidate has more flags, 11 where the baseline has: no evidence, it passes."""
    candidate_flags = {p: 1 for p in range(12)}
    baseline_flags = {p: 1 for p in range(12, 23)}
    df = _flag_count_table(200, 4, candidate_flags, baseline_flags)
    verdict = decide(POLICY, compare(df, ["pickscore"], POLICY))
    assert verdict.passed, verdict.reasons
    assert verdict.safety_flagged_prompts == {"candidate": 12, "baseline": 11}
    test = verdict.safety_sign_test
    assert (test.candidate_worse, test.differing) == (12, 23)
    assert test.ci_low is not None and test.ci_low < 0.5 < test.ci_high  # type: ignore[operator]
    # The baseline flagged more often than the candidate is no reason to fail either.
    fewer = compare(
        _flagged_table(30, candidate_flagged=set(), baseline_flagged={0, 1}), ["pickscore"], POLICY
    )
    assert decide(POLICY, fewer).passed


def test_the_safety_sign_test_with_no_differing_prompt_fails_nothing() -> None:
    """n = 0: flags only where both models have the same count, or none at all; the interval is null."""
    df = _flag_count_table(40, 2, {0: 2, 1: 1}, {0: 2, 1: 1})
    verdict = decide(POLICY, compare(df, ["pickscore"], POLICY))
    assert verdict.passed, verdict.reasons
    assert verdict.safety_flagged_prompts == {"candidate": 2, "baseline": 2}
    assert verdict.safety_sign_test.model_dump() == {
        "candidate_worse": 0,
        "differing": 0,
        "ci_low": None,
        "ci_high": None,
    }
    clean = decide(POLICY, compare(_flag_count_table(40, 2, {}, {}), ["pickscore"], POLICY))
    assert clean.passed and clean.safety_sign_test.differing == 0 and clean.safety_sign_test.ci_low is None
    # A decision that fails before any comparison still carries a null-safe sign test.
    assert decide(POLICY, None).safety_sign_test.ci_low is None
