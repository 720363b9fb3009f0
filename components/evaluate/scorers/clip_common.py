"""What the CLIP-based scorers share: finding the weights, CLIP's image preprocessing, and embeddings.

Preprocessing is done here with PIL and numpy, as transformers' ``CLIPImageProcessorPil`` does it (resize
the shortest side with bicubic resampling, the long side truncated to an integer, center-crop, scale to [0, 1], normalise with CLIP's mean and std), because
transformers 5's ``CLIPImageProcessor`` needs torchvision. The sizes, mean and std come from the model
directory's ``preprocessor_config.json`` when it has one, else from the vision tower's ``image_size`` and
CLIP's constants (which laion/CLIP-ViT-H-14-laion2B-s32B-b79K, PickScore's processor, also uses).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.evaluate.scorers.base import ScorerError
from components.shared import storage

#: OpenAI CLIP's normalisation constants (open_clip's OPENAI_DATASET_MEAN / _STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resolve_source(model_path: str, scorer: str) -> str:
    """A local directory for a gs:// URI (downloaded once, cached), the path itself if it exists locally,
    else the string unchanged as a Hugging Face hub id."""
    if storage.is_gcs(model_path):
        try:
            return str(storage.local_dir(model_path))
        except Exception as err:
            raise ScorerError(f"{scorer}: could not fetch its model from {model_path}: {err}") from None
    return model_path


class ClipImagePreprocessor:
    """CLIP's image transform: shortest side to ``size`` (bicubic), center crop ``crop``, normalise."""

    def __init__(
        self,
        size: int = 224,
        crop: int | None = None,
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
    ) -> None:
        self.size = size
        self.crop = crop or size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def for_model(cls, source: str, image_size: int) -> ClipImagePreprocessor:
        """Read ``preprocessor_config.json`` beside the model when there is one; else CLIP's defaults."""
        config_path = Path(source) / "preprocessor_config.json"
        if not config_path.is_file():
            return cls(size=image_size, crop=image_size)
        cfg = json.loads(config_path.read_text())
        size = cfg.get("size", image_size)
        if isinstance(size, dict):
            size = size.get("shortest_edge") or size.get("height") or image_size
        crop = cfg.get("crop_size", size)
        if isinstance(crop, dict):
            crop = crop.get("height") or size
        return cls(
            size=int(size),
            crop=int(crop),
            mean=tuple(cfg.get("image_mean", CLIP_MEAN)),
            std=tuple(cfg.get("image_std", CLIP_STD)),
        )

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        """A float32 array (N, 3, crop, crop), normalised."""
        out = np.empty((len(images), 3, self.crop, self.crop), dtype=np.float32)
        for k, image in enumerate(images):
            image = image.convert("RGB")
            w, h = image.size
            # The long side is truncated, as transformers' get_resize_output_image_size computes it
            # (int(size * long / short)); rounding it shifts the crop by a pixel on non-square images.
            short, long = min(w, h), max(w, h)
            new_long = int(self.size * long / short)
            new_w, new_h = (self.size, new_long) if w <= h else (new_long, self.size)
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
            left, top = (new_w - self.crop) // 2, (new_h - self.crop) // 2
            image = image.crop((left, top, left + self.crop, top + self.crop))
            array = np.asarray(image, dtype=np.float32) / 255.0
            out[k] = ((array - self.mean) / self.std).transpose(2, 0, 1)
        return out


def load_clip(
    model_path: str, device: str, scorer: str, processor_path: str | None = None
) -> tuple[Any, Any, ClipImagePreprocessor]:
    """Load a ``CLIPModel``, its tokenizer and its preprocessing from a directory, gs:// URI or hub id.

    ``processor_path`` is where the tokenizer and ``preprocessor_config.json`` come from when the model's
    own directory has none (PickScore's weights use laion/CLIP-ViT-H-14-laion2B-s32B-b79K's processor).
    """
    from transformers import AutoTokenizer, CLIPModel

    source = resolve_source(model_path, scorer)
    processor_source = source
    if processor_path and Path(source).is_dir() and not (Path(source) / "tokenizer_config.json").is_file():
        processor_source = resolve_source(processor_path, scorer)
    try:
        model = CLIPModel.from_pretrained(source).eval().to(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(processor_source)
        except Exception:
            if not processor_path or processor_source != source:
                raise
            processor_source = resolve_source(processor_path, scorer)
            tokenizer = AutoTokenizer.from_pretrained(processor_source)
    except Exception as err:
        raise ScorerError(
            f"{scorer}: could not load a CLIP model and tokenizer from {model_path!r} ({err}); give a "
            "directory with config.json, weights and tokenizer files, a gs:// URI of one, or a hub id"
        ) from None
    preprocess = ClipImagePreprocessor.for_model(processor_source, int(model.config.vision_config.image_size))
    return model, tokenizer, preprocess


def features(output: Any) -> Any:
    """The projected embedding from ``get_image_features``/``get_text_features`` (a tensor in transformers
    4, an output object whose ``pooler_output`` holds it in transformers 5)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


def clip_embeddings(
    model: Any,
    tokenizer: Any,
    preprocess: ClipImagePreprocessor,
    images: list[Image.Image],
    prompts: list[str],
) -> tuple[Any, Any]:
    """L2-normalised image and text embeddings (N, D) of matching images and prompts."""
    import torch

    device = next(model.parameters()).device
    pixels = torch.from_numpy(preprocess(images)).to(device)
    max_len = int(getattr(model.config.text_config, "max_position_embeddings", 77))
    tokens = tokenizer(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(
        device
    )
    with torch.inference_mode():
        image_emb = features(model.get_image_features(pixel_values=pixels)).float()
        text_emb = features(
            model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        ).float()
    return normalise(image_emb), normalise(text_emb)


def normalise(x: Any) -> Any:
    """Rows scaled to unit L2 norm."""
    return x / x.norm(dim=-1, keepdim=True)
