"""Checkpoints of a rewound run, and LoRA checkpoints under a strategy that saves the model itself.

Review finding 3: after ``resume_from`` an older checkpoint, keep-last-K pruning kept the abandoned
branch's higher step numbers and deleted the run's own new checkpoints. Review finding 1: accelerate 1.15
saves FSDP / DeepSpeed models itself and calls the save hooks with no weights, which crashed the LoRA hook
with an IndexError.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from components.train import checkpoint as ckpt
from components.train.step import run

pytestmark = pytest.mark.slow


def test_a_rewound_run_keeps_its_own_checkpoints_and_drops_the_abandoned_branch(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    ckpt_dir = tmp_path / "ckpts"
    first = run(
        make_config(checkpoint_dir=str(ckpt_dir), max_steps=4, checkpoint_every=2, keep_last_checkpoints=3)
    )
    assert [s for s, _ in ckpt.list_checkpoints(str(ckpt_dir))] == [2, 4]
    assert first.steps == 4

    # Step 4 looked bad: rewind to step 2, checkpoint every step, keep only the last one.
    rewound = run(
        make_config(
            output_dir=str(tmp_path / "out-rewound"),
            checkpoint_dir=str(ckpt_dir),
            max_steps=3,
            checkpoint_every=1,
            keep_last_checkpoints=1,
            learning_rate=1e-5,
            resume_from=str(ckpt_dir / ckpt.checkpoint_name(2)),
        )
    )
    assert rewound.resumed_from_step == 2 and rewound.steps == 3
    assert rewound.last_checkpoint is not None and Path(rewound.last_checkpoint).exists()
    assert [s for s, _ in ckpt.list_checkpoints(str(ckpt_dir))] == [3]
    assert ckpt.resolve_resume("latest", str(ckpt_dir)) == rewound.last_checkpoint


def test_drop_abandoned_branch_deletes_only_later_steps(tmp_path: Path) -> None:
    for step in (1, 2, 5, 7):
        folder = tmp_path / ckpt.checkpoint_name(step)
        folder.mkdir()
        (folder / ckpt.MARKER).write_text(str(step))
    removed = ckpt.drop_abandoned_branch(str(tmp_path), 2)
    assert [Path(u).name for u in removed] == [ckpt.checkpoint_name(5), ckpt.checkpoint_name(7)]
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [1, 2]


def test_lora_save_hook_names_the_strategy_when_accelerate_saved_the_model_itself() -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 4)
    model.weight.requires_grad_(False)  # frozen base + trainable bias: an adapter stand-in
    model = accelerator.prepare(model)
    ckpt.keep_only_trainable_weights(accelerator, accelerator.unwrap_model(model))
    out = tempfile.mkdtemp()
    hooks = list(accelerator._save_model_state_pre_hook.values())
    assert hooks
    # Exactly what accelerate 1.15's save_state passes under FSDP / DeepSpeed: no weights.
    with pytest.raises(ValueError, match="LoRA training supports the ddp strategy"):
        for hook in hooks:
            hook(accelerator._models, [], out)
    # The usual path (one weights dict per model) still drops ours and writes the adapter alone.
    weights: list[dict[str, Any]] = [accelerator.unwrap_model(model).state_dict()]
    for hook in hooks:
        hook(accelerator._models, weights, out)
    assert weights == [] and (Path(out) / ckpt.TRAINABLE_FILE).exists()
