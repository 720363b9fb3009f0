"""Fixtures of the trainer tests: a tiny train.parquet with small PNGs written here, and a config maker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 40)}


def write_manifest(
    folder: Path, n_prompts: int = 2, per_class: int = 2, seed: int = 0, name: str = "train.parquet"
) -> Path:
    """Write PNGs and a train.parquet (label-step contract) with liked and disliked images per prompt."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "sample_id prompt image_uri image_sha256 desirable n_events n_likes n_dislikes n_wins n_losses score "
            "policy split"
        ).split()
    }
    colours = list(COLOURS.items())
    for p in range(n_prompts):
        prompt = f"a photo of a {colours[p % 4][0]} circle"
        for desirable in (True, False):
            for k in range(per_class):
                colour = colours[p % 4][1] if desirable else colours[(p + 1) % 4][1]
                arr = np.clip(np.array(colour) + rng.integers(-20, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
                fname = f"img-{p}-{int(desirable)}-{k}.png"
                Image.fromarray(arr).save(folder / fname)
                rows["sample_id"].append(f"s{p}{int(desirable)}{k}")
                rows["prompt"].append(prompt)
                rows["image_uri"].append(fname)  # relative to the manifest's folder (contract allows it)
                rows["image_sha256"].append(None)
                rows["desirable"].append(desirable)
                for col in ("n_events", "n_likes", "n_dislikes", "n_wins", "n_losses"):
                    rows[col].append(1)
                rows["score"].append(None)
                rows["policy"].append("like_dislike")
                rows["split"].append("train")
    table = pa.table(rows)
    path = folder / name
    pq.write_table(table, path)
    return path


@pytest.fixture
def train_manifest(tmp_path: Path) -> Path:
    """A train.parquet with 2 prompts × (2 liked + 2 disliked) 40×48 PNGs."""
    return write_manifest(tmp_path / "data")


@pytest.fixture
def make_config(tmp_path: Path, tiny_sd: Path, train_manifest: Path) -> Callable[..., Any]:
    """Build a small TrainConfig (tiny SD, 2 steps, batch 2, resolution 32) with overrides."""
    from components.train.step import TrainConfig

    def make(**overrides: Any) -> TrainConfig:
        base: dict[str, Any] = {
            "pretrained_model": str(tiny_sd),
            "train_data": str(train_manifest),
            "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache"),
            "max_steps": 2,
            "train_batch_size": 2,
            "resolution": 32,
            "learning_rate": 1e-4,
            "lr_warmup_steps": 0,
            "checkpoint_every": 0,
            "progress_bar": False,
            "dataloader_workers": 0,
            "seed": 0,
        }
        base.update(overrides)
        return TrainConfig.model_validate(base)

    return make


@pytest.fixture
def manifest_writer() -> Callable[..., Path]:
    """The ``write_manifest`` helper, for tests that need a second (changed) dataset."""
    return write_manifest


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run the trainer tests with one intra-op thread: on the shared 2-core CI box, OpenMP threads of
    several test processes spin against each other and a 4-second run takes 80 seconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
