"""KFP component of the label step: events -> a labeled Dataset (train.parquet, val.parquet, stats.json).

Module level imports only the standard library and kfp; the step's code is imported inside the function.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components.shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def label_feedback(
    events: Input[Dataset],
    labeled: Output[Dataset],
    metrics: Output[Metrics],
    data_card: Output[Markdown],
    labeling_policy: str = "votes",
    val_fraction: float = 0.1,
    run_id: str = "local",
    pushgateway: str = "",
    outputs_root: str = "",
) -> None:
    """Label each image desirable or undesirable and split prompts into train and val.

    Args:
        events: The ingest output directory (events.parquet).
        labeled: Output directory: train.parquet, val.parquet, stats.json, data_card.md.
        metrics: Class counts of the train and val splits.
        data_card: The data card (class balance, drops, policy) shown in the KFP UI.
        labeling_policy: `votes`, `pairwise`, `score_threshold` or `user_filter`.
        val_fraction: Fraction of prompts held out for validation.
        run_id: The pipeline run id.
        pushgateway: Prometheus Pushgateway address; empty pushes nothing.
        outputs_root: Root of the run records; empty writes none.
    """
    from components.label.step import LabelConfig, run
    from components.shared import storage
    from pipelines.runtime import prepare_step_env, record_step

    prepare_step_env(run_id, pushgateway)
    config = LabelConfig.from_dict(
        {
            "events": events.path,
            "output_dir": labeled.path,
            "policy": labeling_policy,
            "val_fraction": val_fraction,
        }
    )
    result = run(config)
    figures = {
        "train_desirable": result.train.get("desirable", 0),
        "train_undesirable": result.train.get("undesirable", 0),
        "val_desirable": result.val.get("desirable", 0),
        "val_undesirable": result.val.get("undesirable", 0),
        "desirable_weight": result.desirable_weight,
        "undesirable_weight": result.undesirable_weight,
    }
    for name, value in figures.items():
        metrics.log_metric(name, value)
    labeled.metadata.update({"policy": result.policy, **figures})
    with open(data_card.path, "w", encoding="utf-8") as card:
        card.write(storage.read_text(result.data_card_uri))
    record_step(outputs_root, run_id, "label", {"policy": result.policy, **figures})
