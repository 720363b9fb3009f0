"""Tiny scorer models built from configs, for tests, demos and benchmarks (no weights are downloaded).

The architecture is the real one (``transformers.CLIPModel`` and the LAION aesthetic MLP head), with random
weights and small widths, saved with ``save_pretrained`` so the scorers load it the way they load PickScore
or CLIP ViT-L/14.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_clip(
    path: str | Path, *, seed: int = 0, projection_dim: int = 16, image_size: int = 32
) -> Path:
    """A CLIPModel (random weights, 2-layer text and vision towers), its tokenizer and an aesthetic head,
    saved in one directory: loadable by the pickscore, clip_score and aesthetic scorers like the real ones."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from components.evaluate.scorers.aesthetic import build_aesthetic_head
    from components.shared.tiny_models import write_tokenizer

    path = Path(path)
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
