"""ImageReward (Xu et al., "ImageReward", NeurIPS 2023): a BLIP-based reward model of human preference.

Optional extra ``imagereward`` (``pip install 'diffusion-kto-pipelines[imagereward]'``, the ``image-reward``
package): its BLIP backbone and checkpoint loading live in that package (github.com/THUDM/ImageReward), and
this scorer calls its public API, ``ImageReward.load(name_or_path).score(prompt, image)``, whose output is
the reward normalised by the training set's mean and std (about −2…2; higher is better).
``model_path`` is a checkpoint path (local or gs://) or the release name (default ``ImageReward-v1.0``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from components.evaluate.scorers.base import Scorer, ScorerError
from components.shared import storage

DEFAULT_MODEL = "ImageReward-v1.0"


def import_image_reward() -> Any:
    """The ``ImageReward`` package, or a ScorerError that names the optional extra to install."""
    try:
        import ImageReward
    except ImportError as err:
        raise ScorerError(
            "imagereward: ImageReward needs the optional extra 'imagereward' (the image-reward package): "
            f"pip install 'diffusion-kto-pipelines[imagereward]' ({err})"
        ) from None
    return ImageReward


class ImageRewardScorer(Scorer):
    """ImageReward of each (image, prompt) pair (optional extra ``imagereward``)."""

    name = "imagereward"
    higher_is_better = True

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 16) -> None:
        super().__init__(model_path or DEFAULT_MODEL, device, batch_size)
        image_reward = import_image_reward()
        source = str(self.model_path)
        if storage.is_gcs(source):
            local = storage.cache_root() / "imagereward" / source.rsplit("/", 1)[-1]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(storage.read_bytes(source))
            source = str(local)
        try:
            self.model = image_reward.load(source, device=device)
        except Exception as err:
            raise ScorerError(f"imagereward: could not load {self.model_path}: {err}") from None

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """ImageReward of each pair (the package scores one prompt at a time)."""
        out = [
            float(np.ravel(self.model.score(p, im.convert("RGB")))[0])
            for im, p in zip(images, prompts, strict=True)
        ]
        return np.asarray(out, dtype=np.float64)
