"""LAION aesthetic score: the "improved aesthetic predictor" MLP on CLIP ViT-L/14 image embeddings.

Architecture and inference as in github.com/christophschuhmann/improved-aesthetic-predictor
(``simple_inference.py``): the image embedding of OpenAI CLIP ViT-L/14 (768-d), L2-normalised, goes through
``Linear(768,1024) → Dropout(0.2) → Linear(1024,128) → Dropout(0.2) → Linear(128,64) → Dropout(0.1) →
Linear(64,16) → Linear(16,1)`` (no activations: the ReLUs are commented out in the original), trained with
MSE on SAC + LAION-Logos + AVA ratings (``sac+logos+ava1-l14-linearMSE.pth``). Scores are roughly 1–10;
higher is better. The layer indices match the original ``nn.Sequential``, so its state dict loads as is.

``model_path`` is a directory (or gs:// URI) holding the CLIP ViT-L/14 files and the head weights in one of
``HEAD_FILENAMES``; a hub id is taken for the CLIP part, with ``head_path`` pointing at the weights file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.evaluate.scorers.base import Scorer, ScorerError
from components.evaluate.scorers.clip_common import features, load_clip, resolve_source
from components.shared import storage

DEFAULT_MODEL = "openai/clip-vit-large-patch14"
HEAD_FILENAMES = (
    "aesthetic_head.safetensors",
    "aesthetic_head.pth",
    "sac+logos+ava1-l14-linearMSE.pth",
)


def build_aesthetic_head(input_size: int = 768) -> Any:
    """The improved-aesthetic-predictor MLP (same ``nn.Sequential`` indices as the original)."""
    from torch import nn

    class AestheticHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_size = input_size
            self.layers = nn.Sequential(
                nn.Linear(input_size, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, x: Any) -> Any:
            return self.layers(x)

    return AestheticHead()


def load_head_state(head_path: str) -> dict[str, Any]:
    """The head's state dict from a .safetensors or a torch .pth file (local or gs://)."""
    import torch

    data = storage.read_bytes(head_path)
    if head_path.endswith(".safetensors"):
        from safetensors.torch import load

        return dict(load(data))
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return dict(state)


class AestheticScorer(Scorer):
    """LAION aesthetic score of each image (the prompt is not used)."""

    name = "aesthetic"
    higher_is_better = True

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        head_path: str | None = None,
    ) -> None:
        super().__init__(model_path or DEFAULT_MODEL, device, batch_size)
        source = resolve_source(str(self.model_path), self.name)
        self.model, _tokenizer, self.preprocess = _load_vision(source, device, self.name)
        head_path = head_path or _find_head(source, str(self.model_path))
        dim = int(self.model.config.projection_dim)
        self.head = build_aesthetic_head(dim)
        try:
            self.head.load_state_dict(load_head_state(head_path))
        except Exception as err:
            raise ScorerError(
                f"aesthetic: could not load the MLP head from {head_path} ({err}); it must be the "
                f"improved-aesthetic-predictor state dict for {dim}-d CLIP embeddings"
            ) from None
        self.head.eval().to(device)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """Aesthetic score of each image."""
        import torch

        pixels = torch.from_numpy(self.preprocess(images)).to(self.device)
        with torch.inference_mode():
            emb = features(self.model.get_image_features(pixel_values=pixels)).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            return self.head(emb).squeeze(-1).double().cpu().numpy()


def _load_vision(source: str, device: str, scorer: str) -> tuple[Any, Any, Any]:
    # The tokenizer is not needed, but a CLIP directory normally has one; fall back to the model alone.
    try:
        return load_clip(source, device, scorer)
    except ScorerError:
        from transformers import CLIPModel

        from components.evaluate.scorers.clip_common import ClipImagePreprocessor

        try:
            model = CLIPModel.from_pretrained(source).eval().to(device)
        except Exception as err:
            raise ScorerError(
                f"{scorer}: could not load a CLIP ViT-L/14 model from {source!r}: {err}"
            ) from None
        size = int(model.config.vision_config.image_size)
        return model, None, ClipImagePreprocessor.for_model(source, size)


def _find_head(source: str, model_path: str) -> str:
    for name in HEAD_FILENAMES:
        candidate = Path(source) / name
        if candidate.is_file():
            return str(candidate)
    raise ScorerError(
        f"aesthetic: no head weights in {model_path} (looked for {', '.join(HEAD_FILENAMES)}); put "
        "sac+logos+ava1-l14-linearMSE.pth from github.com/christophschuhmann/improved-aesthetic-predictor "
        "beside the CLIP files, or pass head_path"
    )
