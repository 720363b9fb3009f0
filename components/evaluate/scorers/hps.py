"""HPS v2 (Wu et al., "Human Preference Score v2", 2023): an open_clip ViT-H-14 fine-tuned on HPD v2.

Formula, as in the ``hpsv2`` package (github.com/tgxs002/HPSv2, ``hpsv2/img_score.py``): the model is
``open_clip.create_model_and_transforms("ViT-H-14")`` with the HPS checkpoint's ``state_dict`` loaded over
it; ``outputs = model(image, text)`` returns L2-normalised ``image_features`` and ``text_features``, and the
score is ``diag(image_features @ text_features.T)``: the plain cosine, no logit scale. Scores are around
0.2–0.3; higher is better.

Optional extra ``hps`` (``pip install 'diffusion-kto-pipelines[hps]'``, i.e. open-clip-torch, which itself
needs torchvision); the ``hpsv2`` package is not used, to avoid its pinned test dependencies.
``model_path`` is the checkpoint file (``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt``), local or gs://,
or ``"<hub repo>/<file>"`` (default ``xswu/HPSv2/HPS_v2.1_compressed.pt``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from components.evaluate.scorers.base import Scorer, ScorerError
from components.shared import storage

DEFAULT_CHECKPOINT = "xswu/HPSv2/HPS_v2.1_compressed.pt"
ARCHITECTURE = "ViT-H-14"


def hps_from_features(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """HPS v2 of matching rows: ``diag(image_features @ text_features.T)`` on L2-normalised features."""
    image_features = np.asarray(image_features, dtype=np.float64)
    text_features = np.asarray(text_features, dtype=np.float64)
    image_features = image_features / np.linalg.norm(image_features, axis=-1, keepdims=True)
    text_features = text_features / np.linalg.norm(text_features, axis=-1, keepdims=True)
    return np.diagonal(image_features @ text_features.T).copy()


def import_open_clip() -> Any:
    """``open_clip``, or a ScorerError that names the optional extra to install."""
    try:
        import open_clip
    except ImportError as err:
        raise ScorerError(
            "hps: HPS v2 needs the optional extra 'hps' (open-clip-torch, which needs torchvision): "
            f"pip install 'diffusion-kto-pipelines[hps]' ({err})"
        ) from None
    return open_clip


class HPSv2Scorer(Scorer):
    """HPS v2 on an open_clip ViT-H-14 with the HPS checkpoint (optional extra ``hps``)."""

    name = "hps"
    higher_is_better = True

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        architecture: str = ARCHITECTURE,
    ) -> None:
        super().__init__(model_path or DEFAULT_CHECKPOINT, device, batch_size)
        open_clip = import_open_clip()
        import torch

        model, _, preprocess_val = open_clip.create_model_and_transforms(
            architecture, pretrained=None, output_dict=True
        )
        try:
            state = torch.load(
                io.BytesIO(_checkpoint_bytes(str(self.model_path))), map_location="cpu", weights_only=False
            )
            model.load_state_dict(state.get("state_dict", state))
        except ScorerError:
            raise
        except Exception as err:
            raise ScorerError(f"hps: could not load the HPS checkpoint {self.model_path}: {err}") from None
        self.model = model.eval().to(device)
        self.preprocess = preprocess_val
        self.tokenizer = open_clip.get_tokenizer(architecture)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """HPS v2 of each (image, prompt) pair."""
        import torch

        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        text = self.tokenizer(prompts).to(self.device)
        with torch.inference_mode():
            # What HPS v2's forward returns as image_features / text_features (L2-normalised).
            image_features = self.model.encode_image(pixels, normalize=True)
            text_features = self.model.encode_text(text, normalize=True)
        return hps_from_features(image_features.float().cpu().numpy(), text_features.float().cpu().numpy())


def _checkpoint_bytes(path: str) -> bytes:
    if storage.is_gcs(path) or storage.exists(path):
        return storage.read_bytes(path)
    repo, _, filename = path.rpartition("/")
    if not repo or "/" not in repo:
        raise ScorerError(
            f"hps: {path!r} is neither a local file, a gs:// URI, nor '<hub owner>/<repo>/<file>'"
        )
    from huggingface_hub import hf_hub_download

    return open(hf_hub_download(repo, filename), "rb").read()
