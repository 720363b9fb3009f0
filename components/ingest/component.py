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
    incremental: bool = False,
) -> None:
    """Read, validate and de-duplicate the users' feedback events into events.parquet.

    Incremental runs (opt-in): with ``outputs_root`` set, the step copies its events to
    ``<outputs_root>/ingest/<stream>/runs/<run id>/`` (the stream is a hash of the sources and format) and
    points ``latest.json`` beside it there; an incremental run starts from that copy: it re-reads the
    sources, keeps the previous events (also those no longer in the sources), adds new ids, and skips the
    image checks of known URIs. A record whose content changed in the source conflicts with its previous
    copy (quarantined): corrections and deletions need a run with incremental off. Importers write images
    to a store beside the pointer, so image URIs stay stable.

    Args:
        feedback_sources: Local paths, globs or gs:// prefixes of JSONL / Parquet / CSV feedback exports.
        events: Output directory: events.parquet, quarantine.parquet, stats.json.
        metrics: Counts of the run (read, accepted, duplicates, quarantined).
        source_format: `auto` (by extension) or a named importer.
        run_id: The pipeline run id (telemetry grouping key and run record directory).
        pushgateway: Prometheus Pushgateway address; empty pushes nothing.
        outputs_root: Root of the run records; empty writes none.
        incremental: Start from the last run's events for these sources (needs outputs_root); false
            (default) reads every source from scratch, so corrections and deletions take effect, and makes
            this run's output the new starting point.
    """
    import hashlib
    import json

    from components.ingest.step import IngestConfig, run
    from components.shared import storage
    from pipelines.runtime import prepare_step_env, record_step

    prepare_step_env(run_id, pushgateway)
    sources = [str(s) for s in feedback_sources]
    settings: dict = {"sources": sources, "output_dir": events.path, "source_format": source_format}
    pointer = ""
    if outputs_root:
        stream = hashlib.sha256(json.dumps([sorted(sources), source_format]).encode()).hexdigest()[:16]
        pointer = storage.join(outputs_root, "ingest", stream, "latest.json")
        settings["image_store"] = storage.join(outputs_root, "ingest", stream, "images")
        if incremental and storage.exists(pointer):
            settings["previous_output"] = storage.read_json(pointer)["events"]
    result = run(IngestConfig.from_dict(settings))
    if pointer:
        # The starting point is a copy this step writes itself under outputs_root: the artifact is uploaded
        # by KFP only after the step returns (and may live where another pod cannot read it, minio:// say).
        snapshot = storage.join(outputs_root, "ingest", stream, "runs", run_id)
        for name in ("events.parquet", "stats.json"):
            storage.write_bytes(
                storage.join(snapshot, name), storage.read_bytes(storage.join(events.path, name))
            )
        storage.write_json(
            pointer, {"events": snapshot, "run_id": run_id, "total_events": result.total_events}
        )
    counts = {k: getattr(result, k) for k in ("read", "accepted", "duplicates", "quarantined")}
    for name, value in counts.items():
        metrics.log_metric(name, value)
    events.metadata.update(counts)
    record_step(outputs_root, run_id, "ingest", counts)
