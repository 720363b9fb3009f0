"""Benchmark of the Diffusion-KTO training step (not a test: prints figures, asserts nothing).

Two steps run side by side in the same process, on the same model and batch size:

- **optimized**: the trainer's own step (``components.train.loop.Trainer.loss`` + backward + AdamW), which
  gathers cached latents and text embeddings and runs only UNet work: one policy forward/backward and one
  forward of the reference UNet held resident (its Linear/Conv weights in the compute dtype).
- **naive**: what the reference code (github.com/jacklishufan/diffusion-kto, ``train_kto_sd_v1.5.py``)
  does every step: VAE-encode the images and run the text encoder, then copy the reference weights into
  the UNet for the reference forward and copy the policy weights back (``unet.load_state_dict``, with the
  stored copy in host memory, as its ``reference_model.store/copy_to`` does), then the same loss and AdamW.
  Images are given to it already decoded and resized, which flatters the naive step.

Default (CPU): ``--proportional``, a small model whose parts have SD v1.5's cost proportions: a UNet with
SD v1.5's layout at 1/8 of its channel widths, a VAE with 8x downsampling over 4 levels at 1/8 of SD v1.5's
VAE widths (the same VAE:UNet width ratio), and a text encoder cut down until its share of the FLOPs is
SD v1.5's (~2% of a UNet forward), at 64 px; built from config, saved, and run through the trainer's real
loading and cache code. The script prints the measured FLOPs per sample of each part (torch's
FlopCounterMode, on the meta device) for this config and for SD v1.5 at 512 px, so the proportions can be
compared. ``--tiny``: the tests' tiny SD (2-level VAE, 32 px), where the VAE and text encoder are almost free.
The naive step's reference-weight swap is a host-memory copy on CPU; its PCIe cost on a GPU is not
simulated, only the bytes it moves per step are printed for SD v1.5.
``--sd15``: an SD v1.5-sized UNet (and VAE and CLIP text encoder for the naive step) built from config
with random weights, for a GPU: prints samples/s, achieved TFLOP/s (3.2 TFLOP per sample at 512 px: policy
forward+backward 2.41 + reference forward 0.80, torch's FlopCounterMode) and peak memory.

    .venv/bin/python tests/benchmarks/bench_train.py --threads 1            # proportional, CPU
    .venv/bin/python tests/benchmarks/bench_train.py --tiny --threads 1     # the tests' tiny SD, CPU
    .venv/bin/python tests/benchmarks/bench_train.py --flops-only           # FLOP table only
    .venv/bin/python tests/benchmarks/bench_train.py --profile              # torch.profiler of one step
    python tests/benchmarks/bench_train.py --sd15 --batch-size 16 --dtype bf16 --steps 20 [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.shared.tiny_models import (  # noqa: E402
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    tiny_sd_configs,
)
from components.train.cache import EncodedData  # noqa: E402
from components.train.data import StepSampler, TrainData  # noqa: E402
from components.train.losses import diffusion_kto_loss, per_sample_mse  # noqa: E402
from components.train.models import TrainModels, matmul_layers_to  # noqa: E402
from components.train.step import TrainConfig  # noqa: E402

# SD v1.5's architecture, shared with the other benchmarks; the text config without its vocabulary
# (the benchmark's tokenizer is the small one).
SD15_UNET = SD15_UNET_CONFIG
SD15_VAE = SD15_VAE_CONFIG
SD15_TEXT = {k: v for k, v in SD15_TEXT_CONFIG.items() if k not in ("vocab_size", "hidden_act")}
# SD v1.5's layout at 1/8 of its widths: UNet (320..1280)/8, VAE (128..512)/8 (the VAE:UNet width ratio of
# SD v1.5, 0.4), 8x VAE downsampling over 4 levels; a 2-layer 32-wide text encoder, whose FLOPs are ~2% of
# a UNet forward as SD v1.5's CLIP-L is (13 of 803 GFLOP). Run at 64 px (8x8 latents).
PROPORTIONAL_UNET = dict(
    SD15_UNET, block_out_channels=(40, 80, 160, 160), cross_attention_dim=32, norm_num_groups=8
)
PROPORTIONAL_VAE = dict(SD15_VAE, block_out_channels=(16, 32, 64, 64), norm_num_groups=8)
PROPORTIONAL_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
)
TFLOP_PER_SAMPLE_512 = 3.2


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[int], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` timed calls, after ``warmup`` untimed ones."""
    for i in range(warmup):
        step(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    synchronize(device)
    return (time.perf_counter() - start) / steps


# --------------------------------------------------------------------------------------- optimized step


# The UNet's repeated blocks, compiled one by one with --compile-regions (diffusers' own
# `compile_repeated_blocks` lists only the transformer blocks; the ResNet blocks hold the GroupNorms and casts).
REPEATED_BLOCKS = ("ResnetBlock2D", "Transformer2DModel")


def compile_unet(unet: torch.nn.Module, mode: str, regions: bool) -> None:
    """``torch.compile`` in place, as the trainer does (``mode`` and ``regions`` are experiments of this script)."""
    if not regions:
        unet.compile(mode=mode)
        return
    # Instances of one block class share dynamo's cache entry: static shapes, one graph per block shape
    # (an SD UNet has more than dynamo's default of 8 ResNet block shapes).
    import torch._dynamo.config

    torch._dynamo.config.recompile_limit = 64
    for module in unet.modules():
        if type(module).__name__ in REPEATED_BLOCKS:
            module.compile(mode=mode, dynamic=False)


def optimized_step(
    config: TrainConfig,
    models: TrainModels,
    encoded: EncodedData,
    data: TrainData,
    accelerator: Any,
    compile_mode: str = "default",
    compile_regions: bool = False,
) -> Callable[[int], None]:
    """The trainer's step: ``Trainer.loss`` on a ``StepSampler`` batch, backward, clip, AdamW."""
    from components.train.loop import Trainer, _make_optimizer, configure_cuda_backends

    configure_cuda_backends(config, accelerator.device.type)
    params = [p for p in models.unet.parameters() if p.requires_grad]
    optimizer = _make_optimizer(config, params, accelerator.device.type)
    unet, optimizer = accelerator.prepare(models.unet, optimizer)
    if config.torch_compile:
        compile_unet(accelerator.unwrap_model(unet), compile_mode, compile_regions)
        if models.reference_unet is not None:
            compile_unet(models.reference_unet, compile_mode, compile_regions)
    trainer = Trainer(config, models, encoded, accelerator, unet)
    sampler = StepSampler.for_config(data, config)  # kto, no flips (TrainConfig's defaults)

    def step(i: int) -> None:
        loss, _, _, _ = trainer.loss(sampler.batch(i), i)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ------------------------------------------------------------------------------------------- naive step


def naive_step(
    *,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    scheduler: Any,
    pixels: torch.Tensor,
    prompts: list[str],
    prompt_of_image: np.ndarray,
    desirable: np.ndarray,
    batch_size: int,
    beta: float,
    learning_rate: float,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
) -> Callable[[int], None]:
    """The reference code's per-step work; see the module docstring."""
    unet.train().requires_grad_(True)
    # The frozen reference weights, kept in host memory as the reference code's EMA-style store keeps them.
    reference_state = {k: v.detach().to("cpu", copy=True) for k, v in unet.state_dict().items()}
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, fused=device.type == "cuda")
    n_images = len(pixels)
    rng = np.random.default_rng(0)

    def step(i: int) -> None:
        rows = rng.integers(0, n_images, batch_size)
        with torch.no_grad():
            # VAE + text encoder on every step (the reference code has no cache).
            latents = vae.encode(pixels[rows].to(device)).latent_dist.sample() * vae.config.scaling_factor
            ids = tokenizer(
                [prompts[prompt_of_image[r]] for r in rows],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            cond = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), device=device)
        x_t = scheduler.add_noise(latents, noise, timesteps)
        labels = torch.as_tensor(desirable[rows], device=device)

        # Reference forward: store the policy weights on the host, load the reference, run, load back.
        stored = {k: v.detach().to("cpu", copy=True) for k, v in unet.state_dict().items()}
        unet.load_state_dict(reference_state)
        with torch.no_grad(), autocast():
            reference_mse = per_sample_mse(unet(x_t, timesteps, cond).sample, noise)
        unet.load_state_dict(stored)

        with autocast():
            policy_mse = per_sample_mse(unet(x_t, timesteps, cond).sample, noise)
        loss = diffusion_kto_loss(policy_mse, reference_mse, labels, beta=beta).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ------------------------------------------------------------------------------------------------ tiny


def write_images_and_manifest(folder: Path, n_prompts: int, per_class: int, resolution: int) -> Path:
    """Small PNGs and a train.parquet (label-step contract columns the trainer reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[Any]] = {
        "sample_id": [],
        "prompt": [],
        "image_uri": [],
        "desirable": [],
        "split": [],
    }
    colours = ["red", "blue", "green", "yellow"]
    for p in range(n_prompts):
        for desirable in (True, False):
            for k in range(per_class):
                arr = rng.integers(0, 255, (resolution, resolution, 3)).astype(np.uint8)
                path = folder / f"img-{p}-{int(desirable)}-{k}.png"
                Image.fromarray(arr).save(path)
                rows["sample_id"].append(path.stem)
                rows["prompt"].append(f"a photo of a {colours[p % 4]} circle")
                rows["image_uri"].append(str(path))
                rows["desirable"].append(desirable)
                rows["split"].append("train")
    manifest = folder / "train.parquet"
    pq.write_table(pa.table(rows), manifest)
    return manifest


def flops_per_sample(
    unet_kwargs: dict[str, Any], vae_kwargs: dict[str, Any], text_kwargs: dict[str, Any], resolution: int
) -> dict[str, float]:
    """GFLOP per sample of each part (batch 1), counted by torch's FlopCounterMode on the meta device.

    Meta tensors carry shapes but no data, so SD v1.5 is counted in seconds without allocating it.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    def count(fn: Callable[[], Any]) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    latent = resolution // 8 if len(vae_kwargs["block_out_channels"]) == 4 else resolution // 2
    with torch.device("meta"):
        unet = UNet2DConditionModel(**{**unet_kwargs, "sample_size": latent})
        vae = AutoencoderKL(**{**vae_kwargs, "sample_size": resolution})
        text = CLIPTextModel(
            CLIPTextConfig(vocab_size=1000, bos_token_id=0, eos_token_id=1, pad_token_id=1, **text_kwargs)
        )
        x_t = torch.randn(1, 4, latent, latent)
        t = torch.tensor([500])
        cond = torch.randn(1, 77, unet_kwargs["cross_attention_dim"])
        pixels = torch.randn(1, 3, resolution, resolution)
        ids = torch.zeros(1, 77, dtype=torch.long)
    return {
        "unet_forward": count(lambda: unet(x_t, t, cond).sample),
        "unet_forward_backward": count(lambda: unet(x_t, t, cond).sample.sum().backward()),
        "vae_encode": count(lambda: vae.encode(pixels).latent_dist.mean),
        "text_encode": count(lambda: text(ids)[0]),
    }


def print_flop_table(configs: dict[str, tuple[dict, dict, dict, int]]) -> dict[str, dict[str, float]]:
    """Print GFLOP per sample of each part and its ratio to one UNet forward, for every named config."""
    table = {name: flops_per_sample(*parts) for name, parts in configs.items()}
    print("GFLOP per sample (FlopCounterMode) and ratio to one UNet forward:", flush=True)
    for name, f in table.items():
        unet = f["unet_forward"]
        naive_extra = f["vae_encode"] + f["text_encode"]
        kto_step = f["unet_forward_backward"] + unet  # policy fwd+bwd, reference fwd
        print(
            f"  {name:>28}: UNet fwd {unet:.4g}, UNet fwd+bwd {f['unet_forward_backward']:.4g}, "
            f"VAE encode {f['vae_encode']:.4g} ({f['vae_encode'] / unet:.2f}x), "
            f"text encode {f['text_encode']:.4g} ({f['text_encode'] / unet:.3f}x); "
            f"KTO step {kto_step:.4g}, naive adds {naive_extra:.4g} (+{100 * naive_extra / kto_step:.0f}%)",
            flush=True,
        )
    return table


def swap_bytes_per_step(unet_kwargs: dict[str, Any], element_bytes: int) -> int:
    """Bytes the naive step moves between host and device per step for its reference forward.

    Three copies of the UNet's weights: the policy out to the host, the reference in, the policy back in.
    """
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_kwargs)
    n = sum(p.numel() for p in unet.parameters())
    return 3 * n * element_bytes


def build_proportional_sd(path: Path, resolution: int) -> Path:
    """Save an SD v1.x-layout pipeline with SD v1.5's cost proportions (see the module docstring)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from components.shared.tiny_models import save_sd_pipeline, write_tokenizer

    torch.manual_seed(0)
    tok_dir = write_tokenizer(path.parent / "proportional-tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=1, **PROPORTIONAL_TEXT
        )
    )
    vae = AutoencoderKL(**{**PROPORTIONAL_VAE, "sample_size": resolution})
    unet = UNet2DConditionModel(**{**PROPORTIONAL_UNET, "sample_size": resolution // 8})
    save_sd_pipeline(path, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
    return path


def bench_tiny(args: argparse.Namespace) -> dict[str, Any]:
    """A small SD (proportional or the tests' tiny one) through the trainer's real loading, cache and step
    code, vs the naive step."""
    from accelerate import Accelerator

    from components.shared.tiny_models import build_tiny_sd
    from components.train.cache import build_or_load_cache
    from components.train.data import load_image, read_train_data
    from components.train.models import load_encoders, load_train_models, load_unet

    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    if args.tiny:
        model_dir = build_tiny_sd(work / "tiny-sd", resolution=args.resolution)
    else:
        model_dir = build_proportional_sd(work / "proportional-sd", args.resolution)
    manifest = write_images_and_manifest(work / "data", n_prompts=4, per_class=4, resolution=args.resolution)
    config = TrainConfig(
        pretrained_model=str(model_dir),
        train_data=str(manifest),
        output_dir=str(work / "out"),
        cache_dir=str(work / "cache"),
        train_batch_size=args.batch_size,
        resolution=args.resolution,
        learning_rate=1e-5,
        lr_warmup_steps=0,
        mixed_precision="no" if args.dtype == "fp32" else "bf16",
        device=device.type,
        torch_compile=args.compile,
        channels_last=args.channels_last,
        dataloader_workers=0,
        progress_bar=False,
    )
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=device.type == "cpu")
    data = read_train_data(config.train_data)
    models = load_train_models(
        config.pretrained_model,
        device=accelerator.device,
        mixed_precision=config.mixed_precision,
        use_lora=False,
        channels_last=config.channels_last,
    )
    encoded = build_or_load_cache(
        model_dir=models.model_dir,
        data=data,
        cache_dir=str(config.cache_dir),
        resolution=config.resolution,
        hflip=False,
        device=accelerator.device,
        dtype=torch.float32,
        workers=0,
    ).to(accelerator.device)
    fast = optimized_step(config, models, encoded, data, accelerator, args.compile_mode, args.compile_regions)
    if args.profile:
        profile_step(fast, args.warmup)
        return {}

    encoders = load_encoders(models.model_dir, accelerator.device, torch.float32)
    naive_unet = load_unet(models.model_dir, torch.float32).to(accelerator.device)
    pixels = torch.stack([load_image(uri, config.resolution) for uri in data.image_uris])
    slow = naive_step(
        unet=naive_unet,
        vae=encoders.vae,
        text_encoder=encoders.text_encoders[0],
        tokenizer=encoders.tokenizers[0],
        scheduler=models.noise_scheduler,
        pixels=pixels,
        prompts=data.prompts,
        prompt_of_image=data.prompt_index,
        desirable=data.desirable,
        batch_size=args.batch_size,
        beta=config.beta,
        learning_rate=config.learning_rate,
        autocast=accelerator.autocast,
        device=accelerator.device,
    )
    return run_pair(args, fast, slow, accelerator.device, tflop_per_sample=None)


def profile_step(step: Callable[[int], None], warmup: int) -> None:
    """torch.profiler of one optimized step after ``warmup`` untimed ones: the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    for i in range(max(warmup, 1)):
        step(i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, record_shapes=False) as prof:
        step(max(warmup, 1))
    # On a GPU the device time is what matters; on CPU the CPU time is the device time.
    sort_by = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=30), flush=True)


# ------------------------------------------------------------------------------------------------ SD 1.5


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak allocated device memory (GiB) inside the block; 0 on CPU."""
    out = {"peak_gib": 0.0}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield out
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30


def bench_sd15(args: argparse.Namespace) -> dict[str, Any]:
    """SD v1.5-sized UNet with random weights; the trainer's step on synthetic cached latents vs naive."""
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from components.shared.tiny_models import write_tokenizer

    device = torch.device(args.device)
    mixed: Literal["no", "bf16"] = "no" if args.dtype == "fp32" else "bf16"
    accelerator = Accelerator(mixed_precision=mixed, cpu=device.type == "cpu")
    compute = torch.bfloat16 if mixed == "bf16" else torch.float32
    latent = args.resolution // 8
    torch.manual_seed(0)
    # Initialise straight on the GPU: random init of 860M parameters on the host takes longer than the timing.
    build_on = device if device.type == "cuda" else contextlib.nullcontext()
    with build_on:
        unet = UNet2DConditionModel(**{**SD15_UNET, "sample_size": latent})
    unet.set_attn_processor(AttnProcessor2_0())
    # as the trainer holds it: Linear/Conv weights in the compute dtype, norm layers in float32
    reference = matmul_layers_to(copy.deepcopy(unet), compute).to(device).eval().requires_grad_(False)
    unet = unet.to(device).train()
    if args.channels_last:  # as components.train.models.load_models applies TrainConfig.channels_last
        reference = reference.to(memory_format=torch.channels_last)
        unet = unet.to(memory_format=torch.channels_last)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    models = TrainModels(
        model_dir=Path("."),
        sdxl=False,
        unet=unet,
        reference_unet=reference,
        noise_scheduler=scheduler,
        lora=False,
    )
    n_images, n_prompts = 64, 16
    encoded = EncodedData(
        latent_mean=torch.randn(n_images, 4, latent, latent, device=device),
        latent_std=torch.full((n_images, 4, latent, latent), 0.01, device=device),
        prompt_embeds=torch.randn(n_prompts + 1, 77, 768, device=device),
        pooled_prompt_embeds=None,
        scaling_factor=0.18215,
        shift_factor=0.0,
        n_images=n_images,
        hflip=False,
        key="synthetic",
        hit=True,
    )
    data = TrainData(
        source="synthetic",
        data_hash="synthetic",
        sample_ids=[str(i) for i in range(n_images)],
        image_uris=[""] * n_images,
        prompts=[f"prompt {i}" for i in range(n_prompts)],
        prompt_index=np.arange(n_images) % n_prompts,
        desirable=np.arange(n_images) % 2 == 0,
    )
    config = TrainConfig(
        pretrained_model="synthetic",
        train_data="synthetic",
        output_dir=tempfile.mkdtemp(prefix="bench-sd15-"),
        train_batch_size=args.batch_size,
        resolution=args.resolution,
        learning_rate=1e-7,
        mixed_precision=mixed,
        device=device.type,
        torch_compile=args.compile,
        channels_last=args.channels_last,
        cudnn_benchmark=not args.no_cudnn_benchmark,
        progress_bar=False,
    )
    fast = optimized_step(config, models, encoded, data, accelerator, args.compile_mode, args.compile_regions)
    if args.profile:
        profile_step(fast, args.warmup)
        return {}

    slow = None
    if not args.skip_naive:
        tok_dir = write_tokenizer(Path(tempfile.mkdtemp(prefix="bench-tok-")))
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=768,
                intermediate_size=3072,
                num_attention_heads=12,
                num_hidden_layers=12,
                max_position_embeddings=77,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        ).to(device, compute)
        with build_on:
            vae = AutoencoderKL(**{**SD15_VAE, "sample_size": args.resolution}).to(device).eval()
        naive_unet = copy.deepcopy(accelerator.unwrap_model(unet)).to(device)
        slow = naive_step(
            unet=naive_unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            pixels=torch.rand(n_images, 3, args.resolution, args.resolution) * 2 - 1,
            prompts=data.prompts,
            prompt_of_image=data.prompt_index,
            desirable=data.desirable,
            batch_size=args.batch_size,
            beta=config.beta,
            learning_rate=config.learning_rate,
            autocast=accelerator.autocast,
            device=device,
        )
    tflop = TFLOP_PER_SAMPLE_512 * (args.resolution / 512) ** 2
    return run_pair(args, fast, slow, device, tflop_per_sample=tflop)


# ------------------------------------------------------------------------------------------------ main


def run_pair(
    args: argparse.Namespace,
    fast: Callable[[int], None],
    slow: Callable[[int], None] | None,
    device: torch.device,
    tflop_per_sample: float | None,
) -> dict[str, Any]:
    """Time both steps and print one line each, plus the ratio."""
    result: dict[str, Any] = {
        "model": "sd15" if args.sd15 else ("tiny-sd" if args.tiny else "proportional-sd"),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "batch_size": args.batch_size,
        "resolution": args.resolution,
        "dtype": args.dtype,
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "compile_regions": args.compile_regions if args.compile else None,
        "channels_last": args.channels_last,
        "cudnn_benchmark": not args.no_cudnn_benchmark,
        "steps": args.steps,
    }
    with peak_memory(device) as mem:
        seconds = time_steps(fast, args.steps, args.warmup, device)
    result["optimized_samples_per_s"] = args.batch_size / seconds
    result["optimized_peak_gib"] = mem["peak_gib"]
    line = f"optimized (trainer step, cached latents): {result['optimized_samples_per_s']:.2f} samples/s"
    if tflop_per_sample is not None:
        result["optimized_tflops"] = result["optimized_samples_per_s"] * tflop_per_sample
        line += f", {result['optimized_tflops']:.1f} TFLOP/s achieved"
    if device.type == "cuda":
        line += f", peak {mem['peak_gib']:.1f} GiB"
    print(line, flush=True)
    if slow is not None:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with peak_memory(device) as mem:
            seconds = time_steps(slow, args.steps, args.warmup, device)
        result["naive_samples_per_s"] = args.batch_size / seconds
        result["naive_peak_gib"] = mem["peak_gib"]
        result["speedup"] = result["optimized_samples_per_s"] / result["naive_samples_per_s"]
        print(
            f"naive (VAE + text encoder every step, reference weights swapped in and out): "
            f"{result['naive_samples_per_s']:.2f} samples/s",
            flush=True,
        )
        print(f"speed-up: {result['speedup']:.2f}x (goal >= 2x)", flush=True)
    print(json.dumps(result))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="SD v1.5-sized UNet from config (for a GPU)")
    parser.add_argument(
        "--proportional",
        action="store_true",
        help="small model with SD v1.5's VAE/text/UNet cost proportions, 64 px (the CPU default)",
    )
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny SD (2-level VAE, 32 px)")
    parser.add_argument("--flops-only", action="store_true", help="print the FLOP table and stop")
    parser.add_argument("--profile", action="store_true", help="torch.profiler of one optimized step")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (tiny: 4, sd15: 16)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (tiny: 32, sd15: 512)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="tiny: fp32, sd15: bf16")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (tiny: 2, sd15: 3)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNets (trainer option)")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode with --compile (the trainer uses default)",
    )
    parser.add_argument(
        "--compile-regions",
        action="store_true",
        help="with --compile: compile each ResNet and transformer block alone (faster to compile)",
    )
    parser.add_argument(
        "--no-cudnn-benchmark", action="store_true", help="TrainConfig.cudnn_benchmark off (CUDA only)"
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="UNets in channels_last memory format (trainer option)"
    )
    parser.add_argument("--skip-naive", action="store_true", help="time only the optimized step")
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda when available for --sd15)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's; 1 is steadier on a shared box)",
    )
    args = parser.parse_args(argv)
    sd15 = args.sd15
    if sum([sd15, args.proportional, args.tiny]) > 1:
        parser.error("pick one of --sd15, --proportional, --tiny")
    args.batch_size = args.batch_size or (16 if sd15 else 4)
    args.resolution = args.resolution or (512 if sd15 else 32 if args.tiny else 64)
    args.dtype = args.dtype or ("bf16" if sd15 else "fp32")
    args.steps = args.steps or 10
    args.warmup = args.warmup if args.warmup is not None else (3 if sd15 else 2)
    args.device = args.device or ("cuda" if sd15 and torch.cuda.is_available() else "cpu")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print its figures."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tiny_unet, tiny_vae, text_tiny = tiny_sd_configs()
    table = print_flop_table(
        {
            "SD v1.5 at 512 px": (SD15_UNET, SD15_VAE, SD15_TEXT, 512),
            f"proportional at {64 if args.tiny or args.sd15 else args.resolution} px": (
                PROPORTIONAL_UNET,
                PROPORTIONAL_VAE,
                PROPORTIONAL_TEXT,
                64 if args.tiny or args.sd15 else args.resolution,
            ),
            "tests' tiny SD at 32 px": (
                tiny_unet,
                tiny_vae,
                text_tiny,
                32,
            ),
        }
    )
    swap = swap_bytes_per_step(SD15_UNET, 4)
    print(
        f"naive step on a GPU with SD v1.5: {swap / 1e9:.1f} GB of fp32 UNet weights cross PCIe per step "
        f"(policy out, reference in, policy back in), {swap / 25e9:.2f} s at 25 GB/s (PCIe 4.0 x16 in "
        f"practice); not simulated on CPU",
        flush=True,
    )
    if args.flops_only:
        return {"flops_gflop_per_sample": table, "sd15_swap_bytes_per_step": swap}
    result = bench_sd15(args) if args.sd15 else bench_tiny(args)
    result["flops_gflop_per_sample"] = table
    result["sd15_swap_bytes_per_step"] = swap
    return result


if __name__ == "__main__":
    main()
