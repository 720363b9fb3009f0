"""Fixtures of the operations tests: a real Pushgateway, promtool, and the metrics each step defines.

The steps' metric definitions are read from their source (``.counter/.gauge/.histogram`` calls on a
StepTelemetry), so the lint, the dashboard, the alerts and the table in k8s/monitoring/README.md are
checked against what the code really emits, without running a training job to find out."""

from __future__ import annotations

import ast
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from components.shared.telemetry import StepTelemetry

ROOT = Path(__file__).resolve().parents[2]
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


@dataclass(frozen=True)
class MetricDefinition:
    """One metric a step's code defines through StepTelemetry, as written in its source."""

    step: str
    kind: str
    name: str
    documentation: str
    labels: tuple[str, ...]
    where: str


def _literal(node: ast.expr | None) -> object:
    """The value of a literal expression, or None when it is not one."""
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


@cache
def real_metric_definitions() -> tuple[MetricDefinition, ...]:
    """Every ``.counter/.gauge/.histogram`` definition in components/ and pipelines/ (telemetry.py aside).

    The step is the one the file's ``StepTelemetry("<step>", ...)`` names, else the package's folder
    (promote/promotion.py receives the step's telemetry from promote/step.py). Definitions whose name
    is not a string literal cannot be checked here and are returned with kind ``"unresolved"``.
    """
    found = []
    for path in sorted([*ROOT.glob("components/**/*.py"), *ROOT.glob("pipelines/**/*.py")]):
        if path.name == "telemetry.py" and path.parent.name == "shared":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        parts = path.relative_to(ROOT).parts
        step = parts[1] if parts[0] == "components" else "pipeline"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "StepTelemetry"
                and node.args
                and isinstance(_literal(node.args[0]), str)
            ):
                step = str(_literal(node.args[0]))
                break
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("counter", "gauge", "histogram")
                and node.args
            ):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            name = _literal(node.args[0])
            documentation = _literal(node.args[1] if len(node.args) > 1 else keywords.get("documentation"))
            labels = _literal(node.args[2] if len(node.args) > 2 else keywords.get("labels")) or ()
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if not isinstance(name, str):
                found.append(MetricDefinition(step, "unresolved", "", "", (), where))
                continue
            found.append(
                MetricDefinition(step, node.func.attr, name, str(documentation or ""), tuple(labels), where)  # type: ignore[arg-type]
            )
    return tuple(found)


def real_telemetry(step: str) -> StepTelemetry:
    """A StepTelemetry holding every metric the step's code defines, each with one sample."""
    telemetry = StepTelemetry(step, run_id="lint")
    for definition in real_metric_definitions():
        if definition.step != step or definition.kind == "unresolved":
            continue
        define = getattr(telemetry, definition.kind)
        metric = define(definition.name, definition.documentation or definition.name, definition.labels)
        if definition.labels:
            metric = metric.labels(**{label: "example" for label in definition.labels})
        if definition.kind == "counter":
            metric.inc()
        elif definition.kind == "gauge":
            metric.set(1)
        else:
            metric.observe(1)
    return telemetry


@pytest.fixture
def step_telemetry() -> Callable[[str], StepTelemetry]:
    """Factory: ``step_telemetry("ingest")`` holds the metrics ingest's code defines (from its source)."""
    return real_telemetry


@pytest.fixture
def metric_definitions() -> tuple[MetricDefinition, ...]:
    """Every metric definition found in the steps' source."""
    return real_metric_definitions()
