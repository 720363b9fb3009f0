"""Writing the trained model: a diffusers pipeline directory (safetensors only) or a LoRA adapter.

Full fine-tuning: the base pipeline's other components are copied file by file (no VAE or text encoder is
loaded again) and the trained UNet is saved beside them, so ``StableDiffusionPipeline.from_pretrained`` /
``StableDiffusionXLPipeline.from_pretrained`` load the result. LoRA: diffusers' ``pytorch_lora_weights.
safetensors`` (with its rank / alpha metadata) plus ``dkto_lora.json`` {"base_model": URI}, which
``components.shared.models.load_pipeline`` follows. The output is staged locally and published whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from components.shared import storage

_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


def _copy_base(model_dir: Path, dest: Path) -> None:
    """Copy every base-model file except the UNet's, converting pickled weights to safetensors."""
    import torch
    from safetensors.torch import save_file

    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir)
        if rel.parts[0] == "unet" or rel.name.startswith("."):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in _PICKLE_SUFFIXES:
            safe = target.with_suffix(".safetensors")
            if (path.with_suffix(".safetensors")).exists():
                continue
            state = torch.load(path, map_location="cpu", weights_only=True)
            save_file({k: v.contiguous() for k, v in state.items()}, str(safe))
            continue
        shutil.copy2(path, target)


def stage_full_model(
    unet: Any, model_dir: Path, stage: Path, state_dict: dict[str, Any] | None = None
) -> None:
    """Lay out a diffusers pipeline in ``stage``: base components plus the trained UNet.

    ``state_dict``: the UNet's full weights when they are not all in ``unet`` itself (what
    ``accelerator.get_state_dict`` gathered from the FSDP shards); default: ``unet.state_dict()``.
    """
    _copy_base(model_dir, stage)
    save_unet(unet, stage / "unet", unet.state_dict() if state_dict is None else state_dict)


def save_unet(unet: Any, directory: Path, state_dict: dict[str, Any], max_shard_size: str = "10GB") -> None:
    """Write ``unet``'s config and ``state_dict`` as diffusers' ``save_pretrained`` lays them out.

    ``save_pretrained`` takes the weights from the module it is called on, which under FSDP holds only
    this process's flat shard; this writes the gathered weights instead, with diffusers' file names,
    shard size and index (diffusers ``ModelMixin.save_pretrained``), so ``from_pretrained`` loads them.
    """
    from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    unet.save_config(directory)
    pattern = SAFETENSORS_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors")
    split = split_torch_state_dict_into_shards(
        state_dict, max_shard_size=max_shard_size, filename_pattern=pattern
    )
    for filename, names in split.filename_to_tensors.items():
        shard = {name: state_dict[name].detach().cpu().contiguous() for name in names}
        save_file(shard, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        (directory / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def stage_lora(unet: Any, base_model: str, sdxl: bool, stage: Path) -> None:
    """Write the LoRA adapter (diffusers format) and ``dkto_lora.json`` into ``stage``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    stage.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    layers = {k: v.detach().float().cpu().contiguous() for k, v in layers.items()}
    pipeline_cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    lora_config = unet.peft_config["default"]
    pipeline_cls.save_lora_weights(
        stage,
        unet_lora_layers=layers,
        safe_serialization=True,
        unet_lora_adapter_metadata=lora_config.to_dict(),
    )
    (stage / "dkto_lora.json").write_text(
        json.dumps(
            {
                "base_model": base_model,
                "weight_name": "pytorch_lora_weights.safetensors",
                "pipeline": pipeline_cls.__name__,
                "lora_rank": lora_config.r,
                "lora_alpha": lora_config.lora_alpha,
                "target_modules": sorted(lora_config.target_modules),
            },
            indent=2,
        )
    )


def publish(stage: Path, output_dir: str) -> None:
    """Put the staged directory at ``output_dir``: a rename locally (old contents replaced), upload on gs://."""
    if storage.is_gcs(output_dir):
        storage.delete(output_dir.rstrip("/") + "/")
        storage.upload_dir(stage, output_dir)
        return
    dest = Path(output_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        same_fs = os.stat(stage).st_dev == os.stat(dest.parent).st_dev
    except OSError:
        same_fs = False
    if not same_fs:
        tmp = dest.parent / f".{dest.name}.incoming"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(stage, tmp)
        stage = tmp
    old = dest.parent / f".{dest.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(stage, dest)
    shutil.rmtree(old, ignore_errors=True)
