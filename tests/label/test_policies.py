"""Labeling policies on hand-made cases whose right answers are written here."""

from __future__ import annotations

import numpy as np
import pytest

from components.label.policies import (
    class_weights,
    pairwise_to_binary,
    score_to_binary,
    votes_to_binary,
    wilson_interval,
)
from components.label.step import PairwisePolicy, ScoreThresholdPolicy, VotesPolicy


def _labels(desirable: np.ndarray, reason: np.ndarray) -> list[str]:
    return [r if r else ("D" if d else "U") for d, r in zip(desirable, reason, strict=True)]


def test_votes_majority_min_votes_and_ties() -> None:
    likes = np.array([3, 1, 2, 0, 1])
    dislikes = np.array([1, 3, 2, 1, 0])
    policy = VotesPolicy(method="majority", min_votes=2)
    assert _labels(*votes_to_binary(likes, dislikes, policy)) == [
        "D",
        "U",
        "images_tie",
        "images_too_few_votes",
        "images_too_few_votes",
    ]
    policy = VotesPolicy(method="majority", min_votes=1, ties="desirable")
    assert _labels(*votes_to_binary(likes, dislikes, policy)) == ["D", "U", "D", "U", "D"]
    policy = VotesPolicy(method="majority", ties="undesirable")
    assert _labels(*votes_to_binary(likes, dislikes, policy))[2] == "U"


def test_wilson_bounds_by_hand() -> None:
    # p = 0.9, n = 10, z = 1.96: (0.9 + 0.19208 -/+ 1.96*sqrt(0.009 + 0.009604)) / 1.38416
    lower, upper = wilson_interval(np.array([9, 6, 0]), np.array([10, 10, 10]), 1.96)
    assert lower[0] == pytest.approx(0.59584, abs=1e-4)
    assert (lower[1], upper[1]) == (pytest.approx(0.31267, abs=1e-4), pytest.approx(0.83182, abs=1e-4))
    assert upper[2] == pytest.approx(0.27754, abs=1e-4)


def test_votes_wilson() -> None:
    likes, dislikes = np.array([9, 6, 0, 1]), np.array([1, 4, 10, 0])
    policy = VotesPolicy(method="wilson", wilson_threshold=0.5, min_votes=2)
    # 9/10 is confidently liked, 6/10 undecided (interval straddles 0.5), 0/10 confidently disliked
    assert _labels(*votes_to_binary(likes, dislikes, policy)) == [
        "D",
        "images_tie",
        "U",
        "images_too_few_votes",
    ]


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        # A won twice; B won once and lost once (intermediate); C only lost; D only tied; E never compared
        ("win_intermediate", ["D", "D", "U", "images_tie_only", "images_never_compared"]),
        ("win_only", ["D", "images_intermediate", "U", "images_tie_only", "images_never_compared"]),
        ("intermediate_undesirable", ["D", "U", "U", "images_tie_only", "images_never_compared"]),
    ],
)
def test_pairwise_variants(variant: str, expected: list[str]) -> None:
    wins, losses, ties = np.array([2, 1, 0, 0, 0]), np.array([0, 1, 2, 0, 0]), np.array([0, 0, 1, 3, 0])
    assert _labels(*pairwise_to_binary(wins, losses, ties, PairwisePolicy(variant=variant))) == expected


def test_score_threshold_quantile_and_absolute() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    # quantiles by linear interpolation: q0.8 = 0.82, q0.2 = 0.28
    desirable, reason, high, low = score_to_binary(
        scores, ScoreThresholdPolicy(mode="quantile", desirable_above=0.8, undesirable_below=0.2)
    )
    assert (high, low) == (pytest.approx(0.82), pytest.approx(0.28))
    assert _labels(desirable, reason) == ["U", "U"] + ["images_middle_score"] * 6 + ["D", "D"]
    desirable, reason, high, low = score_to_binary(
        scores, ScoreThresholdPolicy(mode="absolute", desirable_above=0.75, undesirable_below=0.25)
    )
    assert _labels(desirable, reason) == ["U", "U"] + ["images_middle_score"] * 5 + ["D", "D", "D"]
    with pytest.raises(ValueError, match="undesirable_below"):
        ScoreThresholdPolicy(mode="absolute", desirable_above=0.2, undesirable_below=0.8)


def test_class_weights_keep_ratio_in_kto_range() -> None:
    assert class_weights(100, 300, (1.0, 4 / 3)) == (pytest.approx(3.0), 1.0)  # 3*100 / 300 = 1
    assert class_weights(200, 100, (1.0, 4 / 3)) == (1.0, pytest.approx(1.5))  # 200 / 150 = 4/3
    assert class_weights(120, 100, (1.0, 4 / 3)) == (1.0, 1.0)
    assert class_weights(0, 100, (1.0, 4 / 3)) == (1.0, 1.0)
