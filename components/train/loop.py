"""The training loop: one accelerate loop for Diffusion-KTO, SFT and Diffusion-DPO.

Per micro-step (Li et al. 2024, §3; DESIGN.md "The objective"): gather cached latents (sampled from the
stored VAE distribution) and prompt embeddings, draw one noise ε and one timestep t per image (per pair
for DPO), noise to x_t with the DDPM forward process, take ε (or v) as the target, compute the per-sample
MSE of the reference (no grad) and of the policy on the same x_t, t, c, and the loss from
``components.train.losses``. Only UNet work runs in the step; figures are read back from the device only
every ``logging_steps`` steps, so the loop does not wait on the GPU in between.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from components.shared import storage
from components.shared.telemetry import StepTelemetry, get_logger
from components.train import checkpoint as ckpt
from components.train.cache import EncodedData, build_or_load_cache
from components.train.data import (
    Batch,
    StepSampler,
    check_data_for_objective,
    rank_rows,
    read_train_data,
    step_seed,
)
from components.train.losses import KTOLoss, diffusion_dpo_loss, per_sample_mse, sft_loss
from components.train.models import TrainModels, adapters_disabled, compute_dtype, load_train_models
from components.train.step import TrainConfig, TrainResult, validate_environment

log = get_logger("train")


class StepFigures:
    """Running sums of the logged figures, kept on the device until a logging step reads them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Start a new logging interval."""
        z = torch.zeros(5, device=self.device)
        self.sums = z  # loss, reward margin, accuracy, reference point, count
        self.n = 0

    def add(self, loss: torch.Tensor, margin: torch.Tensor, accuracy: torch.Tensor, z: torch.Tensor) -> None:
        """Add one micro-step's figures (no host sync)."""
        self.sums = self.sums + torch.stack(
            [
                loss.detach().float(),
                margin.float(),
                accuracy.float(),
                z.float(),
                torch.ones((), device=self.device),
            ]
        ).to(self.device)
        self.n += 1

    def read(self) -> dict[str, float]:
        """Interval means as floats (one host sync)."""
        values = self.sums.tolist()
        count = max(values[4], 1.0)
        return {
            "loss": values[0] / count,
            "reward_margin": values[1] / count,
            "reward_accuracy": values[2] / count,
            "reference_point": values[3] / count,
        }


class Trainer:
    """Holds the models, cache and settings of one run and computes the loss of a micro-batch."""

    def __init__(
        self, config: TrainConfig, models: TrainModels, encoded: EncodedData, accelerator: Any, unet: Any
    ) -> None:
        self.config = config
        self.models = models
        self.encoded = encoded
        self.accelerator = accelerator
        self.unet = unet
        self.device = accelerator.device
        self.scheduler = models.noise_scheduler
        # Cached on the device once (add_noise would otherwise copy the table every step).
        self.scheduler.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device)
        self.num_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.prediction_type = self.scheduler.config.prediction_type
        self.kto = KTOLoss(
            beta=config.beta,
            utility=config.utility,
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
            reference_point_mode=config.reference_point,
        )
        res = config.resolution
        # SDXL micro-conditioning (original size, crop top-left, target size), fixed at (res, res, 0, 0,
        # res, res) for every image, flipped or not: what the SDXL pipeline conditions on when it
        # generates at res, as Diffusion-DPO's SDXL training does (diffusers' SDXL text-to-image script
        # instead passes each image's own original size and crop).
        self.time_ids = torch.tensor([[res, res, 0, 0, res, res]], dtype=torch.float32, device=self.device)

    @contextlib.contextmanager
    def reference(self) -> Iterator[Any]:
        """The frozen reference UNet: a resident copy (full fine-tune) or the adapter switched off (LoRA)."""
        if self.models.reference_unet is not None:
            yield self.models.reference_unet
        else:
            base = self.accelerator.unwrap_model(self.unet)
            with adapters_disabled(base):
                yield base

    def _predict(
        self, model: Any, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, pooled: Any
    ) -> torch.Tensor:
        kwargs = {}
        if self.models.sdxl:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": pooled,
                "time_ids": self.time_ids.expand(x_t.shape[0], -1),
            }
        with self.accelerator.autocast():
            return model(x_t, t, encoder_hidden_states=cond, **kwargs).sample

    def loss(
        self, batch: Batch, micro_step: int, check_finite: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss and (reward margin, accuracy, reference point) of one micro-batch; nothing leaves the device.

        ``check_finite``: let the loss raise its clear error on NaN/inf MSEs; each check reads a flag back
        from the device, so the loop asks for it on CUDA only on the steps it logs (and syncs) anyway.
        """
        cfg, enc, device = self.config, self.encoded, self.device
        rank = self.accelerator.process_index
        cache_device = enc.latent_mean.device
        rows = batch.rows.to(cache_device)
        if enc.hflip:
            rows = rows + batch.flipped.to(cache_device).long() * enc.n_images
        prompts = batch.prompt_index.to(cache_device)
        mean = enc.latent_mean[rows].to(device, non_blocking=True)
        std = enc.latent_std[rows].to(device, non_blocking=True)
        cond = enc.prompt_embeds[prompts].to(device, non_blocking=True)
        pooled = (
            None
            if enc.pooled_prompt_embeds is None
            else enc.pooled_prompt_embeds[prompts].to(device, non_blocking=True)
        )
        desirable = batch.desirable.to(device, non_blocking=True)

        # Every draw is made for the GLOBAL batch from a seed of (seed, micro-step) and sliced to this
        # process's rows, so the noise, timesteps and latent samples of an image do not depend on how the
        # global batch is split across processes (2 x 2 trains like 1 x 4). Costs only random numbers.
        g = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, 0, micro_step, 1))
        n = mean.shape[0]
        shape = tuple(mean.shape[1:])
        world = self.accelerator.num_processes
        if cfg.objective == "dpo":
            # Rows are this rank's preferred images, then their partners: slice each half of the global draw.
            pairs = n // 2
            mine = rank_rows(rank, pairs)
            sample = torch.randn((2, pairs * world, *shape), generator=g, device=device)[:, mine]
            sample = sample.reshape(n, *shape)
        else:
            mine = rank_rows(rank, n)
            sample = torch.randn((n * world, *shape), generator=g, device=device)[mine]
        # latent_dist.sample() of the reference code, from the cached mean and std.
        latents = mean + std * sample
        latents = (latents - enc.shift_factor) * enc.scaling_factor
        draws = n // 2 if cfg.objective == "dpo" else n
        noise = torch.randn((draws * world, *shape), generator=g, device=device)[mine]
        timesteps = torch.randint(0, self.num_timesteps, (draws * world,), generator=g, device=device)[mine]
        if cfg.objective == "dpo":
            # Diffusion-DPO: the preferred and the other image of a pair share noise and timestep.
            noise, timesteps = noise.repeat(2, 1, 1, 1), timesteps.repeat(2)
        x_t = self.scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(
                f"prediction_type {self.prediction_type!r} is not supported (epsilon or v_prediction)"
            )

        zero = torch.zeros((), device=device)
        reference_mse = None
        if cfg.objective != "sft":
            with torch.no_grad(), self.reference() as ref:
                reference_mse = per_sample_mse(self._predict(ref, x_t, timesteps, cond, pooled), target)
        policy_mse = per_sample_mse(self._predict(self.unet, x_t, timesteps, cond, pooled), target)

        if cfg.objective == "sft":
            loss = sft_loss(policy_mse, desirable, check_finite=check_finite)
            return loss, zero, zero, zero
        assert reference_mse is not None
        if cfg.objective == "dpo":
            h = n // 2
            out = diffusion_dpo_loss(
                policy_mse_w=policy_mse[:h],
                ref_mse_w=reference_mse[:h],
                policy_mse_l=policy_mse[h:],
                ref_mse_l=reference_mse[h:],
                beta=cfg.beta,
                check_finite=check_finite,
            )
            return out.loss, out.reward_margins.mean(), out.implicit_accuracy.to(device), zero
        mismatched: dict[str, torch.Tensor] = {}
        if cfg.reference_point == "unpaired":
            # Image i of the GLOBAL batch with the prompt of global image i-1 (KTO's "unpaired" KL
            # estimate), no grad. The sampler hands each rank those prompt indices from the global draw it
            # already makes, so the pairing (hence z) does not depend on the number of processes and no
            # activations are exchanged; rolling the local batch would pair differently on every rank.
            mismatched_prompts = batch.mismatched_prompt_index.to(cache_device)
            rolled = enc.prompt_embeds[mismatched_prompts].to(device, non_blocking=True)
            rolled_pooled = (
                None
                if enc.pooled_prompt_embeds is None
                else enc.pooled_prompt_embeds[mismatched_prompts].to(device, non_blocking=True)
            )
            with torch.no_grad():
                mismatched["policy_mse_mismatched"] = per_sample_mse(
                    self._predict(
                        self.accelerator.unwrap_model(self.unet), x_t, timesteps, rolled, rolled_pooled
                    ),
                    target,
                )
                with self.reference() as ref:
                    mismatched["reference_mse_mismatched"] = per_sample_mse(
                        self._predict(ref, x_t, timesteps, rolled, rolled_pooled), target
                    )
        kto = self.kto(policy_mse, reference_mse, desirable, **mismatched, check_finite=check_finite)
        return kto.loss, kto.reward_margin, kto.reward_accuracy, kto.reference_point


def configure_cuda_backends(config: TrainConfig, device_type: str) -> None:
    """Process-wide CUDA switches of a run: TF32 matmuls and cuDNN's algorithm search (no-ops off CUDA)."""
    if device_type != "cuda":
        return
    if config.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = config.cudnn_benchmark


def _make_optimizer(
    config: TrainConfig, params: list[torch.nn.Parameter], device_type: str
) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {
        "lr": config.learning_rate,
        "betas": (config.adam_beta1, config.adam_beta2),
        "weight_decay": config.adam_weight_decay,
        "eps": config.adam_epsilon,
    }
    if config.use_8bit_adam:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kwargs)
    # The fused kernel: one launch for every tensor on CUDA; on CPU it is 3.7x faster than the foreach path
    # (whose _foreach ops fall back to one op per tensor there): 33 vs 124 ms per step for a 13M-parameter
    # UNet on one thread, where AdamW was 39% of the whole KTO step (torch.profiler, bench_train --profile).
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    if device_type in _get_fused_kernels_supported_devices():
        return torch.optim.AdamW(params, fused=True, **kwargs)
    return torch.optim.AdamW(params, foreach=True, **kwargs)


def _telemetry(config: TrainConfig) -> tuple[StepTelemetry, dict[str, Any]]:
    tel = StepTelemetry("train", run_id=config.run_id)
    gauges = {
        "step": tel.gauge("step", "Optimizer steps completed"),
        "loss": tel.gauge("loss", "Training loss (mean over the last logging interval)"),
        "reward_margin": tel.gauge("reward_margin", "Liked minus disliked mean implicit reward"),
        "reward_accuracy": tel.gauge("reward_accuracy_ratio", "Fraction of samples on the right side of z"),
        "reference_point": tel.gauge("reference_point", "Reference point z (KL estimate)"),
        "samples_per_second": tel.gauge("samples_per_second", "Training images per second, all processes"),
        "memory": tel.gauge("gpu_memory_peak_bytes", "Peak accelerator memory allocated"),
        "checkpoint_age": tel.gauge(
            "checkpoint_age_seconds", "Seconds since the last checkpoint was written"
        ),
    }
    return tel, gauges


def _stop_vote(num_processes: int) -> Callable[[bool], bool]:
    """A function ``vote(requested) -> bool``: whether any process was told to stop (SIGTERM).

    Every process calls it after every optimizer step, so all of them stop at the same step. The vote
    is a CPU all-reduce on a gloo group: on NCCL, a device tensor read back with ``.item()`` would make
    the host wait for the GPU on every step. One process needs no vote.
    """
    if num_processes == 1:
        return lambda requested: bool(requested)
    import torch.distributed as dist

    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def vote(requested: bool) -> bool:
        flag = torch.tensor([1.0 if requested else 0.0])
        dist.all_reduce(flag, group=group)
        return bool(flag.item() > 0)

    return vote


def train(config: TrainConfig) -> TrainResult:
    """Run one training job end to end (see ``components.train.step.run``)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    device_type = validate_environment(config)
    data = read_train_data(config.train_data)
    check_data_for_objective(data, config.objective, config.desirable_ratio)
    checkpoint_dir = config.resolved_checkpoint_dir()
    resume_uri = ckpt.resolve_resume(config.resume_from, checkpoint_dir)
    resume_state = storage.read_json(storage.join(resume_uri, ckpt.STATE_FILE)) if resume_uri else {}
    resume_step = int(resume_state.get("step", 0))
    if resume_uri and resume_state.get("data_hash") != data.data_hash:
        # Continuing another dataset's run would export a model trained mostly on other data as this
        # run's candidate (e.g. two runs sharing a checkpoint directory): refuse rather than warn.
        raise ValueError(
            f"resume_from: checkpoint {resume_uri} was written for training data {resume_state.get('data_hash')}, "
            f"but this run's train_data ({config.train_data}) is {data.data_hash}. Point checkpoint_dir at "
            "an empty directory for a run on this data."
        )
    # Refused here, before any model is loaded, rather than at the first save (review round 2, finding 1).
    resumed_here = ckpt.resumed_step_in(checkpoint_dir, resume_uri, resume_step)
    ckpt.check_checkpoint_dir(checkpoint_dir, resumed_here, data.data_hash)

    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=device_type == "cpu",
    )
    _refuse_strategy_conflicts(config, accelerator)
    set_seed(config.seed)
    configure_cuda_backends(config, device_type)
    tel, gauges = _telemetry(config)
    if config.metrics_port and accelerator.is_main_process:
        tel.serve(config.metrics_port)

    models = load_train_models(
        config.pretrained_model,
        device=accelerator.device,
        mixed_precision=config.mixed_precision,
        use_lora=config.use_lora,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        lora_target_modules=config.lora_target_modules,
        gradient_checkpointing=config.gradient_checkpointing,
        channels_last=config.channels_last,
    )
    cache_dir = config.cache_dir or str(storage.cache_root() / "train-cache")
    with accelerator.main_process_first():
        encoded = build_or_load_cache(
            model_dir=models.model_dir,
            data=data,
            cache_dir=cache_dir,
            resolution=config.resolution,
            hflip=config.hflip,
            device=accelerator.device,
            dtype=compute_dtype(config.mixed_precision),
            batch_size=config.cache_batch_size,
            workers=config.dataloader_workers,
        )
    encoded = encoded.to(accelerator.device if config.cache_on_device else torch.device("cpu"))

    unet = models.unet
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = _make_optimizer(config, params, device_type)
    n_proc = accelerator.num_processes
    # accelerate steps a prepared scheduler once per process per optimizer step (diffusers' scripts do the same).
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * n_proc,
        num_training_steps=config.max_steps * n_proc,
    )
    ema = None
    if config.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(unet.parameters(), decay=config.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    if config.use_lora:
        # Checkpoints hold the adapter, not the frozen base UNet it sits on (reloaded from pretrained_model).
        ckpt.keep_only_trainable_weights(accelerator, accelerator.unwrap_model(unet))
    if config.torch_compile:
        accelerator.unwrap_model(unet).compile()
        if models.reference_unet is not None:
            models.reference_unet.compile()

    global_step = micro_step = resumed_from = 0
    if resume_uri:
        state = ckpt.load_checkpoint(accelerator, resume_uri, use_lora=config.use_lora)
        global_step, micro_step = int(state["step"]), int(state["micro_step"])
        resumed_from = global_step
        log.info("resumed from %s at step %d", resume_uri, global_step)

    sampler = StepSampler.for_config(
        data, config, process_index=accelerator.process_index, num_processes=n_proc
    )
    trainer = Trainer(config, models, encoded, accelerator, unet)
    images_per_step = (
        config.train_batch_size
        * (2 if config.objective == "dpo" else 1)
        * config.gradient_accumulation_steps
        * n_proc
    )

    def trainer_state() -> dict[str, Any]:
        return {
            "step": global_step,
            "micro_step": micro_step,
            "config_hash": config.config_hash(),
            "data_hash": data.data_hash,
            "objective": config.objective,
            "weights": "trainable" if config.use_lora else "full",
        }

    def save_checkpoint() -> str:
        """This step's checkpoint (every process calls it; see ``ckpt.save_checkpoint``)."""
        nonlocal resumed_here
        uri = ckpt.save_checkpoint(
            accelerator,
            checkpoint_dir,
            global_step,
            trainer_state(),
            config.keep_last_checkpoints,
            resumed_step=resumed_here,
        )
        # Only the first save after resuming can find an abandoned branch's later checkpoints to drop.
        resumed_here = None
        return uri

    stop_vote = _stop_vote(n_proc)
    figures = StepFigures(accelerator.device)
    last: dict[str, float] = {}
    last_checkpoint: str | None = None
    last_checkpoint_time = time.monotonic()
    bar = tqdm(
        total=config.max_steps,
        initial=global_step,
        disable=not (config.progress_bar and accelerator.is_local_main_process),
        desc="train",
    )
    start_step, start_time = global_step, time.perf_counter()
    preempted = False
    unet.train()
    with ckpt.PreemptionFlag() as flag:
        while global_step < config.max_steps:
            with accelerator.accumulate(unet):
                batch = sampler.batch(micro_step)
                # On CUDA the NaN/inf checks (host syncs) run only on the optimizer steps that are logged,
                # where the figures are read back anyway; a NaN in between surfaces there. On CPU they
                # cost nothing and run every step.
                logged = (global_step + 1) % config.logging_steps == 0 or global_step + 1 == config.max_steps
                check = device_type != "cuda" or logged or global_step == start_step
                loss, margin, accuracy, z = trainer.loss(batch, micro_step, check_finite=check)
                micro_step += 1
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                figures.add(loss, margin, accuracy, z)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            if ema is not None:
                ema.step(accelerator.unwrap_model(unet).parameters())
            bar.update(1)
            # Checked after every optimizer step (not only at logging steps): torchrun SIGKILLs the workers
            # shutdown_grace_s after a SIGTERM (launcher.LaunchPlan), and the checkpoint must fit in it.
            stop = stop_vote(flag.requested)
            if global_step % config.logging_steps == 0 or global_step == config.max_steps or stop:
                last = figures.read()
                figures.reset()
                elapsed = time.perf_counter() - start_time
                rate = (global_step - start_step) * images_per_step / max(elapsed, 1e-9)
                last["samples_per_second"] = rate
                bar.set_postfix(
                    loss=f"{last['loss']:.4g}", margin=f"{last['reward_margin']:.3g}", sps=f"{rate:.1f}"
                )
                for name in (
                    "loss",
                    "reward_margin",
                    "reward_accuracy",
                    "reference_point",
                    "samples_per_second",
                ):
                    gauges[name].set(last[name])
                gauges["step"].set(global_step)
                gauges["checkpoint_age"].set(time.monotonic() - last_checkpoint_time)
                if device_type == "cuda":
                    gauges["memory"].set(torch.cuda.max_memory_allocated())
                log.debug("step %d %s", global_step, json.dumps(last))
            if stop:
                last_checkpoint = save_checkpoint()
                preempted = global_step < config.max_steps
                break
            if config.checkpoint_every and global_step % config.checkpoint_every == 0:
                last_checkpoint = save_checkpoint()
                last_checkpoint_time = time.monotonic()
    bar.close()
    elapsed = time.perf_counter() - start_time
    samples_per_second = (global_step - start_step) * images_per_step / max(elapsed, 1e-9)
    peak = int(torch.cuda.max_memory_allocated()) if device_type == "cuda" else 0
    gauges["memory"].set(peak)

    result = TrainResult(
        output_dir=None if preempted else config.output_dir,
        steps=global_step,
        preempted=preempted,
        last_checkpoint=last_checkpoint,
        resumed_from_step=resumed_from,
        samples_per_second=samples_per_second,
        final_loss=last.get("loss"),
        reward_margin=last.get("reward_margin"),
        reward_accuracy=last.get("reward_accuracy"),
        reference_point=last.get("reference_point"),
        peak_memory_bytes=peak,
        cache_hit=encoded.hit,
        config_hash=config.config_hash(),
        data_hash=data.data_hash,
    )
    if preempted:
        log.warning(
            "stopped by SIGTERM at step %d; resume with resume_from=latest (%s)", global_step, last_checkpoint
        )
        tel.push()
        accelerator.end_training()
        return result

    accelerator.wait_for_everyone()
    base = accelerator.unwrap_model(unet)
    state_dict = None
    if not config.use_lora:
        if ema is not None:
            ema.store(base.parameters())
            ema.copy_to(base.parameters())
        # Every process takes part: under FSDP this gathers the shards (a collective), which the main
        # process alone would wait on forever; elsewhere it is the module's own state dict.
        state_dict = accelerator.get_state_dict(unet)
    if accelerator.is_main_process:
        result.summary_path = storage.join(config.output_dir, "training_summary.json")
        _write_output(config, models, base, state_dict, result, data, cache_dir, encoded, images_per_step)
    accelerator.wait_for_everyone()
    if ema is not None:
        ema.restore(base.parameters())
    tel.push()
    accelerator.end_training()
    log.info(
        "trained %d steps at %.1f images/s; final loss %s -> %s",
        global_step,
        samples_per_second,
        result.final_loss,
        config.output_dir,
    )
    return result


def _refuse_strategy_conflicts(config: TrainConfig, accelerator: Any) -> None:
    """Stop before any model loads when accelerate runs FSDP or DeepSpeed with settings they cannot train.

    ``launch`` checks the plan's strategy already; this catches ``accelerate launch`` run by hand with an
    FSDP or DeepSpeed config file, where the first checkpoint or the export would otherwise fail.
    """
    from accelerate.utils import DistributedType

    from components.train.launcher import strategy_conflicts

    strategy = {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed_zero2"}.get(
        accelerator.distributed_type
    )
    conflicts = strategy_conflicts(strategy, config) if strategy else []
    if conflicts:
        raise ValueError(
            f"accelerate runs {strategy} here, which cannot train this config:\n- " + "\n- ".join(conflicts)
        )


def _write_output(
    config: TrainConfig,
    models: TrainModels,
    unet: Any,
    state_dict: dict[str, Any] | None,
    result: TrainResult,
    data: Any,
    cache_dir: str,
    encoded: EncodedData,
    images_per_step: int,
) -> None:
    """Stage the model (``state_dict``: a full fine-tune's gathered weights) and the summary, then publish."""
    from components.train import export

    stage = ckpt.staging_dir() / "model"
    if config.use_lora:
        export.stage_lora(unet, config.pretrained_model, models.sdxl, stage)
    else:
        export.stage_full_model(unet, models.model_dir, stage, state_dict=state_dict)
    summary = {
        **result.model_dump(mode="json"),
        "objective": config.objective,
        # Images the optimizer sees per step: micro-batch x accumulation x processes, x2 for DPO pairs.
        "images_per_step": images_per_step,
        "n_train_images": len(data.sample_ids),
        "n_desirable": data.n_desirable,
        "n_undesirable": data.n_undesirable,
        "n_prompts": len(data.prompts),
        "base_model": config.pretrained_model,
        "train_data": config.train_data,
        "cache": storage.join(cache_dir, encoded.key),
        "config": config.model_dump(mode="json"),
    }
    (stage / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    export.publish(stage, config.output_dir)
    Path(stage).parent.rmdir() if Path(stage).parent.exists() and not any(
        Path(stage).parent.iterdir()
    ) else None
