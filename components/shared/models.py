"""Loading a text-to-image pipeline from a local directory or gs:// URI, the same way for every step.

A model is either a diffusers pipeline directory (``model_index.json`` at its root; SD v1.x/2.x or SDXL,
the class picked by ``DiffusionPipeline.from_pretrained``), or a LoRA adapter written by the trainer:
``pytorch_lora_weights.safetensors`` plus ``dkto_lora.json`` {"base_model": URI}, loaded onto its base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.shared import storage

LORA_MANIFEST = "dkto_lora.json"


def resolve_model_dir(uri: str) -> Path:
    """A local directory with the model's files (downloads and caches a gs:// model)."""
    path = storage.local_dir(uri)
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"{uri}: not a diffusers pipeline directory (no model_index.json)")
    return path


def is_lora_model(uri: str) -> bool:
    """True when ``uri`` holds a LoRA adapter written by the trainer (``dkto_lora.json``)."""
    return storage.exists(storage.join(uri, LORA_MANIFEST))


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """The ``from_pretrained`` keyword for a dtype: ``dtype`` on diffusers >= 0.42 (which deprecates
    ``torch_dtype`` with a warning on every load), ``torch_dtype`` on older releases (which ignore ``dtype``)."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("diffusers").split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (0, 42) else {"torch_dtype": dtype}


def load_pipeline(uri: str, *, device: str = "cpu", dtype: Any = None, fuse_lora: bool = False) -> Any:
    """Load a diffusers pipeline (or a LoRA adapter on its base) from a local path or gs:// URI."""
    import torch
    from diffusers import DiffusionPipeline

    if is_lora_model(uri):
        local = storage.local_dir(uri)
        manifest = json.loads((Path(local) / LORA_MANIFEST).read_text())
        pipe = load_pipeline(manifest["base_model"], device="cpu", dtype=dtype)
        pipe.load_lora_weights(str(local), weight_name=manifest.get("weight_name"))
        if fuse_lora:
            pipe.fuse_lora()
        return pipe.to(device)
    path = resolve_model_dir(uri)
    pipe = DiffusionPipeline.from_pretrained(path, **dtype_kwarg(dtype or torch.float32))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
