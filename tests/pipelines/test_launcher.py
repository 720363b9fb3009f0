"""The training launcher: which mode each plan picks, the accelerate command, the 2 x 8 GPU TrainJob spec."""

from __future__ import annotations

import pytest

from components.train.launcher import (
    LaunchError,
    LaunchPlan,
    accelerate_command,
    trainjob_request,
)


def test_plan_modes() -> None:
    assert LaunchPlan(gpus_per_node=0).mode == "in_process"
    assert LaunchPlan(gpus_per_node=1).mode == "in_process"
    assert LaunchPlan(gpus_per_node=8).mode == "accelerate"
    assert LaunchPlan(gpus_per_node=8, num_nodes=2).mode == "trainjob"
    # a GPU-less launcher pod (ClusterSettings.train_with_trainjob) runs even one node as a TrainJob
    assert LaunchPlan(gpus_per_node=8, trainjob=True).mode == "trainjob"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_nodes": 2, "gpus_per_node": 0}, "multi-node is GPU-only"),
        ({"strategy": "horovod"}, "not one of ddp, fsdp, deepspeed_zero2"),
        ({"num_nodes": 0}, "num_nodes must be >= 1"),
        ({"trainjob": True, "gpus_per_node": 0}, "TrainJob launch needs gpus_per_node"),
    ],
)
def test_plan_rejects_impossible_layouts(kwargs: dict, message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        LaunchPlan(**kwargs)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed_zero2"])
def test_accelerate_command_uses_shipped_config(strategy: str) -> None:
    command = accelerate_command(strategy, 8, "/ckpt/train_config.yaml", "/ckpt/train_result.json")
    config_file = command[command.index("--config_file") + 1]
    assert config_file.endswith(f"components/train/accelerate_configs/{strategy}.yaml")
    import os

    assert os.path.exists(config_file), f"the train package ships no {strategy}.yaml"
    assert command[command.index("--num_processes") + 1] == "8"
    assert (
        command[command.index("-m") :][:2] == ["-m", "accelerate.commands.launch"]
        or "accelerate" in command[2]
    )
    tail = command[command.index("components.train") - 1 :]
    assert tail == [
        "-m",
        "components.train",
        "--config",
        "/ckpt/train_config.yaml",
        "--result-json",
        "/ckpt/train_result.json",
    ]


def test_trainjob_spec_for_two_nodes_of_eight_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TrainJob the launcher submits for 2 nodes x 8 GPUs, built with the kubeflow SDK's own models."""
    pytest.importorskip("kubeflow.trainer")
    from components.shared.images import TRAINER_IMAGE

    monkeypatch.setenv("DKTO_RUN_ID", "run-1234")
    plan = LaunchPlan(
        gpus_per_node=8, num_nodes=2, strategy="fsdp", cpu_per_node="96", memory_per_node="1000Gi"
    )
    request = trainjob_request(
        "gs://bucket/ckpt/run-1234/train/train_config.yaml",
        "gs://bucket/ckpt/run-1234/train/train_result.json",
        plan,
        job_name="dkto-abc123",
    )
    manifest = request.manifest()
    assert manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert manifest["kind"] == "TrainJob"
    assert manifest["metadata"]["name"] == "dkto-abc123"
    assert manifest["metadata"]["labels"]["dkto/run-id"] == "run-1234"
    spec = manifest["spec"]
    assert spec["runtimeRef"] == {"name": "dkto-torch-distributed", "kind": "TrainingRuntime"}
    assert spec["activeDeadlineSeconds"] == plan.timeout_s
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2
    assert trainer["numProcPerNode"] == 8
    assert trainer["image"] == TRAINER_IMAGE
    limits = trainer["resourcesPerNode"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    assert limits["cpu"] == "96"
    assert limits["memory"] == "1000Gi"
    assert trainer["resourcesPerNode"]["requests"] == limits
    assert {"name": "DKTO_RUN_ID", "value": "run-1234"} in trainer["env"]
    script = trainer["command"][-1]
    assert trainer["command"][:2] == ["bash", "-c"]
    for flag in (
        "--num_machines 2 ",
        "--num_processes 16 ",
        '--machine_rank "$PET_NODE_RANK"',
        '--main_process_ip "$PET_MASTER_ADDR"',
    ):
        assert flag in script
    assert "fsdp" in script
    assert "-m components.train --config gs://bucket/ckpt/run-1234/train/train_config.yaml" in script
    # The same request drives TrainerClient.train: the trainer object and its options.
    assert request.trainer().num_nodes == 2
    assert [type(o).__name__ for o in request.options()] == [
        "Name",
        "Labels",
        "TrainerCommand",
        "ActiveDeadlineSeconds",
    ]


def test_trainjob_needs_shared_storage() -> None:
    with pytest.raises(LaunchError, match="set checkpoint_root to gs://"):
        trainjob_request(
            "/local/cfg.yaml", "/local/res.json", LaunchPlan(gpus_per_node=8, num_nodes=2), job_name="x"
        )


def test_node_command_resolves_under_bash(tmp_path) -> None:
    """Each node's shell expands the rendezvous variables and finds the shipped accelerate config."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from components.train.launcher import node_command

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    # Stand-in for `accelerate` that prints its arguments, so the test sees what a node would launch.
    (fake_bin / "accelerate").write_text('#!/bin/sh\necho "$@"\n')
    (fake_bin / "accelerate").chmod(0o755)
    env = {
        "PATH": f"{fake_bin}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "8",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": "10.0.0.1",
        "PET_MASTER_PORT": "29500",
    }
    command = node_command(
        "deepspeed_zero2", "gs://b/cfg.yaml", "gs://b/res.json", num_nodes=2, gpus_per_node=8
    )
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.split()
    config_file = out[out.index("--config_file") + 1]
    assert Path(config_file).name == "deepspeed_zero2.yaml" and Path(config_file).exists()
    assert out[out.index("--num_processes") + 1] == "16"
    assert out[out.index("--machine_rank") + 1] == "1"
    assert out[out.index("--main_process_ip") + 1] == "10.0.0.1"
    assert out[-4:] == ["--config", "gs://b/cfg.yaml", "--result-json", "gs://b/res.json"]


def test_a_launcher_pod_submits_even_one_node_as_a_trainjob() -> None:
    """ClusterSettings.train_with_trainjob: the KFP pod holds no GPU, so one node of 8 GPUs is a TrainJob
    too; without that setting a one-node plan trains in its own pod and refuses to build a TrainJob."""
    pytest.importorskip("kubeflow.trainer")
    cfg, res = "gs://b/ckpt/cfg.yaml", "gs://b/ckpt/res.json"
    request = trainjob_request(cfg, res, LaunchPlan(gpus_per_node=8, trainjob=True), job_name="dkto-one")
    trainer = request.manifest()["spec"]["trainer"]
    assert trainer["numNodes"] == 1 and trainer["numProcPerNode"] == 8
    assert "--num_machines 1 " in trainer["command"][-1]
    with pytest.raises(LaunchError, match="train in the pod instead"):
        trainjob_request(cfg, res, LaunchPlan(gpus_per_node=8), job_name="dkto-one")
