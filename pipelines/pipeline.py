"""The ``diffusion-kto-retrain`` pipeline: feedback -> labels -> Diffusion-KTO -> evaluation -> registry.

Tasks: ingest -> label -> train -> resolve production -> evaluate -> register (always) -> gate ->
promote (only when the gate passed), inside a ``dsl.ExitHandler`` whose exit task records the run's
outcome (summary.json, pushed metrics) whether the run succeeded or failed.

The same pipeline runs on a laptop (``kfp.local``; Kubernetes settings are ignored there) and on
Kubeflow Pipelines, where the Kubernetes settings below shape the pods. ``build_pipeline(settings)``
compiles in other cluster settings (GPU type, node pool, sizes); ``diffusion_kto_retrain`` is the pipeline
with the defaults of :class:`pipelines.params.ClusterSettings`.
"""

from collections.abc import Callable
from typing import Any

from kfp import dsl, kubernetes

from components.evaluate.component import evaluate_candidate
from components.ingest.component import ingest_feedback
from components.label.component import label_feedback
from components.promote.component import (
    gate_passed,
    promote_model,
    register_candidate_model,
    resolve_production_model,
)
from components.train.component import train_model
from pipelines.outcome import record_run_outcome
from pipelines.params import ClusterSettings

PIPELINE_NAME = "diffusion-kto-retrain"
DISPLAY_NAME = "Diffusion-KTO retraining from user feedback"
DESCRIPTION = (
    "Collects like/dislike feedback on generated images, labels images desirable or undesirable, "
    "fine-tunes the text-to-image model with Diffusion-KTO (Li et al., NeurIPS 2024), evaluates the "
    "candidate against the production model on held-out prompts, registers it, and moves the registry's "
    "`production` alias only when the gate passed."
)
# Where the model registry's credentials come from (a Kubernetes secret; never a pipeline parameter).
REGISTRY_SECRET_KEYS = {
    "username": "MLFLOW_TRACKING_USERNAME",
    "password": "MLFLOW_TRACKING_PASSWORD",
}
SHM_VOLUME = "dshm"


def _on_gpu_nodes(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    """Schedule a task on the GPU node pool: node selector and the GPU taint's toleration."""
    for key, value in settings.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    kubernetes.add_toleration(task, key=settings.gpu_toleration_key, operator="Exists", effect="NoSchedule")


def _project_pod(task: dsl.PipelineTask, labels: dict[str, str]) -> dsl.PipelineTask:
    """Label a task's pod (k8s/'s NetworkPolicy admits only project pods to the Pushgateway)."""
    for key, value in labels.items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    return task


def _cpu_step(task: dsl.PipelineTask, settings: ClusterSettings) -> dsl.PipelineTask:
    """Modest resources and the project's pod labels for a CPU step."""
    _project_pod(task, settings.pod_labels)
    return task.set_cpu_request(settings.step_cpu).set_memory_request(settings.step_memory)


def _registry_retries(task: dsl.PipelineTask) -> None:
    """Registry tasks retry a transient registry error instead of failing a long run at its end. Each is
    safe to repeat: resolving reads, registering finds this run's version again (registration key), and
    promotion is a compare-and-set that reports success when production already is its version."""
    task.set_retry(3, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="900s")


def _registry_credentials(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    """MLflow credentials from the Kubernetes secret (optional: an unauthenticated server needs none)."""
    kubernetes.use_secret_as_env(
        task, secret_name=settings.registry_secret, secret_key_to_env=REGISTRY_SECRET_KEYS, optional=True
    )


def build_pipeline(settings: ClusterSettings | None = None) -> Callable[..., Any]:
    """The pipeline function with ``settings`` compiled into its pods' Kubernetes settings."""
    settings = settings or ClusterSettings.from_dict({})

    @dsl.pipeline(name=PIPELINE_NAME, display_name=DISPLAY_NAME, description=DESCRIPTION)
    def diffusion_kto_retrain(
        feedback_sources: list,
        base_model: str,
        source_format: str = "auto",
        incremental_ingest: bool = False,
        labeling_policy: str = "votes",
        val_fraction: float = 0.1,
        registry_uri: str = "sqlite:///outputs/registry/mlflow.db",
        registry_artifact_root: str = "",
        model_name: str = "diffusion-kto",
        objective: str = "kto",
        beta: float = 5000.0,
        desirable_ratio: float = 0.8,
        max_steps: int = 1000,
        learning_rate: float = 0.0,
        train_batch_size: int = 2,
        gradient_accumulation_steps: int = 1,
        mixed_precision: str = "bf16",
        resolution: int = 512,
        use_lora: bool = True,
        gpus_per_node: int = 1,
        num_nodes: int = 1,
        distributed_strategy: str = "ddp",
        seed: int = 0,
        train_options: dict = {},  # noqa: B006 - KFP reads defaults from the signature; never mutated
        eval_prompts: str = "",
        images_per_prompt: int = 4,
        eval_inference_steps: int = 30,
        scorers: list = ["pickscore"],  # noqa: B006
        scorer_models: dict = {},  # noqa: B006
        gate_primary_metric: str = "pickscore",
        gate_min_win_rate_ci_low: float = 0.5,
        gate_min_prompts: int = 20,
        gate_max_regression: dict = {},  # noqa: B006
        gate_floors: dict = {},  # noqa: B006
        eval_options: dict = {},  # noqa: B006
        outputs_root: str = "outputs",
        checkpoint_root: str = "outputs/checkpoints",
        pushgateway: str = "",
    ) -> None:
        """Retrain the text-to-image model on new user feedback and promote it if it is measurably better.

        Args:
            feedback_sources: Local paths, globs or gs:// prefixes of the feedback exports.
            base_model: The model to fine-tune (and the baseline while nothing is in production).
            source_format: `auto`, `jsonl`, `parquet`, `csv`, `pickapic_v2` or `diffusion_kto_csv`.
            incremental_ingest: Start from the last run's events for these sources (opt-in; see README).
            labeling_policy: `votes`, `pairwise` or `score_threshold`.
            val_fraction: Fraction of prompts held out for validation and evaluation.
            registry_uri: `sqlite:///path.db` (embedded MLflow) or an MLflow server URL.
            registry_artifact_root: Where the registry keeps model files (empty: the registry's default).
            model_name: Registered model name.
            objective: `kto` (Diffusion-KTO), `sft` or `dpo` (the paper's baselines).
            beta: KL-regularisation strength β (paper: 5000 for SD v1.5).
            desirable_ratio: Probability that a sample is a desirable image (paper: 0.8).
            max_steps: Optimizer steps.
            learning_rate: Peak learning rate; 0 picks by use_lora: 1e-7 full fine-tuning (paper), 1e-5 LoRA.
            train_batch_size: Images per GPU per step (paper: 2).
            gradient_accumulation_steps: Micro-batches per optimizer step.
            mixed_precision: `no`, `fp16` or `bf16`.
            resolution: Training image side in pixels.
            use_lora: Train a LoRA adapter instead of the full UNet.
            gpus_per_node: GPUs of the training pod (1: in-process; more: accelerate).
            num_nodes: Training nodes (more than 1: a Kubeflow Trainer job).
            distributed_strategy: `ddp`, `fsdp` or `deepspeed_zero2`.
            seed: Seed of training and evaluation sampling.
            train_options: More TrainConfig fields by name.
            eval_prompts: Evaluation prompt file; empty uses the held-out prompts.
            images_per_prompt: Images per prompt and model.
            eval_inference_steps: Denoising steps of evaluation sampling.
            scorers: Scorer names.
            scorer_models: Per scorer, the model path or id.
            gate_primary_metric: Metric whose win rate decides.
            gate_min_win_rate_ci_low: Lower CI bound of the primary win rate must exceed this.
            gate_min_prompts: Fewest evaluation prompts the gate accepts.
            gate_max_regression: Per metric, the largest allowed drop against production.
            gate_floors: Per metric, an absolute floor for the candidate.
            eval_options: More EvaluateConfig fields by name.
            outputs_root: Root of run records (summaries).
            checkpoint_root: Root of training checkpoints (a retry resumes from <root>/<run id>).
            pushgateway: Prometheus Pushgateway address; empty pushes nothing.
        """
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        outcome = record_run_outcome(
            run_id=run_id, outputs_root=outputs_root, model_name=model_name, pushgateway=pushgateway
        ).set_display_name("record run outcome")
        outcome.set_caching_options(False)
        _cpu_step(outcome, settings)

        with dsl.ExitHandler(outcome, name="retrain"):
            # Feedback sources change between runs under the same URIs: never reuse a cached ingest.
            ingest = ingest_feedback(
                feedback_sources=feedback_sources,
                source_format=source_format,
                run_id=run_id,
                pushgateway=pushgateway,
                outputs_root=outputs_root,
                incremental=incremental_ingest,
            ).set_display_name("ingest feedback")
            ingest.set_caching_options(False)
            _cpu_step(ingest, settings)

            label = label_feedback(
                events=ingest.outputs["events"],
                labeling_policy=labeling_policy,
                val_fraction=val_fraction,
                run_id=run_id,
                pushgateway=pushgateway,
                outputs_root=outputs_root,
            ).set_display_name("label images")
            _cpu_step(label, settings)

            train = train_model(
                labeled=label.outputs["labeled"],
                base_model=base_model,
                checkpoint_root=checkpoint_root,
                objective=objective,
                beta=beta,
                desirable_ratio=desirable_ratio,
                learning_rate=learning_rate,
                max_steps=max_steps,
                train_batch_size=train_batch_size,
                gradient_accumulation_steps=gradient_accumulation_steps,
                mixed_precision=mixed_precision,
                resolution=resolution,
                use_lora=use_lora,
                seed=seed,
                gpus_per_node=gpus_per_node,
                num_nodes=num_nodes,
                distributed_strategy=distributed_strategy,
                train_options=train_options,
                metrics_port=settings.train_metrics_port or 0,
                run_id=run_id,
                pushgateway=pushgateway,
                outputs_root=outputs_root,
                use_trainjob=settings.train_with_trainjob,
            ).set_display_name("train (Diffusion-KTO)")
            if settings.train_with_trainjob:
                # A launcher only: the TrainJob's workers hold the GPUs and serve the metrics (their pods
                # carry the trainer label, k8s/base/training-runtime.yaml); this pod would be a down target.
                _cpu_step(train, settings)
            else:
                # The trainer label makes the PodMonitor scrape /metrics on train_metrics_port.
                _project_pod(train, {**settings.pod_labels, **settings.trainer_pod_labels})
                train.set_accelerator_type(settings.gpu_type).set_accelerator_limit(gpus_per_node)
                train.set_cpu_request(settings.train_cpu).set_cpu_limit(settings.train_cpu)
                train.set_memory_request(settings.train_memory).set_memory_limit(settings.train_memory)
                _on_gpu_nodes(train, settings)
                # NCCL and data-loader workers share tensors through /dev/shm (the container default: 64 MiB).
                kubernetes.empty_dir_mount(
                    train,
                    volume_name=SHM_VOLUME,
                    mount_path="/dev/shm",
                    medium="Memory",
                    size_limit=settings.shm_size,
                )
            kubernetes.set_timeout(train, settings.train_timeout_s)
            # A retry keeps the run id, so it resumes from <checkpoint_root>/<run id>/train. The retry window
            # (Argo's backoff maxDuration, counted from the first attempt's start; kfp's default is 1 h) must
            # outlast every attempt, or an attempt failing after the first hour is never retried.
            train.set_retry(
                settings.train_retries,
                backoff_duration="60s",
                backoff_factor=2.0,
                backoff_max_duration=f"{(settings.train_retries + 1) * settings.train_timeout_s + 3600}s",
            )

            production = resolve_production_model(
                registry_uri=registry_uri,
                model_name=model_name,
                base_model=base_model,
                registry_artifact_root=registry_artifact_root,
                run_id=run_id,
            ).set_display_name("resolve production model")
            # The registry changes between runs under the same arguments: always ask it again.
            production.set_caching_options(False)
            production.after(train)
            _cpu_step(production, settings)
            _registry_retries(production)
            _registry_credentials(production, settings)

            evaluate = evaluate_candidate(
                candidate=train.outputs["model"],
                labeled=label.outputs["labeled"],
                baseline_model=production.outputs["model_uri"],
                baseline_version=production.outputs["version"],
                eval_prompts=eval_prompts,
                images_per_prompt=images_per_prompt,
                num_inference_steps=eval_inference_steps,
                seed=seed,
                scorers=scorers,
                scorer_models=scorer_models,
                gate_primary_metric=gate_primary_metric,
                gate_min_win_rate_ci_low=gate_min_win_rate_ci_low,
                gate_min_prompts=gate_min_prompts,
                gate_max_regression=gate_max_regression,
                gate_floors=gate_floors,
                eval_options=eval_options,
                run_id=run_id,
                pushgateway=pushgateway,
                outputs_root=outputs_root,
            ).set_display_name("evaluate candidate vs production")
            _project_pod(evaluate, settings.pod_labels)
            evaluate.set_cpu_request(settings.step_cpu).set_memory_request(settings.train_memory)
            if settings.eval_gpu:
                evaluate.set_accelerator_type(settings.gpu_type).set_accelerator_limit(1)
                _on_gpu_nodes(evaluate, settings)

            register = register_candidate_model(
                candidate=train.outputs["model"],
                evaluation=evaluate.outputs["evaluation"],
                registry_uri=registry_uri,
                model_name=model_name,
                base_model=base_model,
                registry_artifact_root=registry_artifact_root,
                run_id=run_id,
                pushgateway=pushgateway,
                outputs_root=outputs_root,
            ).set_display_name("register candidate")
            register.set_caching_options(False)
            _cpu_step(register, settings)
            _registry_retries(register)
            _registry_credentials(register, settings)

            # Gate on a single-output task: kfp.local reads a dsl.If on one named output of a
            # multi-output task (without dsl.Else) as False and would skip promotion silently.
            gate = gate_passed(evaluation=evaluate.outputs["evaluation"]).set_display_name("gate passed?")
            gate.set_caching_options(False)
            gate.after(register)
            _cpu_step(gate, settings)

            with dsl.If(gate.output == True, name="gate-passed"):  # noqa: E712 - KFP builds a condition from ==
                promote = promote_model(
                    evaluation=evaluate.outputs["evaluation"],
                    registry_uri=registry_uri,
                    model_name=model_name,
                    version=register.output,
                    registry_artifact_root=registry_artifact_root,
                    run_id=run_id,
                    pushgateway=pushgateway,
                    outputs_root=outputs_root,
                ).set_display_name("promote to production")
                promote.set_caching_options(False)
                _cpu_step(promote, settings)
                _registry_retries(promote)
                _registry_credentials(promote, settings)

    return diffusion_kto_retrain


diffusion_kto_retrain = build_pipeline()
