"""Paired comparison of a candidate against the production model, and the metric gate.

The candidate and the baseline (the model in production, or the base model when nothing is in production
yet) generate images for the same prompts from the same initial noise, so every statistic here is paired:

- per metric, the mean score of each model and the mean paired difference (candidate − baseline), with a
  seeded bootstrap CI (at ``GatePolicy.confidence``, 95% by default) that resamples *prompts* (images of
  one prompt share the prompt, so they are not independent draws);
- the win rate in the protocol of Diffusion-KTO (Li et al., NeurIPS 2024, §5): several images per prompt,
  the median-scoring image of each model per prompt is compared, a tie counts half; its CI is the
  Wilson score interval over prompts (a bootstrap CI collapses to a point when every prompt is a win,
  which would let a handful of lucky prompts pass the gate).

A prompt where the safety checker flagged (and blacked out) any image of either model is left out of
every statistic and listed in ``Comparison.excluded`` with the reason ``safety_checker_flagged``: a black
square scored as a model's work would skew the pair. Prompts scored = prompts compared + prompts excluded;
the exclusions count against ``min_prompts`` like any missing prompt. Because exclusion alone would hide a
candidate the checker flags far more often, the gate also runs a paired one-sided sign test on the number
of flagged images per prompt: among the prompts where the two models' counts differ, it fails when the
Wilson lower bound (at ``GatePolicy.confidence``) of the share where the candidate has more is above ½.
Like the win rate, it is a paired test over prompts, so checker noise at the same rate for both models
does not fail a better candidate, and a candidate blacked out 4/4 where the baseline is 1/4 does.

``decide`` is a pure function that fails closed: a missing metric, a NaN, too few prompts, prompts or image
counts that differ between the two models, a scorer error, a model that could not be loaded, or any
unexpected input gives ``passed=False`` with each reason spelled
out. It never raises and never passes by default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from components.shared.config import StepConfig

#: Whether a higher score is better, for the scorers this project ships (a policy can override it).
DEFAULT_HIGHER_IS_BETTER: dict[str, bool] = {
    "pickscore": True,
    "clip_score": True,
    "aesthetic": True,
    "hps": True,
    "imagereward": True,
    "colour_match": True,
}


class GatePolicy(StepConfig):
    """When a candidate may replace the production model: the thresholds of the metric gate."""

    primary_metric: str = Field(
        "pickscore",
        description="The metric whose win rate decides: the candidate must beat the baseline on it "
        "(PickScore is the paper's primary automatic metric).",
    )
    min_win_rate_ci_low: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="The lower bound of the primary metric's win-rate CI (at gate.confidence, 95% by "
        "default) must be strictly above this (0.5: the candidate wins more prompts than it loses, with "
        "confidence).",
    )
    max_regression: dict[str, float] = Field(
        default_factory=dict,
        description="Per metric, the largest allowed drop of the mean score against the baseline, in the "
        "metric's own units (for example {'aesthetic': 0.1}); a metric named here must be scored.",
    )
    min_prompts: int = Field(
        20, ge=1, description="Fewest prompts the comparison must cover; fewer fails the gate."
    )
    floors: dict[str, float] = Field(
        default_factory=dict,
        description="Optional absolute floors: the candidate's mean score of each named metric must reach "
        "it (a ceiling, for metrics where lower is better).",
    )
    higher_is_better: dict[str, bool] = Field(
        default_factory=dict,
        description="Per metric, whether a higher score is better; overrides the scorer's own setting.",
    )
    n_bootstrap: int = Field(
        2000, ge=100, description="Bootstrap resamples for the CI of the mean paired difference."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of every interval.")
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap, so a decision can be reproduced.")

    def required_metrics(self) -> list[str]:
        """Every metric the gate reads: the primary one, then those with a regression limit or a floor."""
        names = [self.primary_metric, *self.max_regression, *self.floors]
        return list(dict.fromkeys(names))

    def is_higher_better(self, metric: str, default: bool | None = None) -> bool:
        """Direction of a metric: the policy's override, else ``default``, else the project default."""
        if metric in self.higher_is_better:
            return self.higher_is_better[metric]
        if default is not None:
            return default
        return DEFAULT_HIGHER_IS_BETTER.get(metric, True)


class MetricComparison(BaseModel):
    """Candidate vs baseline on one metric (``mean_diff`` is candidate − baseline in raw units;
    ``win_rate`` is the fraction of prompts the candidate wins, oriented by ``higher_is_better``)."""

    candidate_mean: float
    baseline_mean: float
    mean_diff: float
    diff_ci_low: float
    diff_ci_high: float
    win_rate: float
    win_rate_ci_low: float
    win_rate_ci_high: float
    higher_is_better: bool = True
    n_prompts: int = 0


#: Why a prompt both models were scored on was left out of the comparison.
SAFETY_CHECKER_FLAGGED = "safety_checker_flagged"


class ExcludedPrompt(BaseModel):
    """A prompt left out of the comparison, and why."""

    prompt_index: int
    prompt: str = ""
    reason: str
    flagged_images: dict[str, int] = Field(
        default_factory=dict, description="Per model, how many of this prompt's images were flagged."
    )


class Comparison(BaseModel):
    """All metrics compared on the same prompts; ``per_prompt_diff`` feeds the report's gains/losses;
    ``mismatches`` says where the two models' images are not paired one to one (each one fails the gate);
    ``excluded`` lists the prompts both models have that were left out, each with its reason."""

    n_prompts: int
    metrics: dict[str, MetricComparison]
    per_prompt_diff: dict[str, dict[int, float]] = Field(default_factory=dict)
    mismatches: list[str] = Field(default_factory=list)
    excluded: list[ExcludedPrompt] = Field(default_factory=list)


class SafetySignTest(BaseModel):
    """The paired sign test on safety-checker flags: over the prompts where the two models have a
    different number of flagged images, how many the candidate has more on, with the Wilson interval
    of that share (null when no prompt differs)."""

    candidate_worse: int = Field(
        default=0, description="Prompts where the candidate had more flagged images than the baseline."
    )
    differing: int = Field(
        0, description="Prompts where the two models had a different number of flagged images."
    )
    ci_low: float | None = Field(default=None, description="Lower bound of the share's Wilson interval.")
    ci_high: float | None = Field(default=None, description="Upper bound of the share's Wilson interval.")


class GateDecision(BaseModel):
    """The gate's verdict; ``reasons`` lists every failed check (and, on a pass, why it passed)."""

    passed: bool
    reasons: list[str]
    primary_metric: str
    n_prompts: int
    metrics: dict[str, dict[str, Any]]
    confidence: float = 0.95
    excluded_prompts: list[dict[str, Any]] = Field(default_factory=list)
    safety_flagged_prompts: dict[str, int] = Field(
        default_factory=lambda: {"candidate": 0, "baseline": 0},
        description="Per model, how many of the prompts both models were scored on had an image the safety "
        "checker flagged.",
    )
    safety_sign_test: SafetySignTest = Field(
        default_factory=lambda: SafetySignTest(candidate_worse=0, differing=0, ci_low=None, ci_high=None),
        description="The paired sign test on flagged images per prompt that the safety check of the gate runs.",
    )


def ci_label(confidence: float) -> str:
    """How an interval at ``confidence`` is named in reasons and the report: ``"95% CI"``, ``"97.5% CI"``."""
    return f"{round(float(confidence) * 100, 4):g}% CI"


# ---------------------------------------------------------------- statistics


def median_image_score(scores: np.ndarray) -> float:
    """The score of the median-scoring image of one prompt (the lower median when the count is even,
    so it is always the score of a real image, as the paper's protocol compares images, not averages)."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    return float(ordered[(len(ordered) - 1) // 2])


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927); ``successes`` may be fractional (ties = ½)."""
    if n <= 0:
        return (math.nan, math.nan)
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_mean_ci(
    values: np.ndarray, *, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (Efron & Tibshirani 1993, ch. 13), seeded."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_bootstrap, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def compare(
    scores: Any,
    metrics: list[str],
    policy: GatePolicy,
    scorer_higher_is_better: Mapping[str, bool] | None = None,
) -> Comparison:
    """Compare candidate and baseline per metric on the prompts both models were scored on.

    ``scores`` is a table (pandas DataFrame) with one row per image: ``model`` ("candidate" or
    "baseline"), ``prompt_index``, ``image_index``, one column per metric, and optionally
    ``safety_flagged`` (bool) and ``prompt``. Only prompts present for both models count. Prompts only one
    model has, and prompts whose two models have different numbers of images (the image-level means would
    then weigh prompts differently from the prompt-level differences), are listed in ``mismatches``,
    which ``decide`` turns into failures. A prompt with a flagged image on either side is left out and
    listed in ``excluded``; ``n_prompts`` is the number of prompts compared.
    """
    import pandas as pd

    df = pd.DataFrame(scores)
    scorer_higher_is_better = dict(scorer_higher_is_better or {})
    mismatches = _pairing_mismatches(df[df["model"] == "candidate"], df[df["model"] == "baseline"])
    shared = sorted(
        set(df.loc[df["model"] == "candidate", "prompt_index"])
        & set(df.loc[df["model"] == "baseline", "prompt_index"])
    )
    excluded = _safety_exclusions(df, shared)
    if excluded:
        df = df[~df["prompt_index"].isin({e.prompt_index for e in excluded})]
    cand = df[df["model"] == "candidate"]
    base = df[df["model"] == "baseline"]
    common = sorted(set(cand["prompt_index"]) & set(base["prompt_index"]))
    out: dict[str, MetricComparison] = {}
    per_prompt: dict[str, dict[int, float]] = {}
    for metric in metrics:
        if metric not in df.columns:
            continue
        higher = policy.is_higher_better(metric, scorer_higher_is_better.get(metric))
        sign = 1.0 if higher else -1.0
        c_groups = cand.groupby("prompt_index")[metric]
        b_groups = base.groupby("prompt_index")[metric]
        c_by_prompt = {int(k): np.asarray(v, dtype=np.float64) for k, v in c_groups}
        b_by_prompt = {int(k): np.asarray(v, dtype=np.float64) for k, v in b_groups}
        diffs = np.array([c_by_prompt[p].mean() - b_by_prompt[p].mean() for p in common])
        wins = []
        for p in common:
            delta = sign * (median_image_score(c_by_prompt[p]) - median_image_score(b_by_prompt[p]))
            wins.append(1.0 if delta > 0 else 0.5 if delta == 0 else 0.0)
        n = len(common)
        lo, hi = bootstrap_mean_ci(
            diffs, n_bootstrap=policy.n_bootstrap, confidence=policy.confidence, seed=policy.bootstrap_seed
        )
        w_lo, w_hi = wilson_interval(float(np.sum(wins)), n, policy.confidence)
        cand_vals = cand[cand["prompt_index"].isin(common)][metric].to_numpy(dtype=np.float64)
        base_vals = base[base["prompt_index"].isin(common)][metric].to_numpy(dtype=np.float64)
        out[metric] = MetricComparison(
            candidate_mean=float(cand_vals.mean()) if n else math.nan,
            baseline_mean=float(base_vals.mean()) if n else math.nan,
            mean_diff=float(diffs.mean()) if n else math.nan,
            diff_ci_low=lo,
            diff_ci_high=hi,
            win_rate=float(np.mean(wins)) if n else math.nan,
            win_rate_ci_low=w_lo,
            win_rate_ci_high=w_hi,
            higher_is_better=higher,
            n_prompts=n,
        )
        per_prompt[metric] = {int(p): float(d) for p, d in zip(common, diffs, strict=True)}
    return Comparison(
        n_prompts=len(common),
        metrics=out,
        per_prompt_diff=per_prompt,
        mismatches=mismatches,
        excluded=excluded,
    )


def _safety_exclusions(df: Any, prompt_indices: list[int]) -> list[ExcludedPrompt]:
    """The prompts (of ``prompt_indices``) where the safety checker flagged an image of either model.

    The flagged image is black, not the model's work; dropping only that image would leave the two
    sides with different image counts, so the whole prompt goes, for both models.
    """
    if "safety_flagged" not in df.columns:
        return []
    flagged = df[df["safety_flagged"].fillna(False).astype(bool) & df["prompt_index"].isin(prompt_indices)]
    if flagged.empty:
        return []
    excluded = []
    for prompt_index, rows in flagged.groupby("prompt_index"):
        counts = rows.groupby("model").size().to_dict()
        excluded.append(
            ExcludedPrompt(
                prompt_index=int(prompt_index),
                prompt=str(rows["prompt"].iloc[0]) if "prompt" in rows.columns else "",
                reason=SAFETY_CHECKER_FLAGGED,
                flagged_images={m: int(counts.get(m, 0)) for m in ("candidate", "baseline")},
            )
        )
    return excluded


def _pairing_mismatches(cand: Any, base: Any, show: int = 5) -> list[str]:
    """Why the candidate's and the baseline's images are not paired one to one (empty when they are)."""
    c_counts = cand.groupby("prompt_index").size().to_dict()
    b_counts = base.groupby("prompt_index").size().to_dict()
    problems = []
    only_c = sorted(set(c_counts) - set(b_counts))
    only_b = sorted(set(b_counts) - set(c_counts))
    if only_c or only_b:
        problems.append(
            f"the two models were scored on different prompts: {len(only_c)} prompt(s) only for the "
            f"candidate (prompt_index {only_c[:show]}{' ...' if len(only_c) > show else ''}), {len(only_b)} "
            f"only for the baseline (prompt_index {only_b[:show]}{' ...' if len(only_b) > show else ''}); "
            "a paired comparison needs the same prompts for both"
        )
    uneven = sorted(p for p in set(c_counts) & set(b_counts) if c_counts[p] != b_counts[p])
    if uneven:
        examples = ", ".join(
            f"prompt_index {p}: candidate {c_counts[p]}, baseline {b_counts[p]}" for p in uneven[:show]
        )
        problems.append(
            f"{len(uneven)} prompt(s) have a different number of images per model ({examples}"
            f"{' ...' if len(uneven) > show else ''}); a paired comparison needs the same images per prompt"
        )
    return problems


# ---------------------------------------------------------------- the decision


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def decide(
    policy: GatePolicy,
    comparison: Comparison | None,
    *,
    scorer_errors: Mapping[str, str] | None = None,
    candidate_error: str | None = None,
    baseline_error: str | None = None,
    setup_errors: Sequence[str] = (),
) -> GateDecision:
    """Apply the gate to a comparison. Pure, never raises, fails closed.

    Every failed check adds a reason; ``passed`` is True only if the primary metric's win-rate check ran
    and nothing failed. ``scorer_errors`` maps a metric to the error its scorer raised;
    ``candidate_error`` / ``baseline_error`` say why a model could not be loaded or could not generate;
    ``setup_errors`` are other reasons the two models were not compared like with like (each one fails).
    """
    try:
        return _decide(
            policy, comparison, dict(scorer_errors or {}), candidate_error, baseline_error, list(setup_errors)
        )
    except Exception as err:  # fail closed on anything unforeseen, with the error in the reasons
        return GateDecision(
            passed=False,
            reasons=[f"the gate could not evaluate its inputs ({type(err).__name__}: {err}); failing closed"],
            primary_metric=getattr(policy, "primary_metric", "?"),
            n_prompts=0,
            metrics={},
            confidence=_confidence(policy),
        )


def _confidence(policy: Any) -> float:
    value = getattr(policy, "confidence", 0.95)
    return float(value) if _finite(value) else 0.95


def _decide(
    policy: GatePolicy,
    comparison: Comparison | None,
    scorer_errors: dict[str, str],
    candidate_error: str | None,
    baseline_error: str | None,
    setup_errors: list[str],
) -> GateDecision:
    reasons: list[str] = list(setup_errors)
    primary = policy.primary_metric
    ci = ci_label(policy.confidence)
    if candidate_error:
        reasons.append(f"the candidate model could not be evaluated: {candidate_error}")
    if baseline_error:
        reasons.append(f"the baseline (production) model could not be evaluated: {baseline_error}")
    for metric, message in sorted(scorer_errors.items()):
        reasons.append(f"scorer {metric!r} failed: {message}")

    metrics = comparison.metrics if comparison is not None else {}
    n_prompts = comparison.n_prompts if comparison is not None else 0
    excluded = comparison.excluded if comparison is not None else []
    exclusion_note = _exclusion_note(excluded)
    if comparison is None:
        reasons.append("no comparison of candidate and baseline scores was made")
    else:
        reasons.extend(comparison.mismatches)
    flagged_prompts = _flagged_prompts(excluded)
    flagged_images = _flagged_images(excluded)
    sign_test = safety_sign_test(excluded, policy.confidence)
    if sign_test.differing and sign_test.ci_low is not None and sign_test.ci_low > 0.5:
        # Excluding flagged prompts keeps black squares out of the statistics, but on its own it would
        # let a candidate that trips the safety checker far more often pass on the prompts left over.
        # Paired per prompt, like the win rate: the same prompts and noise make the counts comparable.
        reasons.append(
            f"the safety checker flagged more candidate images than baseline images on "
            f"{sign_test.candidate_worse} of the {sign_test.differing} prompts where the counts differ "
            f"({ci} {sign_test.ci_low:.1%}–{sign_test.ci_high:.1%}, above 50%: the candidate is flagged more "
            f"often, with confidence); flagged images: candidate {flagged_images['candidate']}, baseline "
            f"{flagged_images['baseline']}, on {flagged_prompts['candidate']} and "
            f"{flagged_prompts['baseline']} prompts"
        )
    if comparison is not None and n_prompts < policy.min_prompts:
        reasons.append(
            f"only {n_prompts} prompts were compared{exclusion_note}; the policy needs at least "
            f"{policy.min_prompts} (gate.min_prompts)"
        )

    primary_checked = False
    for metric in policy.required_metrics():
        if metric not in metrics:
            if metric not in scorer_errors:
                reasons.append(
                    f"metric {metric!r} is required by the gate policy but was not scored "
                    f"(scored: {sorted(metrics) or 'none'})"
                )
            continue
        m = metrics[metric]
        bad = [k for k, v in m.model_dump().items() if k != "higher_is_better" and not _finite(v)]
        if bad:
            reasons.append(f"metric {metric!r} has non-finite values in {', '.join(bad)} (NaN or inf scores)")
            continue
        if metric == primary:
            primary_checked = True
            if not m.win_rate_ci_low > policy.min_win_rate_ci_low:
                reasons.append(
                    f"{metric} win rate {m.win_rate:.1%} ({ci} {m.win_rate_ci_low:.1%}–"
                    f"{m.win_rate_ci_high:.1%}): the CI's lower bound must exceed "
                    f"{policy.min_win_rate_ci_low:.1%} (gate.min_win_rate_ci_low)"
                )
        if metric in policy.max_regression:
            limit = policy.max_regression[metric]
            if math.isnan(limit):
                # Every comparison with NaN is False, so the check would pass whatever the scores.
                reasons.append(f"gate.max_regression[{metric!r}] is NaN; give a number")
            # Oriented so that a positive change is an improvement, whatever the metric's direction.
            change = m.mean_diff if m.higher_is_better else -m.mean_diff
            if change < -limit:
                reasons.append(
                    f"{metric} regressed by {-change:.4g} against the baseline "
                    f"(candidate {m.candidate_mean:.4g}, baseline {m.baseline_mean:.4g}); "
                    f"at most {limit:.4g} is allowed (gate.max_regression)"
                )
        if metric in policy.floors:
            floor = policy.floors[metric]
            if math.isnan(floor):
                reasons.append(f"gate.floors[{metric!r}] is NaN; give a number")
            below = m.candidate_mean < floor if m.higher_is_better else m.candidate_mean > floor
            if below:
                word = "below the floor" if m.higher_is_better else "above the ceiling"
                reasons.append(
                    f"{metric} candidate mean {m.candidate_mean:.4g} is {word} {floor:.4g} (gate.floors)"
                )

    passed = primary_checked and not reasons
    if passed:
        m = metrics[primary]
        reasons.append(
            f"{primary} win rate {m.win_rate:.1%} ({ci} {m.win_rate_ci_low:.1%}–{m.win_rate_ci_high:.1%}) "
            f"over {n_prompts} prompts{exclusion_note} exceeds {policy.min_win_rate_ci_low:.1%}, and every "
            "other check passed"
        )
    elif not reasons:
        reasons.append(f"the primary metric {primary!r} was never checked; failing closed")
    return GateDecision(
        passed=passed,
        reasons=reasons,
        primary_metric=primary,
        n_prompts=n_prompts,
        metrics={name: mc.model_dump() for name, mc in metrics.items()},
        confidence=float(policy.confidence),
        excluded_prompts=[e.model_dump() for e in excluded],
        safety_flagged_prompts=flagged_prompts,
        safety_sign_test=sign_test,
    )


def safety_sign_test(excluded: Sequence[ExcludedPrompt], confidence: float = 0.95) -> SafetySignTest:
    """Paired one-sided sign test on flagged images per prompt (Dixon & Mood 1946), with the Wilson
    interval the win rate uses: ties (equal counts, including the unflagged prompts) carry no sign."""
    worse = differing = 0
    for item in excluded:
        if item.reason != SAFETY_CHECKER_FLAGGED:
            continue
        cand = item.flagged_images.get("candidate", 0)
        base = item.flagged_images.get("baseline", 0)
        if cand != base:
            differing += 1
            worse += int(cand > base)
    if differing == 0:
        return SafetySignTest(candidate_worse=0, differing=0, ci_low=None, ci_high=None)
    low, high = wilson_interval(worse, differing, confidence)
    return SafetySignTest(candidate_worse=worse, differing=differing, ci_low=low, ci_high=high)


def _flagged_prompts(excluded: Sequence[ExcludedPrompt]) -> dict[str, int]:
    """Per model, how many excluded prompts had at least one image the safety checker flagged."""
    counts = {"candidate": 0, "baseline": 0}
    for item in excluded:
        if item.reason != SAFETY_CHECKER_FLAGGED:
            continue
        for model in counts:
            if item.flagged_images.get(model, 0) > 0:
                counts[model] += 1
    return counts


def _flagged_images(excluded: Sequence[ExcludedPrompt]) -> dict[str, int]:
    """Per model, how many images of the excluded prompts the safety checker flagged."""
    counts = {"candidate": 0, "baseline": 0}
    for item in excluded:
        if item.reason == SAFETY_CHECKER_FLAGGED:
            for model in counts:
                counts[model] += int(item.flagged_images.get(model, 0))
    return counts


def _exclusion_note(excluded: Sequence[ExcludedPrompt]) -> str:
    """`` (N more excluded: reason)`` for reasons, naming how many prompts each reason left out."""
    if not excluded:
        return ""
    by_reason: dict[str, int] = {}
    for item in excluded:
        by_reason[item.reason] = by_reason.get(item.reason, 0) + 1
    listed = ", ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items()))
    return f" ({len(excluded)} more excluded: {listed})"
