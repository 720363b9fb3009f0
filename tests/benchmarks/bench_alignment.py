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


def parse_variant(text: str, args: argparse.Namespace) -> ObjectiveSettings:
    """``NAME=OBJECTIVE[:FIELD=VALUE,...]`` as ObjectiveSettings; unset β / lr / desirable_ratio follow the
    command line's (``--beta`` or ``--dpo-beta``, ``--lr``, ``--desirable-ratio`` for kto)."""
    name, _, rest = text.partition("=")
    objective, _, fields = rest.partition(":")
    if not name or objective not in ("kto", "sft", "dpo"):
        raise SystemExit(f"--variant {text!r}: expected NAME=kto|sft|dpo[:FIELD=VALUE,...]")
    extra: dict[str, object] = {}
    for item in filter(None, fields.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: {item!r} is not FIELD=VALUE")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    beta = float(extra.pop("beta", args.dpo_beta if objective == "dpo" else args.beta))  # type: ignore[arg-type]
    lr = float(extra.pop("learning_rate", args.lr))  # type: ignore[arg-type]
    label_weights = extra.pop("label_weights", None)
    if objective == "kto":
        extra.setdefault("desirable_ratio", args.desirable_ratio)
    return ObjectiveSettings(
        objective=objective,
        name=name,
        beta=beta,
        learning_rate=lr,
        extra=extra,
        label_class_weights=None if label_weights is None else bool(label_weights),
    )


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
    # 100, not 500: at 500 the sigmoid utility is saturated for a quarter to two thirds of the training
    # images (σ' < 1% of its peak; `python -m pipelines.demo.reward_probe`), see RESULTS.md "Alignment".
    p.add_argument("--beta", type=float, default=100.0, help="beta of KTO")
    p.add_argument("--dpo-beta", type=float, default=500.0, help="beta of DPO")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--desirable-ratio", type=float, default=0.5)
    p.add_argument("--flip", type=float, default=0.0, help="share of votes flipped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    p.add_argument("--objectives", default="sft,kto,dpo")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OBJECTIVE[:FIELD=VALUE,...]",
        help="an extra arm trained after --objectives, e.g. 'kto-b100=kto:beta=100,desirable_ratio=0.5'; "
        "FIELD is a TrainConfig field (beta, learning_rate, desirable_ratio, reference_point, utility, "
        "desirable_weight, ...) or label_weights=0/1 to force λ_D = λ_U = 1 / the label step's weights (default: as "
        "the pipeline, label's weights only with desirable_ratio=null)",
    )
    p.add_argument(
        "--max-images-per-prompt",
        type=int,
        default=None,
        help="keep only the first K votes of each training prompt (1: one image per prompt, no DPO pairs)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json-out", type=Path, default=None, help="also write every figure as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
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
    chosen = [settings[name] for name in args.objectives.split(",") if name]
    chosen += [parse_variant(v, args) for v in args.variant]
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
        max_images_per_prompt=args.max_images_per_prompt,
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
    for s in out["scores"][1:]:
        print(s.name, json.dumps(s.train_figures))
    for name, why in out["skipped"].items():
        print(f"{name}: skipped ({why})")
    if out["train_counts"] is not None:
        print(
            f"thinned to {args.max_images_per_prompt} image(s) per prompt: {json.dumps(out['train_counts'])}, "
            f"{out['n_pairs']} DPO pairs, class weights {out['class_weights']}"
        )
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "scores": [s.model_dump() for s in out["scores"]],
                    "skipped": out["skipped"],
                    "train_counts": out["train_counts"],
                    "n_pairs": out["n_pairs"],
                    "class_weights": out["class_weights"],
                    "seconds": time.monotonic() - started,
                },
                indent=2,
            )
        )
    setup = (
        f"Feedback: {fb.n_events} base-model images on training prompts ({fb.n_likes} liked, {fb.n_dislikes} "
        f"disliked, {fb.n_flipped} votes flipped); label: train {json.dumps(lab.train)}, class weights "
        f"λ_D={lab.desirable_weight:.3g} λ_U={lab.undesirable_weight:.3g} (for uniform sampling; with "
        f"desirable_ratio set the trainer uses λ 1, as the pipeline does). Every objective: {args.steps} steps x "
        f"{args.images_per_step} images (DPO: {args.images_per_step // 2} pairs), full fine-tuning of the UNet, "
        f"lr {args.lr:g}, KTO β={args.beta:g} (desirable_ratio {args.desirable_ratio}), DPO β={args.dpo_beta:g}. "
        f"Evaluation: {base.images} images on the {len(held_out_scenes())} held-out combinations, DDIM 20 steps, no guidance, "
        f"the same seeds for every model. Seed {args.seed}; took {seconds:.0f} s on this CPU."
    )
    print(setup)
    if not args.no_write:
        command = (
            "python tests/benchmarks/bench_alignment.py "
            + " ".join(
                f"--{k.replace('_', '-')} {v}"
                for k, v in vars(args).items()
                if k not in ("workdir", "no_write", "json_out", "variant", "threads") and v is not None
            )
            + "".join(f" --variant '{v}'" for v in args.variant)
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
