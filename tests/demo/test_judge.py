"""The synthetic user (ColourMatchJudge) on rendered images whose answer is known."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from components.evaluate.scorers.base import get_scorer
from components.evaluate.scorers.judges import ColourMatchJudge, colour_shares, measure_colour, prompt_colour
from pipelines.demo import world


def test_measured_colour_is_the_drawn_colour_for_every_combination() -> None:
    rng = random.Random(0)
    for scene in world.all_scenes():
        for _ in range(2):
            assert measure_colour(world.render(scene, 32, rng)) == scene.colour, scene


def test_likes_the_prompt_colour_and_dislikes_every_other() -> None:
    judge = get_scorer("colour_match")
    assert isinstance(judge, ColourMatchJudge)
    assert judge.name == "colour_match" and judge.higher_is_better
    image = world.render(world.Scene("green", "triangle", "grey"), 32)
    prompts = [world.Scene(c, "triangle", "grey").prompt for c in world.COLOURS]
    scores = judge.score([image] * len(prompts), prompts)
    assert scores.dtype == np.float64
    assert scores.tolist() == [1.0 if c == "green" else 0.0 for c in world.COLOURS]


def test_an_empty_image_has_no_object_and_is_disliked() -> None:
    blank = Image.new("RGB", (32, 32), world.BACKGROUND_RGB["grey"])
    assert measure_colour(blank) is None
    assert ColourMatchJudge().score([blank], ["a red circle on a grey background"]).tolist() == [0.0]


def test_the_larger_colour_of_a_two_coloured_object_wins() -> None:
    image = Image.new("RGB", (32, 32), world.BACKGROUND_RGB["white"])
    draw = ImageDraw.Draw(image)
    draw.rectangle([4, 4, 27, 19], fill=world.COLOUR_RGB["blue"])
    draw.rectangle([4, 20, 27, 27], fill=world.COLOUR_RGB["red"])
    shares, area = colour_shares(image)
    assert shares["blue"] > shares["red"] > 0
    assert measure_colour(image) == "blue"
    assert area == pytest.approx(24 * 24 / 1024, abs=0.01)


def test_a_faded_off_palette_hue_goes_to_the_nearest_colour() -> None:
    image = Image.new("RGB", (32, 32), world.BACKGROUND_RGB["black"])
    ImageDraw.Draw(image).ellipse([6, 6, 25, 25], fill=(200, 120, 60))  # an orange: hue 30 -> red or yellow
    assert measure_colour(image) in {"red", "yellow"}
    ImageDraw.Draw(image).ellipse([6, 6, 25, 25], fill=(90, 160, 90))  # a dull green
    assert measure_colour(image) == "green"


def test_vote_noise_flips_about_the_asked_share_and_is_repeatable() -> None:
    rng = random.Random(1)
    scenes = [rng.choice(world.all_scenes()) for _ in range(400)]
    images = [world.render(s, 32, rng) for s in scenes]
    prompts = [s.prompt for s in scenes]
    honest = ColourMatchJudge().score(images, prompts)
    assert honest.sum() == len(images)
    noisy = ColourMatchJudge(flip_probability=0.2, seed=7)
    votes = noisy.score(images, prompts)
    flips = int((votes != honest).sum())
    # Binomial(400, 0.2): mean 80, sd 8; +-4 sd.
    assert 48 <= flips <= 112
    np.testing.assert_array_equal(votes, noisy.score(images, prompts))
    assert not np.array_equal(votes, ColourMatchJudge(flip_probability=0.2, seed=8).score(images, prompts))


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="flip_probability"):
        ColourMatchJudge(flip_probability=1.5)
    image = world.render(world.Scene("red", "circle", "white"), 32)
    with pytest.raises(ValueError, match="names none of the colours"):
        ColourMatchJudge().score([image], ["a circle"])
    with pytest.raises(Exception, match="prompts"):
        ColourMatchJudge().score([image, image], ["a red circle on a white background"])
    assert prompt_colour("A Red circle") == "red"
