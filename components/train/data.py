"""The train.parquet manifest, image loading, and the per-step samplers (KTO, SFT, DPO pairs).

Samplers are stateless functions of (seed, micro-step): the batch of micro-step k is the same whether a
run got there straight or resumed from a checkpoint, so the sampler's "position" is just the step counter
kept in the checkpoint. Every process draws the same GLOBAL batch (batch size x number of processes) and
keeps its own rows ``[rank*B:(rank+1)*B]``, so 2 processes x batch 2 train on exactly the samples that
1 process x batch 4 does (the draw costs only random numbers).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import torch

from components.shared import storage
from components.shared.telemetry import get_logger

log = get_logger("train.data")

REQUIRED_COLUMNS = ("prompt", "image_uri", "desirable")


class DataError(ValueError):
    """The training manifest cannot be used; the message names the file, the field and the fix."""


@dataclass
class TrainData:
    """The training images, their prompts and labels, in manifest order."""

    source: str
    data_hash: str
    sample_ids: list[str]
    image_uris: list[str]
    prompts: list[str]
    """Unique prompts; ``prompt_index`` points into this list."""
    prompt_index: np.ndarray
    desirable: np.ndarray
    n_dropped_val: int = 0

    @property
    def n_desirable(self) -> int:
        """Number of liked images."""
        return int(self.desirable.sum())

    @property
    def n_undesirable(self) -> int:
        """Number of disliked images."""
        return int(len(self.desirable) - self.desirable.sum())


def _resolve_uri(uri: str, source: str) -> str:
    if storage.is_gcs(uri) or uri.startswith("/"):
        return uri
    if storage.is_gcs(source):
        base = source.rsplit("/", 1)[0]
        return base + "/" + str(PurePosixPath(uri))
    from pathlib import Path

    return str(Path(source).resolve().parent / uri)


def read_train_data(uri: str) -> TrainData:
    """Read and check train.parquet (contract: /work/contracts.md); rows with split=val are left out, counted."""
    import pyarrow.parquet as pq

    raw = storage.read_bytes(uri)
    data_hash = hashlib.sha256(raw).hexdigest()
    table = pq.read_table(io.BytesIO(raw))
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{uri}: missing column(s) {missing}; a train.parquet needs {list(REQUIRED_COLUMNS)}")
    rows = table.to_pylist()
    n_val = 0
    if "split" in table.column_names:
        kept = [r for r in rows if r.get("split") in (None, "train")]
        n_val = len(rows) - len(kept)
        if n_val:
            log.warning("%s: left out %d row(s) whose split is not 'train'", uri, n_val)
        rows = kept
    if not rows:
        raise DataError(f"{uri}: no training rows (every row has split != 'train' or the file is empty)")
    prompts: list[str] = []
    prompt_ids: dict[str, int] = {}
    sample_ids, image_uris, pidx, desirable = [], [], [], []
    for i, row in enumerate(rows):
        for col in REQUIRED_COLUMNS:
            if row.get(col) is None:
                raise DataError(
                    f"{uri}: row {i} has no {col!r} (every row needs prompt, image_uri, desirable)"
                )
        if not isinstance(row["desirable"], bool):
            raise DataError(f"{uri}: row {i} field 'desirable' must be a bool, got {row['desirable']!r}")
        prompt = str(row["prompt"])
        if prompt not in prompt_ids:
            prompt_ids[prompt] = len(prompts)
            prompts.append(prompt)
        image_uri = _resolve_uri(str(row["image_uri"]), uri)
        sample_ids.append(str(row.get("sample_id") or hashlib.sha256(image_uri.encode()).hexdigest()))
        image_uris.append(image_uri)
        pidx.append(prompt_ids[prompt])
        desirable.append(row["desirable"])
    return TrainData(
        source=uri,
        data_hash=data_hash,
        sample_ids=sample_ids,
        image_uris=image_uris,
        prompts=prompts,
        prompt_index=np.asarray(pidx, dtype=np.int64),
        desirable=np.asarray(desirable, dtype=bool),
        n_dropped_val=n_val,
    )


def dpo_pairs(data: TrainData) -> np.ndarray:
    """All (liked, disliked) pairs of images of the same prompt, shape [n_pairs, 2] (row indices)."""
    pairs = []
    for p in range(len(data.prompts)):
        rows = np.flatnonzero(data.prompt_index == p)
        winners = rows[data.desirable[rows]]
        losers = rows[~data.desirable[rows]]
        for w in winners:
            for lo in losers:
                pairs.append((w, lo))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def check_data_for_objective(data: TrainData, objective: str, desirable_ratio: float | None) -> None:
    """Fail early (before any model loads) when the data cannot feed the objective; says what is missing."""
    d, u = data.n_desirable, data.n_undesirable
    if objective == "sft" and d == 0:
        raise DataError(f"{data.source}: objective=sft needs liked (desirable) images; found 0 of {u + d}")
    if objective == "kto" and desirable_ratio is not None:
        if desirable_ratio > 0 and d == 0:
            raise DataError(
                f"{data.source}: desirable_ratio={desirable_ratio} but the data has no liked image "
                f"({u} disliked); add liked images or set desirable_ratio=0"
            )
        if desirable_ratio < 1 and u == 0:
            raise DataError(
                f"{data.source}: desirable_ratio={desirable_ratio} but the data has no disliked image "
                f"({d} liked); add disliked images, set desirable_ratio=1, or use objective=sft"
            )
    if objective == "dpo":
        pairs = dpo_pairs(data)
        if len(pairs) == 0:
            raise DataError(
                f"{data.source}: objective=dpo needs at least one prompt with both a liked and a disliked "
                f"image; none of the {len(data.prompts)} prompts has both"
            )
        paired_prompts = len(set(data.prompt_index[pairs[:, 0]].tolist()))
        unpaired = len(data.prompts) - paired_prompts
        if unpaired:
            log.warning(
                "objective=dpo: %d of %d prompts have only one class and are not used",
                unpaired,
                len(data.prompts),
            )


def load_image(uri: str, resolution: int) -> torch.Tensor:
    """Image -> float tensor [3, R, R] in [-1, 1]: shorter side resized to R (bilinear), centre-cropped.

    The same preprocessing as diffusers' text-to-image training scripts (Resize, CenterCrop, Normalize 0.5).
    """
    from PIL import Image

    with Image.open(io.BytesIO(storage.read_bytes(uri))) as raw:
        img: Image.Image = raw.convert("RGB")
        w, h = img.size
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def step_seed(seed: int, process_index: int, micro_step: int, stream: int) -> int:
    """A 63-bit seed for one (run seed, process, micro-step, stream): independent, reproducible streams.

    The trainer passes ``process_index=0`` for every process: its draws are made for the global batch and
    sliced per rank, so they must not depend on the rank (see :func:`rank_rows`).
    """
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, process_index, micro_step, stream]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def rank_rows(process_index: int, batch_size: int) -> slice:
    """This process's rows of a global batch drawn identically on every process: ``[rank*B:(rank+1)*B]``."""
    return slice(process_index * batch_size, (process_index + 1) * batch_size)


@dataclass
class Batch:
    """Indices of one micro-batch into the cache (host tensors, moved to the device by the loop)."""

    rows: torch.Tensor
    """Manifest rows, shape [n]. For dpo: the n/2 liked images, then their n/2 disliked partners."""
    prompt_index: torch.Tensor
    """Index into the cached prompt embeddings after caption dropout (0 is the empty prompt)."""
    flipped: torch.Tensor
    """Use the horizontally flipped latents (hflip augmentation)."""
    desirable: torch.Tensor
    mismatched_prompt_index: torch.Tensor
    """The prompt slot of the previous image of the GLOBAL batch (image i gets the prompt of global image
    i-1, the first the last's), after caption dropout: the mismatched pairs of the "unpaired" reference
    point. For dpo it is the row's own prompt slot (dpo has no unpaired mode)."""


class StepSampler:
    """Draws the micro-batches of one process as a pure function of the micro-step counter.

    The draw is made for the global batch (``batch_size * num_processes``) from a seed that depends on
    (seed, micro-step) only, and this process keeps rows ``[rank*B:(rank+1)*B]``: the samples a step sees
    do not depend on how the global batch is split across processes.

    kto: each image is liked with probability ``desirable_ratio`` (γ; paper 0.8), then drawn uniformly
    within its class, with replacement (``desirable_ratio`` None: uniformly over all images). sft: uniform over liked images. dpo: uniform over all
    (liked, disliked) pairs of the same prompt; caption dropout and flips are shared within a pair.
    """

    def __init__(
        self,
        data: TrainData,
        *,
        objective: str,
        batch_size: int,
        desirable_ratio: float | None,
        caption_dropout: float,
        hflip: bool,
        seed: int,
        process_index: int = 0,
        num_processes: int = 1,
    ) -> None:
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index must be in [0, {num_processes}), got {process_index}")
        self.objective = objective
        self.batch_size = batch_size
        self.desirable_ratio = desirable_ratio
        self.caption_dropout = caption_dropout
        self.hflip = hflip
        self.seed = seed
        self.process_index = process_index
        self.num_processes = num_processes
        self.every_row = torch.arange(len(data.desirable))
        self.liked = torch.from_numpy(np.flatnonzero(data.desirable))
        self.disliked = torch.from_numpy(np.flatnonzero(~data.desirable))
        # +1: prompt slot 0 of the cache is the empty prompt used by caption dropout.
        self.prompt_slot = torch.from_numpy(data.prompt_index + 1)
        self.labels = torch.from_numpy(data.desirable)
        self.pairs = torch.from_numpy(dpo_pairs(data)) if objective == "dpo" else None

    @classmethod
    def for_config(
        cls, data: TrainData, config: Any, *, process_index: int = 0, num_processes: int = 1
    ) -> StepSampler:
        """The sampler a ``TrainConfig`` asks for: its objective, batch size, γ, caption dropout, flips and
        seed."""
        return cls(
            data,
            objective=config.objective,
            batch_size=config.train_batch_size,
            desirable_ratio=config.desirable_ratio,
            caption_dropout=config.caption_dropout,
            hflip=config.hflip,
            seed=config.seed,
            process_index=process_index,
            num_processes=num_processes,
        )

    def _pick(self, pool: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
        return pool[torch.randint(0, len(pool), (n,), generator=g)]

    def batch(self, micro_step: int) -> Batch:
        """The micro-batch of ``micro_step`` (0-based, counting every micro-batch of this process)."""
        g = torch.Generator().manual_seed(step_seed(self.seed, 0, micro_step, 0))
        n = self.batch_size * self.num_processes
        mine = rank_rows(self.process_index, self.batch_size)
        if self.objective == "dpo":
            assert self.pairs is not None
            pairs = self.pairs[torch.randint(0, len(self.pairs), (n,), generator=g)][mine]
            rows = torch.cat([pairs[:, 0], pairs[:, 1]])
            dropped = (torch.rand(n, generator=g)[mine] < self.caption_dropout).repeat(2)
            flipped = (
                (torch.rand(n, generator=g)[mine] < 0.5).repeat(2)
                if self.hflip
                else torch.zeros(2 * self.batch_size, dtype=torch.bool)
            )
            prompt = torch.where(dropped, torch.zeros_like(rows), self.prompt_slot[rows])
            mismatched = prompt
        else:
            if self.objective == "sft":
                rows = self._pick(self.liked, n, g)
            elif self.desirable_ratio is None:
                rows = self._pick(self.every_row, n, g)
            else:
                want_liked = torch.rand(n, generator=g) < self.desirable_ratio
                if len(self.liked) == 0:
                    want_liked[:] = False
                if len(self.disliked) == 0:
                    want_liked[:] = True
                liked = self._pick(self.liked, n, g) if len(self.liked) else torch.zeros(n, dtype=torch.long)
                disliked = (
                    self._pick(self.disliked, n, g)
                    if len(self.disliked)
                    else torch.zeros(n, dtype=torch.long)
                )
                rows = torch.where(want_liked, liked, disliked)
            dropped = torch.rand(n, generator=g) < self.caption_dropout
            flipped = torch.rand(n, generator=g) < 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)
            global_prompt = torch.where(dropped, torch.zeros_like(rows), self.prompt_slot[rows])
            # Rolled over the global batch before slicing: rank r's first image pairs with rank r-1's last.
            mismatched = global_prompt.roll(1, 0)[mine]
            rows, flipped, prompt = rows[mine], flipped[mine], global_prompt[mine]
        return Batch(
            rows=rows,
            prompt_index=prompt,
            flipped=flipped,
            desirable=self.labels[rows],
            mismatched_prompt_index=mismatched,
        )
