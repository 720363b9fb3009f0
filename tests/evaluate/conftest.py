"""Fixtures of the evaluate tests: a tiny random CLIPModel (the real architecture) saved to disk."""

from __future__ import annotations

from pathlib import Path

import pytest


def build_tiny_clip(path: Path, *, seed: int = 0, projection_dim: int = 16, image_size: int = 32) -> Path:
    """A CLIPModel with a 2-layer text and vision tower, its tokenizer, and an aesthetic head, saved."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from components.evaluate.scorers.aesthetic import build_aesthetic_head
    from components.shared.tiny_models import write_tokenizer

    torch.manual_seed(seed)
    write_tokenizer(path)
    tokenizer = CLIPTokenizer.from_pretrained(path)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=projection_dim,
    )
    model = CLIPModel(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    from safetensors.torch import save_file

    head = build_aesthetic_head(projection_dim)
    save_file(
        {k: v.contiguous() for k, v in head.state_dict().items()}, str(path / "aesthetic_head.safetensors")
    )
    return path


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
