"""The tiny models load back with the same diffusers/transformers code a user runs on SD v1.5 / SDXL."""

from __future__ import annotations

import json

from components.shared.tiny_models import write_tokenizer


def test_tokenizer_merges_words_into_single_tokens(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_tokenizer(tmp_path / "tok", ["red", "circle", "background"]))
    ids = tok("a red circle on a background").input_ids
    # bos, a, red, circle, o, n, a, background, eos: listed words are one token each, others fall back to chars.
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids[2]) == "red</w>"
    assert tok.convert_ids_to_tokens(ids[3]) == "circle</w>"
    assert len(ids) == 9
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    assert len(vocab) == len(tok)


def test_tiny_sd_generates(tiny_sd):
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a red circle", num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(0)
    )
    assert out.images[0].size == (32, 32)


def test_tiny_sdxl_generates(tiny_sdxl):
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a red circle", num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(0)
    )
    assert out.images[0].size == (32, 32)


def test_sd15_configs_have_sd15_sizes():
    """The shared SD v1.5 configs build SD v1.5's parameter counts (UNet 859.5M, VAE 83.7M, CLIP-L 123.1M)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from components.shared.tiny_models import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG

    with torch.device("meta"):
        sizes = [
            sum(p.numel() for p in m.parameters())
            for m in (
                UNet2DConditionModel(**SD15_UNET_CONFIG),
                AutoencoderKL(**SD15_VAE_CONFIG),
                CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)),
            )
        ]
    assert [round(n / 1e6, 1) for n in sizes] == [859.5, 83.7, 123.1]
