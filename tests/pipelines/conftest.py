"""Fixtures of the pipeline tests: a small synthetic feedback set and a local run's parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

PROMPTS = ("a red circle", "a blue square", "a green star")
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def write_feedback(root: Path) -> Path:
    """Two 32 px PNGs per prompt (one liked: the prompt's colour; one disliked: grey) and a JSONL of votes."""
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True)
    events: list[dict[str, Any]] = []
    for i, prompt in enumerate(PROMPTS):
        colour = COLOURS[prompt.split()[1]]
        for kind, fill in (("liked", colour), ("disliked", (128, 128, 128))):
            image = Image.new("RGB", (32, 32), (255, 255, 255))
            image.paste(fill, (8, 8, 24, 24))
            name = f"{i}-{kind}.png"
            image.save(images / name)
            events.append(
                {
                    "event_id": f"e{i}-{kind}",
                    "prompt": prompt,
                    "image_uri": f"images/{name}",
                    "feedback": "like" if kind == "liked" else "dislike",
                    "user_id": "u1",
                }
            )
    path = root / "feedback.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


@pytest.fixture
def local_run_args(tmp_path: Path, tiny_sd: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``--set`` overrides of a fast local run: tiny model, 2 training steps, 3 prompts, 1 image each."""
    monkeypatch.setenv("DKTO_CACHE_DIR", str(tmp_path / "cache"))
    feedback = write_feedback(tmp_path / "feedback")
    prompts = tmp_path / "eval_prompts.txt"
    prompts.write_text("".join(p + "\n" for p in PROMPTS))
    return [
        f"feedback_sources=[{feedback}]",
        f"base_model={tiny_sd}",
        f"registry_uri=sqlite:///{tmp_path / 'registry' / 'mlflow.db'}",
        f"outputs_root={tmp_path / 'outputs'}",
        f"checkpoint_root={tmp_path / 'checkpoints'}",
        "val_fraction=0.0",
        "max_steps=2",
        "train_batch_size=2",
        "learning_rate=1e-4",
        "mixed_precision=no",
        "resolution=32",
        "gpus_per_node=0",
        "train_options={lr_warmup_steps: 0, device: cpu, dataloader_workers: 0}",
        f"eval_prompts={prompts}",
        "images_per_prompt=1",
        "eval_inference_steps=2",
        "scorers=[colour_match]",
        "gate_primary_metric=colour_match",
        "eval_options={device: cpu, dtype: fp32, resolution: 32}",
    ]
