"""The trainer on CUDA in bf16 (skipped where no CUDA device is visible)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_trainer_runs_on_cuda_in_bf16(make_config, use_lora: bool) -> None:  # type: ignore[no-untyped-def]
    from components.train.step import run

    config = make_config(
        device="cuda",
        mixed_precision="bf16",
        max_steps=4,
        train_batch_size=4,
        use_lora=use_lora,
        learning_rate=1e-4,
    )
    result = run(config)
    assert result.steps == 4
    assert result.final_loss is not None and torch.isfinite(torch.tensor(result.final_loss))
    assert result.peak_memory_bytes > 0, "peak CUDA memory should be recorded on a GPU run"
    summary = json.loads(Path(config.output_dir, "training_summary.json").read_text())
    assert summary["steps"] == 4


def test_kto_loss_on_cuda_matches_cpu() -> None:
    from components.train.losses import diffusion_kto_loss

    g = torch.Generator().manual_seed(0)
    policy = torch.rand(8, generator=g)
    reference = policy + torch.randn(8, generator=g) * 1e-3
    desirable = torch.rand(8, generator=g) < 0.8
    cpu = diffusion_kto_loss(policy, reference, desirable, beta=5000.0)
    cuda = diffusion_kto_loss(policy.cuda(), reference.cuda(), desirable.cuda(), beta=5000.0)
    assert cuda.loss.device.type == "cuda"
    torch.testing.assert_close(cuda.loss.cpu(), cpu.loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cuda.reference_point.cpu(), cpu.reference_point, atol=1e-7, rtol=1e-5)
