"""The scorer interface and a lazy registry of scorers by name.

A scorer turns images (and the prompts they were generated from) into one float per image. Scorers are
looked up by name through ``SCORERS``, which maps a name to ``"module:Class"``; the module is imported only
when the scorer is asked for, so listing names (config validation, ``--help``) never imports torch or an
optional extra such as ``open_clip``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
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
    gs:// URI or hub id; ``None`` means the scorer's public default) and implement ``score_batch``, which
    both ``score`` (decoded images) and ``score_files`` (image files, decoded one batch at a time) call."""

    name: ClassVar[str] = "scorer"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 16) -> None:
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size

    def score(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """One float64 score per image; ``prompts[i]`` is the prompt of ``images[i]``."""
        return self._score_batches(len(images), prompts, lambda start, stop: list(images[start:stop]))

    def score_files(
        self,
        paths: Sequence[str],
        prompts: list[str],
        load: Callable[[str], Image.Image] | None = None,
    ) -> np.ndarray:
        """Like ``score``, for images stored as files (local or gs://): each batch is decoded just before it
        is scored and released after, so at most ``batch_size`` decoded images are held at once, however
        many files there are (an evaluation of 3,200 prompts x 4 images x 2 models at 1024 px would
        otherwise hold ~100 GiB of pixels). ``load`` opens one file (default: an RGB PIL image)."""
        opener = load or _read_rgb
        return self._score_batches(
            len(paths), prompts, lambda start, stop: [opener(path) for path in paths[start:stop]]
        )

    def _score_batches(
        self, n: int, prompts: list[str], batch_images: Callable[[int, int], list[Image.Image]]
    ) -> np.ndarray:
        if n != len(prompts):
            raise ScorerError(
                f"{self.name}: got {n} images but {len(prompts)} prompts; pass one prompt per image"
            )
        out = np.empty(n, dtype=np.float64)
        for start in range(0, n, self.batch_size):
            stop = start + self.batch_size
            images = batch_images(start, stop)
            out[start:stop] = self.score_batch(images, prompts[start:stop])
            del images
        return out

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """Score one batch (at most ``batch_size`` images); subclasses implement this."""
        raise NotImplementedError


def _read_rgb(uri: str) -> Image.Image:
    from components.evaluate.generate import read_image

    image: Image.Image = read_image(uri)
    return image


def get_scorer(name: str, **kwargs: Any) -> Scorer:
    """Construct the scorer registered under ``name`` (keyword arguments go to its constructor)."""
    if name not in SCORERS:
        raise ScorerError(f"unknown scorer {name!r}; valid names: {sorted(SCORERS)}")
    module_name, _, class_name = SCORERS[name].partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    scorer: Scorer = cls(**kwargs)
    return scorer
