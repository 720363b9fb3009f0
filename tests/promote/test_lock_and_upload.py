"""The promotion lock's mutual exclusion, abandoned locks, and uploads that fail half-way."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from components.promote.registry import LOCK_SUFFIX, PRODUCTION, LockTimeout, RegistryError, open_registry
from components.promote.step import (
    PromoteConfig,
    RegisterConfig,
    promote,
    register_candidate,
    resolve_production,
)
from components.shared import storage


def test_lock_is_mutually_exclusive(registry_uri: str, model_name: str) -> None:
    """Three threads with their own clients: never two inside the critical section at once, even when
    they all start by breaking the same abandoned lock."""
    open_registry(registry_uri).client.create_registered_model(
        model_name + LOCK_SUFFIX,
        tags={"owner": "crashed-run", "acquired_at": f"{time.time() - 3600:.3f}", "ttl_s": "60"},
    )
    inside, max_inside, entries = 0, 0, 0
    guard = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def worker() -> None:
        nonlocal inside, max_inside, entries
        registry = open_registry(registry_uri)
        try:
            start.wait()
            for _ in range(2):
                with registry.lock(model_name, owner=threading.current_thread().name, timeout_s=60):
                    with guard:
                        inside += 1
                        entries += 1
                        max_inside = max(max_inside, inside)
                    time.sleep(0.02)
                    with guard:
                        inside -= 1
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert entries == 6 and max_inside == 1


def test_abandoned_lock_is_broken_and_a_live_one_is_not(registry_uri: str, model_name: str) -> None:
    registry = open_registry(registry_uri)
    lock_name = model_name + LOCK_SUFFIX
    # A run that crashed while holding the lock two minutes ago (TTL 60 s).
    registry.client.create_registered_model(
        lock_name,
        tags={
            "owner": "dead-run",
            "holder": "crashed",
            "acquired_at": f"{time.time() - 120:.3f}",
            "ttl_s": "60",
        },
    )
    with registry.lock(model_name, owner="me", timeout_s=10, ttl_s=60) as lease:
        assert registry._lock_holder(lock_name)["owner"] == lease.owner
        # While we hold it, a second run waits and then times out with the holder's name.
        other = open_registry(registry_uri)
        with (
            pytest.raises(LockTimeout, match="held by me"),
            other.lock(model_name, owner="second", timeout_s=0.5, ttl_s=60),
        ):
            pass
    assert registry._lock_holder(lock_name) is None
    assert registry._lock_holder(f"{lock_name}.stale-dead-run") is not None  # kept for the audit trail


def _model_with_big_file(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "a_model_index.json").write_text("{}")
    (path / "b_weights.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    return path


def _register_while_weights_change(
    registry_uri: str, model_name: str, artifact_root: str | None, tmp_path: Path, decision: str
) -> str:
    """Register a model whose weights keep changing during the upload; returns the error message."""
    model = _model_with_big_file(tmp_path / "m")
    weights = model / "b_weights.bin"
    stop = threading.Event()

    def keep_writing_weights() -> None:
        # A trainer still saving its weights: the file keeps changing from before the upload starts until
        # registration gives up, so what arrives can never match the manifest taken at the start.
        with open(weights, "r+b") as f:
            while not stop.is_set():
                f.seek(int.from_bytes(os.urandom(3), "big") % (6 * 1024 * 1024 - 1024))
                f.write(os.urandom(1024))
                f.flush()
                time.sleep(0.001)

    writer = threading.Thread(target=keep_writing_weights)
    writer.start()
    try:
        with pytest.raises(RegistryError) as err:
            register_candidate(
                RegisterConfig(
                    registry_uri=registry_uri,
                    artifact_root=artifact_root,
                    model_name=model_name,
                    candidate_model=str(model),
                    decision=decision,
                    upload_chunk_size_mib=1,
                )
            )
    finally:
        stop.set()
        writer.join()
    message = str(err.value)
    assert "Nothing was registered" in message and "b_weights.bin" in message and "CRC32C" in message
    registry = open_registry(registry_uri)
    assert registry.list_versions(model_name) == []
    run_id = message.split("(run ")[1].split(" ")[0]
    assert registry.client.get_run(run_id).info.status == "FAILED"
    return message


def test_upload_that_fails_half_way_registers_nothing(
    registry_uri: str, model_name: str, gcs_bucket: str, tmp_path: Path, make_decision
) -> None:
    """The weights change while they upload to GCS (a trainer still writing them): no version, a clear error."""
    artifact_root = storage.join(gcs_bucket, "registry")
    decision = make_decision(tmp_path / "d.json", passed=True, baseline_version=None)
    _register_while_weights_change(registry_uri, model_name, artifact_root, tmp_path, decision)
    assert not any("model/" in u for u in storage.list_files(artifact_root)), "partial files left behind"


def test_changing_files_through_the_servers_artifact_proxy_register_nothing(
    mlflow_server: str, model_name: str, tmp_path: Path, make_decision
) -> None:
    """The proxy has no checksums: the verified snapshot taken before sending catches the change."""
    decision = make_decision(tmp_path / "d.json", passed=True, baseline_version=None)
    message = _register_while_weights_change(mlflow_server, model_name, None, tmp_path, decision)
    assert "mlflow-artifacts:" in message


def test_registration_on_gcs_and_resolve_production(
    registry_uri: str, model_name: str, gcs_bucket: str, tmp_path: Path, make_model, make_decision
) -> None:
    artifact_root = storage.join(gcs_bucket, "registry")
    result = promote(
        PromoteConfig(
            registry_uri=registry_uri,
            artifact_root=artifact_root,
            model_name=model_name,
            candidate_model=str(make_model(tmp_path / "m", seed=7)),
            decision=make_decision(tmp_path / "d.json", passed=True, baseline_version=None),
            upload_chunk_size_mib=1,
        )
    )
    assert result.outcome == "promoted"
    uri, version = resolve_production(registry_uri, model_name, "fallback")
    assert version == result.version and uri.startswith(artifact_root)
    assert storage.read_json(storage.join(uri, "model_index.json"))["seed"] == 7
    manifest = storage.read_json(storage.join(uri, "dkto_manifest.json"))
    assert set(manifest) == {
        "model_index.json",
        "training_summary.json",
        "unet/diffusion_pytorch_model.safetensors",
    }


_RACER = """
import sys
from components.promote.step import PromoteConfig, promote
r = promote(PromoteConfig(registry_uri=sys.argv[1], model_name=sys.argv[2], version=sys.argv[3],
                          decision=sys.argv[4], pipeline_run_id="proc-" + sys.argv[3]))
print("OUTCOME", r.outcome)
"""


@pytest.mark.slow
def test_concurrent_promotions_in_separate_processes(
    embedded_registry_uri: str, model_name: str, tmp_path: Path, make_model, make_decision
) -> None:
    """Two processes on the embedded SQLite store, as two pipeline pods on one node would be."""
    versions = []
    decisions = {}
    for seed in (1, 2):
        model = str(make_model(tmp_path / f"m{seed}", seed=seed))
        version = register_candidate(
            RegisterConfig(registry_uri=embedded_registry_uri, model_name=model_name, candidate_model=model)
        ).version
        versions.append(version)
        decisions[version] = make_decision(
            tmp_path / f"d{seed}.json", passed=True, baseline_version=None, candidate_model=model
        )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, embedded_registry_uri, model_name, v, decisions[v]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in versions
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    outcomes = sorted(o[0].split("OUTCOME ")[1].strip() for o in outs)
    assert outcomes == ["conflict", "promoted"]
    winner = versions[[("OUTCOME promoted" in o[0]) for o in outs].index(True)]
    assert open_registry(embedded_registry_uri).aliases(model_name)[PRODUCTION] == winner


def test_compare_and_set_alias(registry_uri: str, model_name: str, tmp_path: Path, make_model) -> None:
    """The contract's primitive: the alias moves only from the expected version (None = unset)."""
    versions = [
        register_candidate(
            RegisterConfig(
                registry_uri=registry_uri,
                model_name=model_name,
                candidate_model=str(make_model(tmp_path / f"m{s}", seed=s)),
            )
        ).version
        for s in (1, 2)
    ]
    registry = open_registry(registry_uri)
    assert not registry.compare_and_set_alias(model_name, "staging", versions[0], versions[1])
    assert registry.compare_and_set_alias(model_name, "staging", None, versions[0])
    assert not registry.compare_and_set_alias(model_name, "staging", None, versions[1])
    assert registry.compare_and_set_alias(model_name, "staging", versions[0], versions[1])
    assert registry.aliases(model_name)["staging"] == versions[1]
