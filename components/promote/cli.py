"""``dkto register``, ``dkto promote``, ``dkto rollback`` and ``dkto models``: the registry from a shell.

Each command prints what it changed. Exit codes: 0 done (a gate rejection is a done promotion step),
1 the registry or an input failed, 2 a bad config, 3 a promotion conflict (production moved since the gate
evaluated; re-evaluate against the new production).
"""

from __future__ import annotations

import json
import os

import typer

from components.promote.step import DEFAULT_REGISTRY_URI

REGISTRY_HELP = (
    "Model registry: sqlite:///path/mlflow.db (embedded) or http://host:port (MLflow server). "
    "Default: $DKTO_REGISTRY_URI, else " + DEFAULT_REGISTRY_URI
)


def _default_registry() -> str:
    return os.environ.get("DKTO_REGISTRY_URI", DEFAULT_REGISTRY_URI)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code=code)


def format_versions_table(versions: list, primary_metric: str | None = None) -> str:
    """A readable table of versions: aliases, gate verdict and numbers, lineage and audit trail."""
    rows = [("version", "aliases", "gate", "metric", "mean_diff", "win_rate", "run", "registered", "notes")]
    for v in versions:
        tags = v.tags
        metric = primary_metric or tags.get("gate.primary_metric", "")
        notes = []
        if tags.get("replaced_by_version"):
            notes.append(f"replaced by v{tags['replaced_by_version']} ({tags.get('replaced_by', 'promote')})")
        if tags.get("rolled_back") == "true":
            reason = tags.get("rolled_back.reason")
            notes.append("rolled back" + (f": {reason}" if reason else ""))
        if tags.get("rollback.from_version"):
            notes.append(f"restored from v{tags['rollback.from_version']}")
        if tags.get("promotion") == "conflict":
            notes.append("promotion conflict")
        if tags.get("gate") == "rejected":
            try:
                notes.append("; ".join(json.loads(tags.get("gate.reasons", "[]"))))
            except ValueError:
                notes.append(tags.get("gate.reasons", ""))
        rows.append(
            (
                v.version,
                ",".join(v.aliases) or "-",
                tags.get("gate", "-"),
                metric or "-",
                tags.get(f"gate.{metric}.mean_diff", "-"),
                tags.get(f"gate.{metric}.win_rate", "-"),
                tags.get("pipeline_run_id", "-"),
                tags.get("registered_at", "-"),
                " | ".join(n for n in notes if n) or "",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def register(app: typer.Typer) -> None:
    """Add the promote step's commands to the ``dkto`` CLI."""

    @app.command("register")
    def register_command(
        config: str | None = typer.Option(None, "--config", help="YAML file with RegisterConfig fields."),
        set_: list[str] = typer.Option([], "--set", help="Override a field: key=value (repeatable)."),
    ) -> None:
        """Register a candidate model as a new version (files verified first), tagged with lineage and gate."""
        from components.promote.registry import RegistryError
        from components.promote.step import RegisterConfig, register_candidate
        from components.shared.config import ConfigError
        from components.shared.storage import StorageError

        try:
            cfg = RegisterConfig.from_yaml(config, set_)
        except ConfigError as err:
            raise _fail(str(err), 2) from None
        try:
            result = register_candidate(cfg)
        except (ConfigError, RegistryError, StorageError) as err:
            raise _fail(str(err), 1) from None
        typer.echo(
            f"registered {result.model_name} version {result.version} (gate={result.gate}); "
            f"alias candidate -> {result.version}; files at {result.files_uri}"
        )

    @app.command("promote")
    def promote_command(
        config: str | None = typer.Option(None, "--config", help="YAML file with PromoteConfig fields."),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a field: key=value (repeatable), e.g. decision=outputs/eval."
        ),
    ) -> None:
        """Register the candidate and move production to it if the gate passed and production has not moved."""
        from components.promote.registry import RegistryError
        from components.promote.step import PromoteConfig, promote
        from components.shared.config import ConfigError
        from components.shared.storage import StorageError

        try:
            cfg = PromoteConfig.from_yaml(config, set_)
        except ConfigError as err:
            raise _fail(str(err), 2) from None
        try:
            result = promote(cfg)
        except (ConfigError, RegistryError, StorageError) as err:
            raise _fail(str(err), 1) from None
        if result.registered is not None:
            typer.echo(
                f"registered {result.model_name} version {result.version} (gate={result.registered.gate})"
            )
        typer.echo(f"{result.outcome}: {result.message}")
        for reason in result.reasons:
            typer.echo(f"  gate: {reason}")
        if result.outcome == "conflict":
            raise typer.Exit(code=3)

    @app.command("rollback")
    def rollback_command(
        model: str = typer.Option(..., "--model", help="Registered model name."),
        to: str | None = typer.Option(
            None,
            "--to",
            help="Version to restore (default: previous-production); the version the last rollback took out "
            "undoes that rollback.",
        ),
        registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
        reason: str | None = typer.Option(None, "--reason", help="Why (recorded on the restored version)."),
        set_: list[str] = typer.Option([], "--set", help="Override a RollbackConfig field: key=value."),
    ) -> None:
        """Move production back to previous-production (or --to VERSION) and record who and why."""
        from components.promote.registry import RegistryError
        from components.promote.step import RollbackConfig, rollback
        from components.shared.config import ConfigError

        fields = {
            "registry_uri": registry or _default_registry(),
            "model_name": model,
            "to_version": to,
            "reason": reason,
        }
        try:
            cfg = RollbackConfig.from_dict(fields, set_)
            result = rollback(cfg)
        except ConfigError as err:
            raise _fail(str(err), 2) from None
        except RegistryError as err:
            raise _fail(str(err), 1) from None
        typer.echo(f"{result.model_name}: {result.message}")

    @app.command("models")
    def models_command(
        name: str = typer.Argument(..., help="Registered model name."),
        registry: str | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print every version with all its tags as JSON."),
    ) -> None:
        """List a model's versions with their aliases, gate verdicts and numbers, and audit notes."""
        from dataclasses import asdict

        from components.promote.registry import RegistryError, open_registry

        try:
            versions = open_registry(registry or _default_registry()).list_versions(name)
        except RegistryError as err:
            raise _fail(str(err), 1) from None
        if as_json:
            typer.echo(json.dumps([asdict(v) for v in versions], indent=2))
            return
        if not versions:
            raise _fail(f"model {name!r} has no registered versions in {registry or _default_registry()}", 1)
        typer.echo(format_versions_table(versions))
