"""``dkto generate`` (images for a prompt set, deterministic seeds) and ``dkto evaluate`` (the metric gate)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``generate`` and ``evaluate`` commands to the ``dkto`` CLI."""

    @app.command("generate")
    def generate_command(
        model: str = typer.Option(..., "--model", help="Diffusers model directory or gs:// URI."),
        prompts: str = typer.Option(
            ...,
            "--prompts",
            help="Text (one per line), JSONL or Parquet file with prompts, or a val.parquet.",
        ),
        out: str = typer.Option(
            ..., "--out", help="Output directory or gs:// prefix (PNGs + index.parquet)."
        ),
        images_per_prompt: int = typer.Option(4, "--images-per-prompt", min=1, help="Images per prompt."),
        seed: int = typer.Option(0, "--seed", help="Base seed; each (prompt, image) gets its own noise."),
        steps: int = typer.Option(25, "--steps", min=1, help="Denoising steps."),
        guidance_scale: float = typer.Option(7.5, "--guidance-scale", help="Classifier-free guidance scale."),
        scheduler: str = typer.Option(
            "dpm_solver_multistep", "--scheduler", help="Sampler name or 'default'."
        ),
        resolution: int | None = typer.Option(None, "--resolution", help="Pixels (default: the model's)."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward batch."),
        max_prompts: int | None = typer.Option(None, "--max-prompts", help="Use only the first N prompts."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
        dtype: str = typer.Option("auto", "--dtype", help="auto, bf16, fp16 or fp32."),
    ) -> None:
        """Generate images for a prompt set with fixed per-image seeds (same noise for every model)."""
        from components.evaluate.generate import PromptFileError, generate_images, load_prompts

        try:
            prompt_list = load_prompts(prompts, max_prompts)
        except PromptFileError as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(code=2) from None
        results = generate_images(
            model,
            prompt_list,
            out,
            images_per_prompt=images_per_prompt,
            seed=seed,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            scheduler=scheduler,
            resolution=resolution,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
        )
        typer.echo(f"{len(results)} images ({len(prompt_list)} prompts x {images_per_prompt}) -> {out}")

    @app.command("evaluate")
    def evaluate_command(
        config: str | None = typer.Option(
            None, "--config", help="YAML file (local or gs://) with EvaluateConfig fields."
        ),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a field: key=value (repeatable), e.g. gate.min_prompts=50."
        ),
        fail_on_reject: bool = typer.Option(
            False, "--fail-on-reject", help="Exit with code 1 when the candidate fails the gate."
        ),
    ) -> None:
        """Compare a candidate with the production model on held-out prompts and apply the metric gate."""
        from components.evaluate.generate import PromptFileError
        from components.evaluate.step import EvaluateConfig, run
        from components.shared.config import ConfigError

        try:
            cfg = EvaluateConfig.from_yaml(config, set_)
            result = run(cfg)
        except (ConfigError, PromptFileError) as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(code=2) from None
        typer.echo(f"gate {'PASSED' if result.passed else 'FAILED'} on {result.n_prompts} prompts")
        for reason in result.reasons:
            typer.echo(f"  - {reason}")
        typer.echo(f"decision: {result.decision_path}")
        typer.echo(f"report:   {result.report_path}")
        if fail_on_reject and not result.passed:
            raise typer.Exit(code=1)
