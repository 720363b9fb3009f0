"""Component functions called directly (``python_func``), the run summary, and the pipeline commands."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner


def _decision(tmp_path: Path, passed: bool) -> SimpleNamespace:
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    decision = {"passed": passed, "reasons": ["r"], "baseline_version": None, "metrics": {}}
    (evaluation / "decision.json").write_text(json.dumps(decision))
    return SimpleNamespace(path=str(evaluation), uri=str(evaluation))


@pytest.mark.parametrize("passed", [True, False])
def test_gate_passed_reads_the_decision(tmp_path: Path, passed: bool) -> None:
    from components.promote.component import gate_passed

    assert gate_passed.python_func(evaluation=_decision(tmp_path, passed)) is passed


def test_gate_passed_rejects_a_malformed_decision(tmp_path: Path) -> None:
    from components.promote.component import gate_passed
    from components.shared.config import ConfigError

    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    (evaluation / "decision.json").write_text(json.dumps({"passed": "yes"}))
    with pytest.raises(ConfigError, match="missing key"):
        gate_passed.python_func(evaluation=SimpleNamespace(path=str(evaluation)))


def test_summary_merges_step_records(tmp_path: Path) -> None:
    from pipelines.runtime import record_step
    from pipelines.summary import summarize_run

    root = str(tmp_path / "outputs")
    record_step(root, "run-7", "ingest", {"accepted": 6})
    record_step(root, "run-7", "evaluate", {"passed": True})
    record_step(root, "run-7", "register", {"version": "3"})
    summary = summarize_run(state="FAILED", run_id="run-7", outputs_root=root, failed_task="exit-handler-1")
    assert summary["steps_recorded"] == ["evaluate", "ingest", "register"]
    assert summary["succeeded"] is False and summary["failed_task"] == "exit-handler-1"
    assert summary["gate_passed"] is True and summary["registered_version"] == "3"
    assert summary["promoted"] is False
    on_disk = json.loads((tmp_path / "outputs" / "runs" / "run-7" / "summary.json").read_text())
    assert on_disk["steps"]["ingest"]["accepted"] == 6
    ok = summarize_run(state="SUCCEEDED", run_id="run-8", outputs_root=root, failed_task="exit-handler-1")
    assert ok["failed_task"] is None and ok["steps_recorded"] == []


def test_summary_pushes_run_metrics_to_a_pushgateway(tmp_path: Path) -> None:
    """The exit task's metrics reach a real Pushgateway (skipped where Debian's binary is missing)."""
    import shutil
    import socket
    import subprocess
    import time
    import urllib.request

    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway is not installed (make system-deps)")
    from pipelines.summary import summarize_run

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        summarize_run(
            state="SUCCEEDED", run_id="run-9", outputs_root=str(tmp_path), pushgateway=f"127.0.0.1:{port}"
        )
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    lines = [ln for ln in text.splitlines() if ln.startswith("dkto_pipeline_run_succeeded{")]
    assert lines and 'run_id="run-9"' in lines[0] and lines[0].endswith(" 1")


def test_compile_command_writes_reloadable_yaml(tmp_path: Path) -> None:
    from kfp import components

    from pipelines.cli import app

    out = tmp_path / "p.yaml"
    result = CliRunner().invoke(app, ["compile", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert components.load_component_from_file(str(out)).name == "diffusion-kto-retrain"


def test_run_requires_local_and_schedule_validates_cron() -> None:
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["run", "--set", "feedback_sources=[a]", "--set", "base_model=m"])
    assert result.exit_code != 0 and "--local" in result.output
    result = CliRunner().invoke(
        app, ["schedule", "--cron", "0 3 * * *", "--host", "http://127.0.0.1:1", "--set", "base_model=m"]
    )
    assert result.exit_code != 0
    assert "6 with seconds first" in str(result.exception)


@pytest.mark.parametrize("key", ["baseline_model", "baseline_version", "gate", "candidate_model"])
def test_eval_options_cannot_replace_the_baseline_or_the_gate(tmp_path: Path, key: str) -> None:
    """A free-form option must not swap the model the gate compares with (promotion checks the real one)."""
    from components.evaluate.component import evaluate_candidate

    def artifact(name: str) -> SimpleNamespace:
        return SimpleNamespace(path=str(tmp_path / name), uri=str(tmp_path / name), metadata={})

    with pytest.raises(ValueError, match=f"eval_options may not set \\['{key}'\\]"):
        evaluate_candidate.python_func(
            candidate=artifact("candidate"),
            labeled=artifact("labeled"),
            baseline_model="production-model",
            baseline_version="3",
            evaluation=artifact("evaluation"),
            report=artifact("report.html"),
            metrics=artifact("metrics"),
            eval_options={key: "something-else"},
        )


def test_ingest_component_runs_incrementally_from_the_last_output(tmp_path: Path) -> None:
    """An incremental run of the same sources carries the previous run's events over and adds the new
    ones; incremental=False reads everything again and becomes the new starting point."""
    import shutil

    from PIL import Image

    from components.ingest.component import ingest_feedback

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    feedback = tmp_path / "feedback.jsonl"
    event = {"prompt": "p", "image_uri": "red.png", "feedback": "like"}
    feedback.write_text("".join(json.dumps({**event, "event_id": f"e{i}"}) + "\n" for i in range(3)))

    class Metrics:
        def __init__(self) -> None:
            self.values: dict[str, float] = {}

        def log_metric(self, name: str, value: float) -> None:
            self.values[name] = value

    def ingest(run: str, incremental: bool = True) -> dict[str, float]:
        out = tmp_path / run / "events"
        events = SimpleNamespace(path=str(out), uri=str(out), metadata={})
        metrics = Metrics()
        ingest_feedback.python_func(
            feedback_sources=[str(feedback)],
            events=events,
            metrics=metrics,
            run_id=run,
            outputs_root=str(tmp_path / "outputs"),
            incremental=incremental,
        )
        stats = json.loads((out / "stats.json").read_text())
        return {
            **metrics.values,
            "total": stats["total_events"],
            "from": stats["previous_output"],
            "used": stats["previous_output_used"],
        }

    first = ingest("run1")
    assert (first["accepted"], first["total"], first["from"]) == (3, 3, None)
    # The starting point is the step's own copy under outputs_root, not the artifact (which KFP uploads
    # only after the step, possibly where another pod cannot read it): removing the artifact is harmless.
    shutil.rmtree(tmp_path / "run1")
    with feedback.open("a") as f:
        f.write(json.dumps({**event, "event_id": "e3"}) + "\n")
    second = ingest("run2")
    assert (second["accepted"], second["duplicates"], second["total"]) == (1, 3, 4)
    assert Path(str(second["from"])).name == "run1" and second["used"]
    fresh = ingest("run3", incremental=False)
    assert (fresh["accepted"], fresh["duplicates"], fresh["from"]) == (4, 0, None)
    assert Path(str(ingest("run4")["from"])).name == "run3"  # the fresh run is the new start
