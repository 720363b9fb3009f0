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


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Any:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another
    mixed_precision; these tests build several (fp32 and bf16), so each starts and ends with none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


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
    return Trainer(config, models, encoded, accelerator, unet), StepSampler.for_config(data, config)


@pytest.fixture(scope="module")
def pretrained_like_sd(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD with every UNet tensor nudged off the values bf16 can hold exactly, as a pretrained
    model's are (a fresh tiny model's norm weights are exactly 1 and 0, which hides dtype mismatches)."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("models") / "tiny-sd-pretrained-like"
    shutil.copytree(tiny_sd, out)
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    g = torch.Generator().manual_seed(1)
    for name, t in tensors.items():
        if t.is_floating_point():
            # constant tensors (norm weights 1, biases 0) get a unit scale, or they would stay exact
            scale = float(t.std()) if t.numel() > 1 and float(t.std()) > 0 else 1.0
            tensors[name] = t + 0.05 * scale * torch.randn(t.shape, generator=g)
    save_file(tensors, str(weights))
    return out


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_policy_equals_reference_at_init_in_bf16(
    make_config: Any, pretrained_like_sd: Path, use_lora: bool
) -> None:
    """bf16 mixed precision: the float32 policy under autocast and the reference must compute the same
    MSE at step 0 (a reference rounded to bf16 in its norm layers gave |g| up to 6e-4, ±3 at β = 5000)."""
    config = make_config(
        pretrained_model=str(pretrained_like_sd),
        mixed_precision="bf16",
        use_lora=use_lora,
        train_batch_size=4,
        caption_dropout=0.0,
    )
    trainer, sampler = build_trainer(config)
    for micro_step in range(2):
        loss, margin, accuracy, z = trainer.loss(sampler.batch(micro_step), micro_step)
        assert float(margin) == 0.0 and float(z) == 0.0, (micro_step, float(margin), float(z))
        assert float(loss) == pytest.approx(0.5)  # U(0) = σ(0): every sample sits at the reference


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


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_dropped_caption_trains_the_pipelines_unconditional_input(
    tiny_sd: Path, tiny_sdxl: Path, train_manifest: Path, tmp_path: Path, sdxl: bool
) -> None:
    """Caption dropout exists to train classifier-free guidance's unconditional branch, so a dropped
    caption (cache slot 0) must be exactly what the pipeline feeds that branch: the encoded "" for SD,
    zeros for SDXL (force_zeros_for_empty_prompt), pooled embeddings included."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from components.train.cache import build_or_load_cache
    from components.train.data import read_train_data

    model = tiny_sdxl if sdxl else tiny_sd
    encoded = build_or_load_cache(
        model_dir=model,
        data=read_train_data(str(train_manifest)),
        cache_dir=str(tmp_path / "cache"),
        resolution=32,
        hflip=False,
        device=torch.device("cpu"),
        dtype=torch.float32,
        workers=0,
    )
    with torch.no_grad():
        if sdxl:
            pipe = StableDiffusionXLPipeline.from_pretrained(model)
            _, negative, _, negative_pooled = pipe.encode_prompt(
                "a red cube", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
            )
            assert encoded.pooled_prompt_embeds is not None
            torch.testing.assert_close(encoded.pooled_prompt_embeds[0], negative_pooled[0], rtol=0, atol=0)
            assert not negative.any()
        else:
            pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
            _, negative = pipe.encode_prompt(
                "a red cube", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
            )
    torch.testing.assert_close(encoded.prompt_embeds[0], negative[0], rtol=0, atol=1e-6)
    assert encoded.prompt_embeds[1:].abs().sum() > 0  # the real prompts are encoded


def test_cache_key_tracks_the_text_encoders_dtype(tiny_sd: Path, train_manifest: Path) -> None:
    """Embeddings encoded in bf16 differ from fp32 ones (2.7e-2 on the tiny model): another key."""
    from components.train.cache import cache_key
    from components.train.data import read_train_data

    data = read_train_data(str(train_manifest))
    fp32 = cache_key(tiny_sd, data, 32, False, torch.float32)
    assert cache_key(tiny_sd, data, 32, False, torch.float32) == fp32
    assert cache_key(tiny_sd, data, 32, False, torch.bfloat16) != fp32
