"""The synthetic world: prompts, the held-out split and the renderer."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from pipelines.demo import world


def test_held_out_combinations_are_disjoint_from_training_and_cover_every_word() -> None:
    held, train = world.held_out_scenes(), world.train_scenes()
    assert len(held) + len(train) == len(world.COLOURS) * len(world.SHAPES) * len(world.BACKGROUNDS)
    assert not set(held) & set(train)
    assert len(held) >= 10
    # Every colour, shape and background is seen in training; only the held-out combinations are new.
    assert {s.colour for s in train} == set(world.COLOURS)
    assert {s.shape for s in train} == set(world.SHAPES)
    assert {s.background for s in train} == set(world.BACKGROUNDS)
    assert {s.colour for s in held} == set(world.COLOURS)


def test_prompt_round_trip_and_a_bad_prompt_names_the_valid_words() -> None:
    for scene in world.all_scenes():
        assert world.parse_prompt(scene.prompt) == scene
    with pytest.raises(ValueError, match="a purple circle"):
        world.parse_prompt("a purple circle on a white background")
    with pytest.raises(ValueError, match="colour in"):
        world.parse_prompt("a red circle")


def test_render_draws_the_object_in_its_colour_on_the_background() -> None:
    scene = world.Scene("blue", "square", "white")
    image = np.asarray(world.render(scene, 32))
    assert image.shape == (32, 32, 3)
    assert tuple(image[0, 0]) == world.BACKGROUND_RGB["white"]
    assert tuple(image[16, 16]) == world.COLOUR_RGB["blue"]


def test_shapes_differ_and_jitter_is_seeded() -> None:
    masks = {}
    for shape in world.SHAPES:
        img = np.asarray(world.render(world.Scene("red", shape, "black"), 32)).astype(int)
        masks[shape] = img[..., 0] > 100
    for a_name, b_name in itertools.combinations(world.SHAPES, 2):
        assert (masks[a_name] != masks[b_name]).sum() > 30, (a_name, b_name)
    a = world.render_batch(world.all_scenes()[:5], seed=3)
    b = world.render_batch(world.all_scenes()[:5], seed=3)
    c = world.render_batch(world.all_scenes()[:5], seed=4)
    assert a.shape == (5, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_image_grid_tiles_images() -> None:
    images = [world.render(s, 32, random.Random(i)) for i, s in enumerate(world.all_scenes()[:5])]
    grid = world.image_grid(images, columns=3, scale=2)
    assert grid.size == (3 * 64, 2 * 64)
