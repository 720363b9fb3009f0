"""Registration is idempotent: one version per pipeline run's candidate, even when creates are resent.

Lost answers are real: a ``LossyProxy`` (conftest) sits in front of a real ``mlflow server`` and lets a
create commit on the server before it drops the connection or answers 503, so MLflow's own client
retries it exactly as it would against a flaky ingress.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from components.promote.registry import (
    CANDIDATE,
    FILES_DIGEST_TAG,
    REGISTRATION_KEY_TAG,
    RegistryError,
    open_registry,
)
from components.promote.step import RegisterConfig, RegisterResult, register_candidate

CREATE_VERSION = "/api/2.0/mlflow/model-versions/create"


def _config(
    registry_uri: str, model_name: str, model: Path, decision: str | None, run: str
) -> RegisterConfig:
    return RegisterConfig(
        registry_uri=registry_uri,
        model_name=model_name,
        candidate_model=str(model),
        decision=decision,
        pipeline_run_id=run,
    )


def _runs(registry_uri: str, model_name: str) -> int:
    """How many registration runs (uploads) the registry holds for ``model_name``."""
    client = open_registry(registry_uri).client  # type: ignore[attr-defined]
    experiment = client.get_experiment_by_name(f"dkto-registry/{model_name}")
    return len(client.search_runs([experiment.experiment_id]))


def test_registering_the_same_candidate_twice_gives_one_version(
    registry_uri: str, model_name: str, tmp_path: Path, make_model, make_decision
) -> None:
    """A retried register step (same run, model and decision) returns the version the first attempt made."""
    model = make_model(tmp_path / "m", seed=1)
    decision = make_decision(tmp_path / "eval" / "decision.json", passed=True, baseline_version=None)
    first = register_candidate(_config(registry_uri, model_name, model, decision, "run-a"))
    again = register_candidate(_config(registry_uri, model_name, model, str(tmp_path / "eval"), "run-a"))
    assert (first.already_registered, again.already_registered) == (False, True)
    assert again.version == first.version and again.files_uri == first.files_uri
    registry = open_registry(registry_uri)
    (only,) = registry.list_versions(model_name)
    assert only.version == first.version and only.aliases == [CANDIDATE]
    assert only.tags[REGISTRATION_KEY_TAG] and only.tags[FILES_DIGEST_TAG]
    assert _runs(registry_uri, model_name) == 1, "the retry uploaded the files again"


def test_different_candidates_get_different_versions(
    registry_uri: str, model_name: str, tmp_path: Path, make_model, make_decision
) -> None:
    """Another model, another decision, another pipeline run, or files rewritten in place: a new version."""
    model = make_model(tmp_path / "m", seed=1)
    decision = make_decision(tmp_path / "d1.json", passed=True, baseline_version=None)
    other_decision = make_decision(tmp_path / "d2.json", passed=False, baseline_version=None)
    results: list[RegisterResult] = [
        register_candidate(_config(registry_uri, model_name, model, decision, "run-a")),
        register_candidate(
            _config(registry_uri, model_name, make_model(tmp_path / "n", seed=2), decision, "run-a")
        ),
        register_candidate(_config(registry_uri, model_name, model, other_decision, "run-a")),
        register_candidate(_config(registry_uri, model_name, model, decision, "run-b")),
        register_candidate(_config(registry_uri, model_name, model, None, "run-a")),
    ]
    make_model(tmp_path / "m", seed=1)  # the trainer wrote new weights into the same directory
    results.append(register_candidate(_config(registry_uri, model_name, model, decision, "run-a")))
    versions = [r.version for r in results]
    assert len(set(versions)) == len(versions), versions
    assert not any(r.already_registered for r in results)
    assert len(open_registry(registry_uri).list_versions(model_name)) == len(versions)


def test_concurrent_registrations_of_one_candidate_agree_on_one_version(
    registry_uri: str, model_name: str, tmp_path: Path, make_model, make_decision
) -> None:
    """Two attempts of the same step running at once (each may create): both return the same, single version."""
    model = make_model(tmp_path / "m", seed=1)
    decision = make_decision(tmp_path / "d.json", passed=True, baseline_version=None)
    barrier = threading.Barrier(3)
    results: list[object] = []

    def attempt() -> None:
        config = _config(registry_uri, model_name, model, decision, "run-a")
        barrier.wait()
        try:
            results.append(register_candidate(config))
        except Exception as err:  # reported by the assertion below
            results.append(err)

    threads = [threading.Thread(target=attempt) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(isinstance(r, RegisterResult) for r in results) and len(results) == 3, [
        r for r in results if not isinstance(r, RegisterResult)
    ]
    (only,) = open_registry(registry_uri).list_versions(model_name)
    assert {r.version for r in results} == {only.version}  # type: ignore[union-attr]


@pytest.mark.parametrize("loss", ["drop", "503"])
def test_a_create_whose_answer_is_lost_leaves_one_version(
    lossy_proxy, mlflow_server: str, model_name: str, tmp_path: Path, make_model, make_decision, loss: str
) -> None:
    """The first create commits, its answer is lost, MLflow's client resends it and the resend commits too."""
    lossy_proxy.lose(CREATE_VERSION, loss)
    model = make_model(tmp_path / "m", seed=1)
    decision = make_decision(tmp_path / "d.json", passed=True, baseline_version=None)
    result = register_candidate(_config(lossy_proxy.url, model_name, model, decision, "run-a"))
    # Both creates reached the server and were accepted: the duplicate really existed.
    assert lossy_proxy.count("POST", CREATE_VERSION) == 2
    assert [s for m, p, s in lossy_proxy.forwarded if p == CREATE_VERSION] == [200, 200]
    (only,) = open_registry(mlflow_server).list_versions(model_name)
    assert only.version == result.version and only.aliases == [CANDIDATE]
    assert not result.already_registered
    # A later retry of the whole step still finds it.
    again = register_candidate(_config(mlflow_server, model_name, model, decision, "run-a"))
    assert again.version == result.version and again.already_registered


def test_a_create_that_fails_after_committing_finds_its_version(
    lossy_proxy,
    mlflow_server: str,
    model_name: str,
    tmp_path: Path,
    make_model,
    make_decision,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The create commits but every answer the client gets is an error: the committed version is returned."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    lossy_proxy.lose(CREATE_VERSION, "drop", "refuse", "refuse")
    model = make_model(tmp_path / "m", seed=1)
    decision = make_decision(tmp_path / "d.json", passed=True, baseline_version=None)
    result = register_candidate(_config(lossy_proxy.url, model_name, model, decision, "run-a"))
    assert lossy_proxy.count("POST", CREATE_VERSION) == 1
    (only,) = open_registry(mlflow_server).list_versions(model_name)
    assert only.version == result.version


def test_a_create_that_never_committed_still_fails(
    lossy_proxy,
    mlflow_server: str,
    model_name: str,
    tmp_path: Path,
    make_model,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Looking for the committed version must not hide a create that really failed."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    lossy_proxy.lose(CREATE_VERSION, "refuse", "refuse")
    model = make_model(tmp_path / "m", seed=1)
    with pytest.raises(Exception, match="503|retries|Max"):
        register_candidate(_config(lossy_proxy.url, model_name, model, None, "run-a"))
    assert lossy_proxy.count("POST", CREATE_VERSION) == 0
    assert open_registry(mlflow_server).list_versions(model_name) == []


def test_a_registration_key_must_be_safe_to_search_for(
    embedded_registry_uri: str, model_name: str, tmp_path: Path, make_model
) -> None:
    registry = open_registry(embedded_registry_uri)
    with pytest.raises(RegistryError, match='registration_key="it\'s"'):
        registry.register_version(model_name, str(make_model(tmp_path / "m")), {}, registration_key="it's")
