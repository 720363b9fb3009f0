"""Distributed training on CPU: ``accelerate launch`` of 2 processes over gloo (cpu_ddp.yaml), for real.

The processes run ``tests/train/dist_worker.py``; each writes what it computed, and the assertions are
made here. Checked: the reference point z of Diffusion-KTO is the mean over the *global* batch (also with
unequal per-rank batches, where the reference code's mean of per-rank means is wrong); one DDP step with
2 processes x batch 2 equals one step of 1 process x batch 4; parameters stay identical across ranks; the
trainer with the "unpaired" reference point pairs images and prompts over the global batch (2 x 2 == 1 x 4).
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


@pytest.fixture(scope="module")
def loss_checks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-process launch of the worker's loss checks; returns the folder the ranks wrote to."""
    out = tmp_path_factory.mktemp("loss-checks")
    launch("loss_checks", str(out))
    return out


def test_reference_point_is_the_global_batch_mean_with_unequal_batches(loss_checks: Path) -> None:
    rank0, data = read_rank(loss_checks / "reference_point", 0)
    rank1, _ = read_rank(loss_checks / "reference_point", 1)
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


def test_ddp_step_matches_one_process_with_the_whole_batch(loss_checks: Path) -> None:
    figures0, state0 = read_rank(loss_checks / "toy_step", 0)
    figures1, state1 = read_rank(loss_checks / "toy_step", 1)

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


def _load_train_conftest():  # type: ignore[no-untyped-def]
    """tests/train/conftest.py as a module, for its ``write_manifest`` in a module-scoped fixture."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_conftest", Path(__file__).with_name("conftest.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_trainer_config(
    root: Path, tiny_sd: Path, folder: Path, batch_size: int, **overrides: object
) -> Path:
    """A tiny-SD TrainConfig (2 optimizer steps, AdamW at lr 1e-4, fp32 on CPU) written as YAML."""
    from components.train.step import TrainConfig

    manifest = root / "data" / "train.parquet"
    if not manifest.exists():
        _load_train_conftest().write_manifest(root / "data")
    config = TrainConfig.model_validate(
        {
            "pretrained_model": str(tiny_sd),
            "train_data": str(manifest),
            "output_dir": str(folder / "out"),
            "checkpoint_dir": str(folder / "checkpoints"),
            "cache_dir": str(root / "cache"),
            "max_steps": 2,
            "train_batch_size": batch_size,
            "resolution": 32,
            "learning_rate": 1e-4,
            "lr_warmup_steps": 0,
            "checkpoint_every": 0,
            "progress_bar": False,
            "dataloader_workers": 0,
            "seed": 0,
            "device": "cpu",
            "mixed_precision": "no",
            **overrides,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.yaml"
    path.write_text(config.to_yaml())
    return path


def _unet_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for f in sorted((model_dir / "unet").glob("*.safetensors")):
        weights.update({k: v.float() for k, v in load_file(f).items()})
    assert weights, f"no UNet weights under {model_dir}/unet"
    return weights


@pytest.fixture(scope="module")
def trainer_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the trainer runs of this module (shared manifest and latent cache)."""
    return tmp_path_factory.mktemp("dist-train")


@pytest.fixture(scope="module")
def two_process_run(trainer_root: Path, tiny_sd: Path) -> tuple[Path, dict, dict, dict, dict]:
    """The real trainer, 2 processes x batch 2, 2 steps; returns (folder, figures and weights per rank)."""
    folder = trainer_root / "two"
    config = _write_trainer_config(trainer_root, tiny_sd, folder, 2)
    launch("train", str(folder / "ranks"), str(config))
    figures0, weights0 = read_rank(folder / "ranks", 0)
    figures1, weights1 = read_rank(folder / "ranks", 1)
    return folder, figures0, weights0, figures1, weights1


def test_trainer_on_two_processes_keeps_ranks_identical(two_process_run, tiny_sd: Path) -> None:  # type: ignore[no-untyped-def]
    folder, figures0, weights0, figures1, weights1 = two_process_run
    assert figures0["world_size"] == figures1["world_size"] == 2
    assert figures0["steps"] == figures1["steps"] == 2
    start = _unet_weights(tiny_sd)
    exported = _unet_weights(folder / "out")
    assert set(weights0) == set(weights1) == set(start)
    moved = 0.0
    for name, value in weights0.items():
        assert torch.equal(value, weights1[name]), f"{name} differs between the two ranks after training"
        assert torch.equal(value, exported[name]), f"{name}: the exported model is not what rank 0 trained"
        moved = max(moved, (value - start[name]).abs().max().item())
    assert moved > 1e-5, "two AdamW steps at lr 1e-4 should move the weights"
    # One optimizer step sees batch 2 on each of the 2 processes (review finding 5).
    summary = json.loads((folder / "out" / "training_summary.json").read_text())
    assert summary["images_per_step"] == 4


def test_trainer_two_processes_batch_2_equal_one_process_batch_4(  # type: ignore[no-untyped-def]
    two_process_run, trainer_root: Path, tiny_sd: Path
) -> None:
    from components.train.step import TrainConfig, run

    _, _, weights0, _, _ = two_process_run
    folder = trainer_root / "one"
    run(TrainConfig.from_yaml(str(_write_trainer_config(trainer_root, tiny_sd, folder, 4))))
    single = _unet_weights(folder / "out")
    # The trainer draws samples, latent samples, noise, timesteps, caption dropout and flips for the global
    # batch and slices them per rank, so both layouts see the same numbers. The weights still agree only to
    # a tolerance, not bit for bit: DDP averages two mean-over-2 gradients in a gloo all-reduce while one
    # process reduces over 4 in one kernel, and the reference point z is a sum all-reduced over ranks
    # (float32 summation order, ~1e-7 relative); AdamW's first steps divide by sqrt(v) ~ |g|, which can
    # magnify such differences on near-zero gradients up to lr (1e-4), hence atol 1e-5 / rtol 1e-4 after 2
    # steps, against weight moves of order 1e-4 per step.
    start = _unet_weights(tiny_sd)
    moved = 0.0
    for name, value in single.items():
        torch.testing.assert_close(weights0[name], value, atol=1e-5, rtol=1e-4, msg=f"{name}: 2x2 != 1x4")
        moved = max(moved, (value - start[name]).abs().max().item())
    assert moved > 1e-5, "the comparison means nothing unless the weights moved"


# Full fine-tuning with the "unpaired" reference point, 3 steps: at step 1 the policy is the reference and
# z is exactly 0, so only later steps see the mismatched pairs' z (and its effect on the update).
UNPAIRED = {"reference_point": "unpaired", "max_steps": 3}


def test_unpaired_reference_point_two_processes_batch_2_equal_one_process_batch_4(  # type: ignore[no-untyped-def]
    trainer_root: Path, tiny_sd: Path
) -> None:
    """Image i is paired with the prompt of GLOBAL image i-1, so 2 processes x 2 train like 1 x 4.

    Rolling prompts within each rank's 2 images (the old pairing) pairs rank 1's first image with its own
    second prompt instead of rank 0's last, which changes z and with it the update.
    """
    from components.train.step import TrainConfig, run

    folder = trainer_root / "unpaired-two"
    launch(
        "train",
        str(folder / "ranks"),
        str(_write_trainer_config(trainer_root, tiny_sd, folder, 2, **UNPAIRED)),
    )
    figures0, weights0 = read_rank(folder / "ranks", 0)
    figures1, _ = read_rank(folder / "ranks", 1)
    single_folder = trainer_root / "unpaired-one"
    single = run(
        TrainConfig.from_yaml(str(_write_trainer_config(trainer_root, tiny_sd, single_folder, 4, **UNPAIRED)))
    )
    # z (mean over the logging interval, all steps here) is all-reduced, so both ranks report the same;
    # it must be non-zero for the comparison to test the pairing at all.
    assert single.reference_point is not None and single.reference_point > 0
    print(
        f"unpaired z: 2x2 {figures0['reference_point']!r} / {figures1['reference_point']!r}, 1x4 {single.reference_point!r}"
    )
    for figures in (figures0, figures1):
        assert figures["steps"] == 3
        # float32 sums in another order (gloo all-reduce of per-rank sums vs one sum over 4), on weights
        # that already differ at that level after the first steps: 1e-4 relative.
        assert figures["reference_point"] == pytest.approx(single.reference_point, rel=1e-4, abs=1e-8)
    weights = _unet_weights(single_folder / "out")
    start = _unet_weights(tiny_sd)
    moved = 0.0
    for name, value in weights.items():
        # The tolerance of the batch_mean comparison above, for the same reasons (one more step).
        torch.testing.assert_close(weights0[name], value, atol=1e-5, rtol=1e-4, msg=f"{name}: 2x2 != 1x4")
        moved = max(moved, (value - start[name]).abs().max().item())
    assert moved > 1e-5, "the comparison means nothing unless the weights moved"


def test_preemption_seen_by_one_rank_stops_every_rank_together(trainer_root: Path, tiny_sd: Path) -> None:
    """SIGTERM reaching one process first: all ranks stop after the next optimizer step, one checkpoint.

    Before the first fix, the preempted rank alone entered the stop all-reduce at a non-logging step while
    the other was in DDP's gradient all-reduce, and the collectives went out of step (a hang or a crash).
    Then the ranks agreed only at logging steps, which could be later than torchrun's SIGKILL (review
    round 2, finding 2): now they vote after every optimizer step, so logging_steps=4 does not delay it.
    """
    import yaml

    folder = trainer_root / "preempt"
    path = _write_trainer_config(trainer_root, tiny_sd, folder, 2)
    config = yaml.safe_load(path.read_text())
    config.update({"max_steps": 6, "logging_steps": 4})
    path.write_text(yaml.safe_dump(config))
    launch("train_one_rank_preempted", str(folder / "ranks"), str(path))
    figures = [read_rank(folder / "ranks", rank)[0] for rank in (0, 1)]
    # Rank 1 is told to stop from step 1; every rank stops right after that optimizer step.
    assert [f["steps"] for f in figures] == [1, 1]
    assert all(f["preempted"] for f in figures)
    assert figures[0]["last_checkpoint"] == figures[1]["last_checkpoint"]
    assert (Path(figures[0]["last_checkpoint"]) / "trainer_state.json").exists()


@pytest.mark.parametrize("shared_cache", [False, True], ids=["own-disks", "shared-cache-volume"])
def test_a_gs_checkpoint_of_two_nodes_holds_every_ranks_files(
    gcs_bucket: str, tmp_path: Path, shared_cache: bool
) -> None:
    """Two "nodes" of one process each (two ``accelerate launch`` as machine 0 and 1, staging on their own
    disks or on one shared DKTO_CACHE_DIR volume): node 1's share of the checkpoint (its RNG state) is
    uploaded before node 0 marks it complete, and each node's staging folder is removed (review round 3:
    only node 0 uploaded; resume lost node 1's state; then a shared cache made the nodes share one folder)."""
    from components.shared import storage
    from components.train.checkpoint import MARKER, list_checkpoints

    port = str(_free_port())
    checkpoint_dir = storage.join(gcs_bucket, "ckpt")
    procs = []
    for machine in (0, 1):
        env = {
            **os.environ,
            "ACCELERATE_USE_CPU": "true",
            "OMP_NUM_THREADS": "1",
            "DKTO_CACHE_DIR": str(tmp_path / ("shared-cache" if shared_cache else f"node{machine}-cache")),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_DDP),
            "--num_machines", "2", "--machine_rank", str(machine), "--num_processes", "2",
            "--main_process_ip", "127.0.0.1", "--main_process_port", port,
            str(WORKER), "checkpoint_to", str(tmp_path / "ranks"), checkpoint_dir,
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for machine, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"machine {machine} failed:\n{out[-6000:]}"
    figures = [read_rank(tmp_path / "ranks", rank)[0] for rank in (0, 1)]
    assert all(f["local_main"] for f in figures), "each process is its node's first"
    assert [f["staging_left"] for f in figures] == [[], []]
    (step, uri), *_ = list_checkpoints(checkpoint_dir)
    assert step == 1
    names = {path.rsplit("/", 1)[-1] for path in storage.list_files(uri)}
    assert {"random_states_0.pkl", "random_states_1.pkl", MARKER} <= names, names
