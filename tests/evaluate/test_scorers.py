"""Scorers: formulas on hand-made embeddings, and each scorer on a tiny random model loaded from disk."""

from __future__ import annotations

import importlib.util
import math
import shutil

import numpy as np
import pytest

from components.evaluate.scorers import SCORERS, ScorerError, get_scorer
from components.evaluate.scorers.clip_common import CLIP_MEAN, CLIP_STD, ClipImagePreprocessor
from components.evaluate.scorers.clip_score import clip_score_from_embeddings
from components.evaluate.scorers.hps import hps_from_features
from components.evaluate.scorers.pickscore import pickscore_from_embeddings

PROMPTS = ["a red circle", "a green square", "a blue star", "yellow", "a black cat", "grey sky"]


# ---------------------------------------------------------------- formulas on hand-made embeddings


def test_pickscore_formula_is_exp_logit_scale_times_cosine() -> None:
    image = np.array([[1.0, 0.0], [3.0, 0.0], [1.0, 1.0]])
    text = np.array([[2.0, 0.0], [0.0, 5.0], [1.0, 0.0]])
    scores = pickscore_from_embeddings(image, text, logit_scale=math.log(100.0))
    np.testing.assert_allclose(scores, [100.0, 0.0, 100.0 / math.sqrt(2)], rtol=1e-12)


def test_clip_score_formula_clamps_negative_cosine_to_zero() -> None:
    image = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    text = np.array([[-1.0, 0.0], [4.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(clip_score_from_embeddings(image, text), [0.0, 100.0, 60.0], rtol=1e-12)


def test_hps_formula_is_the_plain_cosine_of_matching_rows() -> None:
    image = np.array([[0.0, 2.0], [1.0, 1.0]])
    text = np.array([[0.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_allclose(hps_from_features(image, text), [1.0, -1 / math.sqrt(2)], rtol=1e-12)


def test_preprocessing_resizes_shortest_side_center_crops_and_normalises(coloured_images) -> None:
    pre = ClipImagePreprocessor(size=24, crop=16)
    out = pre(coloured_images)
    assert out.shape == (6, 3, 16, 16)
    # A flat red image maps to (1 - mean) / std in R and (0 - mean) / std in G and B, everywhere.
    expected = (np.array([1.0, 0.0, 0.0]) - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(out[0].reshape(3, -1).mean(axis=1), expected, rtol=1e-5)
    np.testing.assert_allclose(out[0].std(axis=(1, 2)), 0.0, atol=1e-5)


# ---------------------------------------------------------------- scorers on a tiny CLIP from disk


def _reference_logits(model_dir, images, prompts):
    """diag(logits_per_image) through CLIPModel.forward: logit_scale.exp() * cos, computed by transformers."""
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(model_dir)
    pixels = torch.from_numpy(ClipImagePreprocessor(32, 32)(images))
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels
        )
    return out.logits_per_image.diagonal().double().numpy(), float(model.logit_scale.detach().exp())


def test_pickscore_scorer_matches_clip_forward_logits(tiny_clip, coloured_images) -> None:
    scorer = get_scorer("pickscore", model_path=str(tiny_clip), batch_size=4)
    scores = scorer.score(coloured_images, PROMPTS)
    expected, _ = _reference_logits(tiny_clip, coloured_images, PROMPTS)
    assert scores.shape == (6,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    assert len(set(np.round(scores, 6))) > 1  # a constant scorer would pass the comparison above too


def test_clip_score_scorer_is_100_times_clamped_cosine(tiny_clip, coloured_images) -> None:
    scorer = get_scorer("clip_score", model_path=str(tiny_clip), batch_size=16)
    scores = scorer.score(coloured_images, PROMPTS)
    logits, scale = _reference_logits(tiny_clip, coloured_images, PROMPTS)
    np.testing.assert_allclose(scores, 100.0 * np.maximum(logits / scale, 0.0), rtol=1e-4, atol=1e-4)


def test_batching_does_not_change_scores(tiny_clip, coloured_images) -> None:
    one = get_scorer("clip_score", model_path=str(tiny_clip), batch_size=1).score(coloured_images, PROMPTS)
    many = get_scorer("clip_score", model_path=str(tiny_clip), batch_size=5).score(coloured_images, PROMPTS)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-5)


def test_aesthetic_scorer_applies_the_mlp_head_to_normalised_image_embeddings(
    tiny_clip, coloured_images
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPModel

    from components.evaluate.scorers.aesthetic import build_aesthetic_head

    scorer = get_scorer("aesthetic", model_path=str(tiny_clip))
    scores = scorer.score(coloured_images, PROMPTS)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    head = build_aesthetic_head(16).eval()
    head.load_state_dict(load_file(str(tiny_clip / "aesthetic_head.safetensors")))
    with torch.inference_mode():
        pixels = torch.from_numpy(ClipImagePreprocessor(32, 32)(coloured_images))
        emb = model.vision_model(pixel_values=pixels).pooler_output
        emb = model.visual_projection(emb)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        expected = head(emb).squeeze(-1).double().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    # The prompt is not an input of the aesthetic score.
    np.testing.assert_allclose(scorer.score(coloured_images, ["x"] * 6), scores)


def test_aesthetic_head_loads_the_original_state_dict_layout(tmp_path) -> None:
    import torch

    from components.evaluate.scorers.aesthetic import build_aesthetic_head, load_head_state

    # The keys of sac+logos+ava1-l14-linearMSE.pth (Linear layers at Sequential indices 0, 2, 4, 6, 7).
    shapes = {0: (1024, 768), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}
    state = {}
    for i, (out_f, in_f) in shapes.items():
        state[f"layers.{i}.weight"] = torch.randn(out_f, in_f)
        state[f"layers.{i}.bias"] = torch.randn(out_f)
    torch.save(state, tmp_path / "head.pth")
    head = build_aesthetic_head(768)
    head.load_state_dict(load_head_state(str(tmp_path / "head.pth")))
    assert torch.equal(head.layers[7].weight, state["layers.7.weight"])


def test_aesthetic_without_head_weights_names_the_file_it_needs(tiny_clip, tmp_path) -> None:
    bare = tmp_path / "clip"
    shutil.copytree(tiny_clip, bare)
    (bare / "aesthetic_head.safetensors").unlink()
    with pytest.raises(ScorerError, match="sac\\+logos\\+ava1-l14-linearMSE.pth"):
        get_scorer("aesthetic", model_path=str(bare))


@pytest.mark.slow
def test_scorer_loads_from_gcs(tiny_clip, gcs_bucket, coloured_images, tmp_path, monkeypatch) -> None:
    from components.shared import storage

    monkeypatch.setenv("DKTO_CACHE_DIR", str(tmp_path / "cache"))
    uri = f"{gcs_bucket}/scorers/tiny-clip"
    storage.upload_dir(tiny_clip, uri)
    from_gcs = get_scorer("pickscore", model_path=uri).score(coloured_images, PROMPTS)
    local = get_scorer("pickscore", model_path=str(tiny_clip)).score(coloured_images, PROMPTS)
    np.testing.assert_allclose(from_gcs, local, rtol=1e-6)


def test_unloadable_model_path_is_a_scorer_error_naming_it(tmp_path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ScorerError, match="no-such-model"):
        get_scorer("clip_score", model_path=missing)


def test_mismatched_images_and_prompts_is_an_error(tiny_clip, coloured_images) -> None:
    scorer = get_scorer("clip_score", model_path=str(tiny_clip))
    with pytest.raises(ScorerError, match="6 images but 2 prompts"):
        scorer.score(coloured_images, PROMPTS[:2])


# ---------------------------------------------------------------- registry and optional extras


def test_registry_is_lazy_and_names_every_scorer() -> None:
    assert SCORERS["colour_match"] == "components.evaluate.scorers.judges:ColourMatchJudge"
    assert {"pickscore", "clip_score", "aesthetic", "hps", "imagereward"} <= set(SCORERS)
    for target in SCORERS.values():
        assert ":" in target and target.startswith("components.evaluate.scorers.")
    with pytest.raises(ScorerError, match="valid names"):
        get_scorer("no_such_scorer")


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed")
def test_hps_without_open_clip_names_the_extra() -> None:
    with pytest.raises(ScorerError, match=r"extra 'hps'"):
        get_scorer("hps", model_path="/nowhere/HPS_v2.1_compressed.pt")


@pytest.mark.skipif(importlib.util.find_spec("ImageReward") is not None, reason="image-reward is installed")
def test_imagereward_without_package_names_the_extra() -> None:
    with pytest.raises(ScorerError, match=r"extra 'imagereward'"):
        get_scorer("imagereward")


TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def _has_open_clip() -> bool:
    try:
        import open_clip  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(
    not _has_open_clip(), reason="optional extra 'hps' (open-clip-torch + torchvision) missing"
)
def test_hps_scorer_on_a_tiny_open_clip_checkpoint(tmp_path, coloured_images) -> None:
    import open_clip
    import torch

    open_clip.factory._MODEL_CONFIGS["dkto-tiny-test"] = TINY_OPEN_CLIP
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(
        "dkto-tiny-test", pretrained=None, output_dict=True
    )
    torch.save({"state_dict": model.state_dict()}, tmp_path / "HPS_tiny.pt")
    scorer = get_scorer(
        "hps", model_path=str(tmp_path / "HPS_tiny.pt"), batch_size=4, architecture="dkto-tiny-test"
    )
    assert scorer.name == "hps"
    scores = scorer.score(coloured_images, PROMPTS)
    model.eval()
    tokenizer = open_clip.get_tokenizer("dkto-tiny-test")
    with torch.inference_mode():
        out = model(torch.stack([preprocess(im) for im in coloured_images]), tokenizer(PROMPTS))
    expected = (out["image_features"] @ out["text_features"].T).diagonal().double().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- review fixes


def test_preprocessing_matches_transformers_clip_image_processor_on_non_square_images(tmp_path) -> None:
    """Same pixels as transformers' CLIPImageProcessorPil, which truncates the long side (int(size *
    long / short)); rounding it instead moved the crop by a pixel on e.g. 333x517 images."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    settings = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "resample": 3}
    (tmp_path / "preprocessor_config.json").write_text(
        __import__("json").dumps({**settings, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)})
    )
    ours = ClipImagePreprocessor.for_model(str(tmp_path), 224)
    theirs = CLIPImageProcessorPil(**settings, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    rng = np.random.default_rng(0)
    for w, h in ((333, 517), (700, 225), (512, 512)):
        image = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        expected = theirs(images=[image], return_tensors="np")["pixel_values"]
        np.testing.assert_allclose(ours([image]), expected, atol=1e-5, err_msg=f"{w}x{h}")


def test_scoring_files_equals_scoring_decoded_images(tiny_clip, coloured_images, tmp_path) -> None:
    paths = []
    for k, image in enumerate(coloured_images):
        paths.append(str(tmp_path / f"{k}.png"))
        image.save(paths[-1])
    scorer = get_scorer("clip_score", model_path=str(tiny_clip), batch_size=4)
    np.testing.assert_array_equal(scorer.score_files(paths, PROMPTS), scorer.score(coloured_images, PROMPTS))
    with pytest.raises(ScorerError, match="6 images but 5 prompts"):
        scorer.score_files(paths, PROMPTS[:5])
