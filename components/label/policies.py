"""Labeling policies: per-image feedback counts -> desirable / undesirable / dropped (with a reason).

Each policy is a pure function over numpy arrays of one image's aggregated feedback, so it can be tested on
hand-made cases and runs vectorised on millions of images. Return value: ``(desirable, reason)`` where
``desirable`` is a bool array and ``reason`` an object array, "" for labeled images and the drop reason
otherwise (``desirable`` is meaningless where ``reason`` is set).
"""

from __future__ import annotations

import numpy as np

from components.label.step import PairwisePolicy, ScoreThresholdPolicy, VotesPolicy


def wilson_interval(likes: np.ndarray, total: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of the like fraction (Wilson 1927): (lower, upper); (0, 1) where total is 0."""
    n = np.maximum(total, 1).astype(float)
    p = likes / n
    centre = p + z * z / (2 * n)
    margin = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    lower = np.where(total > 0, (centre - margin) / denom, 0.0)
    upper = np.where(total > 0, (centre + margin) / denom, 1.0)
    return lower, upper


def votes_to_binary(
    likes: np.ndarray, dislikes: np.ndarray, policy: VotesPolicy
) -> tuple[np.ndarray, np.ndarray]:
    """Likes/dislikes per image -> label. Majority: more likes than dislikes is desirable; Wilson: the
    interval of the like fraction lies wholly above (desirable) or below (undesirable) the threshold."""
    total = likes + dislikes
    reason = np.full(len(total), "", dtype=object)
    if policy.method == "majority":
        desirable = likes > dislikes
        tie = likes == dislikes
    else:
        lower, upper = wilson_interval(likes, total, policy.wilson_z)
        desirable = lower >= policy.wilson_threshold
        tie = ~desirable & (upper >= policy.wilson_threshold)
    if policy.ties == "drop":
        reason[tie] = "images_tie"
    else:
        desirable = np.where(tie, policy.ties == "desirable", desirable)
    reason[total < policy.min_votes] = "images_too_few_votes"
    return desirable, reason


def pairwise_to_binary(
    wins: np.ndarray, losses: np.ndarray, ties: np.ndarray, policy: PairwisePolicy
) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise outcomes per image -> label (Diffusion-KTO, Li et al. 2024: "win + intermediate" and the
    two ablation variants). An image that was only ever in ties (or never compared) is dropped."""
    reason = np.full(len(wins), "", dtype=object)
    won, lost = wins > 0, losses > 0
    if policy.variant == "win_intermediate":
        desirable = won
    elif policy.variant == "win_only":
        desirable = won & ~lost
        reason[won & lost] = "images_intermediate"
    else:  # intermediate_undesirable
        desirable = won & ~lost
    reason[~won & ~lost] = np.where(ties[~won & ~lost] > 0, "images_tie_only", "images_never_compared")
    return desirable, reason


def score_to_binary(
    scores: np.ndarray, policy: ScoreThresholdPolicy
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Mean score per image -> label: >= the upper threshold desirable, < the lower undesirable, the middle
    dropped. Returns the thresholds actually used (quantiles resolved to score values)."""
    reason = np.full(len(scores), "", dtype=object)
    finite = np.isfinite(scores)
    if policy.mode == "quantile" and finite.any():
        high = float(np.quantile(scores[finite], policy.desirable_above))
        low = float(np.quantile(scores[finite], policy.undesirable_below))
    else:
        high, low = policy.desirable_above, policy.undesirable_below
    desirable = scores >= high
    undesirable = scores < low
    reason[~desirable & ~undesirable] = "images_middle_score"
    reason[~finite] = "images_no_score"
    return desirable, reason, high, low


def class_weights(
    n_desirable: int, n_undesirable: int, ratio_range: tuple[float, float]
) -> tuple[float, float]:
    """(λ_D, λ_U) closest to 1 such that λ_D·n_D / λ_U·n_U lies in ``ratio_range`` (KTO, Ethayarajh et al.
    2024, Sec. 4.2 recommends [1, 4/3]): the under-represented side is up-weighted, never both."""
    if n_desirable == 0 or n_undesirable == 0:
        return 1.0, 1.0
    low, high = ratio_range
    ratio = n_desirable / n_undesirable
    if ratio < low:
        return low / ratio, 1.0
    if ratio > high:
        return 1.0, ratio / high
    return 1.0, 1.0
