"""Tiny scorer models built from configs, for tests, demos and benchmarks (no weights are downloaded).

The architecture is the real one (``transformers.CLIPModel`` and the LAION aesthetic MLP head), with random
weights and small widths, saved with ``save_pretrained`` so the scorers load it the way they load PickScore
or CLIP ViT-L/14.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def build_tiny_safety_checker(
    *, seed: int = 0, image_size: int = 32, flag_images: list | None = None, pass_images: list | None = None
) -> tuple:
    """SD v1.5's safety checker (diffusers' ``StableDiffusionSafetyChecker``, random tiny CLIP vision
    tower) and its feature extractor, set to flag exactly ``flag_images`` (PIL images), or none.

    The checker flags an image when the cosine of its embedding with a concept embedding exceeds that
    concept's threshold (``safety_checker.py``). Here concept ``k`` is the embedding of ``flag_images[k]``
    and its threshold lies halfway between 1 (the image itself) and the highest cosine with any of
    ``pass_images``, so the same images drawn again are flagged and the others are not. Returns
    ``(checker, feature_extractor)`` for ``add_safety_checker``.
    """
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessorPil

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    # transformers 5's CLIPImageProcessor needs torchvision; the PIL class preprocesses the same way.
    extractor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    flag_images, pass_images = list(flag_images or []), list(pass_images or [])
    n_concepts = checker.concept_embeds.shape[0]
    if len(flag_images) > n_concepts:
        raise ValueError(
            f"flag_images: at most {n_concepts} images (one per concept), got {len(flag_images)}"
        )
    with torch.no_grad():
        # A threshold above any cosine: nothing is flagged unless a concept below says so.
        checker.concept_embeds_weights.fill_(10.0)
        checker.special_care_embeds_weights.fill_(10.0)
        if flag_images:
            embeds = _checker_embeddings(checker, extractor, flag_images + pass_images)
            flagged, passing = embeds[: len(flag_images)], embeds[len(flag_images) :]
            highest = float((flagged @ passing.T).max()) if len(passing) else 0.0
            if highest > 0.998:
                raise ValueError(
                    f"a pass image is as close as {highest:.4f} to a flag image; cannot separate"
                )
            checker.concept_embeds[: len(flagged)] = flagged
            checker.concept_embeds_weights[: len(flagged)] = (1.0 + highest) / 2
    return checker, extractor


def _checker_embeddings(checker: Any, extractor: Any, images: list) -> Any:
    """L2-normalised image embeddings as the safety checker computes them."""
    import torch

    pixels = extractor(images, return_tensors="pt").pixel_values
    pooled = checker.vision_model(pixels)[1]
    return torch.nn.functional.normalize(checker.visual_projection(pooled), dim=-1)


def add_safety_checker(model: str | Path, path: str | Path, checker: Any, feature_extractor: Any) -> Path:
    """A copy of the diffusers SD model at ``model``, saved to ``path`` with ``checker`` as its safety
    checker (``requires_safety_checker: true``, as in SD v1.5's model_index.json)."""
    from components.shared.models import load_pipeline

    pipe = load_pipeline(str(model))
    pipe.register_modules(safety_checker=checker, feature_extractor=feature_extractor)
    pipe.register_to_config(requires_safety_checker=True)
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)
