"""Figures for the registry (printed, never asserted): run ``pytest tests/promote/bench_promote.py -s``.

Upload throughput to fake-gcs-server with manifest verification, registration latency, and the latency
of a locked compare-and-set promotion, on the embedded SQLite store and on an MLflow server.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from components.promote.registry import open_registry
from components.promote.step import PromoteConfig, RegisterConfig, promote, register_candidate
from components.shared import storage


def test_bench_registry(
    registry_uri: str, model_name: str, gcs_bucket: str, tmp_path: Path, make_decision
) -> None:
    model = tmp_path / "m"
    model.mkdir()
    size = 64 * 1024 * 1024
    (model / "weights.bin").write_bytes(os.urandom(size))
    (model / "model_index.json").write_text("{}")

    t0 = time.perf_counter()
    storage.upload_dir(model, storage.join(gcs_bucket, "raw"), chunk_size=8 * 1024 * 1024)
    upload_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    version = register_candidate(
        RegisterConfig(
            registry_uri=registry_uri,
            artifact_root=storage.join(gcs_bucket, "registry"),
            model_name=model_name,
            candidate_model=str(model),
        )
    ).version
    register_s = time.perf_counter() - t0

    decision = make_decision(
        tmp_path / "d.json", passed=True, baseline_version=None, candidate_model=str(model)
    )
    t0 = time.perf_counter()
    promote(
        PromoteConfig(registry_uri=registry_uri, model_name=model_name, version=version, decision=decision)
    )
    promote_s = time.perf_counter() - t0

    registry = open_registry(registry_uri)
    t0 = time.perf_counter()
    for _ in range(5):
        with registry.lock(model_name, owner="bench"):
            pass
    lock_s = (time.perf_counter() - t0) / 5
    kind = "server" if registry_uri.startswith("http") else "embedded"
    print(
        f"\n[{kind}] 64 MiB verified upload to fake-gcs: {upload_s:.2f}s ({size / upload_s / 2**20:.0f} MiB/s); "
        f"register (upload+verify+version): {register_s:.2f}s; promote (lock+CAS+aliases+tags): {promote_s:.2f}s; "
        f"lock acquire+release: {lock_s * 1000:.0f} ms"
    )
