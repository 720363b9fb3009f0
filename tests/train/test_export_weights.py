"""What the exported UNet holds: the gathered weights, the EMA weights when asked, and what a step saw.

The export writes a state dict taken on every process (``accelerator.get_state_dict``, which gathers FSDP
shards) through ``export.save_unet`` rather than ``save_pretrained`` on the main process's module (review
finding 2). training_summary.json's ``images_per_step`` counts processes and DPO pairs (finding 5).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from components.train.step import run

pytestmark = pytest.mark.slow


def _unet_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    return dict(UNet2DConditionModel.from_pretrained(model_dir / "unet").state_dict())


def test_ema_run_exports_the_moving_average(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    plain = run(make_config(output_dir=str(tmp_path / "plain")))
    # A decay of ~0 makes the average the weights themselves; 0.9999 keeps it near the start.
    follows = run(make_config(output_dir=str(tmp_path / "ema-follows"), use_ema=True, ema_decay=1e-6))
    slow = run(make_config(output_dir=str(tmp_path / "ema-slow"), use_ema=True, ema_decay=0.9999))
    trained = _unet_weights(Path(str(plain.output_dir)))
    following = _unet_weights(Path(str(follows.output_dir)))
    averaged = _unet_weights(Path(str(slow.output_dir)))
    assert set(trained) == set(following) == set(averaged)
    far = 0.0
    for name, value in trained.items():
        torch.testing.assert_close(following[name], value, atol=1e-5, rtol=1e-5)
        far = max(far, (averaged[name] - value).abs().max().item())
    assert far > 1e-5, (
        "the slow average was exported as the trained weights (EMA weights restored too early?)"
    )


def test_save_unet_writes_shards_that_from_pretrained_loads(tmp_path: Path, tiny_sd: Path) -> None:
    from diffusers import UNet2DConditionModel

    from components.train.export import save_unet

    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    state = {k: v + 1.0 for k, v in unet.state_dict().items()}  # not the module's own weights
    save_unet(unet, tmp_path / "unet", state, max_shard_size="100KB")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert len(list((tmp_path / "unet").glob("*.safetensors"))) > 1
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet").state_dict()
    assert set(loaded) == set(state)
    for name, value in state.items():
        assert torch.equal(loaded[name], value), name


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"objective": "kto", "gradient_accumulation_steps": 2}, 2 * 2),
        ({"objective": "dpo", "desirable_ratio": None}, 2 * 2),  # batch 2 pairs = 4 images
    ],
)
def test_summary_images_per_step_counts_what_one_optimizer_step_sees(
    tmp_path: Path, make_config: Callable[..., Any], overrides: dict[str, Any], expected: int
) -> None:
    result = run(make_config(max_steps=1, **overrides))
    summary = json.loads((Path(str(result.output_dir)) / "training_summary.json").read_text())
    assert summary["images_per_step"] == expected
