"""Settings that a multi-GPU strategy cannot run are refused before anything launches (review findings 1, 2).

accelerate 1.15 saves FSDP and DeepSpeed models itself and hands the trainer's save hook an empty weights
list, so a LoRA run crashed at its first checkpoint; under FSDP the EMA shadow and the unpaired reference
pass read sharded parameters. ``strategy_conflicts`` names each such setting; ``launch`` refuses them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.train.launcher import LaunchError, LaunchPlan, launch, strategy_conflicts
from components.train.step import TrainConfig


def _config(tmp_path: Path, **overrides: object) -> TrainConfig:
    return TrainConfig(
        pretrained_model=str(tmp_path / "no-model"),
        train_data=str(tmp_path / "no-train.parquet"),
        output_dir=str(tmp_path / "out"),
        **overrides,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("strategy", "overrides", "words"),
    [
        ("fsdp", {"use_lora": True}, ["use_lora"]),
        ("deepspeed_zero2", {"use_lora": True}, ["use_lora"]),
        ("fsdp", {"use_ema": True}, ["use_ema"]),
        ("fsdp", {"reference_point": "unpaired"}, ["reference_point=unpaired"]),
        ("fsdp", {"use_lora": True, "reference_point": "unpaired"}, ["use_lora", "reference_point=unpaired"]),
    ],
)
def test_each_unsupported_combination_gets_one_reason(
    tmp_path: Path, strategy: str, overrides: dict[str, object], words: list[str]
) -> None:
    reasons = strategy_conflicts(strategy, _config(tmp_path, **overrides))
    assert len(reasons) == len(words), reasons
    for reason, word in zip(reasons, words, strict=True):
        assert word in reason and strategy in reason


@pytest.mark.parametrize(
    ("strategy", "overrides"),
    [
        ("ddp", {"use_lora": True, "reference_point": "unpaired"}),
        ("ddp", {"use_ema": True}),
        ("deepspeed_zero2", {"use_ema": True, "reference_point": "unpaired"}),
        ("fsdp", {}),
        ("fsdp", {"objective": "sft", "reference_point": "unpaired"}),  # sft has no reference pass
    ],
)
def test_supported_combinations_have_no_conflicts(
    tmp_path: Path, strategy: str, overrides: dict[str, object]
) -> None:
    assert strategy_conflicts(strategy, _config(tmp_path, **overrides)) == []


@pytest.mark.parametrize("gpus", [1, 4])
def test_launch_refuses_a_conflict_before_writing_or_training_anything(tmp_path: Path, gpus: int) -> None:
    config = _config(tmp_path, use_lora=True)
    with pytest.raises(LaunchError, match="use_lora=true does not work with strategy fsdp"):
        launch(config, LaunchPlan(gpus_per_node=gpus, strategy="fsdp"))
    # Nothing was started: no run files beside the checkpoints, no output.
    assert not Path(config.resolved_checkpoint_dir()).exists()
    assert not Path(config.output_dir).exists()
