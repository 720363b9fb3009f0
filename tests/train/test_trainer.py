"""End-to-end tests of the trainer on tiny models (CPU): objectives, LoRA, SDXL, export, resume, cache, SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from components.shared.models import load_pipeline
from components.train.step import run

pytestmark = pytest.mark.slow


def unet_weights(output_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trained UNet's tensors of an exported pipeline."""
    return load_file(str(Path(output_dir) / "unet" / "diffusion_pytorch_model.safetensors"))


def generate(model: str) -> Any:
    """One 32 px image from a saved model, through the shared loader."""
    pipe = load_pipeline(model)
    out = pipe(
        "a photo of a red circle",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    return out.images[0]


@pytest.mark.parametrize(
    ("objective", "use_lora", "extra"),
    [
        ("kto", False, {}),
        ("sft", False, {}),
        ("dpo", False, {"hflip": True}),
        ("kto", True, {"hflip": True, "reference_point": "unpaired", "gradient_accumulation_steps": 2}),
    ],
)
def test_two_step_run_exports_a_loadable_model(
    make_config: Any, tiny_sd: Path, objective: str, use_lora: bool, extra: dict[str, Any]
) -> None:
    config = make_config(objective=objective, use_lora=use_lora, **extra)
    before = load_file(str(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors"))
    result = run(config)
    out = Path(config.output_dir)
    assert result.steps == 2 and not result.preempted
    assert result.final_loss is not None and result.final_loss == result.final_loss  # finite, not NaN
    summary = (out / "training_summary.json").read_text()
    assert f'"objective": "{objective}"' in summary
    assert not any(p.suffix in (".bin", ".ckpt", ".pt") for p in out.rglob("*"))
    if use_lora:
        assert (out / "dkto_lora.json").exists() and (out / "pytorch_lora_weights.safetensors").exists()
        pipe = load_pipeline(str(out))
        lora_modules = [n for n, _ in pipe.unet.named_modules() if n.endswith("lora_A")]
        assert lora_modules, "the LoRA adapter was not attached by load_pipeline"
    else:
        after = unet_weights(out)
        assert any(not torch.equal(before[k], after[k]) for k in before), "training did not change the UNet"
    image = generate(str(out))
    assert image.shape == (32, 32, 3)


def test_sdxl_kto_run(make_config: Any, tiny_sdxl: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    config = make_config(pretrained_model=str(tiny_sdxl), output_dir=str(tmp_path / "xl-out"))
    result = run(config)
    assert result.steps == 2
    pipe = StableDiffusionXLPipeline.from_pretrained(config.output_dir)
    image = pipe(
        "a photo of a blue circle", num_inference_steps=2, height=32, width=32, output_type="np"
    ).images[0]
    assert image.shape == (32, 32, 3)


@pytest.fixture
def sigterm_at_step() -> Iterator[Any]:
    """Send this process SIGTERM once the trainer logs the given step (the in-process preemption notice)."""
    logger = logging.getLogger("dkto.train")
    handlers: list[logging.Handler] = []

    class Killer(logging.Handler):
        def __init__(self, step: int) -> None:
            super().__init__()
            self.step = step

        def emit(self, record: logging.LogRecord) -> None:
            if (
                record.msg.startswith("step %d")
                and isinstance(record.args, tuple)
                and record.args[0] == self.step
            ):
                os.kill(os.getpid(), signal.SIGTERM)

    def arm(step: int) -> None:
        handler = Killer(step)
        handlers.append(handler)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)

    yield arm
    for h in handlers:
        logger.removeHandler(h)
    logger.setLevel(logging.NOTSET)


def test_resume_and_sigterm_match_an_uninterrupted_run(
    make_config: Any, tmp_path: Path, sigterm_at_step: Any
) -> None:
    common = {"max_steps": 4, "logging_steps": 1, "lr_scheduler": "constant"}
    straight = run(make_config(output_dir=str(tmp_path / "straight"), **common))
    assert straight.steps == 4

    # 2 steps, checkpoint every step, keep 1; then resume to 4.
    ckpt_dir = tmp_path / "ckpt-a"
    first = run(
        make_config(
            output_dir=str(tmp_path / "a"),
            checkpoint_dir=str(ckpt_dir),
            checkpoint_every=1,
            keep_last_checkpoints=1,
            **{**common, "max_steps": 2},
        )
    )
    assert first.last_checkpoint and Path(first.last_checkpoint).name == "checkpoint-00000002"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["checkpoint-00000002"]
    resumed = run(
        make_config(
            output_dir=str(tmp_path / "a"), checkpoint_dir=str(ckpt_dir), resume_from="latest", **common
        )
    )
    assert resumed.resumed_from_step == 2 and resumed.steps == 4

    # SIGTERM during a 4-step run: a checkpoint at the step boundary, a clean return, then resume.
    sigterm_at_step(2)
    ckpt_b = tmp_path / "ckpt-b"
    stopped = run(make_config(output_dir=str(tmp_path / "b"), checkpoint_dir=str(ckpt_b), **common))
    assert stopped.preempted and stopped.output_dir is None and 2 <= stopped.steps < 4
    assert not (tmp_path / "b").exists()
    assert stopped.last_checkpoint and Path(stopped.last_checkpoint, "COMPLETE").exists()
    finished = run(
        make_config(
            output_dir=str(tmp_path / "b"), checkpoint_dir=str(ckpt_b), resume_from="latest", **common
        )
    )
    assert finished.resumed_from_step == stopped.steps and finished.steps == 4

    expected = unet_weights(tmp_path / "straight")
    for name in ("a", "b"):
        got = unet_weights(tmp_path / name)
        assert expected.keys() == got.keys()
        different = [k for k in expected if not torch.equal(expected[k], got[k])]
        assert not different, f"resumed run {name} differs from the straight run in {different[:3]}"


def lora_weights(output_dir: str | Path) -> dict[str, torch.Tensor]:
    """The adapter tensors of an exported LoRA model."""
    return load_file(str(Path(output_dir) / "pytorch_lora_weights.safetensors"))


def test_lora_resume_matches_an_uninterrupted_run(make_config: Any, tmp_path: Path) -> None:
    """A LoRA run resumed from its (adapter-only) checkpoint ends bit for bit where a straight run does."""
    common = {
        "use_lora": True,
        "reference_point": "unpaired",
        "hflip": True,
        "max_steps": 4,
        "logging_steps": 1,
        "lr_scheduler": "constant",
    }
    straight = run(make_config(output_dir=str(tmp_path / "straight"), **common))
    assert straight.steps == 4
    ckpt_dir = tmp_path / "ckpt"
    half = run(
        make_config(
            output_dir=str(tmp_path / "half"),
            checkpoint_dir=str(ckpt_dir),
            checkpoint_every=1,
            keep_last_checkpoints=1,
            **{**common, "max_steps": 2},
        )
    )
    assert half.last_checkpoint and Path(half.last_checkpoint).name == "checkpoint-00000002"
    assert not (Path(half.last_checkpoint) / "model.safetensors").exists()
    resumed = run(
        make_config(
            output_dir=str(tmp_path / "resumed"), checkpoint_dir=str(ckpt_dir), resume_from="latest", **common
        )
    )
    assert resumed.resumed_from_step == 2 and resumed.steps == 4

    expected, got = lora_weights(tmp_path / "straight"), lora_weights(tmp_path / "resumed")
    assert expected.keys() == got.keys() and expected
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"the resumed LoRA run differs from the straight run in {different[:3]}"
    # Steps 3 and 4 changed the adapter: equal results are not just the 2-step checkpoint passed through.
    after_two = lora_weights(tmp_path / "half")
    assert any(not torch.equal(after_two[k], expected[k]) for k in expected)

    # A checkpoint of another LoRA rank is refused with the setting to fix, not loaded half-way.
    with pytest.raises(ValueError, match="lora_rank"):
        run(
            make_config(
                output_dir=str(tmp_path / "other-rank"),
                checkpoint_dir=str(ckpt_dir),
                resume_from="latest",
                lora_rank=4,
                **common,
            )
        )
    # ... and so is a full fine-tune, which would find no UNet weights in it.
    with pytest.raises(ValueError, match="use_lora"):
        run(
            make_config(
                output_dir=str(tmp_path / "full"),
                checkpoint_dir=str(ckpt_dir),
                resume_from="latest",
                **{**common, "use_lora": False},
            )
        )


def _checkpoint_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor in the safetensors files of a checkpoint, by name."""
    tensors: dict[str, torch.Tensor] = {}
    for path in checkpoint.rglob("*.safetensors"):
        tensors.update(load_file(str(path)))
    return tensors


def _optimizer_numel(checkpoint: Path) -> int:
    """Number of elements in the optimizer state tensors (AdamW: exp_avg and exp_avg_sq per parameter)."""
    state = torch.load(checkpoint / "optimizer.bin", map_location="cpu", weights_only=True)["state"]
    return sum(v.numel() for per_param in state.values() for v in per_param.values() if v.dim() > 0)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_lora_checkpoint_holds_the_adapter_not_the_frozen_unet(
    make_config: Any, tmp_path: Path, tiny_sd: Path
) -> None:
    unet_file = tiny_sd / "unet" / "diffusion_pytorch_model.safetensors"
    base_names = set(load_file(str(unet_file)))
    common = {"max_steps": 1, "checkpoint_every": 1}
    lora = run(
        make_config(
            use_lora=True,
            output_dir=str(tmp_path / "lora"),
            checkpoint_dir=str(tmp_path / "ck-lora"),
            **common,
        )
    )
    full = run(
        make_config(output_dir=str(tmp_path / "full"), checkpoint_dir=str(tmp_path / "ck-full"), **common)
    )
    assert lora.last_checkpoint and full.last_checkpoint
    lora_ckpt, full_ckpt = Path(lora.last_checkpoint), Path(full.last_checkpoint)

    saved = _checkpoint_tensors(lora_ckpt)
    adapter = lora_weights(tmp_path / "lora")
    adapter_numel = sum(v.numel() for v in adapter.values())
    assert saved, "the LoRA checkpoint holds no weights at all"
    frozen = sorted(k for k in saved if k in base_names or "base_layer" in k or "lora_" not in k)
    assert not frozen, f"the LoRA checkpoint holds frozen base tensors: {frozen[:5]}"
    # Exactly the adapter: as many tensors and elements as the exported LoRA weights.
    assert len(saved) == len(adapter) and sum(v.numel() for v in saved.values()) == adapter_numel
    assert _optimizer_numel(lora_ckpt) == 2 * adapter_numel
    lora_bytes, full_bytes, unet_bytes = _size(lora_ckpt), _size(full_ckpt), unet_file.stat().st_size
    print(f"checkpoint bytes: LoRA {lora_bytes}, full fine-tune {full_bytes}; UNet weights {unet_bytes}")
    assert lora_bytes < unet_bytes / 4, (lora_bytes, unet_bytes)

    # Full fine-tuning checkpoints still hold the whole UNet (every base tensor), as before.
    assert base_names <= set(_checkpoint_tensors(full_ckpt))
    assert full_bytes > unet_bytes


def test_cache_is_reused_and_invalidated_by_new_data(
    make_config: Any, tmp_path: Path, manifest_writer: Any
) -> None:
    from diffusers.models.autoencoders.vae import Encoder

    calls = {"n": 0}

    def count(module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(module, Encoder):
            calls["n"] += 1

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        first = run(make_config(max_steps=1))
        assert not first.cache_hit and calls["n"] > 0
        calls["n"] = 0
        second = run(make_config(max_steps=1))
        assert second.cache_hit and calls["n"] == 0, "the second run ran the VAE despite a complete cache"
        changed = manifest_writer(tmp_path / "data2", n_prompts=3, seed=1)
        third = run(make_config(max_steps=1, train_data=str(changed)))
        assert not third.cache_hit and calls["n"] > 0
        assert third.data_hash != second.data_hash
    finally:
        hook.remove()
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 2


def test_gcs_model_data_and_output(
    make_config: Any,
    tiny_sd: Path,
    train_manifest: Path,
    gcs_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from components.shared import storage

    monkeypatch.setenv("DKTO_CACHE_DIR", str(tmp_path / "dl-cache"))
    storage.upload_dir(tiny_sd, f"{gcs_bucket}/models/base")
    storage.upload_dir(train_manifest.parent, f"{gcs_bucket}/data")
    config = make_config(
        pretrained_model=f"{gcs_bucket}/models/base",
        train_data=f"{gcs_bucket}/data/train.parquet",
        output_dir=f"{gcs_bucket}/models/candidate",
        cache_dir=f"{gcs_bucket}/cache",
        checkpoint_every=2,
    )
    result = run(config)
    assert result.steps == 2
    assert storage.exists(f"{gcs_bucket}/models/candidate/model_index.json")
    assert storage.exists(f"{gcs_bucket}/models/candidate-checkpoints/checkpoint-00000002/COMPLETE")
    assert any(u.endswith("index.json") for u in storage.list_files(f"{gcs_bucket}/cache"))
    summary = storage.read_json(f"{gcs_bucket}/models/candidate/training_summary.json")
    assert summary["steps"] == 2
    image = generate(f"{gcs_bucket}/models/candidate")
    assert image.shape == (32, 32, 3)


def test_resume_refuses_a_checkpoint_of_other_training_data(
    make_config: Any, tmp_path: Path, manifest_writer: Any
) -> None:
    """Two runs sharing a checkpoint directory must not continue each other: the second would export a
    model trained on the first one's data as its candidate."""
    ckpt_dir = str(tmp_path / "shared-ckpt")
    run(make_config(max_steps=1, checkpoint_dir=ckpt_dir, checkpoint_every=1))
    other = manifest_writer(tmp_path / "other-data", n_prompts=3, seed=1)
    with pytest.raises(ValueError, match="written for training data"):
        run(
            make_config(
                max_steps=2,
                train_data=str(other),
                checkpoint_dir=ckpt_dir,
                resume_from="latest",
                output_dir=str(tmp_path / "second"),
            )
        )
