"""The ``dkto`` command line: one sub-command per step, plus the pipeline commands.

Each step package contributes its commands through ``components/<step>/cli.py:register(app)``, and the
pipeline package through ``pipelines/commands.py:register(app)``; this module only assembles them, so
adding a step never means editing a central list of flags.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="dkto",
    help="Diffusion-KTO pipelines: ingest feedback, label, fine-tune, evaluate, promote.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order is the order of `dkto --help`.
_COMMAND_MODULES = (
    "components.ingest.cli",
    "components.label.cli",
    "components.train.cli",
    "components.evaluate.cli",
    "components.promote.cli",
    "pipelines.commands",
    "pipelines.demo.cli",
    "components.shared.cli",
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            # Only a missing *module of ours* is tolerated (a step not built yet); a missing dependency is not.
            if err.name != name:
                raise
            continue
        module.register(app)


_register_all()


def main() -> None:
    """Entry point of the ``dkto`` console script.

    A ConfigError is the user's input, and its message names the field and the fix: print that one line
    (exit code 2, as click's usage errors) rather than a traceback through typer and pydantic.
    """
    from components.shared.config import ConfigError

    try:
        app()
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
