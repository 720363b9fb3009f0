"""The cache pass: VAE latents and text embeddings computed once, stored as safetensors shards.

The reference code (and diffusers' training scripts) run the VAE encoder and the text encoder on every
image of every step: ``vae.encode(x).latent_dist.sample() * scaling_factor``. Both are frozen, so their
outputs are a function of the data alone. This pass stores, per image, the mean and standard deviation
of the VAE's latent distribution (and of its horizontal mirror when ``hflip`` is on: flipping latents is
not exactly flipping images), and per unique prompt the text embeddings (slot 0: the empty prompt of
caption dropout; SDXL: the concatenated penultimate hidden states of both encoders plus the pooled
embedding). The loop then draws ``(mean + std · n) · scaling_factor`` per step: the same distribution as
``latent_dist.sample()``, with no VAE in the step.

A cache is keyed by a hash of (the VAE / text-encoder / tokenizer files, the train.parquet bytes, the
resolution, hflip): a second run with the same inputs reuses it, any change makes a new one. It lives
on local disk or gs://; ``index.json`` is written last, so a cache without one is incomplete and ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.shared import storage
from components.shared.telemetry import get_logger
from components.train.data import TrainData, load_image

log = get_logger("train.cache")

CACHE_FORMAT = 2  # 2: SDXL dropped-caption slot holds zeros (force_zeros_for_empty_prompt)
SHARD_SIZE = 1024


@dataclass
class EncodedData:
    """The cached tensors, ready for per-step gathering (all on one device)."""

    latent_mean: torch.Tensor
    """[N, C, h, w] (N doubles with hflip: rows N/2.. are the mirrored images)."""
    latent_std: torch.Tensor
    prompt_embeds: torch.Tensor
    """[P + 1, tokens, dim]; slot 0 is a dropped caption: the encoded "" (SD 1.x/2.x), zeros (SDXL with
    force_zeros_for_empty_prompt), i.e. what the pipeline feeds classifier-free guidance's unconditional
    branch."""
    pooled_prompt_embeds: torch.Tensor | None
    """[P + 1, dim] for SDXL, else None."""
    scaling_factor: float
    shift_factor: float
    n_images: int
    hflip: bool
    key: str
    hit: bool

    def to(self, device: torch.device) -> EncodedData:
        """The same cache with its tensors on ``device``."""
        pooled = self.pooled_prompt_embeds
        return EncodedData(
            latent_mean=self.latent_mean.to(device),
            latent_std=self.latent_std.to(device),
            prompt_embeds=self.prompt_embeds.to(device),
            pooled_prompt_embeds=None if pooled is None else pooled.to(device),
            scaling_factor=self.scaling_factor,
            shift_factor=self.shift_factor,
            n_images=self.n_images,
            hflip=self.hflip,
            key=self.key,
            hit=self.hit,
        )


def _hash_files(model_dir: Path, subfolders: list[str]) -> str:
    h = hashlib.sha256()
    for sub in subfolders:
        folder = model_dir / sub
        if not folder.exists():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(path.relative_to(model_dir).as_posix().encode())
            h.update(storage.sha256_file(path).encode())
    return h.hexdigest()


def image_fingerprint(uris: list[str]) -> str:
    """Hash of the images' identities: size and mtime locally, the server's CRC32C on gs://.

    The manifest may name the same paths after the files under them changed; this catches that without
    reading every image.
    """
    h = hashlib.sha256()
    remote: dict[str, str] = {}
    for prefix in sorted({u.rsplit("/", 1)[0] for u in uris if storage.is_gcs(u)}):
        bucket, key = storage.split_gcs(prefix)
        for blob in storage.gcs_client().list_blobs(bucket, prefix=key.rstrip("/") + "/"):
            remote[f"gs://{bucket}/{blob.name}"] = f"{blob.crc32c}:{blob.size}"
    for uri in uris:
        if storage.is_gcs(uri):
            h.update(f"{uri}={remote.get(uri, 'missing')}\n".encode())
        else:
            st = os.stat(uri)
            h.update(f"{uri}={st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(
    model_dir: Path, data: TrainData, resolution: int, hflip: bool, dtype: torch.dtype = torch.float32
) -> str:
    """Hash of everything the cached tensors depend on (the text encoders run in ``dtype``)."""
    model_hash = _hash_files(model_dir, ["vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"])
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "model": model_hash,
            "data": data.data_hash,
            "images": image_fingerprint(data.image_uris),
            "resolution": resolution,
            "hflip": hflip,
            "text_dtype": str(dtype),
            "zeros_for_empty_prompt": _zeros_for_empty_prompt(model_dir),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _zeros_for_empty_prompt(model_dir: Path) -> bool:
    """Whether the pipeline uses zeros as its unconditional text input (diffusers' SDXL default: yes)."""
    index = json.loads((Path(model_dir) / "model_index.json").read_text())
    return bool(index.get("force_zeros_for_empty_prompt", True))


@torch.no_grad()
def encode_prompts(
    encoders: Any, prompts: list[str], batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings of ``prompts`` as the pipelines compute them (SD: last hidden state; SDXL: both
    encoders' penultimate hidden states concatenated, plus encoder 2's pooled projection)."""
    embeds, pooled_all = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        per_encoder = []
        pooled = None
        for tokenizer, encoder in zip(encoders.tokenizers, encoders.text_encoders, strict=True):
            ids = tokenizer(
                chunk,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(encoders.device)
            if encoders.sdxl:
                out = encoder(ids, output_hidden_states=True)
                per_encoder.append(out.hidden_states[-2])
                pooled = out[0]
            else:
                per_encoder.append(encoder(ids)[0])
        embeds.append(torch.cat(per_encoder, dim=-1).float().cpu())
        if pooled is not None:
            pooled_all.append(pooled.float().cpu())
    return torch.cat(embeds), (torch.cat(pooled_all) if pooled_all else None)


@torch.no_grad()
def _encode_images(
    encoders: Any, data: TrainData, resolution: int, hflip: bool, batch_size: int, workers: int
) -> dict[str, torch.Tensor]:
    means: list[torch.Tensor] = []
    stds: list[torch.Tensor] = []
    fmeans: list[torch.Tensor] = []
    fstds: list[torch.Tensor] = []
    vae = encoders.vae
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for start in range(0, len(data.image_uris), batch_size):
            uris = data.image_uris[start : start + batch_size]
            pixels = torch.stack(list(pool.map(lambda u: load_image(u, resolution), uris)))
            views = [pixels, torch.flip(pixels, dims=[3])] if hflip else [pixels]
            for view, m_out, s_out in zip(views, (means, fmeans), (stds, fstds), strict=False):
                dist = vae.encode(view.to(encoders.device, vae.dtype)).latent_dist
                m_out.append(dist.mean.float().cpu())
                s_out.append(dist.std.float().cpu())
    finally:
        pool.shutdown()
    out = {"mean": torch.cat(means), "std": torch.cat(stds)}
    if hflip:
        out["mean_flipped"] = torch.cat(fmeans)
        out["std_flipped"] = torch.cat(fstds)
    return out


def _write_cache(
    local: Path, tensors: dict[str, torch.Tensor], prompt: dict[str, torch.Tensor], index: dict
) -> None:
    from safetensors.torch import save_file

    n = tensors["mean"].shape[0]
    shards = []
    for i, start in enumerate(range(0, n, SHARD_SIZE)):
        name = f"latents-{i:05d}.safetensors"
        save_file(
            {k: v[start : start + SHARD_SIZE].contiguous() for k, v in tensors.items()}, str(local / name)
        )
        shards.append(name)
    save_file({k: v.contiguous() for k, v in prompt.items()}, str(local / "text.safetensors"))
    index["shards"] = shards
    (local / "index.json").write_text(json.dumps(index, indent=2))


def _publish(local: Path, uri: str) -> None:
    """Move a finished cache into place: a directory rename locally; on gs://, index.json uploaded last."""
    if storage.is_gcs(uri):
        for path in sorted(local.iterdir()):
            if path.name != "index.json":
                storage.upload_file(path, storage.join(uri, path.name))
        storage.upload_file(local / "index.json", storage.join(uri, "index.json"))
        return
    dest = Path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(local, dest)


def _load(uri: str, key: str) -> EncodedData:
    from safetensors.torch import load_file

    local = storage.local_dir(uri)
    index = json.loads((local / "index.json").read_text())
    parts = [load_file(str(local / name)) for name in index["shards"]]
    text = load_file(str(local / "text.safetensors"))

    def cat(name: str) -> torch.Tensor:
        return torch.cat([p[name] for p in parts])

    mean, std = cat("mean"), cat("std")
    if index["hflip"]:
        mean = torch.cat([mean, cat("mean_flipped")])
        std = torch.cat([std, cat("std_flipped")])
    return EncodedData(
        latent_mean=mean,
        latent_std=std,
        prompt_embeds=text["prompt_embeds"],
        pooled_prompt_embeds=text.get("pooled_prompt_embeds"),
        scaling_factor=float(index["scaling_factor"]),
        shift_factor=float(index.get("shift_factor") or 0.0),
        n_images=int(index["n_images"]),
        hflip=bool(index["hflip"]),
        key=key,
        hit=True,
    )


def build_or_load_cache(
    *,
    model_dir: Path,
    data: TrainData,
    cache_dir: str,
    resolution: int,
    hflip: bool,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 8,
    workers: int = 2,
) -> EncodedData:
    """Reuse the cache for these inputs if one is complete, else encode everything once and store it.

    Returns the tensors in host memory; ``EncodedData.hit`` says whether the VAE ran.
    """
    key = cache_key(model_dir, data, resolution, hflip, dtype)
    uri = storage.join(cache_dir, key)
    if storage.exists(storage.join(uri, "index.json")):
        log.info("reusing latent/text cache %s", uri)
        return _load(uri, key)

    from components.train.models import load_encoders

    log.info("encoding %d images and %d prompts once into %s", len(data.image_uris), len(data.prompts), uri)
    encoders = load_encoders(model_dir, device, dtype)
    if encoders.vae.config.sample_size and resolution % 8:
        raise ValueError(f"resolution {resolution} must be a multiple of 8")
    images = _encode_images(encoders, data, resolution, hflip, batch_size, workers)
    embeds, pooled = encode_prompts(encoders, ["", *data.prompts])
    if encoders.sdxl and _zeros_for_empty_prompt(model_dir):
        # Slot 0 is what a dropped caption trains (caption dropout). SDXL pipelines with
        # force_zeros_for_empty_prompt (SDXL's default) give classifier-free guidance all-zero
        # unconditional embeddings, not the encoded "", so dropped captions train exactly that input.
        embeds[0] = 0
        if pooled is not None:
            pooled[0] = 0
    prompt = {"prompt_embeds": embeds}
    if pooled is not None:
        prompt["pooled_prompt_embeds"] = pooled
    index = {
        "format": CACHE_FORMAT,
        "key": key,
        "data_hash": data.data_hash,
        "n_images": len(data.image_uris),
        "n_prompts": len(data.prompts),
        "sample_ids": data.sample_ids,
        "resolution": resolution,
        "hflip": hflip,
        "sdxl": encoders.sdxl,
        "scaling_factor": encoders.scaling_factor,
        "shift_factor": getattr(encoders.vae.config, "shift_factor", None),
    }
    tmp_root = storage.cache_root() if storage.is_gcs(cache_dir) else Path(cache_dir)
    tmp_root.mkdir(parents=True, exist_ok=True)
    local = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f".tmp-{key}-"))
    try:
        _write_cache(local, images, prompt, index)
        _publish(local, uri)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    del encoders
    # Read back what was stored, so a run that built the cache trains on exactly what later runs will load.
    loaded = _load(uri, key)
    loaded.hit = False
    return loaded
