"""Helpers that KFP component functions import at run time (inside the function, never at module level).

A lightweight component's body runs in the step image (or a local subprocess) with the project installed;
these helpers keep each body short: telemetry environment, the run's record directory, and artifact
locations that mean the same thing under ``kfp.local`` and on a cluster.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from components.shared import storage


def prepare_step_env(run_id: str, pushgateway: str) -> None:
    """Point every StepTelemetry of this process at the run (``DKTO_RUN_ID``) and the Pushgateway.

    Refuses a run id that is still KFP's placeholder: a backend that does not substitute it (KFP < 2.4)
    would give every run the same id, hence the same checkpoint directory and run records.
    """
    if run_id.startswith("{{$"):
        raise RuntimeError(
            f"run_id is the unsubstituted placeholder {run_id!r}: this Kubeflow Pipelines backend does not "
            "fill in the pipeline job id (it needs KFP 2.4 or later); runs would share checkpoints"
        )
    if run_id:
        os.environ["DKTO_RUN_ID"] = run_id
    if pushgateway:
        os.environ["DKTO_PUSHGATEWAY"] = pushgateway


def run_record_dir(outputs_root: str, run_id: str) -> str:
    """Where a run's records live: ``<outputs_root>/runs/<run_id>`` (local or gs://)."""
    return storage.join(outputs_root, "runs", run_id or "local")


def record_step(outputs_root: str, run_id: str, step: str, data: dict[str, Any]) -> None:
    """Write one step's figures to ``runs/<run_id>/steps/<step>.json`` for the run summary."""
    if not outputs_root:
        return
    payload = {"step": step, "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(), **data}
    storage.write_json(storage.join(run_record_dir(outputs_root, run_id), "steps", f"{step}.json"), payload)


def durable_uri(uri: str, path: str) -> str:
    """The location a later run can read an artifact from: its gs:// URI on a cluster, else its local path.

    Under ``kfp.local`` an artifact's URI and path are the same local path; on a cluster ``path`` is a
    mount or a download inside the pod that disappears with it, so the registry must record ``uri``.
    """
    return uri if storage.is_gcs(uri) else path
