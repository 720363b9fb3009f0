"""Programmatic judges: the demo's synthetic user, who likes an image when the object has the prompt's colour.

The synthetic world (``pipelines/demo/world.py``) draws one chromatic object on an achromatic background
(white, black or grey), so the object is the set of pixels with colour in them: chroma = max(R,G,B) -
min(R,G,B) is 0 on any grey and large on the object. The judge classifies each such pixel to the nearest
of the world's six hues (60 degrees apart), weighting by chroma, and calls the heaviest hue the object's
colour. A vote can be flipped with a seeded probability, to simulate users who click carelessly.
"""

from __future__ import annotations

import colorsys
import zlib

import numpy as np
from PIL import Image

from components.evaluate.scorers.base import Scorer

# The world's colours and their hues (degrees); kept here too so the product never imports the demo.
COLOUR_HUES: dict[str, float] = {
    "red": 0.0,
    "yellow": 60.0,
    "green": 120.0,
    "cyan": 180.0,
    "blue": 240.0,
    "magenta": 300.0,
}

# A pixel belongs to the object when its chroma exceeds this (0..1); anti-aliased edges on grey stay below.
MIN_CHROMA = 0.2
# Fewer chromatic pixels than this share of the image means "no object drawn" (a disliked image).
MIN_OBJECT_FRACTION = 0.02


def colour_shares(image: Image.Image) -> tuple[dict[str, float], float]:
    """The chroma-weighted share of each world colour among the object's pixels, and the object's area share.

    Shares sum to 1 when an object is present; all zero when no pixel has chroma above ``MIN_CHROMA``.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    flat = rgb.reshape(-1, 3)
    chroma = flat.max(axis=1) - flat.min(axis=1)
    mask = chroma > MIN_CHROMA
    area = float(mask.mean())
    shares = dict.fromkeys(COLOUR_HUES, 0.0)
    if not mask.any():
        return shares, area
    hues = np.array([colorsys.rgb_to_hsv(*px)[0] * 360.0 for px in flat[mask]])
    names = list(COLOUR_HUES)
    centres = np.array([COLOUR_HUES[n] for n in names])
    # Circular distance to each palette hue; the nearest one wins the pixel.
    dist = np.abs((hues[:, None] - centres[None, :] + 180.0) % 360.0 - 180.0)
    nearest = dist.argmin(axis=1)
    weights = np.bincount(nearest, weights=chroma[mask], minlength=len(names))
    total = weights.sum()
    for i, n in enumerate(names):
        shares[n] = float(weights[i] / total)
    return shares, area


def measure_colour(image: Image.Image) -> str | None:
    """The object's colour as the synthetic user sees it (one of the world's colours), or None if no object."""
    shares, area = colour_shares(image)
    if area < MIN_OBJECT_FRACTION:
        return None
    return max(shares, key=lambda n: shares[n])


def prompt_colour(prompt: str) -> str | None:
    """The first world colour named in the prompt, or None when it names none."""
    for word in prompt.lower().replace(",", " ").split():
        if word in COLOUR_HUES:
            return word
    return None


class ColourMatchJudge(Scorer):
    """The synthetic user: 1.0 (like) when the object's measured colour is the prompt's colour, else 0.0.

    ``flip_probability`` flips each vote with that probability, decided by a hash of (seed, prompt,
    image bytes), so the same image and prompt always get the same vote within one seed.
    """

    name = "colour_match"
    higher_is_better = True

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        flip_probability: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"ColourMatchJudge: flip_probability must be in [0, 1], got {flip_probability}")
        super().__init__(model_path=model_path, device=device, batch_size=batch_size)  # no model: a rule
        self.flip_probability = flip_probability
        self.seed = seed

    def _flipped(self, image: Image.Image, prompt: str) -> bool:
        if self.flip_probability <= 0.0:
            return False
        key = zlib.crc32(image.tobytes(), zlib.crc32(f"{self.seed}|{prompt}".encode()))
        return np.random.default_rng(key).random() < self.flip_probability

    def like(self, image: Image.Image, prompt: str) -> bool:
        """Whether the synthetic user likes this image for this prompt (noise included)."""
        wanted = prompt_colour(prompt)
        if wanted is None:
            raise ValueError(
                f"ColourMatchJudge: prompt {prompt!r} names none of the colours {list(COLOUR_HUES)}"
            )
        liked = measure_colour(image) == wanted
        return liked != self._flipped(image, prompt)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """1.0 for each liked image, 0.0 for each disliked one."""
        return np.array(
            [1.0 if self.like(im, p) else 0.0 for im, p in zip(images, prompts, strict=True)],
            dtype=np.float64,
        )
