"""Fixtures of the promote tests: a real ``mlflow server`` on 127.0.0.1 and an embedded SQLite registry.

Both live for the whole session (starting MLflow and migrating a database costs seconds); tests stay
independent by using a fresh model name each.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_health(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait for ``url`` to answer 200, failing early if the server process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (SQLite backend, proxied artifacts) on 127.0.0.1; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    try:
        try:
            wait_health(f"{url}/health", proc, timeout=120)
        except RuntimeError:
            log.flush()
            raise RuntimeError((root / "server.log").read_text()[-3000:]) from None
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def embedded_registry_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An embedded MLflow registry: a SQLite file (artifacts beside it)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow-embedded') / 'mlflow.db'}"


@pytest.fixture(params=["embedded", "server"])
def registry_uri(request: pytest.FixtureRequest) -> str:
    """Each flow runs against the embedded SQLite store and against a real MLflow server."""
    if request.param == "embedded":
        return request.getfixturevalue("embedded_registry_uri")
    return request.getfixturevalue("mlflow_server")


@pytest.fixture
def model_name() -> str:
    """A registered-model name no other test uses."""
    return f"tiny-{uuid.uuid4().hex[:8]}"


def training_summary(path: Path, seed: int) -> dict[str, object]:
    """training_summary.json with the keys the trainer writes: ``TrainResult``'s fields (its ``data_hash``
    and ``config_hash``) plus ``base_model`` and the config (components/train/loop.py ``_write_output``)."""
    from components.train.step import TrainResult

    result = TrainResult(output_dir=str(path), steps=1, config_hash=f"cfg{seed}", data_hash=f"ds{seed}")
    return {
        **result.model_dump(mode="json"),
        "objective": "kto",
        "base_model": "gs://models/sd15",
        "train_data": "gs://data/train.parquet",
        "config": {"pretrained_model": "gs://models/sd15", "output_dir": str(path)},
    }


def make_model_dir(path: Path, seed: int = 0, big_bytes: int = 0) -> Path:
    """A small model directory in the trainer's output layout (contents differ by ``seed``)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "seed": seed})
    )
    (path / "unet").mkdir(exist_ok=True)
    (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(2048))
    (path / "training_summary.json").write_text(json.dumps(training_summary(path, seed)))
    if big_bytes:
        (path / "weights.bin").write_bytes(os.urandom(big_bytes))
    return path


def write_decision(
    path: Path,
    *,
    passed: bool,
    baseline_version: str | None,
    reasons: list[str] | None = None,
    candidate_model: str = "cand",
) -> str:
    """A decision.json as the evaluate step writes it, about ``candidate_model``."""
    decision = {
        "passed": passed,
        "reasons": reasons or (["pickscore win rate 0.64 > 0.5 (CI 0.55-0.72)"] if passed else ["no gain"]),
        "primary_metric": "pickscore",
        "n_prompts": 32,
        "candidate_model": candidate_model,
        "baseline_model": "base",
        "baseline_version": baseline_version,
        "metrics": {
            "pickscore": {
                "candidate_mean": 21.5,
                "baseline_mean": 21.1,
                "mean_diff": 0.4,
                "diff_ci_low": 0.1,
                "diff_ci_high": 0.7,
                "win_rate": 0.64,
                "win_rate_ci_low": 0.55,
                "win_rate_ci_high": 0.72,
            }
        },
        "created_at": "2026-11-26T00:00:00+00:00",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(decision))
    return str(path)


@pytest.fixture
def make_model():
    """``make_model(path, seed=0, big_bytes=0)`` builds a model directory (see ``make_model_dir``)."""
    return make_model_dir


@pytest.fixture
def make_decision():
    """``make_decision(path, passed=..., baseline_version=...)`` writes a decision.json."""
    return write_decision


class LossyProxy:
    """A real HTTP proxy in front of a real MLflow server that loses the answers to chosen requests.

    ``lose(path, *actions)`` queues what happens to the next requests to ``path``, one action each:
    ``"drop"`` forwards the request (the server commits it) and then closes the connection without an
    answer; ``"503"`` forwards it and answers 503 instead of the server's reply; ``"refuse"`` answers 503
    without forwarding. Further requests, and every other path, are forwarded untouched. ``then=``
    runs a function after a lost request was committed and before its answer is lost, i.e. in the gap
    before the client's retry, where another client may act. ``forwarded`` records (method, path, status)
    of what reached the server.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.actions: dict[str, list[tuple[str, Callable[[], None] | None]]] = {}
        self.forwarded: list[tuple[str, str, int]] = []
        self.guard = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                path = self.path.split("?")[0]
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.guard:
                    queue = proxy.actions.get(path) or []
                    action, hook = queue.pop(0) if queue else ("forward", None)
                if action == "refuse":
                    self._answer(503, {}, b"")
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                with proxy.guard:
                    proxy.forwarded.append((self.command, path, resp.status))
                if hook is not None:
                    hook()
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "503":
                    self._answer(503, {}, b"")
                    return
                self._answer(resp.status, dict(resp.getheaders()), data)

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in (
                        "transfer-encoding",
                        "connection",
                        "content-length",
                        "date",
                        "server",
                    ):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def lose(self, path: str, *actions: str, then: Callable[[], None] | None = None) -> None:
        """Queue ``actions`` (drop | 503 | refuse) for the next requests to ``path``; ``then`` runs after
        the first of them reached the server, before its answer is lost."""
        with self.guard:
            queue = self.actions.setdefault(path, [])
            for i, action in enumerate(actions):
                queue.append((action, then if i == 0 else None))

    def count(self, method: str, path: str) -> int:
        """How many ``method path`` requests reached the server."""
        with self.guard:
            return sum(1 for m, p, _ in self.forwarded if (m, p) == (method, path))

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lossy_proxy(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LossyProxy]:
    """A ``LossyProxy`` in front of the session's MLflow server; the client retries without waiting."""
    # MLflow's own defaults back off for up to minutes; the retry behaviour under test is the same.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    proxy = LossyProxy(mlflow_server)
    try:
        yield proxy
    finally:
        proxy.close()
