"""Distributed training on CPU: ``accelerate launch`` of 2 processes over gloo (cpu_ddp.yaml), for real.

The processes run ``tests/train/dist_worker.py``; each writes what it computed, and the assertions are
made here. Checked: the reference point z of Diffusion-KTO is the mean over the *global* batch (also with
unequal per-rank batches, where the reference code's mean of per-rank means is wrong); one DDP step with
2 processes x batch 2 equals one step of 1 process x batch 4; parameters stay identical across ranks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_worker.py")
CPU_DDP = REPO / "components" / "train" / "accelerate_configs" / "cpu_ddp.yaml"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*worker_args: str, num_processes: int = 2, timeout: float = 240) -> None:
    """``accelerate launch --config_file cpu_ddp.yaml --num_processes N dist_worker.py ARGS``; fails loudly."""
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CPU_DDP),
        "--num_processes",
        str(num_processes),
        "--main_process_port",
        str(_free_port()),
        str(WORKER),
        *worker_args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        pytest.fail(
            f"accelerate launch failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )


def read_rank(out_dir: Path, rank: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """The figures and tensors one rank wrote."""
    from safetensors.torch import load_file

    figures = json.loads((out_dir / f"rank{rank}.json").read_text())
    tensors_file = out_dir / f"rank{rank}.safetensors"
    return figures, (load_file(tensors_file) if tensors_file.exists() else {})


def test_reference_point_is_the_global_batch_mean_with_unequal_batches(tmp_path: Path) -> None:
    launch("reference_point", str(tmp_path))
    rank0, data = read_rank(tmp_path, 0)
    rank1, _ = read_rank(tmp_path, 1)
    assert (rank0["world_size"], rank0["local_batch"], rank1["local_batch"]) == (2, 3, 2)

    policy, reference = data["policy"], data["reference"]
    rewards = reference - policy
    desirable = data["desirable"].bool()
    expected_batch_mean = rewards.mean().clamp(min=0).item()
    expected_unpaired = (data["reference_mm"] - data["policy_mm"]).mean().clamp(min=0).item()
    class_means = (rewards[desirable].mean() + rewards[~desirable].mean()) / 2
    expected_class_mean = class_means.clamp(min=0).item()
    for rank in (rank0, rank1):
        assert rank["batch_mean"] == pytest.approx(expected_batch_mean, abs=1e-7)
        assert rank["unpaired"] == pytest.approx(expected_unpaired, abs=1e-7)
        assert rank["class_mean"] == pytest.approx(expected_class_mean, abs=1e-7)
        assert rank["module_class_mean"] == pytest.approx(expected_class_mean, abs=1e-7)
    # Averaging the two per-rank means (3 and 2 samples) would give another number: the sum-and-count
    # all-reduce is what makes unequal batches right.
    mean_of_means = ((rewards[:3].mean() + rewards[3:].mean()) / 2).item()
    assert abs(mean_of_means - expected_batch_mean) > 1e-3


def test_ddp_step_matches_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    launch("toy_step", str(tmp_path))
    figures0, state0 = read_rank(tmp_path, 0)
    figures1, state1 = read_rank(tmp_path, 1)

    # The all-reduced z equals the plain mean over the 4 samples of one process.
    for figures in (figures0, figures1):
        assert figures["reference_point_ddp"] == pytest.approx(figures["reference_point_single"], abs=1e-7)
    assert figures0["reference_point_single"] > 0, (
        "the test needs a non-zero reference point to mean anything"
    )

    ddp_keys = [k for k in state0 if k.startswith("ddp.")]
    assert ddp_keys
    moved = 0.0
    for key in ddp_keys:
        name = key.removeprefix("ddp.")
        # Parameters identical across ranks, bit for bit: both apply the same all-reduced gradient.
        assert torch.equal(state0[key], state1[key]), f"{name} differs between ranks"
        # 2 processes x batch 2 == 1 process x batch 4, up to float summation order: DDP averages the two
        # ranks' mean-over-2 gradients in a gloo all-reduce, the single process sums over 4 in one kernel.
        torch.testing.assert_close(state0[key], state0[f"single.{name}"], atol=1e-6, rtol=1e-5)
        moved = max(moved, (state0[key] - state0[f"start.{name}"]).abs().max().item())
    # The step must have moved the weights by far more than the tolerance, or the comparison is empty.
    assert moved > 1e-3
