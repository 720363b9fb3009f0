"""``python -m components.train --config FILE [--set key=value ...] [--result-json URI]``.

The module entry point ``accelerate launch -m components.train`` runs in every training process (see
:mod:`components.train.launcher`). Each process builds the same ``TrainConfig`` and calls ``run``; the
main process (``RANK`` 0) writes the ``TrainResult`` as JSON to ``--result-json`` for the launcher.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, train, and write the result on the main process."""
    parser = argparse.ArgumentParser(prog="python -m components.train", description=__doc__)
    parser.add_argument("--config", required=True, help="TrainConfig YAML (local path or gs://).")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="Override a field: key=value."
    )
    parser.add_argument("--result-json", default=None, help="Where the main process writes the TrainResult.")
    args = parser.parse_args(argv)

    from components.shared import storage
    from components.train.step import TrainConfig, run

    config = TrainConfig.from_yaml(args.config, args.overrides)
    result = run(config)
    if args.result_json and os.environ.get("RANK", "0") == "0":
        storage.write_text(args.result_json, result.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
