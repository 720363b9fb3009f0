"""Generation: the same seeds give the same noise for every model and batch size; prompt sets load."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from components.evaluate.generate import (
    PromptFileError,
    generate_images,
    image_seed,
    load_prompts,
    read_image,
)
from components.shared import storage

FAST = dict(num_inference_steps=2, guidance_scale=7.5)


def _pixels(results):
    return [np.asarray(read_image(r.image_path), dtype=np.int16) for r in results]


@pytest.mark.slow
def test_generation_is_deterministic_across_batch_sizes_and_writes_the_index(tiny_sd, tmp_path) -> None:
    prompts = ["a red circle", "a blue square"]
    a = generate_images(str(tiny_sd), prompts, str(tmp_path / "a"), images_per_prompt=2, batch_size=4, **FAST)
    b = generate_images(str(tiny_sd), prompts, str(tmp_path / "b"), images_per_prompt=2, batch_size=3, **FAST)
    for x, y in zip(_pixels(a), _pixels(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # Different (prompt, image) pairs get different noise, hence different images.
    assert not np.array_equal(_pixels(a)[0], _pixels(a)[1])
    index = storage.read_parquet(str(tmp_path / "a" / "index.parquet"))
    assert index.column_names == [
        "prompt",
        "prompt_index",
        "image_index",
        "seed",
        "image_path",
        "model_id",
        "safety_flagged",
    ]
    assert index.column("safety_flagged").to_pylist() == [False] * 4  # no safety checker in tiny SD
    assert index.num_rows == 4
    assert index.column("seed").to_pylist() == [image_seed(0, p, i) for p in range(2) for i in range(2)]
    assert read_image(index.column("image_path")[3].as_py()).size == (32, 32)
    # Another base seed gives other images.
    c = generate_images(str(tiny_sd), prompts[:1], str(tmp_path / "c"), images_per_prompt=1, seed=1, **FAST)
    assert not np.array_equal(_pixels(a)[0], _pixels(c)[0])


def test_candidate_and_baseline_get_identical_initial_noise(tiny_sd, tiny_sd_other, tmp_path) -> None:
    """Two models differ in images, but the seeds (so the initial latents) per image are the same."""
    kw = dict(images_per_prompt=1, seed=5, **FAST)
    cand = generate_images(str(tiny_sd), ["a cat"], str(tmp_path / "c"), **kw)
    base = generate_images(str(tiny_sd_other), ["a cat"], str(tmp_path / "b"), **kw)
    assert [r.seed for r in cand] == [r.seed for r in base]
    assert not np.array_equal(_pixels(cand)[0], _pixels(base)[0])


def test_prompts_from_text_jsonl_and_val_parquet(tmp_path) -> None:
    (tmp_path / "p.txt").write_text("a red circle\n\n# comment\na blue square\na red circle\n")
    assert load_prompts(str(tmp_path / "p.txt")) == ["a red circle", "a blue square"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n" + json.dumps({"prompt": "y"}) + "\n")
    assert load_prompts(str(tmp_path / "p.jsonl"), max_prompts=1) == ["x"]
    val = pa.table({"prompt": ["a cat", "a cat", "a dog"], "split": ["val"] * 3})
    storage.write_parquet(val, str(tmp_path / "val.parquet"))
    assert load_prompts(str(tmp_path / "val.parquet")) == ["a cat", "a dog"]


def test_bad_prompt_files_name_the_line_or_column(tmp_path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2: needs a non-empty string field 'prompt'"):
        load_prompts(str(tmp_path / "bad.jsonl"))
    storage.write_parquet(pa.table({"caption": ["a"]}), str(tmp_path / "bad.parquet"))
    with pytest.raises(PromptFileError, match="no 'prompt' column"):
        load_prompts(str(tmp_path / "bad.parquet"))


def test_dkto_generate_command(tiny_sd, tmp_path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    (tmp_path / "p.txt").write_text("a red circle\n")
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_sd),
            "--prompts",
            str(tmp_path / "p.txt"),
            "--out",
            str(tmp_path / "o"),
            "--images-per-prompt",
            "2",
            "--steps",
            "2",
            "--scheduler",
            "ddim",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 images (1 prompts x 2)" in result.output
    assert storage.read_parquet(str(tmp_path / "o" / "index.parquet")).num_rows == 2


def test_sdxl_with_a_stochastic_sampler_is_deterministic_across_batch_sizes(tiny_sdxl, tmp_path) -> None:
    """Ancestral samplers draw fresh noise every step; per-image generators keep that seeded too."""
    kw = dict(images_per_prompt=2, num_inference_steps=2, scheduler="euler_ancestral")
    a = generate_images(str(tiny_sdxl), ["a red circle"], str(tmp_path / "a"), batch_size=2, **kw)
    b = generate_images(str(tiny_sdxl), ["a red circle"], str(tmp_path / "b"), batch_size=1, **kw)
    for x, y in zip(_pixels(a), _pixels(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_an_image_the_safety_checker_blacks_out_is_flagged(tiny_sd, tmp_path) -> None:
    """SD v1.5's safety checker returns a black image for what it flags; the flag must reach the index.

    The checker is diffusers' real StableDiffusionSafetyChecker (tiny random CLIP tower), saved into the
    model directory and loaded by from_pretrained as SD v1.5's is, set to flag the first image drawn.
    """
    from components.evaluate.tiny_scorers import add_safety_checker, build_tiny_safety_checker

    kw = dict(images_per_prompt=2, batch_size=4, scheduler="ddim", **FAST)
    prompts = ["a red circle", "a blue square"]
    plain = generate_images(str(tiny_sd), prompts, str(tmp_path / "plain"), **kw)
    assert [r.safety_flagged for r in plain] == [False] * 4
    images = [read_image(r.image_path) for r in plain]
    checker, extractor = build_tiny_safety_checker(flag_images=images[:1], pass_images=images[1:])
    checked = add_safety_checker(tiny_sd, tmp_path / "checked", checker, extractor)

    out = generate_images(str(checked), prompts, str(tmp_path / "out"), **kw)
    assert [(r.prompt_index, r.image_index, r.safety_flagged) for r in out] == [
        (0, 0, True),
        (0, 1, False),
        (1, 0, False),
        (1, 1, False),
    ]
    pixels, before = _pixels(out), _pixels(plain)
    assert pixels[0].max() == 0  # what the checker put in place of the model's image
    for x, y in zip(pixels[1:], before[1:], strict=True):
        np.testing.assert_array_equal(x, y)
    index = storage.read_parquet(str(tmp_path / "out" / "index.parquet"))
    assert index.column("safety_flagged").to_pylist() == [True, False, False, False]
