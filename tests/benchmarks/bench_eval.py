"""Benchmark of the evaluate step: images/s of generation and of each scorer.

Default (CPU): the tiny SD model (32 px, from components.shared.tiny_models) and the tiny CLIP scorer model
(components.evaluate.tiny_scorers), with the step's default sampler (DPMSolver multistep, 25 steps, CFG 7.5).

``--sd15`` (for a GPU): an SD v1.5-sized pipeline built from config with random weights (UNet 860M,
VAE 84M, CLIP-L-sized text encoder) at 512 px in bf16, and a CLIP-H-sized scorer (PickScore's
architecture, ViT-H/14 at 224 px). No weights are downloaded; the numbers are speed only.

Prints one line per measurement; nothing is asserted.

    .venv/bin/python tests/benchmarks/bench_eval.py [--prompts 8 --images-per-prompt 2 --steps 25]
    .venv/bin/python tests/benchmarks/bench_eval.py --sd15 --prompts 16 --images-per-prompt 4
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [
    f"a {colour} {shape} on a {bg} background"
    for colour in ("red", "green", "blue", "yellow", "cyan", "magenta", "white", "black")
    for shape in ("circle", "square", "triangle", "star")
    for bg in ("dark", "light")
]


def build_sd15_sized(path: Path) -> Path:
    """An SD v1.5-layout pipeline with SD v1.5's UNet/VAE/text-encoder sizes and random weights."""
    from components.shared.tiny_models import build_sd15_sized as build

    return build(path / "sd15")


def build_clip_h_sized(path: Path) -> Path:
    """A CLIPModel with ViT-H/14 sizes (PickScore's architecture), random weights, plus an aesthetic head."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from components.evaluate.scorers.aesthetic import build_aesthetic_head
    from components.shared.tiny_models import write_tokenizer

    torch.manual_seed(0)
    write_tokenizer(path)
    tokenizer = CLIPTokenizer.from_pretrained(path)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=24,
            max_position_embeddings=77,
            hidden_act="gelu",
        ),
        vision_config=dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_attention_heads=16,
            num_hidden_layers=32,
            image_size=224,
            patch_size=14,
            hidden_act="gelu",
        ),
        projection_dim=1024,
    )
    CLIPModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    head = build_aesthetic_head(1024)
    save_file(
        {k: v.contiguous() for k, v in head.state_dict().items()}, str(path / "aesthetic_head.safetensors")
    )
    return path


def main() -> None:
    """Run the benchmark and print images/s."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sd15", action="store_true", help="SD v1.5-sized model at 512 px (use a GPU)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=None, help="default: 32 tiny, 512 --sd15")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scorers", default="pickscore,clip_score,aesthetic")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from components.evaluate.generate import generate_images, read_image, resolve_device
    from components.evaluate.scorers import get_scorer
    from components.evaluate.tiny_scorers import build_tiny_clip
    from components.shared.models import load_pipeline
    from components.shared.tiny_models import build_tiny_sd

    device = resolve_device(args.device)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        f", threads {torch.get_num_threads()}, device {device}{f' ({gpu})' if gpu else ''}"
    )
    prompts = PROMPTS[: args.prompts]
    n_images = len(prompts) * args.images_per_prompt
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        if args.sd15:
            model_dir = build_sd15_sized(root)
            scorer_dir = build_clip_h_sized(root / "clip-h")
            resolution = args.resolution or 512
        else:
            model_dir = build_tiny_sd(root / "tiny-sd")
            scorer_dir = build_tiny_clip(root / "tiny-clip")
            resolution = args.resolution or 32
        print(f"built models from config in {time.perf_counter() - t0:.1f}s")

        from components.evaluate.generate import resolve_dtype

        pipe = load_pipeline(str(model_dir), device=device, dtype=resolve_dtype("auto", device))
        common = dict(
            num_inference_steps=args.steps,
            resolution=resolution,
            batch_size=args.batch_size,
            device=device,
            pipeline=pipe,
            progress=False,
        )
        # Warm-up: one batch (kernel selection, allocator), not timed.
        generate_images(str(model_dir), prompts[:1], str(root / "warm"), images_per_prompt=1, **common)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        results = generate_images(
            str(model_dir), prompts, str(root / "gen"), images_per_prompt=args.images_per_prompt, **common
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        gen_s, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"generation: {n_images} images at {resolution}px, {args.steps} steps DPMSolver, CFG 7.5, batch "
            f"{args.batch_size}: {gen_s:.2f}s wall = {n_images / gen_s:.2f} images/s "
            f"({gen_cpu:.2f}s CPU = {n_images / gen_cpu:.2f} images per CPU-second)"
        )
        del pipe
        images = [read_image(r.image_path) for r in results]
        texts = [r.prompt for r in results]
        for name in args.scorers.split(","):
            scorer = get_scorer(
                name, model_path=str(scorer_dir), device=device, batch_size=args.batch_size * 2
            )
            scorer.score(images[:2], texts[:2])  # warm-up
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            scorer.score(images, texts)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            s = time.perf_counter() - t0
            print(f"scoring {name}: {n_images} images in {s:.3f}s = {n_images / s:.1f} images/s")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}; process CPU {time.process_time() - cpu0:.1f}s")


if __name__ == "__main__":
    main()
