"""How the training step runs on the hardware it was given: one device, one multi-GPU pod, or several nodes.

- ``gpus_per_node <= 1`` and one node: ``run(config)`` in this process (a laptop CPU or one GPU).
- ``gpus_per_node = N > 1`` on one node: ``accelerate launch --num_processes N --config_file
  components/train/accelerate_configs/<strategy>.yaml -m components.train --config FILE`` in this pod.
- ``num_nodes > 1``: a Kubeflow Trainer ``TrainJob`` on the ``torch-distributed`` runtime, submitted with
  the ``kubeflow`` SDK's ``TrainerClient`` and followed to completion while its logs stream here. Each
  node runs ``accelerate launch`` with the machine rank and rendezvous address that the runtime's torch
  plugin injects (``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
  ``PET_MASTER_PORT``).

The config and the result travel through files beside the run's checkpoints, so every process (and
every node, when that location is gs://) reads the same config, and a retried task resumes from the
same checkpoints.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from components.shared import storage
from components.shared.telemetry import get_logger

if TYPE_CHECKING:
    from components.train.step import TrainConfig, TrainResult

log = get_logger("train.launcher")

Strategy = Literal["ddp", "fsdp", "deepspeed_zero2"]
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp", "deepspeed_zero2")
# The namespaced TrainingRuntime of k8s/base/training-runtime.yaml (the stock one is "torch-distributed").
DEFAULT_RUNTIME = "dkto-torch-distributed"
DEFAULT_RUNTIME_KIND = "TrainingRuntime"
CONFIG_FILE = "train_config.yaml"
RESULT_FILE = "train_result.json"
# Seconds workers get to checkpoint after a SIGTERM before torchrun's agent SIGKILLs them. torchrun's own
# default (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, torch/distributed/launcher/api.py) is 30 s, too short for an
# SD v1.5 full fine-tune's 10-14 GB of state; k8s/base/training-runtime.yaml's terminationGracePeriodSeconds
# is this plus a margin (tests/ops/test_k8s.py checks it).
DEFAULT_SHUTDOWN_GRACE_S = 600


class LaunchError(RuntimeError):
    """Training could not be launched or did not finish; the message says which process and why."""


@dataclass
class LaunchPlan:
    """Where training runs: GPUs per node, nodes, and the multi-GPU strategy."""

    gpus_per_node: int = 1
    num_nodes: int = 1
    strategy: str = "ddp"
    runtime: str = DEFAULT_RUNTIME
    runtime_kind: str = DEFAULT_RUNTIME_KIND
    image: str | None = None
    namespace: str | None = None
    cpu_per_node: str = "16"
    memory_per_node: str = "128Gi"
    timeout_s: int = 48 * 3600
    env: dict[str, str] = field(default_factory=dict)
    trainjob: bool = False
    """Run as a TrainJob even on one node (the calling pod is a GPU-less launcher)."""
    shutdown_grace_s: int = DEFAULT_SHUTDOWN_GRACE_S
    """Seconds the workers get after a SIGTERM (preemption) to finish the optimizer step and write their
    checkpoint before torchrun kills them (exported as TORCH_ELASTIC_SHUTDOWN_TIMEOUT). The pod's
    terminationGracePeriodSeconds must be longer, or Kubernetes kills the pod first."""

    def __post_init__(self) -> None:
        if self.gpus_per_node < 0:
            raise LaunchError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.num_nodes < 1:
            raise LaunchError(f"num_nodes must be >= 1, got {self.num_nodes}")
        if self.num_nodes > 1 and self.gpus_per_node < 1:
            raise LaunchError(f"num_nodes={self.num_nodes} needs gpus_per_node >= 1 (multi-node is GPU-only)")
        if self.trainjob and self.gpus_per_node < 1:
            raise LaunchError("a TrainJob launch needs gpus_per_node >= 1 (its workers are GPU nodes)")
        if self.shutdown_grace_s < 1:
            raise LaunchError(f"shutdown_grace_s must be >= 1 second, got {self.shutdown_grace_s}")
        if self.strategy not in STRATEGIES:
            raise LaunchError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")

    @property
    def mode(self) -> Literal["in_process", "accelerate", "trainjob"]:
        """How this plan runs: in this process, accelerate in this pod, or a (multi-node) TrainJob."""
        if self.num_nodes > 1 or self.trainjob:
            return "trainjob"
        return "accelerate" if self.gpus_per_node > 1 else "in_process"


def strategy_conflicts(strategy: str, config: TrainConfig) -> list[str]:
    """One plain-words reason per setting of ``config`` that the multi-GPU ``strategy`` cannot run; [] if none.

    The trainer reaches the UNet's full weights outside accelerate's wrapper in these cases, which works
    when every process holds all weights (ddp; deepspeed_zero2 shards only gradients and optimizer state)
    but not when FSDP shards the parameters, and accelerate 1.15 saves FSDP and DeepSpeed models itself,
    outside the trainer's LoRA adapter checkpoint.
    """
    reasons: list[str] = []
    if config.use_lora and strategy in ("fsdp", "deepspeed_zero2"):
        reasons.append(
            f"use_lora=true does not work with strategy {strategy}: accelerate saves {strategy} models itself, "
            "so the LoRA adapter checkpoint and its reference model (the UNet with the adapter off) are not "
            "supported there; use strategy ddp (a LoRA adapter's gradients and optimizer state are small)"
        )
    if strategy == "fsdp":
        if config.use_ema:
            reasons.append(
                "use_ema=true does not work with strategy fsdp: the moving average keeps full-size weights "
                "while each process holds only a shard of them; use strategy ddp or deepspeed_zero2, or "
                "use_ema=false"
            )
        if config.objective == "kto" and config.reference_point == "unpaired":
            reasons.append(
                "reference_point=unpaired does not work with strategy fsdp: its mismatched-prompt pass runs "
                "the unwrapped, sharded UNet; use strategy ddp or deepspeed_zero2, or reference_point "
                "batch_mean or class_mean"
            )
    return reasons


def accelerate_config_file(strategy: str) -> Path:
    """The accelerate config shipped with the trainer for a strategy (ddp, fsdp, deepspeed_zero2)."""
    path = Path(__file__).parent / "accelerate_configs" / f"{strategy}.yaml"
    if not path.exists():
        raise LaunchError(f"no accelerate config for strategy {strategy!r} at {path}")
    return path


def run_files(config: TrainConfig) -> tuple[str, str]:
    """Where the launcher writes the config and where rank 0 writes the result (beside the checkpoints)."""
    root = config.resolved_checkpoint_dir()
    return storage.join(root, CONFIG_FILE), storage.join(root, RESULT_FILE)


def accelerate_command(
    strategy: str, num_processes: int, config_uri: str, result_uri: str, *, python: str | None = None
) -> list[str]:
    """``accelerate launch`` of the trainer's module entry point across ``num_processes`` local GPUs."""
    return [
        python or sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config_file(strategy)),
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "-m",
        "components.train",
        "--config",
        config_uri,
        "--result-json",
        result_uri,
    ]


def node_command(
    strategy: str, config_uri: str, result_uri: str, *, num_nodes: int, gpus_per_node: int
) -> list[str]:
    """The command each TrainJob node runs: accelerate with the rank and rendezvous the torch plugin injects.

    The world size is fixed from the plan rather than read from ``PET_NPROC_PER_NODE``, which a runtime
    may leave at ``auto``.
    """
    config_file = (
        # The path inside the node's image: only there is the package's install location known.
        '"$(python -c "import components.train.launcher as l; '
        f"print(l.accelerate_config_file('{strategy}'))\")\""
    )
    script = (
        "set -euo pipefail; "
        "exec accelerate launch "
        f"--config_file {config_file} "
        f"--num_machines {num_nodes} "
        f"--num_processes {num_nodes * gpus_per_node} "
        '--machine_rank "$PET_NODE_RANK" '
        '--main_process_ip "$PET_MASTER_ADDR" '
        '--main_process_port "$PET_MASTER_PORT" '
        f"-m components.train --config {shlex.quote(config_uri)} --result-json {shlex.quote(result_uri)}"
    )
    return ["bash", "-c", script]


def launch_environment(
    plan: LaunchPlan, *, cuda_available: bool | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of the ``accelerate launch`` child: ``base`` (default: this process's) + ``plan.env``.

    Several processes without CUDA get ``ACCELERATE_USE_CPU=true``: accelerate 1.15 spawns several local
    processes only for its MULTI_GPU type, and without that variable each process would then look for a GPU
    instead of joining a CPU (gloo) process group. ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` is
    ``plan.shutdown_grace_s``: how long torchrun's agent waits for the workers after forwarding a SIGTERM.
    ``plan.env`` wins over all of them.
    """
    env = dict(os.environ if base is None else base)
    env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(plan.shutdown_grace_s)
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if plan.mode == "accelerate" and not cuda_available:
        env["ACCELERATE_USE_CPU"] = "true"
    env.update(plan.env)
    return env


def launch(config: TrainConfig, plan: LaunchPlan | None = None) -> TrainResult:
    """Train per ``config`` on the hardware ``plan`` describes and return the trainer's result."""
    from components.train.step import TrainResult, run

    plan = plan or LaunchPlan()
    # Checked whatever the number of processes: the strategy is what the user asked for, and a one-GPU
    # trial run that passes would otherwise hide a failure of the same settings on the real pod.
    conflicts = strategy_conflicts(plan.strategy, config)
    if conflicts:
        raise LaunchError(
            f"strategy {plan.strategy!r} cannot train this config:\n- " + "\n- ".join(conflicts)
        )
    log.info(
        "training with %s: %d node(s) x %d GPU(s), strategy %s",
        plan.mode,
        plan.num_nodes,
        plan.gpus_per_node,
        plan.strategy,
    )
    if plan.mode == "in_process":
        result = run(config)
    else:
        config_uri, result_uri = run_files(config)
        storage.write_text(config_uri, config.to_yaml())
        if storage.exists(result_uri):
            storage.delete(result_uri)  # a stale result of an earlier attempt must not pass for this one
        if plan.mode == "accelerate":
            command = accelerate_command(plan.strategy, plan.gpus_per_node, config_uri, result_uri)
            log.info("running %s", shlex.join(command))
            returncode = run_forwarding_sigterm(command, env=launch_environment(plan))
            if returncode != 0:
                # torchrun's agent exits 1 after a forwarded SIGTERM even when the workers checkpointed and
                # stopped cleanly: rank 0's result says whether this was a preemption.
                if storage.exists(result_uri):
                    _raise_if_preempted(TrainResult.model_validate(storage.read_json(result_uri)))
                raise LaunchError(
                    f"accelerate launch across {plan.gpus_per_node} GPUs exited with code "
                    f"{returncode}; see the log above"
                )
        else:
            if not storage.is_gcs(config.output_dir):
                raise LaunchError(
                    f"output_dir {config.output_dir!r}: the nodes of a TrainJob write the model themselves, "
                    "so it must be a gs:// location (run the pipeline with a gs:// pipeline root)"
                )
            request = trainjob_request(config_uri, result_uri, plan, job_name=_job_name(config))
            submit_and_follow(request, namespace=plan.namespace, timeout_s=plan.timeout_s)
        if not storage.exists(result_uri):
            raise LaunchError(f"training finished but wrote no result at {result_uri} (rank 0 writes it)")
        result = TrainResult.model_validate(storage.read_json(result_uri))
    _raise_if_preempted(result)
    return result


def _raise_if_preempted(result: TrainResult) -> None:
    """Fail a preempted run with its step and checkpoint: failing makes KFP retry the task, which resumes."""
    if result.preempted:
        raise LaunchError(
            f"training was preempted at step {result.steps}; checkpoint {result.last_checkpoint} "
            "is resumed on retry"
        )


def run_forwarding_sigterm(command: list[str], *, env: dict[str, str] | None = None) -> int:
    """Run ``command`` to completion and return its exit code, passing a SIGTERM of this process on to it.

    Kubernetes preempts a pod with a SIGTERM that may reach only this process; forwarded, ``accelerate
    launch`` (torchrun) passes it to the workers, which checkpoint and stop (checkpoint.py's
    PreemptionFlag). A child that leads its own process group gets it group-wide. The previous handler is
    back once the child has exited. Off the main thread (where Python cannot install handlers) the
    command runs without forwarding.
    """
    import contextlib
    import signal
    import threading

    child = subprocess.Popen(command, env=env)

    def forward(signum: int, frame: Any) -> None:
        log.warning("received signal %d: forwarding it to the training launcher (pid %d)", signum, child.pid)
        with contextlib.suppress(ProcessLookupError):  # the child has exited already
            if os.getpgid(child.pid) == child.pid:
                os.killpg(child.pid, signum)
            else:
                os.kill(child.pid, signum)

    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if on_main_thread else None
    try:
        return child.wait()
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _job_name(config: TrainConfig) -> str:
    """A DNS-1035 TrainJob name derived from the run id (stable, so a retry finds its own job)."""
    import hashlib

    key = f"{config.run_id or 'local'}:{config.resolved_checkpoint_dir()}"
    return "dkto-" + hashlib.sha256(key.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- multi-node: Kubeflow Trainer


@dataclass
class TrainJobRequest:
    """Everything a TrainJob needs: the SDK's trainer object plus name, command and deadline."""

    name: str
    runtime: str
    runtime_kind: str
    image: str
    num_nodes: int
    resources_per_node: dict[str, Any]
    command: list[str]
    env: dict[str, str]
    labels: dict[str, str]
    active_deadline_seconds: int
    num_proc_per_node: int = 1

    def trainer(self) -> Any:
        """The ``kubeflow.trainer.CustomTrainerContainer`` of this job."""
        from kubeflow.trainer import CustomTrainerContainer

        return CustomTrainerContainer(
            image=self.image,
            num_nodes=self.num_nodes,
            resources_per_node=dict(self.resources_per_node),
            env=dict(self.env),
        )

    def options(self) -> list[Any]:
        """The ``kubeflow.trainer.options`` TrainerClient.train applies (name, labels, command, deadline)."""
        from kubeflow.trainer.options import ActiveDeadlineSeconds, Labels, Name, TrainerCommand

        return [
            Name(name=self.name),
            Labels(labels=dict(self.labels)),
            TrainerCommand(command=list(self.command)),
            ActiveDeadlineSeconds(seconds=self.active_deadline_seconds),
        ]

    def manifest(self) -> dict[str, Any]:
        """The TrainJob custom resource as a dict, built with the SDK's own models and trainer builder.

        This is what ``TrainerClient.train`` sends for this request (it looks the runtime up on the
        cluster; here the runtime reference is given), so a test can check the spec without a cluster.
        """
        from kubeflow.trainer.backends.kubernetes import utils
        from kubeflow.trainer.constants import constants
        from kubeflow.trainer.types import types
        from kubeflow_trainer_api import models

        runtime = types.Runtime(
            name=self.runtime,
            trainer=types.RuntimeTrainer(
                trainer_type=types.TrainerType.CUSTOM_TRAINER, framework="torch", image=self.image
            ),
            kind=types.RuntimeKind(self.runtime_kind),
        )
        trainer_cr = utils.get_trainer_cr_from_custom_trainer(runtime, self.trainer())
        trainer_cr.command = list(self.command)
        trainer_cr.num_proc_per_node = self.num_proc_per_node
        job = models.TrainerV1alpha1TrainJob(
            apiVersion=constants.API_VERSION,
            kind=constants.TRAINJOB_KIND,
            metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=self.name, labels=self.labels),
            spec=models.TrainerV1alpha1TrainJobSpec(
                runtimeRef=models.TrainerV1alpha1RuntimeRef(name=runtime.name, kind=runtime.kind.value),
                trainer=trainer_cr,
                activeDeadlineSeconds=self.active_deadline_seconds,
            ),
        )
        return job.to_dict()


def trainjob_request(config_uri: str, result_uri: str, plan: LaunchPlan, *, job_name: str) -> TrainJobRequest:
    """Build the TrainJob request of a TrainJob plan (no cluster needed; a test checks it)."""
    from components.shared.images import TRAINER_IMAGE

    if plan.mode != "trainjob":
        raise LaunchError(
            f"a TrainJob is for num_nodes >= 2 or a launcher pod (trainjob=True), got {plan.num_nodes} node(s); "
            "train in the pod instead"
        )
    for uri in (config_uri, result_uri):
        if not storage.is_gcs(uri):
            raise LaunchError(
                f"{uri}: the nodes of a TrainJob cannot see this pod's disk; set checkpoint_root to gs://"
            )
    env = {
        "DKTO_RUN_ID": os.environ.get("DKTO_RUN_ID", "local"),
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(plan.shutdown_grace_s),
        **plan.env,
    }
    if os.environ.get("DKTO_PUSHGATEWAY"):
        env.setdefault("DKTO_PUSHGATEWAY", os.environ["DKTO_PUSHGATEWAY"])
    return TrainJobRequest(
        name=job_name,
        runtime=plan.runtime,
        runtime_kind=plan.runtime_kind,
        image=plan.image or TRAINER_IMAGE,
        num_nodes=plan.num_nodes,
        resources_per_node={
            "cpu": plan.cpu_per_node,
            "memory": plan.memory_per_node,
            "gpu": str(plan.gpus_per_node),
        },
        command=node_command(
            plan.strategy, config_uri, result_uri, num_nodes=plan.num_nodes, gpus_per_node=plan.gpus_per_node
        ),
        env=env,
        labels={
            "app.kubernetes.io/part-of": "diffusion-kto-pipelines",
            "dkto/run-id": _label(env["DKTO_RUN_ID"]),
        },
        active_deadline_seconds=plan.timeout_s,
        num_proc_per_node=plan.gpus_per_node,
    )


def _label(value: str) -> str:
    """A Kubernetes label value (63 characters of [A-Za-z0-9._-])."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "-", value)[:63].strip("-._") or "local"


def submit_and_follow(request: TrainJobRequest, *, namespace: str | None, timeout_s: int) -> str:
    """Submit the TrainJob (or re-attach to it on a retry), stream node-0's logs, wait for Complete."""
    from kubeflow.trainer import KubernetesBackendConfig, TrainerClient
    from kubeflow.trainer.constants import constants

    cfg = KubernetesBackendConfig(namespace=namespace) if namespace else KubernetesBackendConfig()
    client = TrainerClient(backend_config=cfg)
    try:
        existing = client.get_job(request.name)
    except Exception:  # the SDK raises RuntimeError/ApiException when the job does not exist
        existing = None
    if existing is None:
        client.train(runtime=request.runtime, trainer=request.trainer(), options=request.options())
        log.info("submitted TrainJob %s (%d nodes)", request.name, request.num_nodes)
    else:
        log.info("re-attached to TrainJob %s (status %s)", request.name, existing.status)
    client.wait_for_job_status(
        request.name, status={constants.TRAINJOB_RUNNING, constants.TRAINJOB_COMPLETE}, timeout=timeout_s
    )
    for line in client.get_job_logs(request.name, follow=True):
        print(line, flush=True)
    job = client.wait_for_job_status(request.name, status={constants.TRAINJOB_COMPLETE}, timeout=timeout_s)
    log.info("TrainJob %s finished: %s", request.name, job.status)
    return request.name
