"""``dkto ingest``: feedback sources -> events.parquet, quarantine.parquet, stats.json."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``ingest`` command to the ``dkto`` CLI."""

    @app.command("ingest")
    def ingest_command(
        config: str | None = typer.Option(
            None, "--config", help="YAML file (local or gs://) with IngestConfig fields."
        ),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a field: key=value (repeatable), e.g. sources=[a.jsonl]."
        ),
    ) -> None:
        """Validate, de-duplicate and quarantine feedback events (see components/ingest/README.md)."""
        from components.ingest.pipeline import IngestError
        from components.ingest.step import IngestConfig, run
        from components.shared.config import ConfigError

        try:
            cfg = IngestConfig.from_yaml(config, set_)
            result = run(cfg)
        except (ConfigError, IngestError) as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(code=2) from None
        typer.echo(
            f"read {result.read} = accepted {result.accepted} + duplicates {result.duplicates} + "
            f"quarantined {result.quarantined} {result.quarantined_by_reason}"
        )
        typer.echo(f"events: {result.events_uri} ({result.total_events} rows, watermark {result.watermark})")
        typer.echo(f"quarantine: {result.quarantine_uri}")
