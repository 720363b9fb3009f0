"""PickScore (Kirstain et al., "Pick-a-Pic", NeurIPS 2023): a CLIP-H fine-tuned on Pick-a-Pic preferences.

Formula, as in the PickScore repository's README (github.com/yuvalkirstain/PickScore, "Inference"):
``score = logit_scale.exp() * cos(text_embedding, image_embedding)``, both embeddings L2-normalised, the
model ``yuvalkirstain/PickScore_v1`` with the processor ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``
(CLIP preprocessing at 224 px, text padded and truncated to 77 tokens). Diffusion-KTO reports PickScore as
its primary automatic metric. Scores are around 20–23 for SD v1.5 images; higher is better.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from components.evaluate.scorers.base import Scorer
from components.evaluate.scorers.clip_common import clip_embeddings, load_clip

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def pickscore_from_embeddings(image_emb: np.ndarray, text_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """PickScore of matching rows: ``exp(logit_scale) * cos(text_i, image_i)`` (``logit_scale`` is the
    model's stored log-temperature, so ``exp`` gives CLIP's multiplier, 100 for a trained CLIP)."""
    image_emb = np.asarray(image_emb, dtype=np.float64)
    text_emb = np.asarray(text_emb, dtype=np.float64)
    image_emb = image_emb / np.linalg.norm(image_emb, axis=-1, keepdims=True)
    text_emb = text_emb / np.linalg.norm(text_emb, axis=-1, keepdims=True)
    return float(np.exp(logit_scale)) * np.sum(image_emb * text_emb, axis=-1)


class PickScoreScorer(Scorer):
    """PickScore on a CLIPModel (default ``yuvalkirstain/PickScore_v1``), from a directory, gs:// or hub id."""

    name = "pickscore"
    higher_is_better = True

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        processor_path: str | None = DEFAULT_PROCESSOR,
    ) -> None:
        super().__init__(model_path or DEFAULT_MODEL, device, batch_size)
        self.model, self.tokenizer, self.preprocess = load_clip(
            str(self.model_path), device, self.name, processor_path=processor_path
        )

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """PickScore of each (image, prompt) pair."""
        image_emb, text_emb = clip_embeddings(self.model, self.tokenizer, self.preprocess, images, prompts)
        scale = float(self.model.logit_scale.detach().float().cpu())
        return pickscore_from_embeddings(image_emb.cpu().numpy(), text_emb.cpu().numpy(), scale)
