"""One parameter set for a pipeline run, loadable from a single YAML file.

``PipelineParams`` holds every run-time argument of the ``diffusion-kto-retrain`` pipeline (the values a
data team edits in the KFP UI) with the same names and defaults as the pipeline function, so
``dkto run --local --config FILE``, ``dkto submit --config FILE`` and ``dkto schedule --config FILE`` take
one YAML file instead of twenty flags. ``ClusterSettings`` holds the compile-time Kubernetes settings
(GPU type, node selector, toleration, CPU/memory, timeout, retries, secrets): they shape the compiled
YAML and are not run-time parameters, because KFP cannot template most pod fields.

Defaults follow Li et al., "Aligning Diffusion Models by Optimizing Human Utility" (NeurIPS 2024) where
the paper states one (β = 5000, learning rate 1e-7, desirable ratio 0.8, per-GPU batch 2).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.shared.config import ConfigError, StepConfig

Objective = Literal["kto", "sft", "dpo"]
LabelingPolicy = Literal[
    "votes", "pairwise", "score_threshold", "user_filter"
]  # user_filter: refused, see _check_step_settings
Strategy = Literal["ddp", "fsdp", "deepspeed_zero2"]

# What `dkto submit` / `dkto schedule` use unless told otherwise: the service account and the Pushgateway
# that k8s/ deploys (prod overlay, namespace `dkto`; the dev overlay's Pushgateway is
# http://dkto-pushgateway.dkto-dev:9091).
CLUSTER_SERVICE_ACCOUNT = "dkto-pipeline-runner"
CLUSTER_PUSHGATEWAY = "http://dkto-pushgateway.dkto:9091"
# Labels k8s/base/networkpolicy.yaml and k8s/monitoring/scrape.yaml select on (tests/ops/test_selectors.py).
PROJECT_POD_LABELS = {"app.kubernetes.io/part-of": "diffusion-kto-pipelines"}
TRAINER_POD_LABELS = {"app.kubernetes.io/component": "trainer"}
TRAINER_METRICS_PORT = 9090


# TrainConfig fields the pipeline sets itself (its own parameters, the run's paths and id): train_options
# may not override them.
PIPELINE_OWNED_TRAIN_FIELDS = frozenset(
    {
        "pretrained_model",
        "train_data",
        "output_dir",
        "checkpoint_dir",
        "resume_from",
        "run_id",
        "metrics_port",
        "objective",
        "beta",
        "desirable_ratio",
        "learning_rate",
        "max_steps",
        "train_batch_size",
        "gradient_accumulation_steps",
        "mixed_precision",
        "resolution",
        "use_lora",
        "seed",
    }
)


# EvaluateConfig fields the evaluate component sets itself (components/evaluate/component.py refuses them
# in eval_options at run time; tests/pipelines/test_params.py checks the two lists agree).
PIPELINE_OWNED_EVAL_FIELDS = frozenset(
    {
        "candidate_model",
        "baseline_model",
        "baseline_version",
        "prompts",
        "images_per_prompt",
        "num_inference_steps",
        "seed",
        "scorers",
        "scorer_models",
        "gate",
        "output_dir",
        "run_id",
    }
)


class PipelineParams(StepConfig):
    """The arguments of one ``diffusion-kto-retrain`` run (every field is a pipeline parameter)."""

    # -- data
    feedback_sources: list[str] = Field(
        description="Where the users' feedback events are: local files, directories, globs or gs:// "
        "prefixes of JSONL / Parquet / CSV exports (see contracts: feedback input records)."
    )
    source_format: str = Field(
        "auto",
        description="Format of the feedback sources: `auto` (by extension), `jsonl`, `parquet`, `csv`, "
        "`pickapic_v2` or `diffusion_kto_csv`.",
    )
    incremental_ingest: bool = Field(
        False,
        description="Start from the last run's events for these sources (a copy under outputs_root): "
        "sources are still re-read, previous events are kept even if gone from the sources, and known "
        "images are not checked again. A record changed in the source then conflicts (quarantined), so "
        "corrections and deletions need a run with this off (the default), which also becomes the new start.",
    )
    labeling_policy: LabelingPolicy = Field(
        "votes",
        description="How feedback becomes desirable/undesirable labels: `votes` for like/dislike buttons, "
        "`pairwise` for A/B choices (the paper's win+intermediate rule), `score_threshold` for a numeric "
        "score. (`user_filter` needs user ids the pipeline has no parameter for: use `dkto label`.)",
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of prompts held out for validation and evaluation."
    )
    # -- model and registry
    base_model: str = Field(
        description="The model to fine-tune and to compare against when nothing is in production yet: a "
        "diffusers pipeline directory (local or gs://)."
    )
    registry_uri: str = Field(
        "sqlite:///outputs/registry/mlflow.db",
        description="Model registry: `sqlite:///path.db` (embedded MLflow) or `http://host:port` (server).",
    )
    registry_artifact_root: str = Field(
        "",
        description="Where the registry keeps registered model files (local dir or gs://); empty: the "
        "registry's default (`artifacts` beside a SQLite registry, the server's root otherwise).",
    )
    model_name: str = Field("diffusion-kto", description="Registered model name in the registry.")
    # -- training
    objective: Objective = Field(
        "kto", description="`kto` (Diffusion-KTO), `sft` (desirable images only) or `dpo` (Diffusion-DPO)."
    )
    beta: float = Field(
        5000.0,
        gt=0,
        description="KL-regularisation strength β; 5000 is the best value of the paper's ablation for SD v1.5.",
    )
    desirable_ratio: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Probability that a training sample is a desirable image (γ = 0.8 in the paper).",
    )
    max_steps: int = Field(1000, ge=1, description="Optimizer steps to train (the paper trains 10k).")
    learning_rate: float = Field(
        0.0,
        ge=0,
        description="Peak learning rate; 0 picks one by use_lora: 1e-7 for full fine-tuning (the paper's), "
        "1e-5 for LoRA (rank 8, as diffusers' Diffusion-DPO LoRA example; 1e-7 barely moves an adapter).",
    )
    train_batch_size: int = Field(2, ge=1, description="Images per GPU per step (2 in the paper).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches accumulated per step.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "bf16", description="Mixed precision of training (`no` on a CPU)."
    )
    resolution: int = Field(512, ge=8, description="Training image side in pixels (512 for SD v1.5).")
    use_lora: bool = Field(
        True, description="Train a LoRA adapter (cheap, small artifact) instead of the full UNet."
    )
    gpus_per_node: int = Field(
        1,
        ge=0,
        description="GPUs of the training pod; 0 trains on CPU, 1 in-process, more launches accelerate.",
    )
    num_nodes: int = Field(
        1, ge=1, description="Training nodes; more than 1 submits a Kubeflow Trainer job (torch-distributed)."
    )
    distributed_strategy: Strategy = Field(
        "ddp", description="Multi-GPU strategy: `ddp`, `fsdp` or `deepspeed_zero2` (accelerate configs)."
    )
    seed: int = Field(0, description="Seed of training and of evaluation sampling.")
    train_options: dict[str, Any] = Field(
        default_factory=dict,
        description="More TrainConfig fields by name, for knobs without a parameter of their own "
        "(for example {lora_rank: 16, lr_warmup_steps: 0}); see components/train/step.py.",
    )
    # -- evaluation and gate
    eval_prompts: str = Field(
        "",
        description="Evaluation prompt set (text/JSONL/Parquet file); empty uses the held-out val.parquet.",
    )
    images_per_prompt: int = Field(4, ge=1, description="Images generated per prompt and model.")
    eval_inference_steps: int = Field(
        30, ge=1, description="Denoising steps of evaluation sampling (both models use the same)."
    )
    scorers: list[str] = Field(
        default_factory=lambda: ["pickscore"],
        description="Scorer names (`pickscore`, `clip_score`, `aesthetic`, `hps`, `imagereward`, "
        "`colour_match`).",
    )
    scorer_models: dict[str, str] = Field(
        default_factory=dict, description="Per scorer, the model path or id to load (default: its own)."
    )
    gate_primary_metric: str = Field(
        "pickscore", description="Metric whose paired win rate decides the gate."
    )
    gate_min_win_rate_ci_low: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Lower 95% CI bound of the primary win rate must be above this to promote.",
    )
    gate_min_prompts: int = Field(20, ge=1, description="Fewest evaluation prompts the gate accepts.")
    gate_max_regression: dict[str, float] = Field(
        default_factory=dict,
        description="Per metric, the largest allowed drop of the mean against production.",
    )
    gate_floors: dict[str, float] = Field(
        default_factory=dict, description="Per metric, an absolute floor the candidate's mean must reach."
    )
    eval_options: dict[str, Any] = Field(
        default_factory=dict,
        description="More EvaluateConfig fields by name (for example {guidance_scale: 5.0, device: cpu}); "
        "see components/evaluate/step.py.",
    )
    # -- where things go
    outputs_root: str = Field(
        "outputs",
        description="Root (local or gs://) of run records: run summaries, the model registry's files.",
    )
    checkpoint_root: str = Field(
        "outputs/checkpoints",
        description="Root (local or gs://) of training checkpoints; each run resumes from "
        "<root>/<run id> when its training task is retried.",
    )
    pushgateway: str = Field(
        "", description="Prometheus Pushgateway address (host:port); empty pushes no metrics."
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no_is_false(cls, value: object) -> object:
        # YAML 1.1 reads an unquoted `no` as false; the user meant the precision named "no".
        return "no" if value is False else value

    @model_validator(mode="after")
    def _check(self) -> PipelineParams:
        if not self.feedback_sources:
            raise ConfigError("PipelineParams.feedback_sources: give at least one path, glob or gs:// prefix")
        empty = [i for i, source in enumerate(self.feedback_sources) if not source.strip()]
        if empty:
            raise ConfigError(
                f"PipelineParams.feedback_sources: entries {empty} are empty; give a path, glob or gs:// prefix"
            )
        if not self.model_name.strip():
            raise ConfigError(
                "PipelineParams.model_name: empty; give the registered model's name (e.g. diffusion-kto), "
                "which the register and promote steps need after training"
            )
        if self.gate_primary_metric not in self.scorers:
            raise ConfigError(
                f"PipelineParams.gate_primary_metric: {self.gate_primary_metric!r} is not among the "
                f"scorers {self.scorers}; add it to scorers or pick one of them"
            )
        if self.num_nodes > 1 and self.gpus_per_node < 1:
            raise ConfigError(
                "PipelineParams.num_nodes > 1 needs gpus_per_node >= 1 (multi-node is GPU-only)"
            )
        if not (
            self.registry_uri.startswith("sqlite:///") or re.match(r"^https?://[^/\s]+", self.registry_uri)
        ):
            raise ConfigError(
                f"PipelineParams.registry_uri: {self.registry_uri!r} must be sqlite:///path.db or http(s)://host"
            )
        self._check_step_settings()
        return self

    def _check_step_settings(self) -> None:
        """What would otherwise fail hours into a run, inside a task: checked when the file is loaded."""
        from components.evaluate.scorers.base import SCORERS
        from components.evaluate.step import EvaluateConfig
        from components.ingest.step import IngestConfig
        from components.train.step import TrainConfig

        # EvaluateConfig refuses these too, but only inside the evaluate task, after training has run.
        unknown = [name for name in self.scorers if name not in SCORERS]
        if unknown:
            raise ConfigError(
                f"PipelineParams.scorers: {unknown} are not scorers; valid names: {', '.join(sorted(SCORERS))}"
            )
        unknown = sorted(set(self.scorer_models) - set(self.scorers))
        if unknown:
            raise ConfigError(
                f"PipelineParams.scorer_models: {unknown} are not among the scorers {self.scorers}; "
                "give a model only for a scorer the run uses"
            )
        formats = IngestConfig.model_fields["source_format"].annotation.__args__  # type: ignore[union-attr]
        if self.source_format not in formats:
            raise ConfigError(
                f"PipelineParams.source_format: {self.source_format!r} is not one of {', '.join(formats)}"
            )
        if self.labeling_policy == "user_filter":
            raise ConfigError(
                "PipelineParams.labeling_policy: user_filter needs the users' ids, which the pipeline has no "
                "parameter for; label with `dkto label` (LabelConfig.user_filter), or pick votes / pairwise / "
                "score_threshold"
            )
        if self.resolution % 8:
            raise ConfigError(
                f"PipelineParams.resolution: {self.resolution} must be a multiple of 8 (the VAE downsamples 8x)"
            )
        unknown = sorted(set(self.train_options) - set(TrainConfig.model_fields))
        if unknown:
            raise ConfigError(f"PipelineParams.train_options: {unknown} are not TrainConfig fields")
        owned = sorted(
            key
            for key in set(self.train_options) & PIPELINE_OWNED_TRAIN_FIELDS
            if not (key == "desirable_ratio" and self.train_options[key] is None)
        )
        if owned:
            raise ConfigError(
                f"PipelineParams.train_options: {owned} are set by the pipeline (its own parameters, or the "
                "run's paths and id); use the parameter of that name. (desirable_ratio: null, uniform "
                "sampling with the label step's class weights, is the one exception.)"
            )
        self._check_strategy()
        unknown = sorted(set(self.eval_options) - set(EvaluateConfig.model_fields))
        if unknown:
            raise ConfigError(f"PipelineParams.eval_options: {unknown} are not EvaluateConfig fields")
        owned = sorted(set(self.eval_options) & PIPELINE_OWNED_EVAL_FIELDS)
        if owned:
            raise ConfigError(
                f"PipelineParams.eval_options: {owned} are set by the pipeline (the baseline from the registry, "
                "the gate_* parameters, eval_prompts, images_per_prompt, eval_inference_steps, seed, scorers); "
                "use those parameters"
            )
        for name, table in (
            ("gate_max_regression", self.gate_max_regression),
            ("gate_floors", self.gate_floors),
        ):
            missing = sorted(set(table) - set(self.scorers))
            if missing:
                raise ConfigError(
                    f"PipelineParams.{name}: {missing} are not among the scorers {self.scorers}; the gate "
                    "would fail every run on a metric that is never computed"
                )

    def _check_strategy(self) -> None:
        """Refuse train settings the distributed strategy cannot run; the launcher would refuse them too,
        but only in the training task, and it checks whatever the number of GPUs (launcher.launch)."""
        from components.train.launcher import strategy_conflicts
        from components.train.step import TrainConfig, pipeline_train_settings

        # The settings the train component builds, with placeholder paths: strategy_conflicts reads only
        # the training settings.
        settings = {
            "pretrained_model": self.base_model,
            "train_data": "train.parquet",
            "output_dir": "model",
            **pipeline_train_settings(
                objective=self.objective,
                beta=self.beta,
                desirable_ratio=self.desirable_ratio,
                learning_rate=self.learning_rate,
                max_steps=self.max_steps,
                train_batch_size=self.train_batch_size,
                gradient_accumulation_steps=self.gradient_accumulation_steps,
                mixed_precision=self.mixed_precision,
                resolution=self.resolution,
                use_lora=self.use_lora,
                seed=self.seed,
            ),
            **self.train_options,
        }
        try:
            train_config = TrainConfig.from_dict(settings)
        except ConfigError as err:
            raise ConfigError(
                f"PipelineParams.train_options: the training settings are refused: {err}"
            ) from None
        conflicts = strategy_conflicts(self.distributed_strategy, train_config)
        if conflicts:
            raise ConfigError(
                f"PipelineParams.distributed_strategy: {self.distributed_strategy!r} cannot train these "
                "settings: " + "; ".join(conflicts)
            )

    def check_for_cluster(self) -> None:
        """Refuse paths a cluster's pods cannot share: every task runs in its own pod, so a local path
        (or a SQLite registry) would be a different empty file in each."""
        problems = []
        if not re.match(r"^https?://", self.registry_uri):
            problems.append(f"registry_uri {self.registry_uri!r} (use the MLflow server's http(s):// URL)")
        for name in ("outputs_root", "checkpoint_root", "base_model"):
            value = getattr(self, name)
            if not value.startswith("gs://"):
                problems.append(f"{name} {value!r} (use a gs:// URI)")
        if self.registry_artifact_root and not self.registry_artifact_root.startswith("gs://"):
            problems.append(f"registry_artifact_root {self.registry_artifact_root!r} (gs:// or empty)")
        problems += [
            f"feedback_sources {s!r} (use gs://)" for s in self.feedback_sources if not s.startswith("gs://")
        ]
        if self.eval_prompts and not self.eval_prompts.startswith("gs://"):
            problems.append(f"eval_prompts {self.eval_prompts!r} (gs:// or empty)")
        if problems:
            raise ConfigError(
                "a cluster run needs storage every pod can reach; these point at this machine: "
                + "; ".join(problems)
            )

    def pipeline_arguments(self) -> dict[str, Any]:
        """The keyword arguments of the pipeline function (every field, JSON-ready)."""
        return self.model_dump(mode="json")


class ClusterSettings(StepConfig):
    """Compile-time Kubernetes settings of the pipeline's pods (not run-time parameters)."""

    gpu_type: str = Field(
        "nvidia.com/gpu", description="Kubernetes resource name of the GPUs the training pod requests."
    )
    gpu_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        description="Node labels the training pod must run on (the GPU node pool).",
    )
    gpu_toleration_key: str = Field(
        "nvidia.com/gpu", description="Taint key of the GPU nodes, tolerated by the training pod."
    )
    train_cpu: str = Field("16", description="CPU request/limit of the training pod.")
    train_memory: str = Field("128G", description="Memory request/limit of the training pod.")
    shm_size: str = Field(
        "32Gi", description="Size of the memory-backed /dev/shm (NCCL and data loaders need more than 64M)."
    )
    train_timeout_s: int = Field(48 * 3600, ge=60, description="Training task timeout in seconds.")
    train_retries: int = Field(
        2, ge=0, description="Retries of the training task (each resumes from the run's checkpoints)."
    )
    train_with_trainjob: bool = Field(
        False,
        description="Compile the training task as a launcher that always runs training as a Kubeflow "
        "Trainer TrainJob (num_nodes x gpus_per_node, runtime dkto-torch-distributed from k8s/) and requests "
        "no GPU itself. Use it where runs go multi-node: otherwise the KFP pod holds gpus_per_node idle "
        "GPUs while the TrainJob runs. Checkpoints and outputs must then be on gs://.",
    )
    eval_gpu: bool = Field(True, description="Run evaluation sampling on one GPU.")
    step_cpu: str = Field("2", description="CPU request of the CPU steps.")
    step_memory: str = Field("8G", description="Memory request of the CPU steps.")
    registry_secret: str = Field(
        "dkto-mlflow",
        description="Kubernetes secret with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (optional).",
    )
    pod_labels: dict[str, str] = Field(
        default_factory=lambda: dict(PROJECT_POD_LABELS),
        description="Labels of every task's pod; k8s/'s NetworkPolicy admits only pods with "
        "app.kubernetes.io/part-of: diffusion-kto-pipelines to the Pushgateway.",
    )
    trainer_pod_labels: dict[str, str] = Field(
        default_factory=lambda: dict(TRAINER_POD_LABELS),
        description="More labels of the training pod; k8s/'s PodMonitor scrapes pods with "
        "app.kubernetes.io/component: trainer.",
    )
    train_metrics_port: int | None = Field(
        TRAINER_METRICS_PORT,
        ge=1,
        le=65535,
        description="Port on which the training pod serves Prometheus /metrics while it trains (the "
        "PodMonitor in k8s/ scrapes 9090); null serves nothing.",
    )

    @classmethod
    def local(cls) -> ClusterSettings:
        """Settings of a ``kfp.local`` run: no fixed metrics port, so parallel local runs cannot collide."""
        return cls.from_dict({"train_metrics_port": None})


def load_params(config: str | None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineParams:
    """PipelineParams from a YAML file (local or gs://) plus ``key=value`` overrides."""
    if config is None and not overrides:
        raise ConfigError("give --config FILE (a PipelineParams YAML) or --set feedback_sources=...")
    return PipelineParams.from_yaml(config, overrides)


CRON_FIELDS = 6
# KFP's ScheduledWorkflow controller parses crons with robfig/cron v1's ``cron.Parse``: six fields, seconds
# first; `*` or `?` for any; ranges `a-b`; steps `*/n`, `a-b/n`, `a/n`; lists `a,b`; month and weekday names;
# and the descriptors below. It has no `L`, `W` or `#` (robfig/cron v1 parser.go).
CRON_RANGES: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("seconds", 0, 59, {}),
    ("minutes", 0, 59, {}),
    ("hours", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    (
        "month",
        1,
        12,
        {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())},
    ),
    ("day-of-week", 0, 6, {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}),
)
CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# A Go time.ParseDuration string, as `@every` takes: one or more <number><unit>, e.g. 24h, 1h30m, 90s.
# ASCII digits only: Python's \d and str.isdigit() also take other scripts' digits, which Go rejects.
GO_DURATION = re.compile(r"(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|ms|s|m|h))+")
CRON_EVERY = "@every "
_NUMBER = re.compile(r"[0-9]+")


def validate_cron(expression: str) -> str:
    """Check a KFP cron expression as KFP's parser would read it: six fields (seconds minutes hours
    day-of-month month day-of-week), or a descriptor such as ``@daily`` or ``@every 24h``.

    Descriptors are compared as given, unstripped: robfig/cron (KFP's parser) takes a descriptor only when
    the string starts with '@', matches it exactly, and parses ``spec[len("@every "):]`` as the duration,
    so " @daily" or "@every  24h" fail there.
    """
    if expression.lstrip().startswith("@"):
        if expression in CRON_DESCRIPTORS:
            return expression
        every = expression[len(CRON_EVERY) :]
        if expression.startswith(CRON_EVERY) and GO_DURATION.fullmatch(every) and re.search(r"[1-9]", every):
            return expression
        raise ConfigError(
            f"cron {expression!r}: not a descriptor KFP knows; use one of {', '.join(CRON_DESCRIPTORS)} "
            "or '@every <duration>' (e.g. @every 24h, @every 1h30m), with no space before or after it "
            "and one space after @every"
        )
    fields = expression.split()
    if len(fields) != CRON_FIELDS:
        raise ConfigError(
            f"cron {expression!r} has {len(fields)} fields; KFP needs 6 with seconds first, "
            'for example "0 0 3 * * *" (every day at 03:00)'
        )
    for value, (name, low, high, names) in zip(fields, CRON_RANGES, strict=True):
        for part in value.split(","):
            problem = _cron_part_problem(part, low, high, names)
            if problem:
                raise ConfigError(
                    f"cron {expression!r}: the {name} field {value!r} is not valid ({problem}); it takes "
                    f"*, ?, {low}-{high}{', names' if names else ''}, ranges a-b, steps */n or a-b/n, lists a,b"
                )
    return expression


def _cron_part_problem(part: str, low: int, high: int, names: dict[str, int]) -> str | None:
    """Why one comma-separated part of a cron field is invalid, or None when robfig/cron accepts it."""
    range_part, slash, step = part.partition("/")
    if slash and (not _NUMBER.fullmatch(step) or int(step) == 0):
        return f"step {step!r} must be a positive whole number"
    if range_part in ("*", "?"):
        return None
    start_text, dash, end_text = range_part.partition("-")
    bounds = []
    for text in (start_text, end_text) if dash else (start_text,):
        number = int(text) if _NUMBER.fullmatch(text) else names.get(text.upper())
        if number is None:
            return f"{text!r} is not a number{' or a name' if names else ''}"
        if not low <= number <= high:
            return f"{text} is outside {low}-{high}"
        bounds.append(number)
    if len(bounds) == 2 and bounds[0] > bounds[1]:
        return f"range {range_part!r} starts after it ends"
    return None
