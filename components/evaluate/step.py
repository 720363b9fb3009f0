"""The evaluate step: candidate vs production model on held-out prompts, scored, compared and gated.

``run(config)`` generates images for the same prompts and initial noise with both models, scores every
image with each configured scorer, compares the two models (``gate.compare``), applies the gate policy
(``gate.decide``) and writes, under ``output_dir``:

- ``images/candidate/``, ``images/baseline/`` (PNGs) with an ``index.parquet`` each;
- ``scores.parquet``: one row per image (model, prompt, prompt_index, image_index, seed, image_path,
  safety_flagged, one column per metric);
- ``decision.json``: the verdict, its reasons and the numbers (schema in /work/contracts.md), strict JSON:
  a non-finite number is written as null and its field listed under ``non_finite``; ``scheduler`` records
  the sampler each model actually used; ``prompts_total`` = ``n_prompts`` (compared) +
  ``n_prompts_excluded`` once both models were scored, each exclusion in ``excluded_prompts`` with its
  reason, ``safety_flagged_images`` counts the images each model's safety checker blacked out and
  ``safety_flagged_prompts`` the prompts with at least one, and ``safety_sign_test`` the gate's paired
  sign test on flagged images per prompt (``candidate_worse`` of ``differing`` prompts, Wilson CI);
- ``metrics.json``: a flat ``{name: float}`` for KFP ``Metrics`` (finite values only);
- ``report.html``: one self-contained page for the person deciding whether to ship.

A model that cannot be loaded, a scorer that fails, or two models that would sample with different
schedulers (``scheduler: default``) becomes a failed decision with the reason spelled out, never an
exception a pipeline could mistake for success.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from components.evaluate.gate import GatePolicy
from components.shared import storage
from components.shared.config import StepConfig
from components.shared.telemetry import StepTelemetry, get_logger


class EvaluateConfig(StepConfig):
    """Configuration of one evaluation: which models, which prompts, which scorers, which gate."""

    candidate_model: str = Field(
        ..., description="The fine-tuned model to judge: a diffusers directory or gs:// URI."
    )
    baseline_model: str = Field(
        ...,
        description="The model it must beat: the one in production, or the base model when nothing is "
        "in production yet (directory or gs:// URI).",
    )
    baseline_version: str | None = Field(
        None,
        description="Registry version of the production model compared against (None: nothing is in "
        "production). Promotion later checks that production still points at it.",
    )
    prompts: str = Field(
        ...,
        description="Held-out prompts: a text file (one per line), JSONL or Parquet with a 'prompt' "
        "field, or the label step's val.parquet (its unique prompts are used).",
    )
    max_prompts: int | None = Field(
        None, ge=1, description="Use only the first N unique prompts (None: all of them)."
    )
    images_per_prompt: int = Field(
        4,
        ge=1,
        description="Images generated per prompt and model; the win rate compares the median-scoring "
        "image of each prompt (Diffusion-KTO's protocol uses several seeds per prompt).",
    )
    seed: int = Field(0, description="Base seed; each (prompt, image) pair gets its own noise from it.")
    num_inference_steps: int = Field(25, ge=1, description="Denoising steps per image.")
    guidance_scale: float = Field(7.5, ge=0.0, description="Classifier-free guidance scale.")
    scheduler: str = Field(
        "dpm_solver_multistep",
        description="Sampler used for both models (dpm_solver_multistep, ddim, euler, euler_ancestral, "
        "pndm, unipc, ddpm, or 'default' for each model's own; with 'default' the evaluation fails when "
        "the two models' schedulers differ, as their images would not be comparable).",
    )
    resolution: int | None = Field(
        None, ge=8, description="Image height and width in pixels (None: the model's default)."
    )
    generation_batch_size: int = Field(8, ge=1, description="Images generated per forward batch.")
    scorers: list[str] = Field(
        default_factory=lambda: ["pickscore", "clip_score", "aesthetic"],
        description="Scorer names (see components.evaluate.scorers.base.SCORERS).",
    )
    scorer_models: dict[str, str] = Field(
        default_factory=dict,
        description="Per scorer, where its weights are: a directory, gs:// URI or hub id "
        "(default: each scorer's public model).",
    )
    scorer_batch_size: int = Field(16, ge=1, description="Images per scorer forward batch.")
    device: str = Field("auto", description="'auto' (CUDA if present, else CPU), 'cpu' or 'cuda[:N]'.")
    dtype: str = Field(
        "auto",
        description="Generation precision: 'auto' (bf16 on GPUs that support it, else fp16; fp32 on "
        "CPU), 'bf16', 'fp16' or 'fp32'.",
    )
    gate: GatePolicy = Field(
        default_factory=lambda: GatePolicy.model_validate({}), description="The metric gate's thresholds."
    )
    report_top_k: int = Field(
        4, ge=0, description="Prompts with the largest gains (and losses) shown side by side in the report."
    )
    output_dir: str = Field(..., description="Where results go: a directory or gs:// prefix.")
    pushgateway: str | None = Field(
        None, description="Prometheus Pushgateway address (default: DKTO_PUSHGATEWAY)."
    )
    run_id: str | None = Field(None, description="Run id for metric labels (default: DKTO_RUN_ID).")

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: list[str]) -> list[str]:
        from components.evaluate.scorers.base import SCORERS

        unknown = [s for s in value if s not in SCORERS]
        if unknown:
            raise ValueError(f"unknown scorer(s) {unknown}; valid names: {sorted(SCORERS)}")
        if not value:
            raise ValueError("at least one scorer is needed (the gate's primary metric)")
        return list(dict.fromkeys(value))

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"dtype must be auto, bf16, fp16 or fp32, got {value!r}")
        return value

    @model_validator(mode="after")
    def _gate_metrics_are_scored(self) -> EvaluateConfig:
        missing = [m for m in self.gate.required_metrics() if m not in self.scorers]
        if missing:
            raise ValueError(
                f"the gate reads metric(s) {missing} that are not in scorers {self.scorers}; "
                "add them to scorers or change gate.primary_metric / max_regression / floors"
            )
        unknown_models = [k for k in self.scorer_models if k not in self.scorers]
        if unknown_models:
            raise ValueError(f"scorer_models names scorer(s) {unknown_models} not in scorers {self.scorers}")
        return self


class EvaluateResult(BaseModel):
    """What an evaluation produced: the verdict and where its artifacts are."""

    passed: bool
    reasons: list[str]
    n_prompts: int
    n_images: int
    metrics: dict[str, float] = Field(description="The flat metrics written to metrics.json.")
    decision_path: str
    scores_path: str
    report_path: str
    metrics_path: str
    duration_s: float = 0.0


def run(config: EvaluateConfig) -> EvaluateResult:
    """Generate, score, compare and gate; write the artifacts. Failures become a failed decision."""
    import pandas as pd

    from components.evaluate import gate as gate_lib
    from components.evaluate.generate import generate_images, load_prompts, resolve_device
    from components.evaluate.report import render_report

    started = time.perf_counter()
    telemetry = StepTelemetry("evaluate", run_id=config.run_id, pushgateway=config.pushgateway)
    log = telemetry.log
    out = config.output_dir
    # A failing verdict first: if this run stops before its real decision is written, an earlier run's
    # (possibly passing) decision.json in the same directory must not be read as this candidate's.
    started_at = _utc_now()
    write_json_strict(
        storage.join(out, "decision.json"),
        {
            "passed": False,
            "reasons": [f"the evaluation started at {started_at} did not finish; failing closed"],
            "primary_metric": config.gate.primary_metric,
            "n_prompts": 0,
            # Unknown until the prompts are read; the other counts are those of a run that scored nothing.
            "prompts_total": None,
            "n_prompts_excluded": 0,
            "excluded_prompts": [],
            "safety_flagged_images": {"candidate": 0, "baseline": 0},
            "safety_flagged_prompts": {"candidate": 0, "baseline": 0},
            "safety_sign_test": {"candidate_worse": 0, "differing": 0, "ci_low": None, "ci_high": None},
            "candidate_model": config.candidate_model,
            "baseline_model": config.baseline_model,
            "baseline_version": config.baseline_version,
            "metrics": {},
            "created_at": started_at,
        },
    )
    prompts = load_prompts(config.prompts, config.max_prompts)
    device = resolve_device(config.device)
    log.info(
        "evaluating %s against %s on %d prompts x %d images (%s)",
        config.candidate_model,
        config.baseline_model,
        len(prompts),
        config.images_per_prompt,
        device,
    )

    # 1. Generation: same prompts, same per-image noise, one model at a time (memory).
    generated: dict[str, list[Any]] = {}
    model_errors: dict[str, str] = {}
    setup_errors: list[str] = []
    schedulers: dict[str, dict[str, Any]] = {}
    images_total = telemetry.counter("images_generated_total", "Images generated", ("model",))
    phase_seconds = telemetry.gauge("phase_duration_seconds", "Wall time of each phase", ("phase",))
    for role, model in (("candidate", config.candidate_model), ("baseline", config.baseline_model)):
        if model_errors:
            # The decision already fails; generating the other model's images would only cost time.
            log.warning("skipping %s generation: %s", role, "; ".join(model_errors.values()))
            continue
        t0 = time.perf_counter()
        try:
            generated[role] = generate_images(
                model,
                prompts,
                storage.join(out, "images", role),
                images_per_prompt=config.images_per_prompt,
                seed=config.seed,
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                scheduler=config.scheduler,
                resolution=config.resolution,
                batch_size=config.generation_batch_size,
                device=device,
                dtype=config.dtype,
                model_id=model,
                image_dir="",
                on_pipeline=_scheduler_recorder(role, config.scheduler, schedulers),
            )
            images_total.labels(model=role).inc(len(generated[role]))
        except SchedulerMismatchError as err:
            setup_errors.append(str(err))
            log.error("%s", err)
        except Exception as err:
            model_errors[role] = f"{model}: {type(err).__name__}: {err}"
            log.error("%s model could not generate: %s", role, model_errors[role])
        finally:
            _free_accelerator_memory()
        phase_seconds.labels(phase=f"generate_{role}").set(time.perf_counter() - t0)

    # 2. Scoring: every image of both models with every scorer; a scorer failure is recorded, not raised.
    rows: list[dict[str, Any]] = [
        {
            "model": role,
            "model_id": item.model_id,
            "prompt": item.prompt,
            "prompt_index": item.prompt_index,
            "image_index": item.image_index,
            "seed": item.seed,
            "image_path": item.image_path,
            "safety_flagged": bool(item.safety_flagged),
        }
        for role in ("candidate", "baseline")
        for item in generated.get(role, [])
    ]
    scores = pd.DataFrame(
        rows,
        columns=[
            "model",
            "model_id",
            "prompt",
            "prompt_index",
            "image_index",
            "seed",
            "image_path",
            "safety_flagged",
        ],
    ).astype({"safety_flagged": bool})
    # Black images the safety checker put in place of what a model drew; the gate leaves their prompts out.
    safety_flagged_images = {
        role: sum(bool(item.safety_flagged) for item in generated.get(role, []))
        for role in ("candidate", "baseline")
    }
    scorer_errors: dict[str, str] = {}
    directions: dict[str, bool] = {}
    scored: list[str] = []
    if not model_errors and not setup_errors:
        t0 = time.perf_counter()
        # Paths, not decoded images: each scorer decodes one batch at a time (Scorer.score_files), so
        # memory does not grow with the number of prompts.
        image_paths = scores["image_path"].tolist()
        image_prompts = scores["prompt"].tolist()
        for name in config.scorers:
            try:
                from components.evaluate.scorers.base import get_scorer

                scorer = get_scorer(
                    name,
                    model_path=config.scorer_models.get(name),
                    device=device,
                    batch_size=config.scorer_batch_size,
                )
                values = scorer.score_files(image_paths, image_prompts)
                if len(values) != len(image_paths):
                    raise ValueError(f"returned {len(values)} scores for {len(image_paths)} images")
                scores[name] = [float(v) for v in values]
                directions[name] = bool(getattr(scorer, "higher_is_better", True))
                scored.append(name)
                del scorer
            except Exception as err:
                scorer_errors[name] = f"{type(err).__name__}: {err}"
                log.error("scorer %s failed: %s", name, scorer_errors[name])
            finally:
                _free_accelerator_memory()
        phase_seconds.labels(phase="score").set(time.perf_counter() - t0)

    # 3. Comparison and decision (pure; never raises).
    comparison = None
    if not model_errors and not setup_errors and scored:
        try:
            comparison = gate_lib.compare(scores, scored, config.gate, directions)
        except Exception as err:
            scorer_errors.setdefault("comparison", f"{type(err).__name__}: {err}")
    verdict = gate_lib.decide(
        config.gate,
        comparison,
        scorer_errors=scorer_errors,
        candidate_error=model_errors.get("candidate"),
        baseline_error=model_errors.get("baseline"),
        setup_errors=setup_errors,
    )
    # JSON has no NaN or infinity: such a value becomes null and its field is named in non_finite.
    decision_metrics, non_finite = nulls_for_non_finite(verdict.metrics)
    decision: dict[str, Any] = {
        "passed": verdict.passed,
        "reasons": verdict.reasons,
        "primary_metric": verdict.primary_metric,
        "n_prompts": verdict.n_prompts,
        "prompts_total": len(prompts),
        "n_prompts_excluded": len(verdict.excluded_prompts),
        "excluded_prompts": verdict.excluded_prompts,
        "safety_flagged_images": safety_flagged_images,
        "safety_flagged_prompts": verdict.safety_flagged_prompts,
        "safety_sign_test": verdict.safety_sign_test.model_dump(),
        "candidate_model": config.candidate_model,
        "baseline_model": config.baseline_model,
        "baseline_version": config.baseline_version,
        "metrics": decision_metrics,
        "non_finite": non_finite,
        "created_at": _utc_now(),
        "confidence": config.gate.confidence,
        "scheduler": {"requested": config.scheduler, **{r: s["summary"] for r, s in schedulers.items()}},
        "images_per_prompt": config.images_per_prompt,
        "seed": config.seed,
        "scorer_errors": scorer_errors,
        "config_hash": config.config_hash(),
    }
    flat = flat_metrics(verdict.metrics, verdict.passed, verdict.n_prompts)
    flat["n_prompts_excluded"] = float(len(verdict.excluded_prompts))

    # 4. Artifacts.
    paths = {
        "scores": storage.join(out, "scores.parquet"),
        "decision": storage.join(out, "decision.json"),
        "metrics": storage.join(out, "metrics.json"),
        "report": storage.join(out, "report.html"),
    }
    storage.write_parquet(scores, paths["scores"])
    write_json_strict(paths["decision"], decision)
    write_json_strict(paths["metrics"], flat)
    storage.write_text(storage.join(out, "evaluate_config.yaml"), config.to_yaml())
    per_prompt = comparison.per_prompt_diff.get(config.gate.primary_metric) if comparison else None
    html_text = render_report(
        decision,
        scores,
        per_prompt,
        top_k=config.report_top_k,
        gate_roles=gate_roles(config.gate),
        settings={
            "images per prompt": config.images_per_prompt,
            "seed": config.seed,
            "sampler": f"{sampler_label(config.scheduler, schedulers)}, {config.num_inference_steps} steps, "
            f"CFG {config.guidance_scale}",
            "resolution": config.resolution or "model default",
            "min prompts": config.gate.min_prompts,
            "min win-rate CI low": config.gate.min_win_rate_ci_low,
            "config hash": config.config_hash(),
        },
    )
    storage.write_text(paths["report"], html_text)

    # 5. Telemetry.
    metric_mean = telemetry.gauge("metric_mean", "Mean score per metric and model", ("metric", "model"))
    win_rate = telemetry.gauge("win_rate_ratio", "Candidate win rate per metric", ("metric",))
    for name, m in verdict.metrics.items():
        for role in ("candidate", "baseline"):
            value = m.get(f"{role}_mean")
            if value is not None and math.isfinite(float(value)):
                metric_mean.labels(metric=name, model=role).set(float(value))
        if m.get("win_rate") is not None and math.isfinite(float(m["win_rate"])):
            win_rate.labels(metric=name).set(float(m["win_rate"]))
    telemetry.gauge("gate_passed", "1 if the candidate passed the gate, else 0").set(
        1.0 if verdict.passed else 0.0
    )
    telemetry.gauge("prompts_compared", "Prompts compared").set(verdict.n_prompts)
    duration = time.perf_counter() - started
    phase_seconds.labels(phase="total").set(duration)
    telemetry.push()
    log.info("gate %s: %s", "PASSED" if verdict.passed else "FAILED", "; ".join(verdict.reasons))
    return EvaluateResult(
        passed=verdict.passed,
        reasons=verdict.reasons,
        n_prompts=verdict.n_prompts,
        n_images=len(scores),
        metrics=flat,
        decision_path=paths["decision"],
        scores_path=paths["scores"],
        report_path=paths["report"],
        metrics_path=paths["metrics"],
        duration_s=duration,
    )


class SchedulerMismatchError(RuntimeError):
    """With ``scheduler: default``, the baseline would sample with another scheduler than the candidate."""


def _scheduler_recorder(
    role: str, requested: str, schedulers: dict[str, dict[str, Any]]
) -> Callable[[Any], None]:
    """A ``generate_images`` hook that records the scheduler ``role``'s pipeline samples with, and stops
    the baseline's generation when, with the models' own schedulers, it differs from the candidate's."""
    from components.evaluate.generate import scheduler_config, scheduler_summary

    def record(pipe: Any) -> None:
        schedulers[role] = {
            "summary": scheduler_summary(pipe.scheduler),
            "config": scheduler_config(pipe.scheduler),
        }
        if role != "baseline" or "candidate" not in schedulers:
            return
        difference = scheduler_difference(schedulers["candidate"], schedulers["baseline"])
        if not difference:
            return
        if requested == "default":
            raise SchedulerMismatchError(
                "scheduler is 'default' and the two models' own schedulers differ "
                f"({difference}); their images would differ by sampler as well as by weights. Name one "
                "sampler in the evaluate config's scheduler (e.g. dpm_solver_multistep) so both models use it"
            )
        get_logger("evaluate").warning(
            "scheduler %r: built from each model's own scheduler config, which differ (%s)",
            requested,
            difference,
        )

    return record


def scheduler_difference(candidate: dict[str, Any], baseline: dict[str, Any], show: int = 6) -> str:
    """How two recorded schedulers differ, naming both ("" when class and config agree)."""
    c_class, b_class = candidate["summary"]["class"], baseline["summary"]["class"]
    c_cfg, b_cfg = candidate["config"], baseline["config"]
    keys = sorted(k for k in set(c_cfg) | set(b_cfg) if c_cfg.get(k) != b_cfg.get(k))
    if c_class == b_class and not keys:
        return ""
    text = f"candidate {c_class}, baseline {b_class}"
    if keys:
        shown = "; ".join(f"{k}: candidate {c_cfg.get(k)!r}, baseline {b_cfg.get(k)!r}" for k in keys[:show])
        more = f"; and {len(keys) - show} more" if len(keys) > show else ""
        text += f"; config differs in {shown}{more}"
    return text


def sampler_label(requested: str, schedulers: dict[str, dict[str, Any]]) -> str:
    """The report's sampler setting: the scheduler class each model used, and what the config asked for."""
    classes = {role: s["summary"]["class"] for role, s in schedulers.items()}
    if not classes:
        return requested
    if len(set(classes.values())) == 1:
        return f"{next(iter(classes.values()))} ({requested})"
    return ", ".join(f"{role} {cls}" for role, cls in classes.items()) + f" ({requested})"


def nulls_for_non_finite(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``value`` with every NaN or infinite number replaced by None (JSON null), and the dotted paths of
    those fields (``"pickscore.mean_diff"``), for strict JSON."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        found: list[str] = []
        for key, item in value.items():
            out[key], sub = nulls_for_non_finite(item, f"{path}.{key}" if path else str(key))
            found.extend(sub)
        return out, found
    if isinstance(value, list | tuple):
        items = [nulls_for_non_finite(item, f"{path}[{i}]") for i, item in enumerate(value)]
        return [item for item, _ in items], [p for _, sub in items for p in sub]
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(float(value)):
        return None, [path]
    return value, []


def write_json_strict(uri: str, obj: Any) -> None:
    """Write standard JSON: a NaN or infinity raises instead of becoming a bare ``NaN`` other parsers reject."""
    storage.write_text(uri, json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")


def flat_metrics(metrics: dict[str, dict[str, Any]], passed: bool, n_prompts: int) -> dict[str, float]:
    """metrics.json: ``{metric}_{statistic}`` -> float, plus ``gate_passed`` and ``n_prompts``.

    Non-finite values are left out (JSON has no NaN, and KFP Metrics rejects it); decision.json keeps them.
    """
    flat: dict[str, float] = {"gate_passed": 1.0 if passed else 0.0, "n_prompts": float(n_prompts)}
    for name, stats in metrics.items():
        for key, value in stats.items():
            if key in ("higher_is_better", "n_prompts") or value is None:
                continue
            if math.isfinite(float(value)):
                flat[f"{name}_{key}"] = float(value)
    return flat


def gate_roles(policy: GatePolicy) -> dict[str, str]:
    """A short label per metric saying what the gate does with it (shown in the report's table)."""
    roles: dict[str, list[str]] = {}
    roles.setdefault(policy.primary_metric, []).append(
        f"primary: win-rate CI low > {policy.min_win_rate_ci_low:.0%}"
    )
    for name, limit in policy.max_regression.items():
        roles.setdefault(name, []).append(f"max drop {limit:g}")
    for name, floor in policy.floors.items():
        roles.setdefault(name, []).append(f"floor {floor:g}")
    return {name: "; ".join(labels) for name, labels in roles.items()}


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing memory is best effort
        pass


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()
