"""KFP component of the evaluation step: candidate vs production model on the same prompts and seeds.

Outputs an ``evaluation`` directory (scores.parquet, decision.json, report.html, metrics.json, images/),
the self-contained report as an HTML artifact and the flat metrics as a Metrics artifact, so the KFP UI
shows both. Module level imports only the standard library and kfp.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.shared.images import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def evaluate_candidate(
    candidate: Input[Model],
    labeled: Input[Dataset],
    baseline_model: str,
    baseline_version: str,
    evaluation: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    eval_prompts: str = "",
    images_per_prompt: int = 4,
    num_inference_steps: int = 30,
    seed: int = 0,
    scorers: list = ["pickscore"],  # noqa: B006 - KFP reads the default from the signature; never mutated
    scorer_models: dict = {},  # noqa: B006
    gate_primary_metric: str = "pickscore",
    gate_min_win_rate_ci_low: float = 0.5,
    gate_min_prompts: int = 20,
    gate_max_regression: dict = {},  # noqa: B006
    gate_floors: dict = {},  # noqa: B006
    eval_options: dict = {},  # noqa: B006
    run_id: str = "local",
    pushgateway: str = "",
    outputs_root: str = "",
) -> None:
    """Generate with both models, score, compare per prompt, and decide whether the candidate may ship.

    Args:
        candidate: The trained model.
        labeled: The label step's output (its val.parquet is the default prompt set).
        baseline_model: The production model's files, or the base model when nothing is in production.
        baseline_version: The production version compared against; empty when nothing is in production.
        evaluation: Output directory: scores.parquet, decision.json, report.html, metrics.json, images/.
        report: The HTML report (shown in the KFP UI).
        metrics: Flat metrics (means, mean differences, win rates and their intervals).
        eval_prompts: Prompt file (text, JSONL, Parquet); empty uses the held-out val.parquet.
        images_per_prompt: Images per prompt and model.
        num_inference_steps: Denoising steps per image.
        seed: Base seed; both models get the same noise.
        scorers: Scorer names.
        scorer_models: Per scorer, the model path or id to load.
        gate_primary_metric: Metric whose win rate decides.
        gate_min_win_rate_ci_low: The primary win rate's lower CI bound must be above this.
        gate_min_prompts: Fewest prompts the gate accepts.
        gate_max_regression: Per metric, the largest allowed drop against production.
        gate_floors: Per metric, an absolute floor for the candidate.
        eval_options: More EvaluateConfig fields by name (for example {"guidance_scale": 5.0}).
        run_id: The pipeline run id.
        pushgateway: Prometheus Pushgateway address; empty pushes nothing.
        outputs_root: Root of the run records; empty writes none.
    """
    import json

    from components.evaluate.step import EvaluateConfig, run
    from components.shared import storage
    from pipelines.runtime import prepare_step_env, record_step

    prepare_step_env(run_id, pushgateway)
    fields = {
        "candidate_model": candidate.path,
        "baseline_model": baseline_model,
        "baseline_version": baseline_version or None,
        "prompts": eval_prompts or storage.join(labeled.path, "val.parquet"),
        "images_per_prompt": int(images_per_prompt),
        "num_inference_steps": int(num_inference_steps),
        "seed": int(seed),
        "scorers": [str(s) for s in scorers],
        "scorer_models": dict(scorer_models),
        "gate": {
            "primary_metric": gate_primary_metric,
            "min_win_rate_ci_low": gate_min_win_rate_ci_low,
            "min_prompts": int(gate_min_prompts),
            "max_regression": dict(gate_max_regression),
            "floors": dict(gate_floors),
        },
        "output_dir": evaluation.path,
        "run_id": run_id,
    }
    # eval_options may add fields, never replace these: overriding the baseline or the gate through a free-form
    # dict would let a run compare against another model while promotion still checks the real production.
    clash = sorted(set(eval_options) & set(fields))
    if clash:
        raise ValueError(
            f"eval_options may not set {clash}: they come from the pipeline's own parameters "
            "(baseline from the registry, gate_* parameters, eval_prompts, images_per_prompt, seed, scorers)"
        )
    config = EvaluateConfig.from_dict({**fields, **dict(eval_options)})
    result = run(config)
    with open(report.path, "w", encoding="utf-8") as out:
        out.write(storage.read_text(result.report_path))
    for name, value in result.metrics.items():
        metrics.log_metric(name, float(value))
    evaluation.metadata.update({"passed": result.passed, "reasons": json.dumps(result.reasons)})
    record_step(
        outputs_root,
        run_id,
        "evaluate",
        {"passed": result.passed, "reasons": result.reasons, "n_prompts": result.n_prompts},
    )
