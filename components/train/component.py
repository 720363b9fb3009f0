"""KFP component of the training step: labeled Dataset -> candidate Model.

It builds the ``TrainConfig`` from the pipeline's parameters and hands it to
:func:`components.train.launcher.launch`, which trains in-process on one device, runs ``accelerate launch``
across the pod's GPUs, or submits a Kubeflow Trainer job across nodes. Checkpoints go to
``<checkpoint_root>/<run id>/train`` so a retried task resumes where the failed attempt stopped.
Module level imports only the standard library and kfp.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.shared.images import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train_model(
    labeled: Input[Dataset],
    base_model: str,
    checkpoint_root: str,
    model: Output[Model],
    metrics: Output[Metrics],
    objective: str = "kto",
    beta: float = 5000.0,
    desirable_ratio: float = 0.8,
    learning_rate: float = 0.0,
    max_steps: int = 1000,
    train_batch_size: int = 2,
    gradient_accumulation_steps: int = 1,
    mixed_precision: str = "bf16",
    resolution: int = 512,
    use_lora: bool = True,
    seed: int = 0,
    gpus_per_node: int = 1,
    num_nodes: int = 1,
    distributed_strategy: str = "ddp",
    train_options: dict = {},  # noqa: B006 - KFP reads the default from the signature; never mutated
    metrics_port: int = 0,
    run_id: str = "local",
    pushgateway: str = "",
    outputs_root: str = "",
    use_trainjob: bool = False,
) -> None:
    """Fine-tune the base model on the labeled images with Diffusion-KTO (or the SFT / DPO baselines).

    Args:
        labeled: The label step's output directory (train.parquet).
        base_model: The model to fine-tune (diffusers directory, local or gs://).
        checkpoint_root: Root of checkpoints; this run's live under <root>/<run id>/train.
        model: The candidate model (diffusers layout, or a LoRA adapter + dkto_lora.json).
        metrics: Training figures (steps, final loss, reward margin and accuracy, samples/s).
        objective: `kto`, `sft` or `dpo`.
        beta: KL-regularisation strength β (paper: 5000).
        desirable_ratio: Probability that a sample is a desirable image (paper: 0.8).
        learning_rate: Peak learning rate; 0 picks by use_lora: 1e-7 for full fine-tuning (the paper's),
            1e-5 for LoRA (rank 8; diffusers' Diffusion-DPO LoRA example), since 1e-7 barely moves an adapter.
        max_steps: Optimizer steps.
        train_batch_size: Images per GPU per step.
        gradient_accumulation_steps: Micro-batches per optimizer step.
        mixed_precision: `no`, `fp16` or `bf16`.
        resolution: Training image side in pixels.
        use_lora: Train a LoRA adapter instead of the full UNet.
        seed: Seed of the run.
        gpus_per_node: GPUs per pod (0 or 1 trains in-process; more runs accelerate).
        num_nodes: Nodes; more than 1 submits a Kubeflow Trainer job.
        distributed_strategy: `ddp`, `fsdp` or `deepspeed_zero2`.
        train_options: More TrainConfig fields by name (for example {"lora_rank": 16}).
        metrics_port: Port to serve Prometheus /metrics on while training (the cluster's PodMonitor
            scrapes 9090); 0 serves nothing. A compile-time setting (ClusterSettings.train_metrics_port).
        run_id: The pipeline run id (checkpoint location, telemetry).
        pushgateway: Prometheus Pushgateway address; empty pushes nothing.
        outputs_root: Root of the run records; empty writes none.
        use_trainjob: Always train in a Kubeflow Trainer TrainJob, this pod only launching and following
            it (a compile-time setting, ClusterSettings.train_with_trainjob, which also drops this pod's GPUs).
    """
    from components.shared import storage
    from components.train.launcher import LaunchPlan, launch
    from components.train.step import TrainConfig, label_class_weights, pipeline_train_settings
    from pipelines.runtime import durable_uri, prepare_step_env, record_step

    prepare_step_env(run_id, pushgateway)
    # Several nodes write the model themselves, so it must go where every node can reach it.
    on_trainjob = num_nodes > 1 or use_trainjob
    output_dir = durable_uri(model.uri, model.path) if on_trainjob else model.path
    settings = {
        "pretrained_model": base_model,
        "train_data": storage.join(labeled.path, "train.parquet"),
        "output_dir": output_dir,
        "checkpoint_dir": storage.join(checkpoint_root, run_id, "train"),
        "resume_from": "latest",
        **pipeline_train_settings(
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
        ),
        "run_id": run_id,
        "progress_bar": False,
        "metrics_port": int(metrics_port) or None,
        **dict(train_options),
    }
    # The label step's class weights apply only to uniform sampling (desirable_ratio null): the γ sampler
    # already rebalances, and both together would rebalance twice.
    label_stats_uri = storage.join(labeled.path, "stats.json")
    settings.update(label_class_weights(settings, set(dict(train_options)), label_stats_uri))
    config = TrainConfig.from_dict(settings)
    plan = LaunchPlan(
        gpus_per_node=int(gpus_per_node),
        num_nodes=int(num_nodes),
        strategy=distributed_strategy,
        trainjob=bool(use_trainjob),
    )
    result = launch(config, plan)
    figures = {
        "steps": float(result.steps),
        "resumed_from_step": float(result.resumed_from_step),
        "samples_per_second": float(result.samples_per_second),
    }
    for name in ("final_loss", "reward_margin", "reward_accuracy", "reference_point"):
        value = getattr(result, name)
        if value is not None:
            figures[name] = float(value)
    for name, value in figures.items():
        metrics.log_metric(name, value)
    model.metadata.update({"objective": objective, "use_lora": use_lora, "base_model": base_model})
    model.metadata.update({"config_hash": result.config_hash, "data_hash": result.data_hash})
    record_step(outputs_root, run_id, "train", {**figures, "model": durable_uri(model.uri, model.path)})
