"""Process-layout invariance of the trainer's draws, and the environment of a multi-process launch.

The sampler draws the global batch from (seed, micro-step) and gives each process its slice, so the
samples of 2 processes x batch 2 are exactly those of 1 process x batch 4 (the end-to-end trainer check
is in test_distributed.py). The launcher must mark a CPU-only multi-process launch for gloo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.train.data import StepSampler, TrainData
from components.train.launcher import LaunchPlan, launch_environment


def _data(n: int = 12) -> TrainData:
    return TrainData(
        source="memory",
        data_hash="h",
        sample_ids=[str(i) for i in range(n)],
        image_uris=[f"/img/{i}.png" for i in range(n)],
        prompts=["a", "b", "c"],
        prompt_index=np.arange(n) % 3,
        desirable=np.arange(n) % 2 == 0,
    )


@pytest.mark.parametrize("objective", ["kto", "sft", "dpo"])
def test_two_processes_of_batch_2_see_the_batch_of_one_process_of_batch_4(objective: str) -> None:
    kwargs = dict(objective=objective, desirable_ratio=0.8, caption_dropout=0.3, hflip=True, seed=5)
    data = _data()
    single = StepSampler(data, batch_size=4, **kwargs)  # type: ignore[arg-type]
    ranks = [
        StepSampler(data, batch_size=2, process_index=r, num_processes=2, **kwargs)  # type: ignore[arg-type]
        for r in (0, 1)
    ]
    for micro_step in range(5):
        whole = single.batch(micro_step)
        parts = [s.batch(micro_step) for s in ranks]
        for field in ("rows", "prompt_index", "flipped", "desirable", "mismatched_prompt_index"):
            got = [getattr(p, field) for p in parts]
            want = getattr(whole, field)
            if objective == "dpo":
                # Rows are [winners; losers] per process: compare the pairs, not the flat order.
                want = want.reshape(2, 4)
                got_pairs = torch.cat([g.reshape(2, 2) for g in got], dim=1)
                assert torch.equal(got_pairs, want), f"{objective} step {micro_step}: {field} differs"
            else:
                assert torch.equal(torch.cat(got), want), f"{objective} step {micro_step}: {field} differs"
    # Different micro-steps draw different batches (the test would pass vacuously otherwise).
    assert not torch.equal(single.batch(0).rows, single.batch(1).rows)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_unpaired_prompts_are_those_of_the_previous_image_of_the_global_batch(world: int) -> None:
    """Image i gets the prompt of global image i-1 (the first the last's), whatever the process layout.

    Rolling each process's own rows instead would pair rank r's first image with its own last one; with
    world > 1 that differs from the single process, and this test fails.
    """
    kwargs = dict(objective="kto", desirable_ratio=0.5, caption_dropout=0.3, hflip=False, seed=3)
    data = _data()
    global_batch = 8
    single = StepSampler(data, batch_size=global_batch, **kwargs)  # type: ignore[arg-type]
    ranks = [
        StepSampler(data, batch_size=global_batch // world, process_index=r, num_processes=world, **kwargs)  # type: ignore[arg-type]
        for r in range(world)
    ]
    distinct = 0
    for micro_step in range(6):
        whole = single.batch(micro_step)
        expected = whole.prompt_index.roll(1, 0)
        assert torch.equal(whole.mismatched_prompt_index, expected)
        parts = [s.batch(micro_step) for s in ranks]
        assert torch.equal(torch.cat([p.mismatched_prompt_index for p in parts]), expected)
        for rank in range(1, world):
            assert parts[rank].mismatched_prompt_index[0] == parts[rank - 1].prompt_index[-1]
        distinct += int(not torch.equal(whole.mismatched_prompt_index, whole.prompt_index))
    # The mismatched prompts must differ from the matched ones somewhere, or the check says nothing.
    assert distinct > 0


def test_sampler_refuses_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="process_index"):
        StepSampler(
            _data(),
            objective="kto",
            batch_size=2,
            desirable_ratio=0.8,
            caption_dropout=0.0,
            hflip=False,
            seed=0,
            process_index=2,
            num_processes=2,
        )


def test_multi_process_launch_without_cuda_uses_the_cpu_backend() -> None:
    plan = LaunchPlan(gpus_per_node=2, env={"DKTO_RUN_ID": "r1"})
    env = launch_environment(plan, cuda_available=False, base={"PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "ACCELERATE_USE_CPU": "true",
        "DKTO_RUN_ID": "r1",
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "600",  # LaunchPlan.shutdown_grace_s (review round 2, finding 2)
    }


def test_gpu_and_single_process_launches_leave_the_backend_alone() -> None:
    gpu = launch_environment(LaunchPlan(gpus_per_node=8), cuda_available=True, base={"PATH": "/bin"})
    assert gpu == {"PATH": "/bin", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "600"}
    single = launch_environment(LaunchPlan(gpus_per_node=1), cuda_available=False, base={})
    assert "ACCELERATE_USE_CPU" not in single
    # The plan's own environment has the last word.
    forced = launch_environment(
        LaunchPlan(gpus_per_node=2, env={"ACCELERATE_USE_CPU": "false"}), cuda_available=False, base={}
    )
    assert forced["ACCELERATE_USE_CPU"] == "false"


@pytest.mark.parametrize("ratio", [0.8, None], ids=["gamma", "uniform"])
def test_kto_draws_liked_images_at_gamma_or_at_their_share(ratio: float | None) -> None:
    """γ = 0.8 draws liked images 80% of the time whatever the data; None draws every image uniformly,
    so liked ones come at their share of the data (here 1 in 4)."""
    n = 40
    data = TrainData(
        source="memory",
        data_hash="h",
        sample_ids=[str(i) for i in range(n)],
        image_uris=[f"/img/{i}.png" for i in range(n)],
        prompts=["a"],
        prompt_index=np.zeros(n, dtype=np.int64),
        desirable=np.arange(n) % 4 == 0,
    )
    sampler = StepSampler(
        data, objective="kto", batch_size=64, desirable_ratio=ratio, caption_dropout=0.0, hflip=False, seed=0
    )
    draws = torch.cat([sampler.batch(i).desirable for i in range(100)]).float()
    expected = 0.8 if ratio is not None else 0.25
    assert abs(float(draws.mean()) - expected) < 0.02
    if ratio is None:  # every image is drawn, not just some of each class
        rows = torch.cat([sampler.batch(i).rows for i in range(100)])
        assert len(torch.unique(rows)) == n


def test_label_weights_reach_the_trainer_only_with_uniform_sampling(tmp_path: Path) -> None:
    from components.shared import storage
    from components.train.step import label_class_weights

    stats = str(tmp_path / "stats.json")
    storage.write_json(stats, {"desirable_weight": 2.9, "undesirable_weight": 1.0})
    assert label_class_weights({"desirable_ratio": 0.8}, set(), stats) == {}
    assert label_class_weights({"desirable_ratio": None}, set(), stats) == {
        "desirable_weight": 2.9,
        "undesirable_weight": 1.0,
    }
    assert label_class_weights({"desirable_ratio": None}, {"desirable_weight"}, stats) == {}


def test_learning_rate_zero_picks_the_default_of_the_training_mode() -> None:
    from components.train.step import resolve_learning_rate

    assert resolve_learning_rate(0.0, use_lora=False) == 1e-7  # the paper's full fine-tuning rate
    assert resolve_learning_rate(0.0, use_lora=True) == 1e-5  # rank-8 LoRA, diffusers' DPO example
    assert resolve_learning_rate(3e-6, use_lora=True) == 3e-6
