"""Worker that ``tests/train/test_distributed.py`` starts under ``accelerate launch`` (one per process).

Not a test module itself (pytest collects only ``test_*.py``). Each process writes what it saw to
``<out_dir>/rank<R>.json`` (and tensors to ``rank<R>.safetensors``); the test reads the files and asserts,
so a failure names the figure that differed rather than a rank's exit code.

Modes:
    reference_point OUT   diffusion_kto_loss's reference point on unequal per-rank batches (3 + 2 samples)
                          against the mean over the global batch, for the batch-mean, unpaired and
                          class-mean estimates.
    loss_checks OUT       both of the above, into OUT/reference_point and OUT/toy_step.
    toy_step OUT          one DDP optimizer step of a tiny UNet2DConditionModel with the KTO loss on
                          2 samples per rank, and the same step taken by one process on all 4 samples.
    train OUT CONFIG      the real trainer (``components.train.step.run``) on a TrainConfig YAML; rank 0
                          writes the result, every rank writes its final UNet weights.
    checkpoint_to OUT DIR ``save_checkpoint`` of a small model into DIR (the multi-node checkpoint test).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch

# Launched under cpu_ddp.yaml: accelerate spawns the processes; this makes each one pick CPU + gloo.
os.environ.setdefault("ACCELERATE_USE_CPU", "true")
torch.set_num_threads(1)


def _write(out_dir: Path, rank: int, figures: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(figures, indent=1))
    if tensors:
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            out_dir / f"rank{rank}.safetensors",
        )


def reference_point(out_dir: Path) -> None:
    """Reference points computed from each rank's slice of a global batch of 5 (rank 0: 3, rank 1: 2)."""
    from accelerate import Accelerator

    from components.train.losses import (
        KTOLoss,
        class_mean_reference_point,
        diffusion_kto_loss,
        unpaired_reference_point,
    )

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2, f"this check needs 2 processes, got {world}"
    # The global batch, the same on every rank (fixed seed); chosen so that the rank-0 rewards are high
    # and the rank-1 rewards low, which makes the mean of per-rank means differ from the global mean.
    g = torch.Generator().manual_seed(1234)
    policy = torch.rand(5, generator=g) * 0.1 + 0.1
    reference = policy + torch.tensor([0.03, 0.02, 0.04, -0.01, -0.02])
    policy_mm = torch.rand(5, generator=g) * 0.1 + 0.1
    reference_mm = policy_mm + torch.tensor([0.01, 0.05, 0.0, 0.02, -0.01])
    desirable = torch.tensor([True, False, True, True, False])
    mine = slice(0, 3) if rank == 0 else slice(3, 5)

    out = diffusion_kto_loss(policy[mine], reference[mine], desirable[mine], beta=1000.0)
    unpaired = unpaired_reference_point(policy_mm[mine], reference_mm[mine])
    rewards = reference - policy
    class_mean = class_mean_reference_point(rewards[mine], desirable[mine])
    module_out = KTOLoss(beta=1000.0, reference_point_mode="class_mean")(
        policy[mine], reference[mine], desirable[mine]
    )
    _write(
        out_dir,
        rank,
        {
            "world_size": world,
            "local_batch": int(policy[mine].numel()),
            "batch_mean": out.reference_point.item(),
            "unpaired": unpaired.item(),
            "class_mean": class_mean.item(),
            "module_class_mean": module_out.reference_point.item(),
            "local_loss": out.loss.item(),
        },
        {
            "policy": policy,
            "reference": reference,
            "policy_mm": policy_mm,
            "reference_mm": reference_mm,
            "desirable": desirable.to(torch.uint8),
        },
    )


def tiny_unet(seed: int) -> torch.nn.Module:
    """A tiny UNet2DConditionModel (4 latent channels, 8x8, cross-attention dim 16) with seeded weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def toy_step(out_dir: Path) -> None:
    """One DDP step (2 samples per rank) and the same step on one process (4 samples), both written out."""
    from accelerate import Accelerator

    from components.train.losses import diffusion_kto_loss, per_sample_mse

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2, f"this check needs 2 processes, got {world}"
    policy = tiny_unet(0)
    # A reference that differs from the policy, so rewards and the reference point are not all zero.
    reference = copy.deepcopy(policy).requires_grad_(False)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(7)
        for p in reference.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    single = copy.deepcopy(policy)

    gen = torch.Generator().manual_seed(99)
    noisy = torch.randn(4, 4, 8, 8, generator=gen)
    noise = torch.randn(4, 4, 8, 8, generator=gen)
    timesteps = torch.randint(0, 1000, (4,), generator=gen)
    text = torch.randn(4, 5, 16, generator=gen)
    desirable = torch.tensor([True, False, True, True])
    beta, lr = 500.0, 0.05

    def mse(model: torch.nn.Module, rows: slice) -> torch.Tensor:
        return per_sample_mse(model(noisy[rows], timesteps[rows], text[rows]).sample, noise[rows])

    # --- DDP: each rank holds 2 of the 4 samples.
    optimizer = torch.optim.SGD(policy.parameters(), lr=lr)
    ddp_policy, optimizer = accelerator.prepare(policy, optimizer)
    mine = slice(2 * rank, 2 * rank + 2)
    with torch.no_grad():
        reference_mse = mse(reference, mine)
    out = diffusion_kto_loss(mse(ddp_policy, mine), reference_mse, desirable[mine], beta=beta)
    accelerator.backward(out.loss)
    optimizer.step()

    # --- One process, all 4 samples, reference point from a plain mean (no all-reduce involved).
    everything = slice(0, 4)
    single_optimizer = torch.optim.SGD(single.parameters(), lr=lr)
    with torch.no_grad():
        reference_mse_all = mse(reference, everything)
    policy_mse_all = mse(single, everything)
    z_single = (reference_mse_all - policy_mse_all.detach()).mean().clamp(min=0)
    single_out = diffusion_kto_loss(
        policy_mse_all, reference_mse_all, desirable, beta=beta, reference_point=z_single
    )
    single_out.loss.backward()
    single_optimizer.step()

    unwrapped = accelerator.unwrap_model(ddp_policy)
    start = tiny_unet(0)
    _write(
        out_dir,
        rank,
        {
            "reference_point_ddp": out.reference_point.item(),
            "reference_point_single": z_single.item(),
            "loss_single": single_out.loss.item(),
        },
        {
            **{f"ddp.{k}": v for k, v in unwrapped.state_dict().items()},
            **{f"single.{k}": v for k, v in single.state_dict().items()},
            **{f"start.{k}": v for k, v in start.state_dict().items()},
        },
    )


def train(out_dir: Path, config_path: str) -> None:
    """Run the real trainer on a TrainConfig YAML; every rank writes the weights it ended with.

    The trainer keeps its UNet inside ``run``; to read each rank's copy afterwards the worker records the
    ``Trainer`` object the loop builds (instrumentation only: nothing of the training is replaced).
    """
    from accelerate import PartialState

    from components.train import loop
    from components.train.step import TrainConfig, run

    trainers: list = []
    original_init = loop.Trainer.__init__

    def recording_init(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        original_init(self, *args, **kwargs)
        trainers.append(self)

    loop.Trainer.__init__ = recording_init  # type: ignore[method-assign]
    config = TrainConfig.from_yaml(config_path)
    result = run(config)
    state = PartialState()
    assert len(trainers) == 1, f"expected one Trainer per process, saw {len(trainers)}"
    trainer = trainers[0]
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    _write(
        out_dir,
        state.process_index,
        {
            "world_size": state.num_processes,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "reference_point": result.reference_point,
        },
        {k: v.float() for k, v in unet.state_dict().items()},
    )


def train_one_rank_preempted(out_dir: Path, config_path: str) -> None:
    """The real trainer where only rank 1 receives the preemption notice, from its first optimizer step.

    Stands in for SIGTERM reaching one pod's process first (the flag is what the SIGTERM handler sets); every
    rank must still stop together, at the next step where all ranks agree, with one checkpoint.
    """
    from components.train import checkpoint
    from components.train.step import TrainConfig, run

    rank = int(os.environ["RANK"])  # set by accelerate launch; PartialState is not the trainer's state yet
    checkpoint.PreemptionFlag.requested = property(  # type: ignore[assignment, method-assign]
        lambda self: rank == 1, lambda self, value: None
    )
    result = run(TrainConfig.from_yaml(config_path))
    _write(
        out_dir,
        rank,
        {"steps": result.steps, "preempted": result.preempted, "last_checkpoint": result.last_checkpoint},
    )


def checkpoint_to(out_dir: Path, checkpoint_dir: str) -> None:
    """``save_checkpoint`` of a small model + AdamW into ``checkpoint_dir`` (gs:// in the multi-node test);
    each rank writes the local staging folder it saw (``DKTO_CACHE_DIR`` differs per "node")."""
    from accelerate import Accelerator

    from components.shared import storage
    from components.train.checkpoint import save_checkpoint

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    final = save_checkpoint(accelerator, checkpoint_dir, 1, {"step": 1, "data_hash": "d"}, keep_last=2)
    staging = storage.cache_root() / "checkpoint-staging"
    left = sorted(p.name for p in staging.rglob("*")) if staging.exists() else []
    _write(
        out_dir,
        accelerator.process_index,
        {"final": final, "local_main": accelerator.is_local_main_process, "staging_left": left},
    )


def main(argv: list[str]) -> None:
    """Dispatch on the mode named in ``argv[0]``."""
    mode, out_dir = argv[0], Path(argv[1])
    if mode == "reference_point":
        reference_point(out_dir)
    elif mode == "toy_step":
        toy_step(out_dir)
    elif mode == "loss_checks":
        # Both checks in one launch: starting processes and importing torch costs more than the checks.
        reference_point(out_dir / "reference_point")
        toy_step(out_dir / "toy_step")
    elif mode == "train":
        train(out_dir, argv[2])
    elif mode == "train_one_rank_preempted":
        train_one_rank_preempted(out_dir, argv[2])
    elif mode == "checkpoint_to":
        checkpoint_to(out_dir, argv[2])
    else:
        raise SystemExit(f"unknown mode {mode!r}; use reference_point, toy_step, loss_checks or train")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(sys.argv[1:])
