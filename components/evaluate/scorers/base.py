"""The scorer interface and a lazy registry of scorers by name.

A scorer turns images (and the prompts they were generated from) into one float per image. Scorers are
looked up by name through ``SCORERS``, which maps a name to ``"module:Class"``; the module is imported only
when the scorer is asked for, so listing names (config validation, ``--help``) never imports torch or an
optional extra such as ``open_clip``.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import numpy as np
from PIL import Image

#: Scorer name -> "module:Class". The evaluate config validates names against these keys.
SCORERS: dict[str, str] = {
    "pickscore": "components.evaluate.scorers.pickscore:PickScoreScorer",
    "clip_score": "components.evaluate.scorers.clip_score:CLIPScoreScorer",
    "aesthetic": "components.evaluate.scorers.aesthetic:AestheticScorer",
    "hps": "components.evaluate.scorers.hps:HPSv2Scorer",
    "imagereward": "components.evaluate.scorers.imagereward:ImageRewardScorer",
    # Written by the demo: 1.0 when the synthetic user likes the image, else 0.0.
    "colour_match": "components.evaluate.scorers.judges:ColourMatchJudge",
}


class ScorerError(RuntimeError):
    """A scorer could not be loaded or could not score; the message names the scorer and the input."""


class Scorer:
    """One metric: ``score(images, prompts)`` returns one float per image (``higher_is_better`` says which
    way is good). Subclasses load their model in ``__init__`` from ``model_path`` (a local directory,
    gs:// URI or hub id; ``None`` means the scorer's public default)."""

    name: ClassVar[str] = "scorer"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 16) -> None:
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size

    def score(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """One float64 score per image; ``prompts[i]`` is the prompt of ``images[i]``."""
        if len(images) != len(prompts):
            raise ScorerError(
                f"{self.name}: got {len(images)} images but {len(prompts)} prompts; pass one prompt per image"
            )
        out = np.empty(len(images), dtype=np.float64)
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            out[start:stop] = self.score_batch(images[start:stop], prompts[start:stop])
        return out

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """Score one batch (at most ``batch_size`` images); subclasses implement this."""
        raise NotImplementedError


def get_scorer(name: str, **kwargs: Any) -> Scorer:
    """Construct the scorer registered under ``name`` (keyword arguments go to its constructor)."""
    if name not in SCORERS:
        raise ScorerError(f"unknown scorer {name!r}; valid names: {sorted(SCORERS)}")
    module_name, _, class_name = SCORERS[name].partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    scorer: Scorer = cls(**kwargs)
    return scorer
