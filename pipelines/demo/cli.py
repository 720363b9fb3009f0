"""``dkto demo``: the whole retraining job on a laptop CPU, on the synthetic colour world.

simulated feedback (the base model's images, voted on by the synthetic user) -> the real pipeline with
``kfp.local`` (ingest -> label -> Diffusion-KTO -> evaluate against the base -> gate -> register/promote in
a SQLite registry) -> a short summary: counts, the gate's decision, the like-rate before and after with
95% CIs, and where the HTML report is.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import typer

from components.shared import storage

DEMO_DIR = Path(__file__).parent
DEMO_CONFIG = DEMO_DIR / "demo.yaml"
BASE_MODEL = DEMO_DIR / "base_model"


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion (stays inside [0, 1] and is sane at 0 or n successes)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def write_eval_prompts(path: Path) -> Path:
    """The held-out prompts (combinations never used for feedback or training), one per line."""
    from pipelines.demo import world

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(s.prompt for s in world.held_out_scenes()) + "\n")
    return path


def newest(root: Path, name: str, since: float) -> Path | None:
    """The most recently written file called ``name`` under ``root`` after ``since`` (Unix time)."""
    found = [p for p in root.rglob(name) if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def like_rates(scores_uri: str) -> dict[str, tuple[float, int, float, float]]:
    """Per model in scores.parquet: (like-rate, images, Wilson 95% CI low, high) of ``colour_match``."""
    table = storage.read_parquet(scores_uri, columns=["model", "colour_match"]).to_pandas()
    out: dict[str, tuple[float, int, float, float]] = {}
    for model, group in table.groupby("model"):
        likes, n = float(group["colour_match"].sum()), len(group)
        low, high = wilson_interval(likes, n)
        out[str(model)] = (likes / n, n, low, high)
    return out


def run_demo(
    workdir: Path,
    *,
    n_feedback: int = 512,
    flip_probability: float = 0.0,
    seed: int = 0,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Simulate feedback, run the pipeline locally, and return the figures the summary prints."""
    from pipelines.commands import run_local
    from pipelines.demo.simulate import SimulateConfig
    from pipelines.demo.simulate import run as simulate
    from pipelines.params import PipelineParams

    started = time.time()
    workdir = workdir.resolve()
    if workdir.exists():
        # The demo starts from the base model every time: an old registry would make the last run's
        # candidate the baseline.
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    feedback = simulate(
        SimulateConfig(
            model=str(BASE_MODEL),
            output_dir=str(workdir / "feedback"),
            n_images=n_feedback,
            seed=seed,
            flip_probability=flip_probability,
            model_version="base",
        )
    )
    t_feedback = time.time() - started
    paths = [
        f"feedback_sources=[{feedback.feedback_uri}]",
        f"base_model={BASE_MODEL}",
        f"registry_uri=sqlite:///{workdir / 'registry.db'}",
        f"registry_artifact_root={workdir / 'registry-artifacts'}",
        f"outputs_root={workdir}",
        f"checkpoint_root={workdir / 'checkpoints'}",
        f"eval_prompts={write_eval_prompts(workdir / 'eval_prompts.txt')}",
        f"seed={seed}",
    ]
    params = PipelineParams.from_yaml(str(DEMO_CONFIG), [*paths, *(overrides or [])])
    pipeline_started = time.time()
    summary = run_local(params)
    decision_path = newest(workdir, "decision.json", pipeline_started)
    result: dict[str, Any] = {
        "workdir": str(workdir),
        "feedback": feedback.model_dump(),
        "summary": summary,
        "seconds_feedback": round(t_feedback, 1),
        "seconds_pipeline": round(time.time() - pipeline_started, 1),
    }
    if decision_path is not None:
        eval_dir = decision_path.parent
        result["decision"] = json.loads(decision_path.read_text())
        result["report"] = str(eval_dir / "report.html")
        result["like_rates"] = like_rates(str(eval_dir / "scores.parquet"))
    result["seconds_total"] = round(time.time() - started, 1)
    return result


def format_summary(result: dict[str, Any]) -> str:
    """The few lines a newcomer reads after ``make demo``."""
    fb = result["feedback"]
    summary = result.get("summary", {})
    steps = summary.get("steps", {})
    lines = [
        "",
        "== dkto demo: Diffusion-KTO on the synthetic colour world ==",
        f"feedback: {fb['n_events']} images of the base model voted on by the synthetic user: "
        f"{fb['n_likes']} likes, {fb['n_dislikes']} dislikes ({fb['n_flipped']} votes flipped by noise)",
    ]
    for name in ("ingest", "label", "train"):
        if name in steps:
            figures = {
                k: v
                for k, v in steps[name].items()
                if k not in ("step", "model", "recorded_at") and not isinstance(v, dict)
            }
            lines.append(f"{name}: " + ", ".join(f"{k}={_figure(v)}" for k, v in list(figures.items())[:8]))
    decision = result.get("decision")
    if decision:
        m = decision["metrics"].get("colour_match", {})

        def number(key: str) -> float:
            # decision.json writes a non-finite figure as null (strict JSON)
            value = m.get(key)
            return float("nan") if value is None else float(value)

        confidence = float(decision.get("confidence", 0.95))
        lines.append(
            f"gate: {'PASSED' if decision['passed'] else 'REJECTED'} on {decision['n_prompts']} held-out prompts "
            f"(colour_match win rate {number('win_rate'):.2f}, {confidence:.0%} CI "
            f"[{number('win_rate_ci_low'):.2f}, {number('win_rate_ci_high'):.2f}])"
        )
        for reason in decision.get("reasons", [])[:4]:
            lines.append(f"  - {reason}")
    rates = result.get("like_rates", {})
    for label, key in (("before (base model)", "baseline"), ("after (candidate)  ", "candidate")):
        if key in rates:
            rate, n, low, high = rates[key]
            lines.append(f"like-rate {label}: {rate:.1%} of {n} images (95% CI {low:.1%}-{high:.1%})")
    lines.append(
        f"registry: version {summary.get('registered_version')} registered, promoted: {summary.get('promoted')}"
        f", production now: {summary.get('production_after')}"
    )
    if result.get("report"):
        lines.append(f"report: {result['report']}")
    lines.append(
        f"took {result['seconds_total']:.0f}s (feedback {result['seconds_feedback']:.0f}s, "
        f"pipeline {result['seconds_pipeline']:.0f}s); everything is under {result['workdir']}"
    )
    return "\n".join(lines)


def _figure(value: object) -> str:
    """A figure as a person reads it: whole floats without ``.0``, others to 4 significant digits."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return str(value)


def register(app: typer.Typer) -> None:
    """Add ``dkto demo`` to the command line."""

    @app.command("demo")
    def demo_command(
        workdir: Path = typer.Option(Path("outputs/demo"), help="Scratch directory (emptied first)."),
        n_feedback: int = typer.Option(512, help="How many images the synthetic users vote on."),
        flip_probability: float = typer.Option(0.0, help="Share of votes flipped (careless users)."),
        seed: int = typer.Option(0, help="Seed of the simulation, training and evaluation."),
        set_: list[str] = typer.Option([], "--set", help="Override a pipeline parameter (key=value)."),
    ) -> None:
        """Run the whole job on the synthetic colour world: feedback -> KTO -> gate -> promote (CPU, minutes)."""
        import torch

        torch.set_num_threads(2)
        result = run_demo(
            workdir, n_feedback=n_feedback, flip_probability=flip_probability, seed=seed, overrides=set_
        )
        typer.echo(format_summary(result))
