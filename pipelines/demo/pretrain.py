"""Pretrain the demo's tiny base model: a 32 px text-to-image model that is imperfect at colour on purpose.

The model is a real SD v1.x-layout diffusers pipeline (``CLIPTokenizer`` over the world's words,
``CLIPTextModel``, ``AutoencoderKL``, ``UNet2DConditionModel``, DDIM scheduler), saved with
``save_pretrained`` so every step loads it with ``StableDiffusionPipeline.from_pretrained``.

Training data is the world's rendered images for the training combinations, where the object's colour
follows the prompt only ``colour_follows_prompt`` of the time (otherwise a random *other* colour): the
"noisy web data" starting point, so the base model draws the right shape on the right background but
the right colour only about half the time. That is the preference the synthetic user then teaches it.

Stages (all on CPU; one thread by default: on a CPU shared with other jobs, two OpenMP threads spent most
of their time spin-waiting for each other and ran ~10x slower):
1. the VAE as an autoencoder (reconstruction MSE + a small KL term), then frozen; its latent scale is
   set so latents have unit variance, as SD's ``scaling_factor`` does;
2. the UNet and the text encoder together with the standard epsilon-prediction loss
   (Ho et al. 2020, eq. 14) on the SD v1.5 noise schedule, 10% captions dropped (for guidance).

Reproduce the committed model (three stages; each stage's card, nested in ``continued_from``, is in
``base_model/pretrain_card.json``; about 20 minutes in all on one thread of a shared CPU)::

    export OMP_WAIT_POLICY=PASSIVE
    python -m pipelines.demo.pretrain --output /tmp/pt/stage1 --seed 0
    python -m pipelines.demo.pretrain --init-from /tmp/pt/stage1 --output /tmp/pt/stage2 --seed 0 \
        --unet-steps 1500 --unet-lr 1e-3
    python -m pipelines.demo.pretrain --init-from /tmp/pt/stage2 --output pipelines/demo/base_model --seed 1 \
        --unet-steps 1500 --unet-lr 1e-3 --colour-follows-prompt 0.7

Stages 1-2 (colour right 50% of the time) learn shape and background but leave colour at chance (21%
like-rate); stage 3 (70%) brings it to 35% on held-out prompts: imperfect, as the demo needs.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

from pipelines.demo import world

DEFAULT_OUTPUT = Path(__file__).parent / "base_model"


def build_pipeline(text_hidden: int = 64, unet_channels: tuple[int, ...] = (32, 64), seed: int = 0):  # type: ignore[no-untyped-def]
    """A randomly initialised tiny SD pipeline over the world's vocabulary (32 px images, 8x8x4 latents)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from components.shared.tiny_models import sd_pipeline, write_tokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        # Prompts are 7 words; 16 positions leave room for BOS/EOS and a little more.
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(tmp, world.WORDS, model_max_length=16))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_hidden,
            intermediate_size=text_hidden * 2,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=16,
            projection_dim=text_hidden,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        # 4 channels per group: with one channel per group, GroupNorm would normalise away each image's
        # absolute colour at full resolution, and colour is what this world is about.
        norm_num_groups=4,
        sample_size=32,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * len(unet_channels),
        up_block_types=("CrossAttnUpBlock2D",) * len(unet_channels),
        cross_attention_dim=text_hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    # SD v1.5's training schedule; DDIM so that 20-step sampling is the pipeline's natural use.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    return sd_pipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
    )


def noisy_dataset(n: int, colour_follows_prompt: float, seed: int) -> tuple[list[str], np.ndarray, int]:
    """``n`` (prompt, image) pairs over the training combinations; the object's colour follows the prompt
    with probability ``colour_follows_prompt``, otherwise it is a uniformly chosen other colour.

    Returns prompts, images (N, 3, 32, 32) in [-1, 1], and how many images show the prompt's colour.
    """
    rng = random.Random(seed)
    scenes = world.train_scenes()
    prompts: list[str] = []
    drawn: list[world.Scene] = []
    n_follow = 0
    for _ in range(n):
        scene = rng.choice(scenes)
        prompts.append(scene.prompt)
        if rng.random() < colour_follows_prompt:
            colour = scene.colour
            n_follow += 1
        else:
            colour = rng.choice([c for c in world.COLOURS if c != scene.colour])
        drawn.append(world.Scene(colour, scene.shape, scene.background))
    return prompts, world.render_batch(drawn, 32, seed=seed + 1), n_follow


def train_vae(vae, images: np.ndarray, steps: int, batch_size: int, lr: float, seed: int, log) -> float:  # type: ignore[no-untyped-def]
    """Train the VAE to reconstruct world images; returns the final reconstruction MSE (pixels in [-1, 1])."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(images)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    vae.train()
    ema = None
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x = data[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)
        recon = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        # A small KL keeps the latent distribution close to N(0, I) so diffusion has a sane space to model.
        kl = posterior.kl().mean() / (x[0].numel())
        loss = mse + 1e-3 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = mse.item() if ema is None else 0.95 * ema + 0.05 * mse.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} mse {ema:.4f}")
    vae.eval()
    return float(ema or 0.0)


@np.errstate(all="ignore")
def encode_latents(vae, images: np.ndarray, batch_size: int = 256) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The VAE's posterior means of ``images`` (unscaled)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(vae.encode(torch.from_numpy(images[i : i + batch_size])).latent_dist.mean.numpy())
    return np.concatenate(out)


def train_unet(
    pipe, prompts: list[str], latents: np.ndarray, steps: int, batch_size: int, lr: float, seed: int, log
) -> float:  # type: ignore[no-untyped-def]
    """Train UNet + text encoder with the epsilon-prediction loss; returns the final smoothed loss."""
    import torch
    from diffusers import DDPMScheduler

    gen = torch.Generator().manual_seed(seed)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    tok = pipe.tokenizer
    unique_prompts = sorted(set(prompts)) + [""]
    ids = tok(
        unique_prompts,
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    prompt_index = torch.tensor([unique_prompts.index(p) for p in prompts])
    empty_index = len(unique_prompts) - 1
    data = torch.from_numpy(latents) * pipe.vae.config.scaling_factor
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * (0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)) * 0.9 + 0.1)
        ),
    )
    pipe.unet.train()
    pipe.text_encoder.train()
    ema = None
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x0 = data[idx]
        which = prompt_index[idx].clone()
        which[torch.rand(batch_size, generator=gen) < 0.1] = empty_index
        cond = pipe.text_encoder(ids[which])[0]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        xt = noise_scheduler.add_noise(x0, noise, t)
        pred = pipe.unet(xt, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {ema:.4f} lr {sched.get_last_lr()[0]:.2e}")
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return float(ema or 0.0)


def generate(pipe, prompts: list[str], seed: int, steps: int = 20, batch_size: int = 64):  # type: ignore[no-untyped-def]
    """Images for ``prompts`` (one each), seeded per batch; no classifier-free guidance (the world's setting)."""
    import torch

    images = []
    for i in range(0, len(prompts), batch_size):
        gen = torch.Generator().manual_seed(seed + i)
        out = pipe(
            prompts[i : i + batch_size],
            num_inference_steps=steps,
            guidance_scale=1.0,
            generator=gen,
            height=32,
            width=32,
        )
        images.extend(out.images)
    return images


def like_rate(images, prompts: list[str]) -> float:  # type: ignore[no-untyped-def]
    """Share of images the (noise-free) synthetic user likes."""
    from components.evaluate.scorers.judges import ColourMatchJudge

    return float(ColourMatchJudge().score(images, prompts).mean())


def main(argv: list[str] | None = None) -> None:
    """Command line: pretrain the base model and save it (weights, training card, sample grid)."""
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="directory to write the pipeline to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--colour-follows-prompt",
        type=float,
        default=0.5,
        help="share of training images whose colour is the prompt's",
    )
    p.add_argument("--n-images", type=int, default=8000)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--unet-steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32, help="UNet training batch")
    p.add_argument("--vae-batch-size", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--unet-lr", type=float, default=1.5e-3)
    p.add_argument("--eval-images", type=int, default=240, help="held-out images for the like-rate check")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="continue from a model this script saved (keeps its VAE and latent scale; trains the UNet more)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - start:7.1f}s] {msg}", flush=True)

    prompts, images, n_follow = noisy_dataset(args.n_images, args.colour_follows_prompt, args.seed)
    log(f"dataset: {len(prompts)} images, {n_follow} show the prompt's colour")
    previous: dict = {}
    if args.init_from is not None:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.init_from)
        previous = json.loads((args.init_from / "pretrain_card.json").read_text())
        vae_mse = float(previous["vae_reconstruction_mse"])
        latents = encode_latents(pipe.vae, images)
        scaling = float(pipe.vae.config.scaling_factor)
    else:
        pipe = build_pipeline(seed=args.seed)
        vae_mse = train_vae(
            pipe.vae, images, args.vae_steps, args.vae_batch_size, args.vae_lr, args.seed, log
        )
        latents = encode_latents(pipe.vae, images)
        scaling = float(1.0 / latents.std())
        pipe.vae.register_to_config(scaling_factor=scaling)
    log(f"latent std {latents.std():.3f} -> scaling_factor {scaling:.4f}")
    unet_loss = train_unet(
        pipe, prompts, latents, args.unet_steps, args.batch_size, args.unet_lr, args.seed, log
    )

    pipe.set_progress_bar_config(disable=True)
    held = world.held_out_scenes()
    eval_prompts = [held[i % len(held)].prompt for i in range(args.eval_images)]
    eval_images = generate(pipe, eval_prompts, seed=1000)
    held_like = like_rate(eval_images, eval_prompts)
    train_sc = world.train_scenes()
    train_prompts = [train_sc[i % len(train_sc)].prompt for i in range(args.eval_images)]
    train_like = like_rate(generate(pipe, train_prompts, seed=2000), train_prompts)
    log(f"like-rate held-out {held_like:.3f}, training prompts {train_like:.3f}")

    out = args.output
    if out.exists() and out != args.init_from:
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    grid_prompts = [held[i % len(held)].prompt for i in range(48)]
    world.image_grid(eval_images[:48], columns=12, scale=2).save(out / "samples_held_out.png")
    card = {
        "command": "python -m pipelines.demo.pretrain "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "dataset_images": len(prompts),
        "dataset_colour_follows_prompt": n_follow,
        "vae_reconstruction_mse": vae_mse,
        "vae_scaling_factor": scaling,
        "unet_final_loss": unet_loss,
        "like_rate_held_out": held_like,
        "like_rate_training_prompts": train_like,
        "eval_images": args.eval_images,
        "sample_grid_prompts": grid_prompts[:12],
        "seconds": round(time.monotonic() - start, 1),
        "continued_from": previous or None,
        "torch_version": torch.__version__,
    }
    (out / "pretrain_card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"saved {out}")


if __name__ == "__main__":
    main()
