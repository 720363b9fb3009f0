"""CLIP score (Hessel et al., "CLIPScore", EMNLP 2021), as torchmetrics defines it.

torchmetrics' ``CLIPScore`` computes ``100 * max(cos(image_embedding, text_embedding), 0)`` per pair
(torchmetrics/functional/multimodal/clip_score.py, ``_clip_score_update``: ``score = 100 * (img_features *
txt_features).sum(axis=-1)``, then ``torch.max(score, zeros)``) with ``openai/clip-vit-large-patch14`` by
default. Its path is broken on transformers 5 (``get_image_features`` returns an output object), so the
same formula is computed here on a ``CLIPModel`` directly. Range 0–100; higher is better.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from components.evaluate.scorers.base import Scorer
from components.evaluate.scorers.clip_common import clip_embeddings, load_clip

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


def clip_score_from_embeddings(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """``100 * max(cos(image_i, text_i), 0)`` for matching rows."""
    image_emb = np.asarray(image_emb, dtype=np.float64)
    text_emb = np.asarray(text_emb, dtype=np.float64)
    image_emb = image_emb / np.linalg.norm(image_emb, axis=-1, keepdims=True)
    text_emb = text_emb / np.linalg.norm(text_emb, axis=-1, keepdims=True)
    return 100.0 * np.maximum(np.sum(image_emb * text_emb, axis=-1), 0.0)


class CLIPScoreScorer(Scorer):
    """CLIP score on a CLIPModel (default ``openai/clip-vit-large-patch14``), from a directory, gs:// or hub id."""

    name = "clip_score"
    higher_is_better = True

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 16) -> None:
        super().__init__(model_path or DEFAULT_MODEL, device, batch_size)
        self.model, self.tokenizer, self.preprocess = load_clip(str(self.model_path), device, self.name)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """CLIP score of each (image, prompt) pair."""
        image_emb, text_emb = clip_embeddings(self.model, self.tokenizer, self.preprocess, images, prompts)
        return clip_score_from_embeddings(image_emb.cpu().numpy(), text_emb.cpu().numpy())
