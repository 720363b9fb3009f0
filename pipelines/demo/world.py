"""The demo's synthetic world: prompts "a {colour} {shape} on a {background} background" and their images.

This is not part of the product. It gives the demo and the alignment benchmark a preference that a
program can judge: the synthetic user likes an image when the object's colour is the prompt's colour
(``components/evaluate/scorers/judges.py``). The six colours sit 60 degrees apart on the hue circle and
the backgrounds are achromatic, so the object is exactly the chromatic part of an image and its colour
is read from its hue.

A fixed set of (colour, shape, background) combinations is held out: it is never used to pretrain the
base model, to simulate feedback or to fine-tune, only to evaluate.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Hue in degrees of each colour; 60 degrees apart so the nearest-hue rule has equal margins.
COLOUR_HUES: dict[str, float] = {
    "red": 0.0,
    "yellow": 60.0,
    "green": 120.0,
    "cyan": 180.0,
    "blue": 240.0,
    "magenta": 300.0,
}
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "yellow": (230, 230, 30),
    "green": (30, 200, 30),
    "cyan": (30, 215, 215),
    "blue": (40, 40, 235),
    "magenta": (220, 30, 220),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_HUES)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "grey": (128, 128, 128),
}
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_RGB)

# Every word a prompt can contain, for the base model's tokenizer.
WORDS: tuple[str, ...] = ("a", "on", "background", *COLOURS, *SHAPES, *BACKGROUNDS)

# Side in pixels of the world's images (the base model's resolution).
IMAGE_SIZE = 32

PROMPT_TEMPLATE = "a {colour} {shape} on a {background} background"


@dataclass(frozen=True)
class Scene:
    """One prompt's content: the object's colour and shape and the background."""

    colour: str
    shape: str
    background: str

    @property
    def prompt(self) -> str:
        """The prompt text that describes this scene."""
        return PROMPT_TEMPLATE.format(colour=self.colour, shape=self.shape, background=self.background)


def all_scenes() -> list[Scene]:
    """Every (colour, shape, background) combination, in a fixed order."""
    return [Scene(c, s, b) for c, s, b in itertools.product(COLOURS, SHAPES, BACKGROUNDS)]


def is_held_out(scene: Scene) -> bool:
    """True for the fixed held-out combinations (one colour per shape x background, 12 of 72).

    The rule picks, for each (shape, background), the colour whose index makes the sum divisible by the
    number of colours, so every colour, shape and background is seen in training, only not together.
    """
    c, s, b = COLOURS.index(scene.colour), SHAPES.index(scene.shape), BACKGROUNDS.index(scene.background)
    return (c + s + 2 * b) % len(COLOURS) == 0


def train_scenes() -> list[Scene]:
    """Combinations used for pretraining, simulated feedback and fine-tuning."""
    return [s for s in all_scenes() if not is_held_out(s)]


def held_out_scenes() -> list[Scene]:
    """Combinations used only for evaluation."""
    return [s for s in all_scenes() if is_held_out(s)]


def parse_prompt(prompt: str) -> Scene:
    """The scene a prompt describes; raises ``ValueError`` naming the prompt if it is not of the world's form."""
    words = prompt.strip().lower().split()
    if (
        len(words) != 7
        or words[0] != "a"
        or words[1] not in COLOUR_HUES
        or words[2] not in SHAPES
        or words[3:5] != ["on", "a"]
        or words[5] not in BACKGROUND_RGB
        or words[6] != "background"
    ):
        raise ValueError(
            f"prompt {prompt!r} is not of the form {PROMPT_TEMPLATE!r} "
            f"with colour in {COLOURS}, shape in {SHAPES}, background in {BACKGROUNDS}"
        )
    return Scene(words[1], words[2], words[5])


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "cross":
        a, t = r, r * 0.38
        return [
            (cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t),
            (cx + a, cy + t), (cx + t, cy + t), (cx + t, cy + a), (cx - t, cy + a),
            (cx - t, cy + t), (cx - a, cy + t), (cx - a, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    return None


def render(
    scene: Scene, size: int = 32, rng: random.Random | None = None, supersample: int = 4
) -> Image.Image:
    """Draw the scene as an RGB image of ``size`` px; ``rng`` jitters position and size (None: centred).

    Drawn at ``supersample`` times the size and reduced with a box filter, so edges are anti-aliased
    the way a generated image's would be.
    """
    big = size * supersample
    image = Image.new("RGB", (big, big), BACKGROUND_RGB[scene.background])
    draw = ImageDraw.Draw(image)
    if rng is None:
        cx = cy = big / 2
        r = big * 0.3
    else:
        r = big * rng.uniform(0.22, 0.34)
        cx = big / 2 + rng.uniform(-0.12, 0.12) * big
        cy = big / 2 + rng.uniform(-0.12, 0.12) * big
    colour = COLOUR_RGB[scene.colour]
    poly = _shape_polygon(scene.shape, cx, cy, r)
    if poly is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon(poly, fill=colour)
    return image.resize((size, size), Image.Resampling.BOX)


def render_batch(scenes: list[Scene], size: int = 32, seed: int = 0) -> np.ndarray:
    """Render scenes with seeded jitter into a float array (N, 3, size, size) in [-1, 1] (the VAE's range)."""
    rng = random.Random(seed)
    arrays = [np.asarray(render(s, size, rng), dtype=np.float32) for s in scenes]
    batch = np.stack(arrays).transpose(0, 3, 1, 2) / 127.5 - 1.0
    return batch.astype(np.float32)


def image_grid(images: list[Image.Image], columns: int, scale: int = 2) -> Image.Image:
    """Tile images into a grid (each enlarged ``scale`` times with nearest-neighbour) for looking at."""
    if not images:
        raise ValueError("image_grid: no images to tile")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * w * scale, rows * h * scale), (255, 255, 255))
    for i, img in enumerate(images):
        big = img.convert("RGB").resize((w * scale, h * scale), Image.Resampling.NEAREST)
        grid.paste(big, ((i % columns) * w * scale, (i // columns) * h * scale))
    return grid
