"""The synthetic preference benchmark: does fine-tuning on the synthetic user's votes raise its like-rate?

One round of the product loop, with the real steps: the base model's images for training prompts get the
synthetic user's votes (``simulate``), ingest and label turn them into train.parquet, the trainer fine-tunes
with each objective (Diffusion-KTO, SFT on liked images, Diffusion-DPO on liked x disliked pairs of a
prompt) for the same number of steps and images seen, and each model's like-rate is measured on the
held-out combinations with the same seeds. Used by ``tests/benchmarks/bench_alignment.py`` (full size)
and ``tests/demo/test_alignment.py`` (short).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from pipelines.demo import world
from pipelines.demo.cli import BASE_MODEL, wilson_interval


class ObjectiveSettings(BaseModel):
    """Training settings of one objective in the benchmark (TrainConfig fields)."""

    objective: str = Field(description="kto, sft or dpo.")
    name: str = Field(default="", description="Row name in the results (default: the objective).")
    beta: float = Field(default=500.0, description="β of KTO / DPO (unused by SFT).")
    learning_rate: float = Field(default=1e-4, description="Peak learning rate.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Other TrainConfig fields.")
    label_class_weights: bool | None = Field(
        default=None,
        description="Pass the label step's λ_D/λ_U to the trainer. None: as the pipeline does (only with "
        "uniform sampling, desirable_ratio null; with the γ sampler 1 and 1); True: always; False: 1 and 1.",
    )

    def uses_label_weights(self) -> bool:
        """Whether this arm trains with the label step's class weights (see label_class_weights)."""
        from components.train.step import uses_label_class_weights

        if self.label_class_weights is not None:
            return self.label_class_weights
        # as the pipeline's training task decides (TrainConfig's default γ is 0.8)
        return uses_label_class_weights(self.extra.get("desirable_ratio", 0.8), set(self.extra))

    @property
    def label(self) -> str:
        """The name of this arm in tables and work directories."""
        return self.name or self.objective


class ModelScore(BaseModel):
    """One model's like-rate on the held-out prompts."""

    name: str
    likes: int
    images: int
    rate: float
    ci_low: float
    ci_high: float
    train_seconds: float = 0.0
    images_seen: int = 0
    train_figures: dict[str, Any] = Field(
        default_factory=dict,
        description="Trainer figures at the last logged step (loss, reward margin, accuracy, z).",
    )


def held_out_like_rate(model: str, n_images: int, seed: int, steps: int = 20) -> tuple[int, int]:
    """(likes, images) of ``model`` on ``n_images`` held-out prompts (each combination in turn), fixed seeds."""
    from components.evaluate.scorers.judges import ColourMatchJudge
    from components.shared.models import load_pipeline
    from pipelines.demo.simulate import generate

    held = world.held_out_scenes()
    prompts = [held[i % len(held)].prompt for i in range(n_images)]
    pipe = load_pipeline(model)
    images = generate(pipe, prompts, seed=seed, steps=steps)
    likes = int(ColourMatchJudge().score(images, prompts).sum())
    return likes, len(prompts)


def score(name: str, likes: int, n: int, **kw: Any) -> ModelScore:
    """A ModelScore with its Wilson 95% interval."""
    low, high = wilson_interval(likes, n)
    return ModelScore(name=name, likes=likes, images=n, rate=likes / n, ci_low=low, ci_high=high, **kw)


def prepare_feedback(
    workdir: Path,
    n_feedback: int,
    seed: int,
    flip_probability: float = 0.0,
    base_model: str = str(BASE_MODEL),
) -> dict[str, Any]:
    """Simulate feedback on the base model, ingest and label it; returns paths and counts."""
    from components.ingest.step import IngestConfig
    from components.ingest.step import run as ingest
    from components.label.step import LabelConfig
    from components.label.step import run as label
    from pipelines.demo.simulate import SimulateConfig
    from pipelines.demo.simulate import run as simulate

    fb = simulate(
        SimulateConfig(
            model=base_model,
            output_dir=str(workdir / "feedback"),
            n_images=n_feedback,
            seed=seed,
            flip_probability=flip_probability,
        )
    )
    ingest(IngestConfig.model_validate({"sources": [fb.feedback_uri], "output_dir": str(workdir / "events")}))
    # Every prompt trains (the benchmark's evaluation prompts are the held-out combinations instead).
    labelled = label(
        LabelConfig.model_validate(
            {"events": str(workdir / "events"), "output_dir": str(workdir / "labelled"), "val_fraction": 0.0}
        )
    )
    return {"feedback": fb, "train_data": str(workdir / "labelled" / "train.parquet"), "label": labelled}


def fine_tune(
    workdir: Path,
    train_data: str,
    settings: ObjectiveSettings,
    *,
    max_steps: int,
    images_per_step: int,
    seed: int,
    class_weights: tuple[float, float] = (1.0, 1.0),
    base_model: str = str(BASE_MODEL),
) -> tuple[str, float, int, dict[str, Any]]:
    """Train one objective; returns (model dir, seconds, images seen, last logged trainer figures).

    DPO's batch counts pairs, so it gets half as many pairs per step: every objective sees the same
    number of images.
    """
    from components.train.step import TrainConfig
    from components.train.step import run as train

    batch = images_per_step // 2 if settings.objective == "dpo" else images_per_step
    out = workdir / f"model-{settings.label}"
    fields: dict[str, Any] = {
        "pretrained_model": base_model,
        "train_data": train_data,
        "output_dir": str(out),
        "checkpoint_dir": str(workdir / f"ckpt-{settings.label}"),
        "cache_dir": str(workdir / "train-cache"),
        "objective": settings.objective,
        "beta": settings.beta,
        "learning_rate": settings.learning_rate,
        "max_steps": max_steps,
        "train_batch_size": batch,
        "mixed_precision": "no",
        "use_lora": False,
        "resolution": world.IMAGE_SIZE,
        "seed": seed,
        "device": "cpu",
        "progress_bar": False,
        "lr_warmup_steps": max(1, max_steps // 20),
        "caption_dropout": 0.0,
        # λ_D/λ_U as the pipeline's training task chooses them (ObjectiveSettings.uses_label_weights).
        "desirable_weight": class_weights[0],
        "undesirable_weight": class_weights[1],
        "checkpoint_every": max_steps * 10,
        **settings.extra,
    }
    started = time.monotonic()
    result = train(TrainConfig.model_validate(fields))
    images_seen = max_steps * batch * (2 if settings.objective == "dpo" else 1)
    figures = result.model_dump(include={"final_loss", "reward_margin", "reward_accuracy", "reference_point"})
    return str(out), time.monotonic() - started, images_seen, figures


def run_benchmark(
    workdir: Path,
    objectives: list[ObjectiveSettings],
    *,
    n_feedback: int = 512,
    max_steps: int = 200,
    images_per_step: int = 16,
    eval_images: int = 240,
    seed: int = 0,
    flip_probability: float = 0.0,
    base_model: str = str(BASE_MODEL),
    inference_steps: int = 20,
    max_images_per_prompt: int | None = None,
) -> dict[str, Any]:
    """Base model plus each objective, scored on the same held-out prompts and seeds.

    ``max_images_per_prompt``: keep only the first K voted images of each training prompt (1: one vote
    per prompt, so DPO has no pairs at all, the unpaired setting KTO was designed for); objectives
    that cannot train on what is left (DPO without pairs) are reported as skipped.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = prepare_feedback(workdir, n_feedback, seed, flip_probability, base_model)
    if max_images_per_prompt is not None:
        prepared.update(thin_feedback(prepared["train_data"], max_images_per_prompt))
    eval_seed = 10_000 + seed
    scores = [score("base", *held_out_like_rate(base_model, eval_images, eval_seed, inference_steps))]
    label_weights = prepared.get(
        "class_weights", (prepared["label"].desirable_weight, prepared["label"].undesirable_weight)
    )
    skipped: dict[str, str] = {}
    for settings in objectives:
        if settings.objective == "dpo" and prepared.get("n_pairs", 1) == 0:
            skipped[settings.label] = "no (liked, disliked) pair of the same prompt in the feedback"
            continue
        model, seconds, seen, figures = fine_tune(
            workdir,
            prepared["train_data"],
            settings,
            max_steps=max_steps,
            images_per_step=images_per_step,
            seed=seed,
            class_weights=label_weights if settings.uses_label_weights() else (1.0, 1.0),
            base_model=base_model,
        )
        likes, n = held_out_like_rate(model, eval_images, eval_seed, inference_steps)
        scores.append(
            score(
                settings.label,
                likes,
                n,
                train_seconds=round(seconds, 1),
                images_seen=seen,
                train_figures=figures,
            )
        )
    return {
        "feedback": prepared["feedback"],
        "label": prepared["label"],
        "scores": scores,
        "skipped": skipped,
        "train_counts": prepared.get("train_counts"),
        "class_weights": label_weights,
        "n_pairs": prepared.get("n_pairs"),
    }


def thin_feedback(train_data: str, max_images_per_prompt: int) -> dict[str, Any]:
    """Write train-first<K>.parquet beside ``train_data`` with the first K rows of each prompt.

    Returns the new path, its liked/disliked counts, the number of DPO pairs left and the class weights the
    label step's rule (λ_D·n_D / λ_U·n_U in [1, 4/3]) gives for the thinned counts.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.label.policies import class_weights

    if max_images_per_prompt < 1:
        raise ValueError(f"max_images_per_prompt must be >= 1, got {max_images_per_prompt}")
    rows = pq.read_table(train_data).to_pylist()
    seen: dict[str, int] = {}
    kept = []
    for row in rows:
        if seen.get(row["prompt"], 0) < max_images_per_prompt:
            seen[row["prompt"]] = seen.get(row["prompt"], 0) + 1
            kept.append(row)
    out = str(Path(train_data).with_name(f"train-first{max_images_per_prompt}.parquet"))
    pq.write_table(pa.Table.from_pylist(kept), out)
    n_d = sum(1 for r in kept if r["desirable"])
    n_u = len(kept) - n_d
    by_prompt: dict[str, list[int]] = {}
    for r in kept:
        counts = by_prompt.setdefault(r["prompt"], [0, 0])
        counts[0 if r["desirable"] else 1] += 1
    n_pairs = sum(d * u for d, u in by_prompt.values())
    return {
        "train_data": out,
        "train_counts": {"desirable": n_d, "undesirable": n_u, "dropped": len(rows) - len(kept)},
        "n_pairs": n_pairs,
        "class_weights": class_weights(n_d, n_u, (1.0, 4 / 3)),
    }
