"""The promotion lock when MLflow's client resends a request whose answer was lost (a real proxy loses it)."""

from __future__ import annotations

import time

import pytest

from components.promote.registry import LOCK_SUFFIX, open_registry

CREATE_MODEL = "/api/2.0/mlflow/registered-models/create"
RENAME_MODEL = "/api/2.0/mlflow/registered-models/rename"
DELETE_MODEL = "/api/2.0/mlflow/registered-models/delete"


def test_a_release_whose_answer_is_lost_never_removes_the_next_holders_lock(
    lossy_proxy, mlflow_server: str, model_name: str
) -> None:
    """Our release commits, the next run takes the lock in the gap, then our client resends the release."""
    direct = open_registry(mlflow_server)
    lock_name = model_name + LOCK_SUFFIX
    taken: list[str] = []

    def next_run_takes_the_lock() -> None:
        if taken:
            return
        direct.client.create_registered_model(  # type: ignore[attr-defined]
            lock_name,
            tags={"owner": "next-run", "holder": "next", "acquired_at": f"{time.time():.3f}", "ttl_s": "300"},
        )
        taken.append(lock_name)

    mine = open_registry(lossy_proxy.url)
    with mine.lock(model_name, owner="me", timeout_s=10):
        # Whichever request releases the lock loses its first answer.
        lossy_proxy.lose(DELETE_MODEL, "drop", then=next_run_takes_the_lock)
        lossy_proxy.lose(RENAME_MODEL, "drop", then=next_run_takes_the_lock)
    assert taken, "the release's answer was never lost: the test did not exercise the gap"
    holder = direct._lock_holder(lock_name)  # type: ignore[attr-defined]
    assert holder is not None and holder["owner"] == "next-run", "our retried release removed its lock"


def test_a_lock_create_that_fails_after_committing_is_still_ours(
    lossy_proxy, mlflow_server: str, model_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create commits and every answer is lost or an error: the lock is ours, not left to expire."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    lossy_proxy.lose(CREATE_MODEL, "drop", "refuse")
    direct = open_registry(mlflow_server)
    lock_name = model_name + LOCK_SUFFIX
    with open_registry(lossy_proxy.url).lock(model_name, owner="me", timeout_s=10) as lease:
        assert lossy_proxy.count("POST", CREATE_MODEL) == 1
        assert direct._lock_holder(lock_name)["owner"] == lease.owner  # type: ignore[attr-defined]
    assert direct._lock_holder(lock_name) is None  # type: ignore[attr-defined]
