"""``dkto metrics`` commands: operations on the Prometheus metrics the steps push."""

from __future__ import annotations

import os

import typer


def register(app: typer.Typer) -> None:
    """Add the ``dkto metrics`` command group to the root CLI."""
    metrics = typer.Typer(
        help="Prometheus metrics of pipeline runs (Pushgateway groups).", no_args_is_help=True
    )

    @metrics.command("cleanup")
    def cleanup(
        run_id: str = typer.Option(..., "--run-id", help="The pipeline run whose metric groups to delete."),
        pipeline: str | None = typer.Option(None, help="Only groups of this pipeline name."),
        pushgateway: str | None = typer.Option(
            None, help="Pushgateway URL (default: the DKTO_PUSHGATEWAY environment variable)."
        ),
    ) -> None:
        """Delete every step's Pushgateway group of one run (run clean-up)."""
        from components.shared.telemetry import delete_run_groups

        gateway = pushgateway or os.environ.get("DKTO_PUSHGATEWAY")
        if not gateway:
            raise typer.BadParameter("no Pushgateway: pass --pushgateway URL or set DKTO_PUSHGATEWAY")
        deleted = delete_run_groups(gateway, run_id, pipeline=pipeline)
        for labels in deleted:
            typer.echo("deleted " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
        typer.echo(f"{len(deleted)} group(s) of run {run_id} deleted from {gateway}")

    app.add_typer(metrics, name="metrics")
