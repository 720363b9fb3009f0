"""The label step: ``events.parquet`` -> desirable/undesirable ``train.parquet`` / ``val.parquet``.

``run(LabelConfig) -> LabelResult`` aggregates the feedback of each image under one labeling policy
(:mod:`components.label.policies`), splits prompts into train and val by a stable hash, caps the images per
prompt, computes the KTO class weights, and writes train.parquet, val.parquet, stats.json and data_card.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from components.shared.config import ConfigError, StepConfig


class VotesPolicy(BaseModel):
    """Aggregate likes/dislikes of one image."""

    model_config = {"extra": "forbid"}

    method: Literal["majority", "wilson"] = Field(
        "majority",
        description="`majority`: desirable when likes > dislikes. `wilson`: desirable when the Wilson lower "
        "bound of the like fraction is >= wilson_threshold, undesirable when the upper bound is below it "
        "(use when images have many votes and you want confident labels only).",
    )
    min_votes: int = Field(1, ge=1, description="Images with fewer likes+dislikes than this are dropped.")
    wilson_threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="Like fraction the bound is compared to."
    )
    wilson_z: float = Field(1.96, gt=0.0, description="Normal quantile of the Wilson interval (1.96 = 95%).")
    ties: Literal["drop", "desirable", "undesirable"] = Field(
        "drop",
        description="What an image with as many likes as dislikes (or an undecided Wilson interval) becomes.",
    )


class PairwisePolicy(BaseModel):
    """Turn pairwise preferences into per-image labels (Diffusion-KTO, Li et al. 2024, Sec. 4)."""

    model_config = {"extra": "forbid"}

    variant: Literal["win_intermediate", "win_only", "intermediate_undesirable"] = Field(
        "win_intermediate",
        description="`win_intermediate` (the paper's choice): an image preferred at least once is desirable, "
        "every other compared image undesirable. `win_only`: only images that always won are desirable and "
        "only images that always lost undesirable; images that both won and lost are dropped. "
        "`intermediate_undesirable`: only always-winners are desirable, everything else undesirable.",
    )


class ScoreThresholdPolicy(BaseModel):
    """Label images by a numeric score (reward, aesthetic), dropping the uncertain middle."""

    model_config = {"extra": "forbid"}

    mode: Literal["quantile", "absolute"] = Field(
        "quantile", description="Thresholds are quantiles of the image scores, or absolute score values."
    )
    desirable_above: float = Field(0.5, description="Scores >= this (quantile or value) are desirable.")
    undesirable_below: float = Field(0.5, description="Scores < this (quantile or value) are undesirable.")

    @model_validator(mode="after")
    def _check(self) -> ScoreThresholdPolicy:
        if self.undesirable_below > self.desirable_above:
            raise ValueError(
                f"score_threshold: undesirable_below ({self.undesirable_below}) must be <= "
                f"desirable_above ({self.desirable_above})"
            )
        if self.mode == "quantile" and not (0 <= self.undesirable_below <= self.desirable_above <= 1):
            raise ValueError("score_threshold: quantiles must lie in [0, 1]")
        return self


class UserFilterPolicy(BaseModel):
    """Keep one user's (or a cohort's) feedback only, then label it with another policy."""

    model_config = {"extra": "forbid"}

    user_ids: list[str] = Field(
        default_factory=list, description="The user or cohort whose feedback to keep."
    )
    then: Literal["votes", "pairwise", "score_threshold"] = Field(
        "votes", description="Policy applied to the kept feedback (configured in its own section)."
    )


class LabelConfig(StepConfig):
    """How to turn feedback events into a desirable/undesirable training set."""

    events: str = Field(description="events.parquet from ingest (or the ingest output directory).")
    output_dir: str = Field(
        description="Directory (local or gs://) for train/val.parquet, stats.json, data_card.md."
    )
    policy: Literal["votes", "pairwise", "score_threshold", "user_filter"] = Field(
        "votes",
        description="`votes` for like/dislike buttons; `pairwise` for A/B choices (Pick-a-Pic); "
        "`score_threshold` for a numeric reward; `user_filter` for a personalised model.",
    )
    votes: VotesPolicy = Field(
        default_factory=lambda: VotesPolicy.model_validate({}), description="Settings of the votes policy."
    )
    pairwise: PairwisePolicy = Field(
        default_factory=lambda: PairwisePolicy.model_validate({}),
        description="Settings of the pairwise policy.",
    )
    score_threshold: ScoreThresholdPolicy = Field(
        default_factory=lambda: ScoreThresholdPolicy.model_validate({}),
        description="Settings of the score_threshold policy.",
    )
    user_filter: UserFilterPolicy = Field(
        default_factory=lambda: UserFilterPolicy.model_validate({}),
        description="Settings of the user_filter policy.",
    )
    val_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of prompts held out for validation (whole prompts, never split).",
    )
    split_salt: str = Field(
        "dkto-split-v1", description="Salt of the prompt hash; change it to draw a different (stable) split."
    )
    max_images_per_prompt: int | None = Field(
        None, ge=1, description="Keep at most this many images per prompt (most-voted first); None keeps all."
    )
    desirable_ratio_range: tuple[float, float] = Field(
        (1.0, 4.0 / 3.0),
        description="Target range of λ_D·n_D / λ_U·n_U; the KTO paper (Ethayarajh et al. 2024, Sec. 4.2) "
        "recommends [1, 4/3]. The class weights in stats.json are the smallest change that lands in it.",
    )
    run_id: str | None = Field(None, description="Run id for telemetry (default: $DKTO_RUN_ID or 'local').")
    pushgateway: str | None = Field(
        None, description="Prometheus Pushgateway address (default: $DKTO_PUSHGATEWAY; none: no push)."
    )

    @model_validator(mode="after")
    def _check(self) -> LabelConfig:
        low, high = self.desirable_ratio_range
        if not (0 < low <= high):
            raise ConfigError(f"LabelConfig.desirable_ratio_range: need 0 < low <= high, got {low}, {high}")
        if self.policy == "user_filter" and not self.user_filter.user_ids:
            raise ConfigError(
                "LabelConfig.user_filter.user_ids: policy user_filter needs at least one user id"
            )
        return self


class LabelResult(BaseModel):
    """Where the outputs went and the class counts."""

    train_uri: str
    val_uri: str
    stats_uri: str
    data_card_uri: str
    policy: str
    train: dict[str, int] = Field(default_factory=dict, description="{desirable, undesirable} in train.")
    val: dict[str, int] = Field(default_factory=dict, description="{desirable, undesirable} in val.")
    dropped_by_reason: dict[str, int] = Field(default_factory=dict)
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


def run(config: LabelConfig) -> LabelResult:
    """Label the events; see the module docstring."""
    from components.label.pipeline import label
    from components.shared.arrow_pool import step_memory_pool

    with step_memory_pool():
        return label(config)
