"""The demo's feedback simulator: the production model draws images for training prompts, the synthetic
user votes on each, and the votes are written as the product would export them.

Output (local directory or gs://): ``feedback.jsonl`` in the feedback input-record format of the contracts
(event_id, prompt, image_uri relative to the JSONL file, feedback like|dislike, user_id, created_at,
model_version) and the images as ``images/<event id>.png``. Nothing here is special to the demo except
who votes: ingest reads these files exactly as it reads a real export.
"""

from __future__ import annotations

import io
import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, Field, model_validator

from components.shared import storage
from components.shared.config import StepConfig
from components.shared.telemetry import StepTelemetry, get_logger
from pipelines.demo import world

log = get_logger(__name__)


class SimulateConfig(StepConfig):
    """How much feedback to simulate, from which model, and how careful the synthetic users are."""

    model: str = Field(
        description="The model users see (the production model): a diffusers pipeline dir or gs://."
    )
    output_dir: str = Field(description="Where feedback.jsonl and images/ are written (local dir or gs://).")
    n_images: int = Field(default=256, ge=1, description="How many images users vote on (one vote each).")
    seed: int = Field(default=0, description="Seed of prompt order, sampling noise and vote noise.")
    flip_probability: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="Share of votes a careless user flips (0: every vote is honest).",
    )
    num_inference_steps: int = Field(default=20, ge=1, description="Denoising steps per image (DDIM).")
    guidance_scale: float = Field(
        default=1.0,
        ge=0.0,
        description="Classifier-free guidance; the world's models are sampled without it (1.0), so the base "
        "model's colour errors show as they are instead of being sharpened away.",
    )
    batch_size: int = Field(default=64, ge=1, description="Images generated per forward pass.")
    n_users: int = Field(default=8, ge=1, description="How many distinct synthetic user ids cast the votes.")
    model_version: str = Field(
        default="base", description="Version label of the model written on each event."
    )

    @model_validator(mode="after")
    def _check(self) -> SimulateConfig:
        if not world.train_scenes():
            raise ValueError("the world has no training combinations")
        return self


class SimulateResult(BaseModel):
    """What the simulator wrote."""

    feedback_uri: str = Field(description="The JSONL file of feedback events.")
    n_events: int = Field(description="Events written (one per image).")
    n_likes: int = Field(description="Events with feedback 'like'.")
    n_dislikes: int = Field(description="Events with feedback 'dislike'.")
    n_flipped: int = Field(description="Votes the careless-user noise flipped.")
    like_rate: float = Field(
        description="n_likes / n_events: the production model's like-rate on training prompts."
    )


def training_prompts(n: int, seed: int) -> list[str]:
    """``n`` prompts of the training combinations (never a held-out one): each combination in turn, shuffled."""
    rng = random.Random(seed)
    scenes = world.train_scenes()
    prompts: list[str] = []
    while len(prompts) < n:
        order = scenes[:]
        rng.shuffle(order)
        prompts.extend(s.prompt for s in order)
    return prompts[:n]


def generate(pipe: Any, prompts: list[str], *, seed: int, steps: int = 20, guidance_scale: float = 1.0,
             batch_size: int = 64) -> list[Any]:  # fmt: skip
    """One image per prompt; image ``i`` depends only on (seed, i), not on the batch it falls in."""
    import torch

    images: list[Any] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + k) for k in range(len(chunk))]
        out = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=gens,
            height=world.IMAGE_SIZE,
            width=world.IMAGE_SIZE,
        )
        images.extend(out.images)
    return images


def run(config: SimulateConfig) -> SimulateResult:
    """Generate, vote, write feedback.jsonl and the PNGs; returns the counts."""
    from components.evaluate.scorers.judges import ColourMatchJudge
    from components.shared.models import load_pipeline

    telemetry = StepTelemetry("simulate")
    pipe = load_pipeline(config.model)
    prompts = training_prompts(config.n_images, config.seed)
    images = generate(
        pipe,
        prompts,
        seed=config.seed,
        steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        batch_size=config.batch_size,
    )
    honest = ColourMatchJudge()
    user = ColourMatchJudge(flip_probability=config.flip_probability, seed=config.seed)
    start_time = datetime.now(timezone.utc).replace(microsecond=0)
    lines: list[str] = []
    n_likes = n_flipped = 0
    for i, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
        event_id = f"sim-{config.seed}-{i:06d}"
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        storage.write_bytes(storage.join(config.output_dir, "images", f"{event_id}.png"), buf.getvalue())
        liked = user.like(image, prompt)
        n_likes += liked
        n_flipped += liked != honest.like(image, prompt)
        record = {
            "event_id": event_id,
            "prompt": prompt,
            "image_uri": f"images/{event_id}.png",
            "feedback": "like" if liked else "dislike",
            "user_id": f"synthetic-user-{i % config.n_users}",
            "created_at": (start_time + timedelta(seconds=i)).isoformat(),
            "model_version": config.model_version,
        }
        lines.append(json.dumps(record))
    feedback_uri = storage.join(config.output_dir, "feedback.jsonl")
    storage.write_text(feedback_uri, "\n".join(lines) + "\n")
    n = len(prompts)
    telemetry.counter(
        "dkto_simulate_events_total", "Simulated feedback events written.", ("feedback",)
    ).labels(feedback="like").inc(n_likes)
    telemetry.counter(
        "dkto_simulate_events_total", "Simulated feedback events written.", ("feedback",)
    ).labels(feedback="dislike").inc(n - n_likes)
    telemetry.push()
    log.info("simulated %d events (%d likes, %d flipped) into %s", n, n_likes, n_flipped, feedback_uri)
    return SimulateResult(
        feedback_uri=feedback_uri,
        n_events=n,
        n_likes=n_likes,
        n_dislikes=n - n_likes,
        n_flipped=n_flipped,
        like_rate=n_likes / n,
    )
