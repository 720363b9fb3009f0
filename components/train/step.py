"""The training step: Diffusion-KTO (and the SFT / Diffusion-DPO baselines) on a diffusers model.

``TrainConfig`` holds every knob, validated before any model loads; ``run(config)`` reads the
train.parquet manifest, builds (or reuses) the latent / text-embedding cache, trains with accelerate and
writes a diffusers pipeline (or a LoRA adapter) plus ``training_summary.json`` to ``output_dir``.
Library code lives beside this file: ``models.py`` (loading), ``cache.py`` (the one-time encoding pass),
``data.py`` (manifest and samplers), ``loop.py`` (the training loop), ``checkpoint.py`` (atomic checkpoints
and resume), ``export.py`` (the output model).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from components.shared.config import ConfigError, StepConfig

Objective = Literal["kto", "sft", "dpo"]
Utility = Literal["kahneman_tversky", "loss_averse", "risk_seeking"]
ReferencePoint = Literal["batch_mean", "unpaired", "class_mean"]
MixedPrecision = Literal["no", "fp16", "bf16"]
LRScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine"]


class TrainConfig(StepConfig):
    """Everything the trainer needs; defaults are the Diffusion-KTO paper's SD v1.5 settings."""

    # ---- inputs and outputs
    pretrained_model: str = Field(
        description="Base model to fine-tune: a diffusers pipeline directory (local or gs://), SD v1.x/2.x or SDXL."
    )
    train_data: str = Field(description="train.parquet manifest from the label step (local path or gs://).")
    output_dir: str = Field(
        description="Where the fine-tuned model goes (local or gs://): a diffusers pipeline, or a LoRA "
        "adapter plus dkto_lora.json, and training_summary.json."
    )
    checkpoint_dir: str | None = Field(
        default=None,
        description="Where checkpoints go (local or gs://); default: '<output_dir>-checkpoints'. Never inside "
        "output_dir.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Where the latent / text-embedding cache lives (local or gs://); default: "
        "$DKTO_CACHE_DIR/train-cache. Reused across runs with the same model, data, resolution and flip.",
    )

    # ---- objective (Li et al. 2024, "Aligning Diffusion Models by Optimizing Human Utility")
    objective: Objective = Field(
        default="kto",
        description="kto: Diffusion-KTO on liked/disliked images; sft: fine-tune on liked images only; "
        "dpo: Diffusion-DPO on (liked, disliked) pairs of the same prompt (baselines of the paper).",
    )
    beta: float = Field(
        default=5000.0,
        gt=0,
        description="How sharply the utility reacts to the implicit reward (paper: 5000 for SD v1.5, best in "
        "its ablation; the reference code defaults to 1000). Also DPO's beta.",
    )
    utility: Utility = Field(
        default="kahneman_tversky",
        description="Utility function U: kahneman_tversky σ(x) (paper default), loss_averse log σ(x), "
        "risk_seeking −log σ(−x).",
    )
    reference_point: ReferencePoint = Field(
        default="batch_mean",
        description="How the reference point z is estimated: batch_mean (mean reward over the global batch, "
        "clamped at 0; paper default), unpaired (from images paired with the wrong prompt, rolled one place "
        "in the batch, as in the LLM KTO paper), class_mean (mean of the liked and disliked class means). "
        "'global_mean' is accepted as another name for batch_mean.",
    )
    desirable_ratio: float | None = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Probability that a sampled image is a liked one (paper γ = 0.8): a weighted sampler "
        "draws liked images with this probability whatever their share of the data (kto only). null draws "
        "images uniformly, each class at its share of the data; then balance the classes with "
        "desirable_weight / undesirable_weight instead (the label step's stats.json has weights for that "
        "case, keeping λ_D·n_D / λ_U·n_U in the KTO paper's [1, 4/3]). Using both would rebalance twice.",
    )
    desirable_weight: float = Field(
        default=1.0, ge=0, description="Loss weight λ_D of liked images (paper: 1, with γ = 0.8)."
    )
    undesirable_weight: float = Field(
        default=1.0, ge=0, description="Loss weight λ_U of disliked images (paper: 1, with γ = 0.8)."
    )
    caption_dropout: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="Probability of training an image with the empty prompt instead of its own (paper: 0.2), "
        "which keeps classifier-free guidance working.",
    )

    # ---- optimisation
    learning_rate: float = Field(
        default=1e-7,
        gt=0,
        description="Peak learning rate (paper: 1e-7 for full fine-tuning of SD v1.5, per-GPU batch 2 on 4 "
        "GPUs; the reference code's example script also accumulates 256 micro-batches, an optimizer batch of "
        "2048, so scale with care; LoRA usually needs ~1e-4).",
    )
    lr_scheduler: LRScheduler = Field(
        default="constant_with_warmup", description="Learning-rate schedule after the warm-up."
    )
    lr_warmup_steps: int = Field(
        default=500, ge=0, description="Optimizer steps of linear warm-up from 0 (reference code: 500)."
    )
    max_steps: int = Field(default=10000, ge=1, description="Optimizer steps to train (paper: 10k).")
    train_batch_size: int = Field(
        default=2,
        ge=1,
        description="Images per device per micro-batch (paper: 2 on each of 4 GPUs); for dpo, pairs.",
    )
    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        description="Micro-batches summed into one optimizer step. KTO's reference point z is computed "
        "per micro-batch (pooled over all processes), as in the reference code, so accumulation changes "
        "how many images z averages over, not only the optimizer batch.",
    )
    adam_beta1: float = Field(default=0.9, ge=0, lt=1, description="AdamW β1.")
    adam_beta2: float = Field(default=0.999, ge=0, lt=1, description="AdamW β2.")
    adam_weight_decay: float = Field(default=1e-2, ge=0, description="AdamW decoupled weight decay.")
    adam_epsilon: float = Field(default=1e-8, gt=0, description="AdamW ε.")
    use_8bit_adam: bool = Field(
        default=False, description="Use bitsandbytes' 8-bit AdamW to save optimizer memory (CUDA only)."
    )
    max_grad_norm: float = Field(
        default=1.0, gt=0, description="Clip the gradient's global norm to this value before each step."
    )
    mixed_precision: MixedPrecision = Field(
        default="no",
        description="Compute precision: no (fp32), bf16 (recommended on GPUs that have it), fp16 (CUDA only).",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute UNet activations in the backward pass to save memory."
    )
    allow_tf32: bool = Field(default=True, description="Let fp32 matmuls use TF32 on Ampere+ GPUs.")
    cudnn_benchmark: bool = Field(
        default=True,
        description="Let cuDNN time its convolution algorithms on the first step and keep the fastest (shapes "
        "are fixed for a run); off makes CUDA convolutions pick the same algorithm every run.",
    )
    channels_last: bool = Field(default=False, description="Keep UNet weights and inputs in channels_last.")
    torch_compile: bool = Field(
        default=False,
        description="Compile the UNet with torch.compile: the largest speed-up measured on a GPU (SD v1.5, "
        "512 px, bf16, batch 16 on an H200: 64 -> 90 samples/s) for about 3 minutes of compiling when the "
        "run starts, in every process. Off by default until it has run on GPUs with LoRA, SDXL and several "
        "processes.",
    )
    use_ema: bool = Field(
        default=False, description="Keep an exponential moving average of the weights and export it."
    )
    ema_decay: float = Field(default=0.9999, gt=0, lt=1, description="EMA decay per optimizer step.")

    # ---- LoRA
    use_lora: bool = Field(
        default=False,
        description="Train a LoRA adapter on the UNet's attention projections instead of every weight; the "
        "reference model is then the same UNet with the adapter switched off (no second copy).",
    )
    lora_rank: int = Field(default=8, ge=1, description="LoRA rank r.")
    lora_alpha: float = Field(default=8.0, gt=0, description="LoRA α (the update is scaled by α / r).")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        description="UNet module names that get a LoRA adapter (attention projections by default).",
    )

    # ---- data
    resolution: int = Field(
        default=512,
        ge=8,
        description="Training resolution in pixels (images are resized and centre-cropped).",
    )
    hflip: bool = Field(
        default=False,
        description="Random horizontal flip augmentation (p = 0.5; both flips are encoded once by the cache "
        "pass). The reference code always flips at p = 0.5: set true to reproduce the paper.",
    )
    dataloader_workers: int = Field(
        default=2, ge=0, description="Threads that load and decode images during the cache pass."
    )
    cache_batch_size: int = Field(default=8, ge=1, description="Images per VAE forward in the cache pass.")
    cache_on_device: bool = Field(
        default=True,
        description="Hold the cached latents and embeddings on the training device (fast gather) rather "
        "than in host memory.",
    )

    # ---- checkpoints, resume, reproducibility
    checkpoint_every: int = Field(
        default=500,
        ge=0,
        description="Write a checkpoint every N optimizer steps (0: only at the end/SIGTERM).",
    )
    keep_last_checkpoints: int = Field(default=3, ge=1, description="How many checkpoints to keep.")
    resume_from: str | None = Field(
        default=None,
        description="'latest' (newest complete checkpoint in checkpoint_dir, or a fresh start when there is "
        "none) or a checkpoint path to continue from. Unset: a fresh start, refused when checkpoint_dir "
        "already holds checkpoints (they would be deleted or mixed with this run's).",
    )
    seed: int = Field(default=0, description="Seed of sampling, noise, timesteps, dropout and flips.")

    # ---- monitoring and placement
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where to train: auto (CUDA when available), cpu or cuda."
    )
    logging_steps: int = Field(
        default=10, ge=1, description="Read figures back from the device (and log them) every N steps."
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve Prometheus /metrics on this port during training."
    )
    run_id: str | None = Field(
        default=None, description="Run id for metrics grouping (default: DKTO_RUN_ID)."
    )
    progress_bar: bool = Field(default=True, description="Show a tqdm progress bar.")

    @field_validator("reference_point", mode="before")
    @classmethod
    def _alias_global_mean(cls, value: object) -> object:
        return "batch_mean" if value == "global_mean" else value

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainConfig:
        """Cross-field checks that need no model and no data."""
        if self.resolution % 8:
            raise ValueError(
                f"resolution must be a multiple of 8 (the VAE downsamples by 8), got {self.resolution}"
            )
        out = self.output_dir.rstrip("/")
        ckpt = self.resolved_checkpoint_dir().rstrip("/")
        if ckpt == out or ckpt.startswith(out + "/"):
            raise ValueError(
                f"checkpoint_dir {ckpt!r} must not be output_dir or inside it (the output is the model only)"
            )
        if self.use_ema and self.use_lora:
            raise ValueError("use_ema works with full fine-tuning only; set use_ema=false or use_lora=false")
        if self.objective == "dpo" and self.reference_point != "batch_mean":
            raise ValueError("reference_point applies to objective=kto only; leave it at batch_mean for dpo")
        if self.device == "cpu" and self.mixed_precision == "fp16":
            raise ValueError("mixed_precision=fp16 needs a CUDA device; on cpu use 'no' or 'bf16'")
        if self.device == "cpu" and self.use_8bit_adam:
            raise ValueError(
                "use_8bit_adam needs a CUDA device (bitsandbytes); set use_8bit_adam=false on cpu"
            )
        return self

    def resolved_checkpoint_dir(self) -> str:
        """checkpoint_dir, or '<output_dir>-checkpoints' when unset."""
        return self.checkpoint_dir or self.output_dir.rstrip("/") + "-checkpoints"


class TrainResult(BaseModel):
    """What a training run produced."""

    output_dir: str | None = Field(description="Where the model was written (None when preempted).")
    steps: int = Field(description="Optimizer steps completed (counting resumed ones).")
    preempted: bool = Field(
        default=False, description="SIGTERM stopped the run; the last checkpoint holds its resumable state."
    )
    last_checkpoint: str | None = Field(default=None, description="The newest checkpoint written, if any.")
    resumed_from_step: int = Field(default=0, description="Step the run resumed from (0: fresh start).")
    samples_per_second: float = Field(default=0.0, description="Training images per second (all processes).")
    final_loss: float | None = Field(default=None, description="Loss at the last logged step.")
    reward_margin: float | None = Field(
        default=None, description="Liked minus disliked mean implicit reward."
    )
    reward_accuracy: float | None = Field(
        default=None, description="Fraction of samples on the right side of z."
    )
    reference_point: float | None = Field(
        default=None, description="Reference point z at the last logged step."
    )
    peak_memory_bytes: int = Field(default=0, description="Peak accelerator memory (0 on CPU).")
    cache_hit: bool = Field(default=False, description="The latent / embedding cache was reused.")
    config_hash: str = Field(default="", description="Hash of the config.")
    data_hash: str = Field(default="", description="SHA-256 of train.parquet.")
    summary_path: str | None = Field(default=None, description="training_summary.json written.")


def validate_environment(config: TrainConfig) -> str:
    """Checks that need the machine, not the model: returns the device type ('cpu' or 'cuda').

    Raises ConfigError naming the field when the config asks for something this machine cannot do.
    """
    import torch

    has_cuda = torch.cuda.is_available()
    device = config.device
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu or auto")
    if device == "cpu" and config.mixed_precision == "fp16":
        raise ConfigError(
            "mixed_precision=fp16 needs a CUDA device; on this CPU-only machine use 'no' or 'bf16'"
        )
    if config.use_8bit_adam:
        if device != "cuda":
            raise ConfigError("use_8bit_adam needs a CUDA device (bitsandbytes); set use_8bit_adam=false")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(
                "use_8bit_adam=true but bitsandbytes is not installed (pip install "
                "'diffusion-kto-pipelines[bnb]')"
            ) from None
    if config.mixed_precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed_precision=bf16 but this GPU has no bf16; use fp16")
    if config.use_lora:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ConfigError(
                "use_lora=true needs peft (pip install 'diffusion-kto-pipelines[lora]')"
            ) from None
    return device


def run(config: TrainConfig) -> TrainResult:
    """Train per ``config`` and write the model and training_summary.json; see the module docstring."""
    from components.train.loop import train

    return train(config)


def uses_label_class_weights(desirable_ratio: float | None, explicit: set[str]) -> bool:
    """Whether training takes the label step's λ_D / λ_U: only with uniform sampling (``desirable_ratio``
    None) and when the user set neither weight (``explicit``: the fields the user gave)."""
    return desirable_ratio is None and not explicit & {"desirable_weight", "undesirable_weight"}


def label_class_weights(
    settings: dict[str, Any], explicit: set[str], label_stats_uri: str
) -> dict[str, float]:
    """The class weights the pipeline takes from the label step's stats.json, if any.

    The label step's λ_D / λ_U keep λ_D·n_D / λ_U·n_U in [1, 4/3] under uniform sampling. With
    ``desirable_ratio`` set, the trainer's sampler already draws liked images with probability γ, and
    the weights on top would rebalance twice (γ = 0.8 with Pick-a-Pic's λ_D = 2.9 weighs liked images
    11.6x): then λ_D = λ_U = 1, the paper's setting. Weights the user set (``explicit``) always win.
    """
    if not uses_label_class_weights(settings.get("desirable_ratio"), explicit):
        return {}
    from components.shared import storage

    stats = storage.read_json(label_stats_uri)
    return {
        "desirable_weight": float(stats.get("desirable_weight", 1.0)),
        "undesirable_weight": float(stats.get("undesirable_weight", 1.0)),
    }


# Peak learning rates the pipeline picks when given 0: the paper's for full fine-tuning of SD v1.5, and for
# a rank-8 LoRA adapter the rate of diffusers' Diffusion-DPO LoRA example (examples/research_projects/
# diffusion_dpo), since 1e-7 barely moves an adapter that starts at zero.
FULL_FINE_TUNE_LEARNING_RATE = 1e-7
LORA_LEARNING_RATE = 1e-5


def resolve_learning_rate(learning_rate: float, use_lora: bool) -> float:
    """``learning_rate`` if positive, else the default for full fine-tuning or LoRA."""
    if learning_rate > 0:
        return learning_rate
    return LORA_LEARNING_RATE if use_lora else FULL_FINE_TUNE_LEARNING_RATE


def pipeline_train_settings(
    *,
    objective: str,
    beta: float,
    desirable_ratio: float | None,
    learning_rate: float,
    max_steps: int,
    train_batch_size: int,
    gradient_accumulation_steps: int,
    mixed_precision: str,
    resolution: int,
    use_lora: bool,
    seed: int,
) -> dict[str, Any]:
    """The TrainConfig fields the pipeline's own parameters set (``learning_rate`` 0 resolved to its default).

    One list for the train component, which adds paths and run settings, and for the parameter file's
    load-time check (pipelines/params.py), which must judge the same settings.
    """
    return {
        "objective": objective,
        "beta": beta,
        "desirable_ratio": desirable_ratio,
        "learning_rate": resolve_learning_rate(learning_rate, use_lora),
        "max_steps": int(max_steps),
        "train_batch_size": int(train_batch_size),
        "gradient_accumulation_steps": int(gradient_accumulation_steps),
        "mixed_precision": mixed_precision,
        "resolution": int(resolution),
        "use_lora": use_lora,
        "seed": int(seed),
    }
