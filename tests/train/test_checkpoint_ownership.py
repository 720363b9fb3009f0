"""A run never deletes or mixes with checkpoints it did not resume from (review round 2, finding 1).

Before: a fresh run (``resume_from`` none, as the data_hash refusal advised) saving step s into a
checkpoint_dir deleted every complete checkpoint above s, another run's included; on gs:// the listing
was recursive, so a sub-prefix's checkpoints counted as this directory's too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.shared import storage
from components.train import checkpoint as ckpt
from components.train.step import run


def _fake_checkpoint(root: Path, step: int, data_hash: str) -> None:
    folder = root / ckpt.checkpoint_name(step)
    folder.mkdir(parents=True)
    (folder / ckpt.STATE_FILE).write_text(json.dumps({"step": step, "data_hash": data_hash}))
    (folder / ckpt.MARKER).write_text(str(step))


@pytest.mark.slow
def test_a_fresh_run_on_other_data_refuses_before_deleting_another_runs_checkpoints(
    tmp_path: Path, make_config: Callable[..., Any], manifest_writer: Callable[..., Path]
) -> None:
    ckpt_dir = tmp_path / "shared-ckpts"
    run(make_config(checkpoint_dir=str(ckpt_dir), max_steps=4, checkpoint_every=2))
    assert [s for s, _ in ckpt.list_checkpoints(str(ckpt_dir))] == [2, 4]

    other = manifest_writer(tmp_path / "data-b", seed=1, n_prompts=3)
    b = {"train_data": str(other), "output_dir": str(tmp_path / "out-b"), "checkpoint_dir": str(ckpt_dir)}
    with pytest.raises(ValueError, match="written for training data") as refused:
        run(make_config(**b, resume_from="latest", max_steps=4))
    assert "resume_from to none" not in str(refused.value)
    # What the old message advised: a fresh start. It is refused at start now, before any save.
    with pytest.raises(ValueError, match="already holds 2 checkpoint"):
        run(make_config(**b, resume_from=None, max_steps=1, checkpoint_every=1))
    assert [s for s, _ in ckpt.list_checkpoints(str(ckpt_dir))] == [2, 4]
    assert not (tmp_path / "out-b").exists()


@pytest.mark.slow
def test_a_fresh_run_on_the_same_data_is_refused_too(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    ckpt_dir = tmp_path / "ckpts"
    run(make_config(checkpoint_dir=str(ckpt_dir), max_steps=2, checkpoint_every=2))
    with pytest.raises(ValueError, match="Set resume_from to 'latest'"):
        run(make_config(checkpoint_dir=str(ckpt_dir), output_dir=str(tmp_path / "out-2"), max_steps=1))
    assert [s for s, _ in ckpt.list_checkpoints(str(ckpt_dir))] == [2]


def test_check_checkpoint_dir_allows_a_rewind_only_over_the_same_data(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path, 2, "aaa")
    _fake_checkpoint(tmp_path, 4, "aaa")
    ckpt.check_checkpoint_dir(str(tmp_path), 2, "aaa")
    _fake_checkpoint(tmp_path, 6, "bbb")
    with pytest.raises(ValueError, match="checkpoint-00000006"):
        ckpt.check_checkpoint_dir(str(tmp_path), 2, "aaa")
    ckpt.check_checkpoint_dir(str(tmp_path / "empty"), None, "aaa")


def test_drop_abandoned_branch_keeps_later_checkpoints_of_other_data(tmp_path: Path) -> None:
    for step, data_hash in ((2, "aaa"), (4, "aaa"), (6, "bbb")):
        _fake_checkpoint(tmp_path, step, data_hash)
    removed = ckpt.drop_abandoned_branch(str(tmp_path), 2, data_hash="aaa")
    assert [Path(u).name for u in removed] == [ckpt.checkpoint_name(4)]
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [2, 6]


def test_resumed_step_in_knows_a_checkpoint_of_another_directory(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path / "here", 2, "aaa")
    _fake_checkpoint(tmp_path / "there", 2, "aaa")
    here = str(tmp_path / "here")
    assert ckpt.resumed_step_in(here, str(tmp_path / "here" / ckpt.checkpoint_name(2)), 2) == 2
    assert ckpt.resumed_step_in(here, str(tmp_path / "there" / ckpt.checkpoint_name(2)), 2) is None
    assert ckpt.resumed_step_in(here, None, 0) is None


def test_gcs_listing_counts_only_direct_children_like_local(gcs_bucket: str) -> None:
    root = storage.join(gcs_bucket, "ckpts")
    for uri in (
        storage.join(root, ckpt.checkpoint_name(3), ckpt.MARKER),
        storage.join(root, "other-run", ckpt.checkpoint_name(9), ckpt.MARKER),
        storage.join(root, ckpt.checkpoint_name(5), "nested", ckpt.checkpoint_name(7), ckpt.MARKER),
    ):
        storage.write_text(uri, "x")
    assert ckpt.list_checkpoints(root) == [(3, storage.join(root, ckpt.checkpoint_name(3)))]
