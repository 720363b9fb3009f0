"""Probe of the implicit rewards of a fine-tuned model against its base, for the alignment investigation.

``python -m pipelines.demo.reward_probe --base BASE --tuned MODEL --train-data train.parquet`` draws
``--draws`` (noise, timestep) samples for every training image, computes the per-image implicit reward
g = reference MSE − policy MSE as the trainer does (Diffusion-KTO, Li et al. 2024, Eq. 8), and prints:

- the batch-mean reference point z = clamp(mean g, 0) and the liked / disliked mean of g;
- for each β, the share of images whose utility σ(β·(g − z)) is saturated (σ' < 1% of its peak, i.e.
  |β·(g − z)| > 6.9), and the mean slope σ'(β·(g − z)) relative to its peak 1/4;
- the variance of a DPO pair's reward difference g_w − g_l when both images share noise and timestep
  (as Diffusion-DPO trains) against independent draws (as KTO's per-image terms are), which measures
  how much of DPO's signal is the shared-noise variance reduction.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _unet_and_encoders(uri: str) -> Any:
    from components.shared.models import load_pipeline

    return load_pipeline(uri)


def main() -> None:
    """Run the probe and print its figures as JSON."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from components.train.data import _resolve_uri
    from components.train.losses import per_sample_mse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", required=True)
    p.add_argument("--tuned", required=True)
    p.add_argument("--train-data", required=True)
    p.add_argument("--draws", type=int, default=8, help="(noise, timestep) draws per image")
    p.add_argument("--betas", default="50,100,200,500,1000,2000,5000")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    rows = pq.read_table(args.train_data).to_pylist()
    prompts = [r["prompt"] for r in rows]
    liked = torch.tensor([bool(r["desirable"]) for r in rows])
    pixels = torch.stack(
        [
            torch.from_numpy(
                np.asarray(Image.open(_resolve_uri(r["image_uri"], args.train_data)).convert("RGB"))
            )
            .permute(2, 0, 1)
            .float()
            / 127.5
            - 1
            for r in rows
        ]
    )
    base, tuned = _unet_and_encoders(args.base), _unet_and_encoders(args.tuned)
    with torch.no_grad():
        latents = base.vae.encode(pixels).latent_dist.mean * base.vae.config.scaling_factor
        ids = base.tokenizer(
            prompts, padding="max_length", max_length=base.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        cond = base.text_encoder(ids)[0]
        tuned_cond = tuned.text_encoder(ids)[0]
    sched = base.scheduler
    n_t = sched.config.num_train_timesteps
    g = torch.Generator().manual_seed(args.seed)

    def rewards(noise: torch.Tensor, t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        x_t = sched.add_noise(latents[idx], noise, t)
        with torch.no_grad():
            ref = per_sample_mse(base.unet(x_t, t, cond[idx]).sample, noise)
            pol = per_sample_mse(tuned.unet(x_t, t, tuned_cond[idx]).sample, noise)
        return ref - pol

    every = torch.arange(len(rows))
    draws = []
    for _ in range(args.draws):
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, n_t, (len(rows),), generator=g)
        draws.append(rewards(noise, t, every))
    reward = torch.stack(draws)  # [draws, images]
    z = float(reward.mean().clamp(min=0))
    sign = torch.where(liked, 1.0, -1.0)
    out: dict[str, Any] = {
        "images": len(rows),
        "z_batch_mean": z,
        "mean_g_liked": float(reward[:, liked].mean()),
        "mean_g_disliked": float(reward[:, ~liked].mean()),
        "std_g_per_draw": float(reward.std()),
        "beta": {},
    }
    for beta in [float(b) for b in args.betas.split(",")]:
        x = sign * beta * (reward - z)
        slope = torch.sigmoid(x) * torch.sigmoid(-x) / 0.25
        out["beta"][f"{beta:g}"] = {
            "median_abs_beta_g_minus_z": round(float(x.abs().median()), 3),
            "saturated_share": round(float((x.abs() > 6.9).float().mean()), 3),
            "mean_relative_slope": round(float(slope.mean()), 3),
            "right_side_share": round(float((x > 0).float().mean()), 3),
        }
    # DPO pairs: (liked, disliked) of the same prompt, shared vs independent noise and timestep.
    pairs = [
        (i, j)
        for i in range(len(rows))
        for j in range(len(rows))
        if liked[i] and not liked[j] and prompts[i] == prompts[j]
    ]
    if pairs:
        w = torch.tensor([a for a, _ in pairs])
        lo = torch.tensor([b for _, b in pairs])
        shared, independent = [], []
        for _ in range(args.draws):
            noise = torch.randn((len(pairs), *latents.shape[1:]), generator=g)
            t = torch.randint(0, n_t, (len(pairs),), generator=g)
            shared.append(rewards(noise, t, w) - rewards(noise, t, lo))
            noise2 = torch.randn((len(pairs), *latents.shape[1:]), generator=g)
            t2 = torch.randint(0, n_t, (len(pairs),), generator=g)
            independent.append(rewards(noise, t, w) - rewards(noise2, t2, lo))
        sh, ind = torch.cat(shared), torch.cat(independent)
        out["dpo_pairs"] = len(pairs)
        out["pair_margin_shared_noise"] = {"mean": float(sh.mean()), "std": float(sh.std())}
        out["pair_margin_independent_noise"] = {"mean": float(ind.mean()), "std": float(ind.std())}
        out["pair_signal_to_noise_shared_vs_independent"] = [
            round(float(sh.mean() / sh.std()), 3),
            round(float(ind.mean() / ind.std()), 3),
        ]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
