"""Fixtures of the operations tests: a real Pushgateway, promtool, and each step's representative metrics.

The example metric sets follow what the contracts say each step records (ingest: events read, accepted,
quarantined by reason; label: samples per class; train: step, loss, reward margin, reference point,
samples/s, GPU memory, checkpoint time; evaluate: each metric for candidate and production, the gate;
promote: promotions, rollbacks, conflicts). ``k8s/monitoring/README.md`` documents the same names, and
the dashboard and alerts read them; ``test_monitoring.py`` checks that every name they use is here.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from components.shared.telemetry import StepTelemetry

PUSHGATEWAY_BIN = "/usr/bin/prometheus-pushgateway"
INSTALL_HINT = (
    "install Debian's prometheus-pushgateway and prometheus (for promtool): `make system-deps`, or "
    "`apt-get install -y prometheus-pushgateway prometheus`"
)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 200, or fail naming the server's exit code if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server for {url} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    pytest.fail(f"{url} was not ready after {timeout}s")


@pytest.fixture
def promtool_bin() -> str:
    """Path of promtool (fails with the install hint when missing)."""
    return promtool()


@pytest.fixture
def step_telemetry() -> Callable[..., StepTelemetry]:
    """Factory: ``step_telemetry("ingest", run_id=..., pushgateway=...)`` with that step's example metrics."""
    return example_telemetry


def promtool() -> str:
    """Path of promtool, or fail with the install hint (CI installs it through ``make system-deps``)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(f"promtool not found on PATH; {INSTALL_HINT}")
    return path


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway on 127.0.0.1 with a persistence file; yields its base URL."""
    binary = shutil.which("prometheus-pushgateway") or PUSHGATEWAY_BIN
    if not Path(binary).exists():
        pytest.fail(f"{PUSHGATEWAY_BIN} not found; {INSTALL_HINT}")
    port = free_port()
    log = open(tmp_path / "pushgateway.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={tmp_path / 'pushgateway.db'}",
            "--web.enable-admin-api",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/-/ready", proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def ingest_metrics(telemetry: StepTelemetry) -> None:
    """What ingest records: events read per source, accepted, duplicates, quarantined by reason."""
    read = telemetry.counter("events_read_total", "Feedback records read", ("source",))
    read.labels(source="gs://feedback/2026-11-25.jsonl").inc(1000)
    telemetry.counter("events_accepted_total", "Events accepted after validation").inc(950)
    telemetry.counter("events_duplicates_total", "Events dropped as duplicates of an accepted one").inc(20)
    quarantined = telemetry.counter(
        "events_quarantined_total", "Records moved to quarantine, by reason code", ("reason",)
    )
    quarantined.labels(reason="missing_field").inc(20)
    quarantined.labels(reason="bad_image_uri").inc(10)
    telemetry.gauge("watermark_timestamp_seconds", "Newest created_at accepted").set(1.7645e9)


def label_metrics(telemetry: StepTelemetry) -> None:
    """What label records: samples per split and class, and samples dropped by reason."""
    samples = telemetry.gauge("samples", "Labelled images, by split and class", ("split", "class"))
    for split, desirable, undesirable in (("train", 700, 180), ("val", 80, 20)):
        samples.labels(split=split, **{"class": "desirable"}).set(desirable)
        samples.labels(split=split, **{"class": "undesirable"}).set(undesirable)
    dropped = telemetry.counter("dropped_total", "Images not labelled, by reason", ("reason",))
    dropped.labels(reason="pairwise_tie").inc(5)
    telemetry.gauge("desirable_weight", "Loss weight of desirable images (lambda_D)").set(1.0)
    telemetry.gauge("undesirable_weight", "Loss weight of undesirable images (lambda_U)").set(1.0)


def train_metrics(telemetry: StepTelemetry) -> None:
    """What train records while it runs (served on /metrics) and at the end (pushed)."""
    telemetry.gauge("global_step", "Optimizer steps done").set(120)
    telemetry.gauge("loss", "Diffusion-KTO loss of the last step").set(0.48)
    telemetry.gauge("reward_margin", "Mean implicit reward of desirable minus undesirable images").set(0.02)
    telemetry.gauge("reference_point", "KL reference point z of the last step").set(0.001)
    telemetry.gauge("learning_rate", "Learning rate of the last step").set(1e-7)
    telemetry.gauge("samples_per_second", "Training throughput over the last logging window").set(31.5)
    memory = telemetry.gauge("gpu_memory_allocated_bytes", "Peak GPU memory allocated", ("device",))
    memory.labels(device="cuda:0").set(21.5e9)
    telemetry.gauge(
        "last_checkpoint_timestamp_seconds", "Unix time of the last saved checkpoint"
    ).set_to_current_time()
    telemetry.counter("checkpoints_saved_total", "Checkpoints written").inc(2)
    step_time = telemetry.histogram(
        "step_duration_seconds", "Wall time of one optimizer step", buckets=(0.1, 0.5, 1, 2, 5, 10)
    )
    step_time.observe(0.8)


def evaluate_metrics(telemetry: StepTelemetry) -> None:
    """What evaluate records: each scorer's mean for candidate and production, win rate, gate decision."""
    means = telemetry.gauge("score_mean", "Mean score per model and scorer", ("metric", "model"))
    for metric, candidate, production in (("pickscore", 21.3, 21.1), ("clip_score", 0.31, 0.30)):
        means.labels(metric=metric, model="candidate").set(candidate)
        means.labels(metric=metric, model="production").set(production)
    win = telemetry.gauge("win_rate", "Share of prompts where the candidate scores higher", ("metric",))
    win.labels(metric="pickscore").set(0.58)
    telemetry.gauge("gate_passed", "1 when the gate passed the candidate, else 0").set(1)
    telemetry.gauge("prompts", "Held-out prompts evaluated").set(200)
    telemetry.counter("images_generated_total", "Images generated", ("model",)).labels(model="candidate").inc(
        800
    )


def promote_metrics(telemetry: StepTelemetry) -> None:
    """What promote records: promotions, rollbacks, alias conflicts, the version now in production."""
    telemetry.counter("promotions_total", "Candidates moved to the production alias").inc()
    telemetry.counter("rollbacks_total", "Production alias moved back to the previous version").inc(0)
    telemetry.counter("conflicts_total", "Promotions refused: production moved since evaluation").inc(0)
    telemetry.gauge("production_version", "Registry version behind the production alias").set(7)


STEP_EXAMPLES: dict[str, Callable[[StepTelemetry], None]] = {
    "ingest": ingest_metrics,
    "label": label_metrics,
    "train": train_metrics,
    "evaluate": evaluate_metrics,
    "promote": promote_metrics,
}


def example_telemetry(step: str, **kw: object) -> StepTelemetry:
    """A StepTelemetry of ``step`` holding that step's representative metrics, run under track_run."""
    telemetry = StepTelemetry(step, **kw)  # type: ignore[arg-type]
    with telemetry.track_run():
        STEP_EXAMPLES[step](telemetry)
    return telemetry
