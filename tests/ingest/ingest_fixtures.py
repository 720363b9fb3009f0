"""Helpers and fixtures of the ingest tests: small real images and writers of feedback files in every format."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A directory with red.png, blue.png, red_copy.png (same bytes as red.png), tiny.png (4x4)."""
    d = tmp_path / "images"
    d.mkdir()
    Image.new("RGB", (32, 32), "red").save(d / "red.png")
    Image.new("RGB", (32, 32), "blue").save(d / "blue.png")
    (d / "red_copy.png").write_bytes((d / "red.png").read_bytes())
    Image.new("RGB", (4, 4), "green").save(d / "tiny.png")
    data = (d / "blue.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    return d


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write records as JSONL, Parquet or CSV according to the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".parquet":
        names = sorted({k for r in records for k in r})
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in names} for r in records]), path)
    else:
        names = sorted({k for r in records for k in r})
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            writer.writerows(records)
    return path


def good_records(prefix: str = "e") -> list[dict[str, Any]]:
    """Four valid events pointing at ``images/`` relative to the source file."""
    return [
        {
            "event_id": f"{prefix}1",
            "prompt": "a red square",
            "image_uri": "images/red.png",
            "feedback": "like",
            "user_id": "u1",
            "created_at": "2026-11-01T10:00:00Z",
        },
        {
            "event_id": f"{prefix}2",
            "prompt": "a red square",
            "image_uri": "images/blue.png",
            "feedback": "dislike",
            "user_id": "u2",
            "created_at": "2026-11-01T11:00:00+01:00",
        },
        {
            "event_id": f"{prefix}3",
            "prompt": "a blue square",
            "image_uri": "images/blue.png",
            "feedback": "score",
            "score": 0.75,
            "created_at": "2026-11-02T00:00:00Z",
            "model_version": "v1",
        },
        {
            "event_id": f"{prefix}4",
            "prompt": "a blue square",
            "image_uri": "images/blue.png",
            "feedback": "pairwise",
            "other_image_uri": "images/red.png",
            "created_at": "2026-11-03T00:00:00Z",
            "seed": 7,
        },
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Debian prometheus-pushgateway on 127.0.0.1 (the start/stop of tests/ops/conftest.py); its URL."""
    binary = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
    if not Path(binary).exists():
        pytest.fail(f"{binary} not found; install it with `make system-deps` (apt prometheus-pushgateway)")
    port = _free_port()
    log = open(tmp_path / "pushgateway.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"pushgateway exited with code {proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"{url} was not ready after 30s")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
