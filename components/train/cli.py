"""``dkto train``: fine-tune a model with Diffusion-KTO (or the SFT / DPO baselines) from a YAML config."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the ``dkto`` app."""

    @app.command("train")
    def train_command(
        config: str = typer.Option(
            None, "--config", help="YAML file (local or gs://) with TrainConfig fields."
        ),
        overrides: list[str] = typer.Option(
            [], "--set", help="key=value override, repeatable (e.g. beta=5000)."
        ),
    ) -> None:
        """Fine-tune a diffusion model on liked/disliked images (Diffusion-KTO) and write the model."""
        from components.train.step import TrainConfig, run

        # A file that cannot be read is a ConfigError naming it, which `dkto` prints as one line (pipelines/cli.py).
        cfg = TrainConfig.from_yaml(config, overrides)
        result = run(cfg)
        if result.preempted:
            typer.echo(f"stopped by SIGTERM at step {result.steps}; resumable from {result.last_checkpoint}")
            return
        typer.echo(
            f"trained {result.steps} steps ({cfg.objective}) at {result.samples_per_second:.1f} images/s; "
            f"final loss {result.final_loss}; reward margin {result.reward_margin}; model: {result.output_dir}"
        )
