"""Prompt-level, hash-stable train/val split and the per-prompt image cap."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def prompt_in_val(prompt: str, val_fraction: float, salt: str) -> bool:
    """True if ``prompt`` belongs to val: the first 8 bytes of sha256(salt, prompt) as a fraction of 2^64.

    Depends on nothing but the prompt text and the salt, so a prompt stays on its side across runs and
    as data grows, and no prompt is ever in both splits.
    """
    digest = hashlib.sha256(f"{salt}\x1f{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction


def prompts_in_val(prompts: pa.Array, val_fraction: float, salt: str) -> np.ndarray:
    """:func:`prompt_in_val` of each prompt (a bool array), with one hashlib call per prompt.

    The 8-byte prefixes are read as big-endian integers by numpy; uint64 -> float64 rounds to nearest like
    Python's int -> float, so the comparison is the same as :func:`prompt_in_val`'s.
    """
    prefix = f"{salt}\x1f".encode()
    sha256 = hashlib.sha256
    texts = pc.cast(prompts, pa.binary()).to_pylist()
    heads = b"".join([sha256(prefix + t).digest()[:8] for t in texts])
    return np.frombuffer(heads, dtype=">u8").astype(np.float64) / 2.0**64 < val_fraction


def cap_per_prompt(
    prompts: pa.Array, n_events: np.ndarray, sample_ids: pa.Array, max_images: int
) -> np.ndarray:
    """Mask keeping at most ``max_images`` images per prompt: most feedback first, then by sample id."""
    n = len(prompts)
    order = pa.table(
        {"p": prompts, "e": pa.array(-n_events), "s": sample_ids, "i": pa.array(np.arange(n))}
    ).sort_by([("p", "ascending"), ("e", "ascending"), ("s", "ascending")])
    p_sorted = order.column("p").combine_chunks()
    idx = order.column("i").to_numpy()
    codes = pc.index_in(p_sorted, pc.unique(p_sorted)).to_numpy()
    starts = np.r_[0, np.flatnonzero(np.diff(codes)) + 1]
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    keep = np.zeros(n, dtype=bool)
    keep[idx[rank < max_images]] = True
    return keep
