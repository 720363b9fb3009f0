"""StepTelemetry against a real Pushgateway and promtool: push, read back, delete, serve, lint."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from components.shared.telemetry import StepTelemetry, delete_run_groups, list_groups

STEPS = ("ingest", "label", "train", "evaluate", "promote", "pipeline")


def fetch(url: str) -> bytes:
    """GET a URL and return the body."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text exposition as {(name, labels): value}; empty labels (the Pushgateway's
    ``instance=""``) are left out, as Prometheus treats them as absent."""
    return {
        (sample.name, frozenset((k, v) for k, v in sample.labels.items() if v)): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def promtool_check_metrics(promtool_bin: str, exposition: bytes) -> subprocess.CompletedProcess[str]:
    """Run ``promtool check metrics`` on an exposition (stdin)."""
    return subprocess.run(
        [promtool_bin, "check", "metrics"],
        input=exposition.decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("step", STEPS)
def test_each_steps_exposition_passes_promtool(
    step: str, step_telemetry: Callable[..., StepTelemetry], promtool_bin: str
) -> None:
    """Every metric a step's code defines follows Prometheus conventions, as promtool's linter sees them."""
    exposition = step_telemetry(step).exposition()
    assert f"dkto_{step}_".encode() in exposition, f"no metric of {step} found in its code"
    result = promtool_check_metrics(promtool_bin, exposition)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"promtool check metrics on {step}:\n{result.stdout}{result.stderr}"
    )


def test_promtool_rejects_a_badly_named_counter(promtool_bin: str) -> None:
    """The lint test can fail: promtool flags a counter without ``_total`` (built past our own guard)."""
    bad = b"# HELP dkto_x_events Events\n# TYPE dkto_x_events counter\ndkto_x_events 1\n"
    result = promtool_check_metrics(promtool_bin, bad)
    assert result.returncode != 0 and "_total" in (result.stdout + result.stderr)


def test_counter_name_must_end_in_total() -> None:
    """Our own guard names the rule when a counter lacks ``_total``."""
    with pytest.raises(ValueError, match="_total"):
        StepTelemetry("ingest").counter("events_read", "Events read")


def ingest_like_telemetry(**kw: str) -> StepTelemetry:
    """A StepTelemetry of ingest holding the figures of one small run."""
    telemetry = StepTelemetry("ingest", **kw)
    telemetry.counter("events_read_total", "Feedback records read").inc(1000)
    telemetry.counter("events_accepted_total", "Events accepted").inc(950)
    quarantined = telemetry.counter("events_quarantined_total", "Records quarantined", ("reason",))
    quarantined.labels(reason="missing_field").inc(20)
    quarantined.labels(reason="bad_image_uri").inc(10)
    return telemetry


def test_push_read_back_and_delete(pushgateway: str) -> None:
    """A step's push lands in its (pipeline, run_id, step) group, reads back over both APIs, and deletes."""
    telemetry = ingest_like_telemetry(run_id="run-42", pushgateway=pushgateway)
    assert telemetry.push() is True

    scraped = samples(fetch(f"{pushgateway}/metrics").decode())
    group = {"job": "dkto", "pipeline": "diffusion-kto-retrain", "run_id": "run-42", "step": "ingest"}
    quarantined = frozenset({**group, "reason": "missing_field"}.items())
    assert scraped[("dkto_ingest_events_quarantined_total", quarantined)] == 20
    assert not any(name.endswith("_created") for name, _ in scraped), "pushed counters carry no _created"
    assert scraped[("dkto_ingest_events_accepted_total", frozenset(group.items()))] == 950

    api = json.loads(fetch(f"{pushgateway}/api/v1/metrics"))
    assert api["status"] == "success"
    groups = [g["labels"] for g in api["data"]]
    assert group in groups
    pushed = next(g for g in api["data"] if g["labels"] == group)
    assert "dkto_ingest_events_read_total" in pushed
    assert list_groups(pushgateway) == groups

    assert telemetry.delete() is True
    assert group not in list_groups(pushgateway)
    assert b"dkto_ingest_events_accepted_total" not in fetch(f"{pushgateway}/metrics")


def test_push_replaces_the_group_of_a_rerun(pushgateway: str) -> None:
    """Re-running a step with the same run id replaces its figures rather than adding to them."""
    for accepted in (5, 3):
        telemetry = StepTelemetry("ingest", run_id="rerun", pushgateway=pushgateway)
        telemetry.counter("events_accepted_total", "Events accepted").inc(accepted)
        assert telemetry.push()
    scraped = fetch(f"{pushgateway}/metrics").decode()
    values = [
        v for (name, labels), v in samples(scraped).items() if name == "dkto_ingest_events_accepted_total"
    ]
    assert values == [3]


def test_cleanup_deletes_every_step_of_one_run_only(pushgateway: str) -> None:
    """``delete_run_groups`` removes all steps of the run cleaned up (slashes in the id included)."""
    doomed = "runs/2026-11-26/a"
    for step in STEPS:
        telemetry = StepTelemetry(step, run_id=doomed, pushgateway=pushgateway)
        telemetry.gauge("duration_seconds", "Wall time").set(1)
        assert telemetry.push()
    kept = ingest_like_telemetry(run_id="other-run", pushgateway=pushgateway)
    assert kept.push()
    other_pipeline = ingest_like_telemetry(run_id=doomed, pipeline="nightly", pushgateway=pushgateway)
    assert other_pipeline.push()

    deleted = delete_run_groups(pushgateway, doomed, pipeline="diffusion-kto-retrain")
    assert sorted(g["step"] for g in deleted) == sorted(STEPS)
    remaining = list_groups(pushgateway)
    assert all(not (g["run_id"] == doomed and g["pipeline"] == "diffusion-kto-retrain") for g in remaining)
    assert kept.grouping_key() | {"job": "dkto"} in remaining
    assert other_pipeline.grouping_key() | {"job": "dkto"} in remaining
    assert delete_run_groups(pushgateway, doomed, pipeline="diffusion-kto-retrain") == []


def test_push_without_or_to_an_unreachable_gateway_never_raises(tmp_path: object) -> None:
    """Metrics must never fail a run: no gateway means no push, a dead one a logged False."""
    assert StepTelemetry("train", pushgateway="").push() is False
    assert StepTelemetry("train", pushgateway="").delete() is False
    # Port 9 (discard) on 127.0.0.1 is closed in the test environment; the push fails fast.
    dead = StepTelemetry("train", pushgateway="http://127.0.0.1:9")
    dead.gauge("loss", "Loss").set(1)
    assert dead.push() is False
    assert dead.delete() is False


def test_training_metrics_endpoint_serves_live_values(promtool_bin: str) -> None:
    """The training step's ``/metrics`` server answers, reflects updates, and passes promtool."""
    telemetry = StepTelemetry("train", run_id="serve")
    loss = telemetry.gauge("loss", "Loss of the last step")
    loss.set(0.7)
    server = telemetry.serve(0, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        key = ("dkto_train_loss", frozenset())
        assert samples(fetch(url).decode())[key] == 0.7
        loss.set(0.5)
        body = fetch(url)
        assert samples(body.decode())[key] == 0.5
        assert promtool_check_metrics(promtool_bin, body).returncode == 0
    finally:
        server.shutdown()


def test_record_stats_turns_a_stats_file_into_gauges() -> None:
    """Numbers become gauges, nested counts a labelled gauge; strings and lists are skipped, counted."""
    telemetry = StepTelemetry("ingest", run_id="stats")
    stats = {
        "read": 10,
        "accepted": 7,
        "quarantined_by_reason": {"missing_field": 2, "bad-uri": 1},
        "sources": ["a.jsonl"],
        "watermark": "2026-11-25T00:00:00Z",
        "train": {"desirable": 5, "undesirable": {"weighted": 2.5}},
        "passed": True,
        "nan": float("nan"),
    }
    recorded = telemetry.record_stats("events", stats, label_names={"quarantined_by_reason": "reason"})
    got = samples(telemetry.exposition().decode())
    assert recorded == 7
    assert got[("dkto_ingest_events_read", frozenset())] == 10
    assert got[("dkto_ingest_events_quarantined_by_reason", frozenset({("reason", "bad-uri")}))] == 1
    assert got[("dkto_ingest_events_train_desirable", frozenset())] == 5
    assert got[("dkto_ingest_events_train_undesirable", frozenset({("key", "weighted")}))] == 2.5
    assert got[("dkto_ingest_events_passed", frozenset())] == 1
    assert not any(name.endswith(("_sources", "_watermark", "_nan")) for name, _ in got)


def test_track_run_marks_success_and_failure() -> None:
    """A successful run gets a success timestamp; a failing one is flagged and re-raised, no timestamp."""
    ok = StepTelemetry("label", run_id="ok")
    with ok.track_run():
        pass
    got = samples(ok.exposition().decode())
    assert got[("dkto_label_failed", frozenset())] == 0
    assert got[("dkto_label_last_success_timestamp_seconds", frozenset())] > 1.7e9

    failing = StepTelemetry("label", run_id="bad")
    with pytest.raises(RuntimeError, match="boom"), failing.track_run():
        raise RuntimeError("boom")
    got = samples(failing.exposition().decode())
    assert got[("dkto_label_failed", frozenset())] == 1
    assert ("dkto_label_last_success_timestamp_seconds", frozenset()) not in got
    assert ("dkto_label_duration_seconds", frozenset()) in got
