"""The ingest step: feedback sources -> validated, de-duplicated ``events.parquet``.

``run(IngestConfig) -> IngestResult`` reads every source (local path, glob or gs:// prefix; JSONL, Parquet,
CSV, or one of the public-format importers), validates each record against the event schema
(:mod:`components.ingest.schema`), checks the images, de-duplicates, and writes ``events.parquet``,
``quarantine.parquet`` and ``stats.json`` to ``output_dir``. Every record read ends up counted exactly
once as accepted, duplicate or quarantined; the step checks that invariant on every run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from components.shared.config import ConfigError, StepConfig

SourceFormat = Literal["auto", "jsonl", "parquet", "csv", "pickapic_v2", "diffusion_kto_csv"]


class IngestConfig(StepConfig):
    """What to ingest, where to write it, and how strict to be."""

    sources: list[str] = Field(
        description="Where the feedback events are: local files, directories, globs (`exports/*.jsonl`) "
        "or gs:// prefixes. Every file found is read."
    )
    output_dir: str = Field(
        description="Directory (local or gs://) that receives events.parquet, quarantine.parquet and stats.json."
    )
    source_format: SourceFormat = Field(
        "auto",
        description="Format of the sources: `auto` picks JSONL/Parquet/CSV by file extension; "
        "`pickapic_v2` imports Pick-a-Pic v2 Parquet shards; `diffusion_kto_csv` imports the reference "
        "Diffusion-KTO CSV (file_name/file_path, caption, label/split).",
    )
    reference_intersections: Literal["desirable", "undesirable", "exclude"] = Field(
        "desirable",
        description="For `diffusion_kto_csv` sources whose `split` column has the reference code's values: "
        "what an `intersections` image (preferred in some comparisons, not in others) becomes. "
        "`desirable` is the reference code's default policy gt_label_wi_l (the paper's 'win + "
        "intermediate'); `undesirable` is gt_label_w_il; `exclude` is gt_label_w_l (those rows are "
        "quarantined as excluded_by_policy: counted, but not against max_quarantined_fraction). "
        "`exclusive_win` is always desirable and the loss values undesirable.",
    )
    previous_output: str | None = Field(
        None,
        description="Output directory of the previous ingest run. Its events are carried over and only "
        "events with new ids are added (an incremental run); None starts from scratch.",
    )
    allowed_roots: list[str] = Field(
        default_factory=list,
        description="Image locations events may point at (local directories or gs:// prefixes). Empty allows "
        "any gs:// URI and any local path except system directories; relative paths may never escape "
        "their source file's directory with `..`.",
    )
    image_store: str | None = Field(
        None,
        description="Where importers write image bytes (Pick-a-Pic stores images inside the Parquet); "
        "default: <output_dir>/images.",
    )
    check_images: bool = Field(
        True,
        description="Verify every image exists, decodes and has a sane size, and record its SHA-256. "
        "Turn off for a fast dry run of the event records alone.",
    )
    image_check_workers: int = Field(8, ge=1, description="Parallel workers for the image checks.")
    min_image_side: int = Field(16, ge=1, description="Smallest accepted image width/height in pixels.")
    max_image_side: int = Field(8192, ge=1, description="Largest accepted image width/height in pixels.")
    max_prompt_chars: int = Field(
        2000, ge=1, description="Longest accepted prompt, in characters; longer ones are quarantined."
    )
    max_quarantined_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Fail the step if more than this fraction of the records read is quarantined, so a "
        "broken upstream export never silently trains on a handful of events.",
    )
    run_id: str | None = Field(None, description="Run id for telemetry (default: $DKTO_RUN_ID or 'local').")
    pushgateway: str | None = Field(
        None, description="Prometheus Pushgateway address (default: $DKTO_PUSHGATEWAY; none: no push)."
    )

    @model_validator(mode="after")
    def _check(self) -> IngestConfig:
        if not self.sources:
            raise ConfigError("IngestConfig.sources: give at least one local path, glob or gs:// prefix")
        if self.min_image_side > self.max_image_side:
            raise ConfigError(
                f"IngestConfig: min_image_side ({self.min_image_side}) must be <= "
                f"max_image_side ({self.max_image_side})"
            )
        return self


class IngestResult(BaseModel):
    """Where the outputs went and the run's counts (read = accepted + duplicates + quarantined)."""

    events_uri: str
    quarantine_uri: str
    stats_uri: str
    read: int
    accepted: int
    duplicates: int
    quarantined: int
    quarantined_by_reason: dict[str, int] = Field(default_factory=dict)
    new_events: int = Field(0, description="Accepted events that were not in the previous output.")
    total_events: int = Field(0, description="Rows of events.parquet (previous events included).")
    watermark: str | None = None


def run(config: IngestConfig) -> IngestResult:
    """Ingest the configured sources; see the module docstring."""
    from components.ingest.pipeline import ingest
    from components.shared.arrow_pool import step_memory_pool

    with step_memory_pool():
        return ingest(config)
