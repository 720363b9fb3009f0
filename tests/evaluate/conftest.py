"""Fixtures of the evaluate tests: a tiny random CLIPModel (the real architecture) saved to disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from components.evaluate.tiny_scorers import build_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel + tokenizer + aesthetic head in one directory; treat as read-only."""
    return build_tiny_clip(tmp_path_factory.mktemp("scorers") / "tiny-clip")


@pytest.fixture
def coloured_images() -> list:
    """Six small images of different colours and sizes (not all square), with prompts."""
    from PIL import Image

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 0, 0), (200, 200, 200)]
    sizes = [(32, 32), (48, 32), (32, 40), (64, 64), (32, 32), (40, 40)]
    return [Image.new("RGB", s, c) for s, c in zip(sizes, colours, strict=True)]


@pytest.fixture(scope="session")
def tiny_sd_other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny SD pipeline with different random weights (a 'production' model to compare with)."""
    from components.shared.tiny_models import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-other", seed=1)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run the evaluate tests' tiny models on one intra-op thread, restored afterwards.

    On a shared 2-core machine, torch's OpenMP workers spin-wait for each other; for 32-px models one
    thread measured ~10x less CPU per UNet forward than two (0.13 s vs 1.5 s, load average ~10).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
