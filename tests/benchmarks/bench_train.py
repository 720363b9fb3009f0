"""Benchmark of the Diffusion-KTO training step (not a test: prints figures, asserts nothing).

Two steps run side by side in the same process, on the same model and batch size:

- **optimized**: the trainer's own step (``components.train.loop.Trainer.loss`` + backward + AdamW), which
  gathers cached latents and text embeddings and runs only UNet work: one policy forward/backward and one
  forward of the reference UNet held resident in the compute dtype.
- **naive**: what the reference code (github.com/jacklishufan/diffusion-kto, ``train_kto_sd_v1.5.py``)
  does every step: VAE-encode the images and run the text encoder, then copy the reference weights into
  the UNet for the reference forward and copy the policy weights back (``unet.load_state_dict``, with the
  stored copy in host memory, as its ``reference_model.store/copy_to`` does), then the same loss and AdamW.
  Images are given to it already decoded and resized, which flatters the naive step.

Default: the tiny SD model of the tests, on CPU, built through the trainer's real loading and cache code.
``--sd15``: an SD v1.5-sized UNet (and VAE and CLIP text encoder for the naive step) built from config
with random weights, for a GPU: prints samples/s, achieved TFLOP/s (3.2 TFLOP per sample at 512 px: policy
forward+backward 2.41 + reference forward 0.80, torch's FlopCounterMode) and peak memory.

    .venv/bin/python tests/benchmarks/bench_train.py                       # tiny, CPU
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

from components.train.cache import EncodedData  # noqa: E402
from components.train.data import StepSampler, TrainData  # noqa: E402
from components.train.losses import diffusion_kto_loss, per_sample_mse  # noqa: E402
from components.train.models import TrainModels  # noqa: E402
from components.train.step import TrainConfig  # noqa: E402

# SD v1.5's UNet config (runwayml/stable-diffusion-v1-5, unet/config.json), random weights here.
SD15_UNET = dict(
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
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
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


def optimized_step(
    config: TrainConfig, models: TrainModels, encoded: EncodedData, data: TrainData, accelerator: Any
) -> Callable[[int], None]:
    """The trainer's step: ``Trainer.loss`` on a ``StepSampler`` batch, backward, clip, AdamW."""
    from components.train.loop import Trainer, _make_optimizer

    params = [p for p in models.unet.parameters() if p.requires_grad]
    optimizer = _make_optimizer(config, params, accelerator.device.type)
    unet, optimizer = accelerator.prepare(models.unet, optimizer)
    if config.torch_compile:
        accelerator.unwrap_model(unet).compile()
        if models.reference_unet is not None:
            models.reference_unet.compile()
    trainer = Trainer(config, models, encoded, accelerator, unet)
    sampler = StepSampler(
        data,
        objective="kto",
        batch_size=config.train_batch_size,
        desirable_ratio=config.desirable_ratio,
        caption_dropout=config.caption_dropout,
        hflip=False,
        seed=config.seed,
    )

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


def bench_tiny(args: argparse.Namespace) -> dict[str, Any]:
    """Tiny SD on CPU through the trainer's real loading, cache and step code, vs the naive step."""
    from accelerate import Accelerator

    from components.shared.tiny_models import build_tiny_sd
    from components.train.cache import build_or_load_cache
    from components.train.data import load_image, read_train_data
    from components.train.models import load_encoders, load_train_models, load_unet

    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model_dir = build_tiny_sd(work / "tiny-sd", resolution=args.resolution)
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
    fast = optimized_step(config, models, encoded, data, accelerator)

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
    unet = UNet2DConditionModel(**{**SD15_UNET, "sample_size": latent})
    unet.set_attn_processor(AttnProcessor2_0())
    reference = copy.deepcopy(unet).to(device, compute).eval().requires_grad_(False)
    unet = unet.to(device).train()
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
        progress_bar=False,
    )
    fast = optimized_step(config, models, encoded, data, accelerator)

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
        "model": "sd15" if args.sd15 else "tiny-sd",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "batch_size": args.batch_size,
        "resolution": args.resolution,
        "dtype": args.dtype,
        "compile": args.compile,
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
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (tiny: 4, sd15: 16)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (tiny: 32, sd15: 512)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="tiny: fp32, sd15: bf16")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (tiny: 2, sd15: 3)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNets (trainer option)")
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
    args.batch_size = args.batch_size or (16 if sd15 else 4)
    args.resolution = args.resolution or (512 if sd15 else 32)
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
    return bench_sd15(args) if args.sd15 else bench_tiny(args)


if __name__ == "__main__":
    main()
