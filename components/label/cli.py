"""``dkto label``: events.parquet -> train.parquet, val.parquet, stats.json, data_card.md."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``label`` command to the ``dkto`` CLI."""

    @app.command("label")
    def label_command(
        config: str | None = typer.Option(
            None, "--config", help="YAML file (local or gs://) with LabelConfig fields."
        ),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a field: key=value (repeatable), e.g. policy=pairwise."
        ),
    ) -> None:
        """Label images desirable/undesirable under a policy and split prompts into train/val."""
        from components.label.pipeline import LabelError
        from components.label.step import LabelConfig, run
        from components.shared.config import ConfigError

        try:
            result = run(LabelConfig.from_yaml(config, set_))
        except (ConfigError, LabelError) as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(code=2) from None
        typer.echo(f"policy {result.policy}: train {result.train}, val {result.val}")
        typer.echo(
            f"weights: desirable {result.desirable_weight:.4g}, undesirable {result.undesirable_weight:.4g}"
        )
        if result.dropped_by_reason:
            typer.echo(f"dropped: {result.dropped_by_reason}")
        typer.echo(f"wrote {result.train_uri}, {result.val_uri}, {result.data_card_uri}")
