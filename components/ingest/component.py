"""KFP component of the ingest step: feedback sources -> an events Dataset.

The Dataset artifact is a directory holding ``events.parquet``, ``quarantine.parquet`` and ``stats.json``
(see contracts.md). Module level imports only the standard library and kfp; the step's code is imported
inside the function, so compiling the pipeline never imports pandas or torch.
"""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest_feedback(
    feedback_sources: list,
    events: Output[Dataset],
    metrics: Output[Metrics],
    source_format: str = "auto",
    run_id: str = "local",
    pushgateway: str = "",
    outputs_root: str = "",
) -> None:
    """Read, validate and de-duplicate the users' feedback events into events.parquet.

    Args:
        feedback_sources: Local paths, globs or gs:// prefixes of JSONL / Parquet / CSV feedback exports.
        events: Output directory: events.parquet, quarantine.parquet, stats.json.
        metrics: Counts of the run (read, accepted, duplicates, quarantined).
        source_format: `auto` (by extension) or a named importer.
        run_id: The pipeline run id (telemetry grouping key and run record directory).
        pushgateway: Prometheus Pushgateway address; empty pushes nothing.
        outputs_root: Root of the run records; empty writes none.
    """
    from components.ingest.step import IngestConfig, run
    from pipelines.runtime import prepare_step_env, record_step

    prepare_step_env(run_id, pushgateway)
    config = IngestConfig.from_dict(
        {
            "sources": [str(s) for s in feedback_sources],
            "output_dir": events.path,
            "source_format": source_format,
        }
    )
    result = run(config)
    counts = {k: getattr(result, k) for k in ("read", "accepted", "duplicates", "quarantined")}
    for name, value in counts.items():
        metrics.log_metric(name, value)
    events.metadata.update(counts)
    record_step(outputs_root, run_id, "ingest", counts)
