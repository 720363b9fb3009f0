"""The evaluate step: candidate vs production model on held-out prompts, scored, compared and gated.

``run(config)`` generates images for the same prompts and initial noise with both models, scores every
image with each configured scorer, compares the two models (``gate.compare``), applies the gate policy
(``gate.decide``) and writes, under ``output_dir``:

- ``images/candidate/``, ``images/baseline/`` (PNGs) with an ``index.parquet`` each;
- ``scores.parquet``: one row per image (model, prompt, prompt_index, image_index, seed, image_path,
  one column per metric);
- ``decision.json``: the verdict, its reasons and the numbers (schema in /work/contracts.md);
- ``metrics.json``: a flat ``{name: float}`` for KFP ``Metrics``;
- ``report.html``: one self-contained page for the person deciding whether to ship.

A model that cannot be loaded or a scorer that fails becomes a failed decision with the reason spelled
out, never an exception a pipeline could mistake for success.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from components.evaluate.gate import GatePolicy
from components.shared import storage
from components.shared.config import StepConfig
from components.shared.telemetry import StepTelemetry


class EvaluateConfig(StepConfig):
    """Configuration of one evaluation: which models, which prompts, which scorers, which gate."""

    candidate_model: str = Field(
        ..., description="The fine-tuned model to judge: a diffusers directory or gs:// URI."
    )
    baseline_model: str = Field(
        ...,
        description="The model it must beat: the one in production, or the base model when nothing is "
        "in production yet (directory or gs:// URI).",
    )
    baseline_version: str | None = Field(
        None,
        description="Registry version of the production model compared against (None: nothing is in "
        "production). Promotion later checks that production still points at it.",
    )
    prompts: str = Field(
        ...,
        description="Held-out prompts: a text file (one per line), JSONL or Parquet with a 'prompt' "
        "field, or the label step's val.parquet (its unique prompts are used).",
    )
    max_prompts: int | None = Field(
        None, ge=1, description="Use only the first N unique prompts (None: all of them)."
    )
    images_per_prompt: int = Field(
        4,
        ge=1,
        description="Images generated per prompt and model; the win rate compares the median-scoring "
        "image of each prompt (Diffusion-KTO's protocol uses several seeds per prompt).",
    )
    seed: int = Field(0, description="Base seed; each (prompt, image) pair gets its own noise from it.")
    num_inference_steps: int = Field(25, ge=1, description="Denoising steps per image.")
    guidance_scale: float = Field(7.5, ge=0.0, description="Classifier-free guidance scale.")
    scheduler: str = Field(
        "dpm_solver_multistep",
        description="Sampler used for both models (dpm_solver_multistep, ddim, euler, euler_ancestral, "
        "pndm, unipc, ddpm, or 'default' for the model's own).",
    )
    resolution: int | None = Field(
        None, ge=8, description="Image height and width in pixels (None: the model's default)."
    )
    generation_batch_size: int = Field(8, ge=1, description="Images generated per forward batch.")
    scorers: list[str] = Field(
        default_factory=lambda: ["pickscore", "clip_score", "aesthetic"],
        description="Scorer names (see components.evaluate.scorers.base.SCORERS).",
    )
    scorer_models: dict[str, str] = Field(
        default_factory=dict,
        description="Per scorer, where its weights are: a directory, gs:// URI or hub id "
        "(default: each scorer's public model).",
    )
    scorer_batch_size: int = Field(16, ge=1, description="Images per scorer forward batch.")
    device: str = Field("auto", description="'auto' (CUDA if present, else CPU), 'cpu' or 'cuda[:N]'.")
    dtype: str = Field(
        "auto",
        description="Generation precision: 'auto' (bf16 on GPUs that support it, else fp16; fp32 on "
        "CPU), 'bf16', 'fp16' or 'fp32'.",
    )
    gate: GatePolicy = Field(default_factory=lambda: GatePolicy.model_validate({}), description="The metric gate's thresholds.")
    report_top_k: int = Field(
        4, ge=0, description="Prompts with the largest gains (and losses) shown side by side in the report."
    )
    output_dir: str = Field(..., description="Where results go: a directory or gs:// prefix.")
    pushgateway: str | None = Field(
        None, description="Prometheus Pushgateway address (default: DKTO_PUSHGATEWAY)."
    )
    run_id: str | None = Field(None, description="Run id for metric labels (default: DKTO_RUN_ID).")

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: list[str]) -> list[str]:
        from components.evaluate.scorers.base import SCORERS

        unknown = [s for s in value if s not in SCORERS]
        if unknown:
            raise ValueError(f"unknown scorer(s) {unknown}; valid names: {sorted(SCORERS)}")
        if not value:
            raise ValueError("at least one scorer is needed (the gate's primary metric)")
        return list(dict.fromkeys(value))

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"dtype must be auto, bf16, fp16 or fp32, got {value!r}")
        return value

    @model_validator(mode="after")
    def _gate_metrics_are_scored(self) -> EvaluateConfig:
        missing = [m for m in self.gate.required_metrics() if m not in self.scorers]
        if missing:
            raise ValueError(
                f"the gate reads metric(s) {missing} that are not in scorers {self.scorers}; "
                "add them to scorers or change gate.primary_metric / max_regression / floors"
            )
        unknown_models = [k for k in self.scorer_models if k not in self.scorers]
        if unknown_models:
            raise ValueError(f"scorer_models names scorer(s) {unknown_models} not in scorers {self.scorers}")
        return self


class EvaluateResult(BaseModel):
    """What an evaluation produced: the verdict and where its artifacts are."""

    passed: bool
    reasons: list[str]
    n_prompts: int
    n_images: int
    metrics: dict[str, float] = Field(description="The flat metrics written to metrics.json.")
    decision_path: str
    scores_path: str
    report_path: str
    metrics_path: str
    duration_s: float = 0.0


def run(config: EvaluateConfig) -> EvaluateResult:
    """Generate, score, compare and gate; write the artifacts. Failures become a failed decision."""
    raise NotImplementedError("evaluate.run is being written (issue 4)")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _unused(*_: Any) -> None:  # pragma: no cover - placeholder to keep imports while run() is written
    _ = (math, time, storage, StepTelemetry)
