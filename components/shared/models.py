"""Loading a text-to-image pipeline from a local directory or gs:// URI, the same way for every step.

A model is a diffusers pipeline directory (``model_index.json`` at its root). The loader picks the pipeline
class from ``model_index.json`` (SD v1.x/2.x or SDXL) through ``DiffusionPipeline.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.shared import storage


def resolve_model_dir(uri: str) -> Path:
    """A local directory with the model's files (downloads and caches a gs:// model)."""
    path = storage.local_dir(uri)
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"{uri}: not a diffusers pipeline directory (no model_index.json)")
    return path


def load_pipeline(uri: str, *, device: str = "cpu", dtype: Any = None) -> Any:
    """Load a diffusers pipeline from a local path or gs:// URI onto ``device`` in ``dtype``."""
    import torch
    from diffusers import DiffusionPipeline

    path = resolve_model_dir(uri)
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype or torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
