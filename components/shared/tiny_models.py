"""Tiny Stable Diffusion (v1.x layout and SDXL layout) built from configs, for tests and demos.

No machine here downloads weights, so tests build models of the real architectures
(``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``, a ``CLIPTokenizer`` over a small vocabulary
written here) with random weights, save them with ``save_pretrained`` and load them back with the same
``from_pretrained`` code a user runs on SD v1.5 / SDXL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT_WORDS = (
    "a an the of on in with and photo picture image painting drawing of "
    "red green blue yellow orange purple pink white black grey brown cyan magenta "
    "circle square triangle star cross ring disk box heart diamond "
    "background dark light bright small large big tiny center left right top bottom "
    "cat dog house tree car flower sky sea mountain city person"
).split()


# SD v1.5's architecture (runwayml/stable-diffusion-v1-5: unet/config.json, vae/config.json,
# text_encoder/config.json), for building SD v1.5-sized models with random weights (GPU benchmarks).
SD15_UNET_CONFIG: dict = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_VAE_CONFIG: dict = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
SD15_TEXT_CONFIG: dict = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)


def write_tokenizer(
    path: str | Path, words: Iterable[str] = DEFAULT_WORDS, model_max_length: int = 77
) -> Path:
    """Write a ``CLIPTokenizer`` (vocab.json + merges.txt) whose BPE merges rebuild each given word.

    Every ASCII character (alone and word-final) is in the vocabulary, so any text tokenizes; the merges
    turn each listed word into one token, as CLIP's own merges do for common words.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}

    def add(tok: str) -> None:
        if tok not in vocab:
            vocab[tok] = len(vocab)

    add("<|startoftext|>")
    add("<|endoftext|>")
    for code in range(33, 127):  # printable ASCII maps to itself in CLIP's byte-to-unicode table
        add(chr(code))
    for code in range(33, 127):
        add(chr(code) + "</w>")
    merges: list[str] = []
    seen: set[str] = set()
    for word in sorted({w.lower() for w in words if len(w) > 1}):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merge = f"{left} {right}"
            left = left + right
            if merge not in seen:
                seen.add(merge)
                merges.append(merge)
            add(left)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": model_max_length,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        )
    )
    (path / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )
    return path


def _text_config(vocab_size: int, hidden: int, layers: int, projection_dim: int | None = None):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_attention_heads=4,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        projection_dim=projection_dim or hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def sd_pipeline(*, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any = None) -> Any:
    """An SD v1.x-layout ``StableDiffusionPipeline`` from its parts (no safety checker).

    ``scheduler`` defaults to SD v1.5's training schedule (its scheduler_config.json: scaled_linear
    0.00085..0.012, 1000 steps, epsilon prediction, steps_offset 1) as a DDPMScheduler.
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    if scheduler is None:
        scheduler = DDPMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            prediction_type="epsilon",
            steps_offset=1,  # 0 draws a deprecation warning from the pipeline
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_sd_pipeline(path: str | Path, *, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> Path:
    """Assemble an SD v1.x-layout pipeline from its parts (``sd_pipeline``, SD v1.5's noise schedule) and
    save it, weights as safetensors only."""
    sd_pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet).save_pretrained(
        path, safe_serialization=True
    )
    return Path(path)


def tiny_sd_configs(
    resolution: int = 32, unet_channels: tuple[int, ...] = (32, 64), text_hidden: int = 32
) -> tuple[dict, dict, dict]:
    """Keyword arguments of the tiny SD's UNet, VAE (two levels: latents at ``resolution / 2``) and text
    encoder (``CLIPTextConfig`` without vocabulary and token ids)."""
    unet = dict(
        sample_size=resolution // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(unet_channels) - 1),
        up_block_types=("UpBlock2D",) * (len(unet_channels) - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=text_hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
    )
    text = dict(
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
    )
    return unet, vae, text


def build_tiny_sd(
    path: str | Path,
    *,
    resolution: int = 32,
    words: Iterable[str] = DEFAULT_WORDS,
    seed: int = 0,
    unet_channels: tuple[int, ...] = (32, 64),
    text_hidden: int = 32,
) -> Path:
    """Build a tiny SD v1.x-layout pipeline with random weights and save it in diffusers layout.

    Latents are 4 channels at ``resolution / 2`` (a two-level VAE), the text encoder is a 2-layer CLIP.
    Loadable with ``StableDiffusionPipeline.from_pretrained(path)``.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    tok_dir = write_tokenizer(path / "_tokenizer_src", words)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer), text_hidden, 2))
    unet_kwargs, vae_kwargs, _ = tiny_sd_configs(resolution, unet_channels, text_hidden)
    vae = AutoencoderKL(**vae_kwargs)
    unet = UNet2DConditionModel(**unet_kwargs)
    save_sd_pipeline(path, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)
    return path


def build_tiny_sdxl(
    path: str | Path, *, resolution: int = 32, words: Iterable[str] = DEFAULT_WORDS, seed: int = 0
) -> Path:
    """Build a tiny SDXL-layout pipeline (two text encoders, ``text_time`` added conditioning) and save it.

    Loadable with ``StableDiffusionXLPipeline.from_pretrained(path)``.
    """
    import shutil

    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    tok_dir = write_tokenizer(path / "_tokenizer_src", words)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer), 32, 2))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tokenizer), 32, 2, projection_dim=32))
    vae = AutoencoderKL(**tiny_sd_configs(resolution)[1])  # the tiny SD's VAE
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=resolution // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,  # penultimate hidden states of both encoders, concatenated (32 + 32)
        attention_head_dim=8,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # 6 time ids (original size, crop top-left, target size) embedded to time_dim each + pooled text (32).
        projection_class_embeddings_input_dim=6 * time_dim + 32,
        transformer_layers_per_block=1,
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    shutil.rmtree(tok_dir, ignore_errors=True)
    return path


def build_sd15_sized(path: str | Path, *, seed: int = 0) -> Path:
    """An SD v1.5-layout pipeline with SD v1.5's UNet/VAE/text-encoder sizes and random weights, saved.

    For GPU benchmarks (about 4 GB in fp32); the tokenizer is the small one of :func:`write_tokenizer`.
    """
    import shutil

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    tok_dir = write_tokenizer(path / "_tokenizer_src")
    save_sd_pipeline(
        path,
        vae=AutoencoderKL(**SD15_VAE_CONFIG),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)),
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
        unet=UNet2DConditionModel(**SD15_UNET_CONFIG),
    )
    shutil.rmtree(tok_dir, ignore_errors=True)
    return path
