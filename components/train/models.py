"""Loading the parts of a diffusers model the trainer needs, from a local directory or gs://.

The trainer touches the VAE and the text encoder(s) only in the cache pass (``load_encoders``); the
training loop needs the UNet being trained, its frozen reference and the noise schedule
(``load_unets``, ``load_noise_scheduler``). SD v1.x/2.x and SDXL (two text encoders, pooled embeddings,
``add_time_ids``) are told apart by ``model_index.json``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.shared.models import resolve_model_dir

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compute_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of frozen weights (reference UNet, encoders) for a mixed_precision setting."""
    return _DTYPES[mixed_precision]


def is_sdxl(model_dir: Path) -> bool:
    """True when the pipeline directory is an SDXL layout (a second text encoder)."""
    index = json.loads((model_dir / "model_index.json").read_text())
    return "text_encoder_2" in index or "XL" in str(index.get("_class_name", ""))


@dataclass
class Encoders:
    """The frozen parts used once, by the cache pass: VAE, tokenizer(s) and text encoder(s)."""

    vae: Any
    tokenizers: list[Any]
    text_encoders: list[Any]
    sdxl: bool
    device: torch.device
    dtype: torch.dtype = torch.float32
    scaling_factor: float = field(default=0.18215)


def load_encoders(model_dir: Path, device: torch.device, dtype: torch.dtype) -> Encoders:
    """Load the VAE and text encoder(s), frozen, in eval mode, on ``device``.

    The VAE stays in float32: SD's VAE overflows in fp16 (diffusers' training scripts keep it in fp32
    unless a fixed VAE is given), and it runs once per image, so its cost does not matter.
    """
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    sdxl = is_sdxl(model_dir)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae").to(device).eval().requires_grad_(False)
    tokenizers = [AutoTokenizer.from_pretrained(model_dir / "tokenizer", use_fast=False)]
    text_encoders = [
        CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", torch_dtype=dtype)
        .to(device)
        .eval()
        .requires_grad_(False)
    ]
    if sdxl:
        tokenizers.append(AutoTokenizer.from_pretrained(model_dir / "tokenizer_2", use_fast=False))
        text_encoders.append(
            CLIPTextModelWithProjection.from_pretrained(
                model_dir, subfolder="text_encoder_2", torch_dtype=dtype
            )
            .to(device)
            .eval()
            .requires_grad_(False)
        )
    return Encoders(
        vae=vae,
        tokenizers=tokenizers,
        text_encoders=text_encoders,
        sdxl=sdxl,
        device=device,
        dtype=dtype,
        scaling_factor=float(vae.config.scaling_factor),
    )


def load_noise_scheduler(model_dir: Path) -> Any:
    """The training noise schedule: a ``DDPMScheduler`` built from the model's scheduler config.

    As in diffusers' training scripts and the reference code, whatever sampler the pipeline ships with
    (SDXL ships Euler), training noises with the DDPM forward process of the same betas and prediction type.
    """
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")


def load_unet(model_dir: Path, dtype: torch.dtype = torch.float32) -> Any:
    """The UNet, with diffusers' default SDPA attention (AttnProcessor2_0)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=dtype)
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def add_lora(unet: Any, *, rank: int, alpha: float, dropout: float, target_modules: list[str]) -> None:
    """Add a trainable LoRA adapter (peft) to the UNet's ``target_modules``; every other weight is frozen."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            init_lora_weights="gaussian",
            target_modules=list(target_modules),
        )
    )
    n_adapted = sum(1 for name, _ in unet.named_modules() if name.endswith("lora_A"))
    if n_adapted == 0:
        raise ValueError(
            f"lora_target_modules={target_modules} matched no module of the UNet; use attention projection "
            "names such as to_q, to_k, to_v, to_out.0"
        )
    # LoRA weights train in float32 even when the frozen base runs in bf16/fp16 (diffusers' LoRA recipe).
    for param in unet.parameters():
        if param.requires_grad:
            param.data = param.data.float()


@contextlib.contextmanager
def adapters_disabled(unet: Any) -> Iterator[Any]:
    """Inside the block the LoRA UNet computes the base model: the reference of a LoRA run, no copy held."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


@dataclass
class TrainModels:
    """The UNet being trained, how to get the reference prediction, and the noise schedule."""

    model_dir: Path
    sdxl: bool
    unet: Any
    reference_unet: Any | None
    noise_scheduler: Any
    lora: bool


_MATMUL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


def matmul_layers_to(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the weights of Linear and convolution layers to ``dtype``; everything else stays as it is.

    This is exactly how autocast runs the float32 policy: Linear/Conv from weights rounded to the compute
    dtype, GroupNorm/LayerNorm in float32 with their exact weights. A reference cast to bf16 as a whole
    would round its norm weights too, so at step 0 an identical policy and reference disagreed: with a
    pretrained model's weights (not representable in bf16) |g| reached 6e-4, i.e. ±3 in U's argument at
    β = 5000, pure rounding noise (found in review on a tiny SD with perturbed weights).
    """
    if dtype == torch.float32:
        return module
    for layer in module.modules():
        if isinstance(layer, _MATMUL_LAYERS):
            layer.to(dtype)
    return module


def load_train_models(
    model_uri: str,
    *,
    device: torch.device,
    mixed_precision: str,
    use_lora: bool,
    lora_rank: int = 8,
    lora_alpha: float = 8.0,
    lora_dropout: float = 0.0,
    lora_target_modules: list[str] | None = None,
    gradient_checkpointing: bool = False,
    channels_last: bool = False,
) -> TrainModels:
    """Load what the training loop needs, on ``device``.

    Full fine-tuning: the policy UNet in float32 (master weights; autocast runs it in the compute dtype)
    and a frozen reference UNet held resident on the same device, its Linear/Conv weights in the compute
    dtype and its norm layers in float32 (``matmul_layers_to``). It is never moved between devices per
    step (the reference code swaps it CPU<->GPU every step).
    LoRA: one UNet whose frozen base is in the compute dtype plus float32 adapters; the reference is the
    same UNet with the adapter switched off (``adapters_disabled``).
    """
    model_dir = resolve_model_dir(model_uri)
    dtype = compute_dtype(mixed_precision)
    sdxl = is_sdxl(model_dir)
    reference = None
    if use_lora:
        unet = load_unet(model_dir, dtype)
        add_lora(
            unet,
            rank=lora_rank,
            alpha=lora_alpha,
            dropout=lora_dropout,
            target_modules=lora_target_modules or ["to_q", "to_k", "to_v", "to_out.0"],
        )
    else:
        unet = load_unet(model_dir, torch.float32)
        unet.requires_grad_(True)
        reference = load_unet(model_dir, torch.float32)
        reference = matmul_layers_to(reference, dtype).to(device).eval().requires_grad_(False)
        if channels_last:
            reference = reference.to(memory_format=torch.channels_last)
    unet = unet.to(device)
    unet.train()
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return TrainModels(
        model_dir=model_dir,
        sdxl=sdxl,
        unet=unet,
        reference_unet=reference,
        noise_scheduler=load_noise_scheduler(model_dir),
        lora=use_lora,
    )
