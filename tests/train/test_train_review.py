"""Review tests of the Diffusion-KTO objective's wiring (DESIGN.md "The objective"), on tiny models.

At initialisation the policy equals the reference (full fine-tune: the same weights; LoRA: B = 0), so
any reward g = r − m that is not exactly 0 means the two models did not see the same x_t, t and
conditioning (dropped caption, SDXL pooled embeds and time ids included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch


def build_trainer(config: Any) -> Any:
    """A Trainer as ``loop.train`` builds it (CPU, no optimizer), plus its sampler."""
    from accelerate import Accelerator

    from components.train.cache import build_or_load_cache
    from components.train.data import StepSampler, read_train_data
    from components.train.loop import Trainer
    from components.train.models import compute_dtype, load_train_models

    data = read_train_data(config.train_data)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=True)
    torch.manual_seed(config.seed)
    models = load_train_models(
        config.pretrained_model,
        device=accelerator.device,
        mixed_precision=config.mixed_precision,
        use_lora=config.use_lora,
    )
    encoded = build_or_load_cache(
        model_dir=models.model_dir,
        data=data,
        cache_dir=str(config.cache_dir),
        resolution=config.resolution,
        hflip=config.hflip,
        device=accelerator.device,
        dtype=compute_dtype(config.mixed_precision),
        workers=0,
    )
    unet = accelerator.prepare(models.unet)
    sampler = StepSampler(
        data,
        objective=config.objective,
        batch_size=config.train_batch_size,
        desirable_ratio=config.desirable_ratio,
        caption_dropout=config.caption_dropout,
        hflip=config.hflip,
        seed=config.seed,
    )
    return Trainer(config, models, encoded, accelerator, unet), sampler


@pytest.mark.parametrize(
    ("sdxl", "overrides"),
    [
        (False, {"caption_dropout": 0.5, "hflip": True}),
        (False, {"use_lora": True, "caption_dropout": 0.5, "reference_point": "unpaired"}),
        (True, {"caption_dropout": 0.5}),
        (False, {"objective": "dpo", "caption_dropout": 0.5}),
    ],
)
def test_policy_and_reference_see_the_same_input_at_init(
    make_config: Any, tiny_sdxl: Path, sdxl: bool, overrides: dict[str, Any]
) -> None:
    extra = {"pretrained_model": str(tiny_sdxl)} if sdxl else {}
    config = make_config(train_batch_size=4, **extra, **overrides)
    trainer, sampler = build_trainer(config)
    saw_dropped = False
    for micro_step in range(3):
        batch = sampler.batch(micro_step)
        saw_dropped |= bool((batch.prompt_index == 0).any())
        loss, margin, accuracy, z = trainer.loss(batch, micro_step)
        assert float(margin) == 0.0 and float(z) == 0.0, (micro_step, float(margin), float(z))
    assert saw_dropped
