"""TrainConfig: paper defaults, YAML + overrides, and errors raised before any model loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from components.shared.config import ConfigError
from components.train.data import DataError
from components.train.step import TrainConfig, run

BASE = {"pretrained_model": "m", "train_data": "t.parquet", "output_dir": "out"}


def test_defaults_are_the_papers_and_yaml_overrides_apply(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("pretrained_model: m\ntrain_data: t.parquet\noutput_dir: out\nobjective: kto\n")
    cfg = TrainConfig.from_yaml(
        str(path), ["learning_rate=1e-7", "reference_point=global_mean", "use_lora=true"]
    )
    assert (cfg.beta, cfg.desirable_ratio, cfg.caption_dropout) == (5000.0, 0.8, 0.2)
    assert cfg.learning_rate == 1e-7 and cfg.use_lora and cfg.reference_point == "batch_mean"
    assert cfg.resolved_checkpoint_dir() == "out-checkpoints"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mixed_precision=fp16", "device=cpu"], "fp16 needs a CUDA device"),
        (["use_8bit_adam=true", "device=cpu"], "use_8bit_adam needs a CUDA"),
        (["checkpoint_dir=out/ckpt"], "must not be output_dir or inside it"),
        (["resolution=30"], "multiple of 8"),
        (["objective=dpo", "reference_point=unpaired"], "kto only"),
        (["use_ema=true", "use_lora=true"], "full fine-tuning only"),
        (["desirable_ratio=1.5"], "desirable_ratio"),
        (["objective=ppo"], "objective"),
    ],
)
def test_bad_combinations_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(BASE, overrides)


def test_dpo_without_pairs_fails_before_the_model_loads(tmp_path: Path, manifest_writer: Any) -> None:
    import pyarrow.parquet as pq

    manifest = manifest_writer(tmp_path / "data")
    table = pq.read_table(manifest)
    # Only liked images for prompt 0 and only disliked for prompt 1: no (liked, disliked) pair of one prompt.
    keep = [
        (p.endswith("red circle") and d) or (not p.endswith("red circle") and not d)
        for p, d in zip(table["prompt"].to_pylist(), table["desirable"].to_pylist(), strict=True)
    ]
    pq.write_table(table.filter(keep), manifest)
    cfg = TrainConfig.model_validate(
        {
            "pretrained_model": str(tmp_path / "no-such-model"),
            "train_data": str(manifest),
            "output_dir": str(tmp_path / "out"),
            "objective": "dpo",
            "device": "cpu",
        }
    )
    with pytest.raises(DataError, match="needs at least one prompt with both"):
        run(cfg)


def test_manifest_without_required_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"prompt": ["a"], "image_uri": ["x.png"]}), path)
    cfg = TrainConfig.model_validate({**BASE, "train_data": str(path), "device": "cpu"})
    with pytest.raises(DataError, match="desirable"):
        run(cfg)
