"""A registry that cannot be read must fail the step, never read as "nothing in production" (review finding 2)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from components.promote.registry import PRODUCTION, RegistryError, open_registry
from components.promote.step import resolve_production


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (not imported from conftest: the name is ambiguous
    when several test folders run in one session)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_client_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MLflow client gives up at once; its retries (minutes by default) do not change the outcome."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def test_connection_refused_is_an_error(no_client_retries: None) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RegistryError, match="could not read model 'diffusion-kto'"):
        resolve_production(uri, "diffusion-kto", "gs://bucket/base")


def test_wrong_server_path_is_an_error(mlflow_server: str, no_client_retries: None) -> None:
    """A 404 from the server for an unknown endpoint (ENDPOINT_NOT_FOUND) is not a missing model."""
    with pytest.raises(RegistryError, match="could not read model"):
        resolve_production(mlflow_server + "/not-mlflow", "diffusion-kto", "gs://bucket/base")


def test_server_error_is_an_error(lossy_proxy: Any, model_name: str, no_client_retries: None) -> None:
    lossy_proxy.lose("/api/2.0/mlflow/registered-models/get", "refuse")
    with pytest.raises(RegistryError, match="could not read model"):
        open_registry(lossy_proxy.url).get_alias(model_name, PRODUCTION)


def test_missing_model_and_missing_alias_are_none(registry_uri: str, model_name: str) -> None:
    registry = open_registry(registry_uri)
    assert registry.get_alias(model_name, PRODUCTION) is None
    assert resolve_production(registry_uri, model_name, "base") == ("base", None)
    registry._ensure_model(model_name)  # type: ignore[attr-defined]
    assert registry.get_alias(model_name, PRODUCTION) is None
