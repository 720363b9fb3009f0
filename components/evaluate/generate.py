"""Deterministic image generation for evaluation (``dkto generate``).

Every (prompt, image) pair gets its own seed, derived from the base seed, the prompt's index and the image's
index; its initial latents are drawn on the CPU from a ``torch.Generator`` with that seed and passed to the
pipeline as ``latents=``. So the candidate and the production model start from identical noise for every
image, whatever the batch size, device or dtype, and a paired comparison compares like with like.

Outputs under ``out``: ``images/p{prompt:05d}_i{image:02d}.png`` and ``index.parquet`` with one row per image
(prompt, prompt_index, image_index, seed, image_path, model_id, safety_flagged).

A pipeline with a safety checker (SD v1.5 ships one, and the trainer copies it into the candidate) replaces
every image it flags by a black one and says so in ``output.nsfw_content_detected``; that flag is kept on
each image (``safety_flagged``) so the comparison can leave such images out with a count, instead of
scoring a black square as the model's work.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.shared import storage
from components.shared.telemetry import get_logger

log = get_logger("evaluate.generate")

#: Sampler names -> diffusers scheduler classes (all built from the model's own scheduler config).
SCHEDULERS: dict[str, str] = {
    "dpm_solver_multistep": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
    "ddpm": "DDPMScheduler",
}

INDEX_COLUMNS = (
    "prompt",
    "prompt_index",
    "image_index",
    "seed",
    "image_path",
    "model_id",
    "safety_flagged",
)


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the file, the line or column, and the fix."""


def load_prompts(uri: str, max_prompts: int | None = None) -> list[str]:
    """Unique prompts, in first-appearance order, from a text, JSONL or Parquet file (or val.parquet).

    Text: one prompt per line (blank lines and lines starting with ``#`` are skipped). JSONL: a ``prompt``
    field per line. Parquet (the label step's val.parquet included): a ``prompt`` column, one row per image,
    so repeated prompts are collapsed. Duplicates and skipped lines are logged with their counts.
    """
    lower = uri.lower()
    raw: list[str] = []
    skipped = 0
    if lower.endswith(".parquet"):
        table = storage.read_parquet(uri)
        if "prompt" not in table.column_names:
            raise PromptFileError(f"{uri}: no 'prompt' column (columns: {table.column_names})")
        for value in table.column("prompt").to_pylist():
            if isinstance(value, str) and value.strip():
                raw.append(value.strip())
            else:
                skipped += 1
    elif lower.endswith((".jsonl", ".ndjson")):
        for number, line in enumerate(storage.read_text(uri).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptFileError(f"{uri}:{number}: not valid JSON ({err.msg})") from None
            prompt = record.get("prompt") if isinstance(record, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise PromptFileError(f"{uri}:{number}: needs a non-empty string field 'prompt'")
            raw.append(prompt.strip())
    else:
        for line in storage.read_text(uri).splitlines():
            text = line.strip()
            if not text or text.startswith("#"):
                skipped += 1
                continue
            raw.append(text)
    prompts = list(dict.fromkeys(raw))
    if len(prompts) < len(raw) or skipped:
        log.info(
            "%s: %d prompts read, %d repeats collapsed, %d empty/comment entries skipped",
            uri,
            len(raw),
            len(raw) - len(prompts),
            skipped,
        )
    if not prompts:
        raise PromptFileError(f"{uri}: no prompts found (expected text lines, JSONL or a 'prompt' column)")
    if max_prompts is not None and len(prompts) > max_prompts:
        log.info("%s: using the first %d of %d unique prompts", uri, max_prompts, len(prompts))
        prompts = prompts[:max_prompts]
    return prompts


def image_seed(base_seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of one (prompt, image) pair: a hash, so no two pairs of one run share noise."""
    digest = hashlib.sha256(f"{base_seed}:{prompt_index}:{image_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype for generation: bf16 (or fp16 on GPUs without bf16) on CUDA, fp32 on CPU."""
    import torch

    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "fp16":
        return torch.float16
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def set_scheduler(pipe: Any, name: str) -> None:
    """Replace the pipeline's scheduler by the named sampler, built from the model's scheduler config."""
    if name == "default":
        return
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid: {sorted(SCHEDULERS)} or 'default'")
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


#: Scheduler config fields that change what a sampler computes, recorded in decision.json and the report.
KEY_SCHEDULER_FIELDS = (
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "algorithm_type",
    "solver_order",
    "use_karras_sigmas",
    "rescale_betas_zero_snr",
)


def scheduler_config(scheduler: Any) -> dict[str, Any]:
    """A scheduler's full public config (diffusers' private ``_*`` entries such as its version left out)."""
    return {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}


def scheduler_summary(scheduler: Any) -> dict[str, Any]:
    """The scheduler's class and the config fields that decide what it samples (for records)."""
    config = scheduler_config(scheduler)
    return {
        "class": type(scheduler).__name__,
        **{k: config[k] for k in KEY_SCHEDULER_FIELDS if k in config},
    }


@dataclass
class GeneratedImage:
    """One generated image and where it was written; ``safety_flagged``: the pipeline's safety checker
    flagged it and returned a black image instead (always False for a pipeline without a checker)."""

    prompt: str
    prompt_index: int
    image_index: int
    seed: int
    image_path: str
    model_id: str
    safety_flagged: bool = False


def generate_images(
    model: str,
    prompts: list[str],
    out: str,
    *,
    images_per_prompt: int = 4,
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    scheduler: str = "dpm_solver_multistep",
    resolution: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    model_id: str | None = None,
    progress: bool = True,
    pipeline: Any = None,
    on_image: Callable[[GeneratedImage], None] | None = None,
    image_dir: str = "images",
    on_pipeline: Callable[[Any], None] | None = None,
) -> list[GeneratedImage]:
    """Generate ``images_per_prompt`` images per prompt with ``model``, write PNGs and ``index.parquet``.

    PNGs go to ``out/<image_dir>/`` (``image_dir=""``: directly under ``out``). ``pipeline`` may be given
    pre-loaded (benchmarks); otherwise it is loaded with
    ``components.shared.models.load_pipeline`` (diffusers directories and LoRA outputs, local or gs://).
    ``on_pipeline`` is called with the pipeline once its scheduler is set, before any image is drawn (the
    evaluate step records the scheduler and stops when the two models' samplers differ).
    """
    import numpy as np
    import pyarrow as pa
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if pipeline is None:
        from components.shared.models import load_pipeline

        pipeline = load_pipeline(model, device=device, dtype=torch_dtype)
    pipe = pipeline
    set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    if on_pipeline is not None:
        on_pipeline(pipe)

    unet_cfg = pipe.unet.config
    scale = getattr(pipe, "vae_scale_factor", 8)
    height = width = resolution or int(unet_cfg.sample_size) * scale
    if height % scale:
        raise ValueError(f"resolution {height} must be a multiple of the VAE's downscale factor {scale}")
    latent_shape = (int(unet_cfg.in_channels), height // scale, width // scale)

    jobs = [(p, i) for p in range(len(prompts)) for i in range(images_per_prompt)]
    results: list[GeneratedImage] = []
    model_id = model_id or model
    bar = tqdm(total=len(jobs), desc=f"generate {Path(str(model)).name}", unit="img", disable=not progress)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            seeds = [image_seed(seed, p, i) for p, i in batch]
            # Initial noise on the CPU, one generator per image: identical across models, devices, batches.
            latents = torch.stack(
                [torch.randn(latent_shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
            ).to(device=device, dtype=torch_dtype)
            # Stochastic samplers (ancestral, SDE) also draw noise per step: seed that per image too.
            generators = [torch.Generator("cpu").manual_seed(s ^ 0x5EED) for s in seeds]
            output = pipe(
                prompt=[prompts[p] for p, _ in batch],
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                latents=latents,
                generator=generators,
                output_type="np",
            )
            arrays = np.asarray(output.images)
            flags = safety_flags(output, len(batch))
            for (p, i), s, array, flagged in zip(batch, seeds, arrays, flags, strict=True):
                image = Image.fromarray((np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8))
                name = f"p{p:05d}_i{i:02d}.png"
                path = storage.join(out, image_dir, name) if image_dir else storage.join(out, name)
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                storage.write_bytes(path, buf.getvalue())
                item = GeneratedImage(prompts[p], p, i, s, path, model_id, flagged)
                results.append(item)
                if on_image is not None:
                    on_image(item)
            bar.update(len(batch))
    bar.close()
    elapsed = time.perf_counter() - started
    table = pa.table(
        {
            "prompt": [r.prompt for r in results],
            "prompt_index": pa.array([r.prompt_index for r in results], pa.int64()),
            "image_index": pa.array([r.image_index for r in results], pa.int64()),
            "seed": pa.array([r.seed for r in results], pa.int64()),
            "image_path": [r.image_path for r in results],
            "model_id": [r.model_id for r in results],
            "safety_flagged": pa.array([r.safety_flagged for r in results], pa.bool_()),
        }
    )
    storage.write_parquet(table, storage.join(out, "index.parquet"))
    flagged_count = sum(r.safety_flagged for r in results)
    if flagged_count:
        log.warning(
            "%s: the safety checker flagged %d of %d images (written black; the comparison leaves their "
            "prompts out)",
            model_id,
            flagged_count,
            len(results),
        )
    log.info(
        "%s: %d images (%d prompts x %d) at %dpx in %.1fs (%.2f images/s) -> %s",
        model_id,
        len(results),
        len(prompts),
        images_per_prompt,
        height,
        elapsed,
        len(results) / max(elapsed, 1e-9),
        out,
    )
    return results


def safety_flags(output: Any, n_images: int) -> list[bool]:
    """Per image of one pipeline call, whether its safety checker flagged it (and blacked it out).

    diffusers' SD pipelines return ``nsfw_content_detected``: a list of booleans, or None when the
    pipeline has no safety checker; SDXL's output has no such field. Anything else is an error naming
    the field, as a silently misread flag would let a black image be scored.
    """
    flags = getattr(output, "nsfw_content_detected", None)
    if flags is None:
        return [False] * n_images
    flags = list(flags)
    if len(flags) != n_images:
        raise ValueError(
            f"the pipeline's nsfw_content_detected has {len(flags)} entries for {n_images} images"
        )
    return [bool(f) for f in flags]


def read_image(uri: str) -> Any:
    """Open a PNG written by ``generate_images`` (local or gs://) as an RGB PIL image."""
    from PIL import Image

    return Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB")
