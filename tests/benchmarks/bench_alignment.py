"""Synthetic preference benchmark: like-rate of base, SFT, Diffusion-KTO and Diffusion-DPO on held-out prompts.

Runs on a CPU in minutes: ``.venv/bin/python tests/benchmarks/bench_alignment.py [--steps 200 ...]``.
Prints a table with Wilson 95% CIs and writes it under "## Alignment (synthetic preference benchmark)" in
tests/benchmarks/RESULTS.md (the rest of that file is left as it is).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from pipelines.demo.alignment import ObjectiveSettings, run_benchmark
from pipelines.demo.world import held_out_scenes

RESULTS = Path(__file__).parent / "RESULTS.md"
SECTION = "## Alignment (synthetic preference benchmark)"


def replace_section(text: str, section: str) -> str:
    """``text`` with our section replaced (or appended); other sections untouched."""
    pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: section.rstrip() + "\n\n", text).rstrip() + "\n"
    return (text.rstrip() + "\n\n" if text.strip() else "") + section.rstrip() + "\n"


def main() -> None:
    """Run the benchmark and record it."""
    import torch

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--feedback", type=int, default=512, help="images voted on (training prompts)")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps of every objective")
    p.add_argument(
        "--images-per-step", type=int, default=16, help="images per step (DPO: half as many pairs)"
    )
    p.add_argument("--eval-images", type=int, default=240, help="held-out images per model")
    p.add_argument("--beta", type=float, default=500.0, help="beta of KTO")
    p.add_argument("--dpo-beta", type=float, default=500.0, help="beta of DPO")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--desirable-ratio", type=float, default=0.5)
    p.add_argument("--flip", type=float, default=0.0, help="share of votes flipped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    p.add_argument("--objectives", default="sft,kto,dpo")
    args = p.parse_args()
    torch.set_num_threads(2)
    settings = {
        "sft": ObjectiveSettings(objective="sft", learning_rate=args.lr),
        "kto": ObjectiveSettings(
            objective="kto",
            beta=args.beta,
            learning_rate=args.lr,
            extra={"desirable_ratio": args.desirable_ratio},
        ),
        "dpo": ObjectiveSettings(objective="dpo", beta=args.dpo_beta, learning_rate=args.lr),
    }
    chosen = [settings[name] for name in args.objectives.split(",")]
    started = time.monotonic()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-alignment-"))
    out = run_benchmark(
        workdir,
        chosen,
        n_feedback=args.feedback,
        max_steps=args.steps,
        images_per_step=args.images_per_step,
        eval_images=args.eval_images,
        seed=args.seed,
        flip_probability=args.flip,
    )
    seconds = time.monotonic() - started
    fb, lab = out["feedback"], out["label"]
    base = out["scores"][0]
    rows = [
        "| model | like-rate | 95% CI (Wilson) | vs base (points) | images seen in training | train s |",
        "|---|---|---|---|---|---|",
    ]
    for s in out["scores"]:
        rows.append(
            f"| {s.name} | {s.rate:.1%} ({s.likes}/{s.images}) | {s.ci_low:.1%} – {s.ci_high:.1%} | "
            f"{100 * (s.rate - base.rate):+.1f} | {s.images_seen or '—'} | {s.train_seconds or '—'} |"
        )
    table = "\n".join(rows)
    print(table)
    setup = (
        f"Feedback: {fb.n_events} base-model images on training prompts ({fb.n_likes} liked, {fb.n_dislikes} "
        f"disliked, {fb.n_flipped} votes flipped); label: train {json.dumps(lab.train)}, class weights "
        f"λ_D={lab.desirable_weight:.3g} λ_U={lab.undesirable_weight:.3g}. Every objective: {args.steps} steps x "
        f"{args.images_per_step} images (DPO: {args.images_per_step // 2} pairs), full fine-tuning of the UNet, "
        f"lr {args.lr:g}, KTO β={args.beta:g} (desirable_ratio {args.desirable_ratio}), DPO β={args.dpo_beta:g}. "
        f"Evaluation: {base.images} images on the {len(held_out_scenes())} held-out combinations, DDIM 20 steps, no guidance, "
        f"the same seeds for every model. Seed {args.seed}; took {seconds:.0f} s on this CPU."
    )
    print(setup)
    if not args.no_write:
        command = "python tests/benchmarks/bench_alignment.py " + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("workdir", "no_write") and v is not None
        )
        section = f"{SECTION}\n\n`{command}`\n\n{table}\n\n{setup}\n\n<!-- alignment-notes -->\n"
        old = RESULTS.read_text() if RESULTS.exists() else ""
        notes = re.search(r"<!-- alignment-notes -->\n(.*?)(?=^## |\Z)", old, re.S | re.M)
        if notes:
            section += notes.group(1)
        RESULTS.write_text(replace_section(old, section))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
