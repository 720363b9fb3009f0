"""The run's summary: what each step recorded plus the final status, written once the run ends.

Plain Python with no kfp import: it runs inside the exit task, where kfp's runtime-only ``kfp.dsl`` cannot
define components (see :mod:`pipelines.outcome` for the KFP exit task around it).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

SUCCEEDED = "SUCCEEDED"


def summarize_run(
    *,
    state: str,
    run_id: str,
    outputs_root: str,
    error_message: str = "",
    failed_task: str = "",
    pushgateway: str = "",
    model_name: str = "",
) -> dict[str, Any]:
    """Write ``runs/<run_id>/summary.json`` from the steps' records and push the run's metrics."""
    from components.shared import storage
    from components.shared.telemetry import StepTelemetry
    from pipelines.runtime import run_record_dir

    run_dir = run_record_dir(outputs_root, run_id)
    steps: dict[str, Any] = {}
    for uri in storage.list_files(storage.join(run_dir, "steps")):
        if uri.endswith(".json"):
            record = storage.read_json(uri)
            steps[str(record.get("step", uri.rsplit("/", 1)[-1][:-5]))] = record
    promoted = steps.get("promote", {}).get("outcome") == "promoted"
    summary = {
        "run_id": run_id,
        "state": state,
        "succeeded": state == SUCCEEDED,
        "error_message": error_message or None,
        # KFP names the exit handler's group as the "task" even on success; only a failure has a culprit.
        "failed_task": (failed_task or None) if state != SUCCEEDED else None,
        "model_name": model_name or None,
        "steps_recorded": sorted(steps),
        "gate_passed": steps.get("evaluate", {}).get("passed"),
        "registered_version": steps.get("register", {}).get("version"),
        "promoted": promoted,
        "production_after": steps.get("promote", {}).get("production_after"),
        "steps": steps,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    storage.write_json(storage.join(run_dir, "summary.json"), summary)

    telemetry = StepTelemetry("pipeline", run_id=run_id, pushgateway=pushgateway or None)
    telemetry.gauge("run_succeeded", "1 if the retraining run succeeded, else 0").set(
        1.0 if summary["succeeded"] else 0.0
    )
    telemetry.gauge("run_promoted", "1 if the run moved production to its candidate, else 0").set(
        1.0 if promoted else 0.0
    )
    telemetry.gauge(
        "run_finished_timestamp_seconds", "When the run finished (Unix time)"
    ).set_to_current_time()
    telemetry.push()
    telemetry.log.info(
        "run %s finished %s (steps recorded: %s; promoted: %s)",
        run_id,
        state,
        summary["steps_recorded"],
        promoted,
    )
    return summary
