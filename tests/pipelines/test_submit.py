"""``dkto submit`` / ``dkto schedule`` defaults: the pods run as k8s/'s service account and push to k8s/'s
Pushgateway unless told otherwise.

No Kubeflow Pipelines server can run here, so the commands talk to a stand-in that records what a
``kfp.Client`` would have been asked; the compiled package it receives is the real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.commands import cluster_arguments
from pipelines.params import CLUSTER_PUSHGATEWAY, CLUSTER_SERVICE_ACCOUNT, PipelineParams

REQUIRED = [
    "feedback_sources=[gs://b/feedback/]",
    "base_model=gs://b/models/base",
    "registry_uri=http://mlflow.dkto:5000",
    "outputs_root=gs://b/dkto",
    "checkpoint_root=gs://b/dkto/checkpoints",
]


class RecordingClient:
    """Stands in for ``kfp.Client``: keeps each call's keyword arguments and the compiled package."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}

    def create_run_from_pipeline_package(self, package: str, **kwargs: Any) -> Any:
        self.calls["run"] = {"package": Path(package).read_text(), **kwargs}
        return type("Run", (), {"run_id": "run-1"})()

    def create_experiment(self, name: str, namespace: str | None = None) -> Any:
        return type("Experiment", (), {"experiment_id": "exp-1"})()

    def create_recurring_run(self, **kwargs: Any) -> Any:
        kwargs["package"] = Path(kwargs["pipeline_package_path"]).read_text()
        self.calls["schedule"] = kwargs
        return type("Job", (), {"recurring_run_id": "job-1"})()


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> RecordingClient:
    recording = RecordingClient()
    monkeypatch.setattr("pipelines.commands._client", lambda host, namespace: recording)
    return recording


def _dkto(*args: str) -> None:
    from pipelines.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def _sets(*overrides: str) -> list[str]:
    return [flag for o in (*REQUIRED, *overrides) for flag in ("--set", o)]


def test_cluster_arguments_push_to_the_k8s_pushgateway_unless_told() -> None:
    params = PipelineParams.from_dict({}, REQUIRED)
    assert cluster_arguments(params)["pushgateway"] == CLUSTER_PUSHGATEWAY
    assert cluster_arguments(params, "http://pg.other:9091")["pushgateway"] == "http://pg.other:9091"
    assert cluster_arguments(params, "")["pushgateway"] == ""
    from_file = PipelineParams.from_dict({}, [*REQUIRED, "pushgateway=http://pg.dkto-dev:9091"])
    assert cluster_arguments(from_file)["pushgateway"] == "http://pg.dkto-dev:9091"
    switched_off = PipelineParams.from_dict({}, [*REQUIRED, "pushgateway=''"])
    assert cluster_arguments(switched_off)["pushgateway"] == ""
    # Local runs keep the parameter's own default: nothing is pushed from a laptop.
    assert params.pipeline_arguments()["pushgateway"] == ""


def test_submit_defaults_to_the_runner_service_account_and_pushgateway(client: RecordingClient) -> None:
    _dkto("submit", "--host", "http://kfp.test", *_sets())
    run = client.calls["run"]
    assert run["service_account"] == CLUSTER_SERVICE_ACCOUNT == "dkto-pipeline-runner"
    assert run["arguments"]["pushgateway"] == CLUSTER_PUSHGATEWAY == "http://dkto-pushgateway.dkto:9091"
    spec, platform = yaml.safe_load_all(run["package"])
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train-model"]["podMetadata"]["labels"]["app.kubernetes.io/component"] == "trainer"


def test_submit_overrides(client: RecordingClient) -> None:
    _dkto(
        "submit", "--host", "http://kfp.test", *_sets(),
        "--service-account", "my-runner", "--pushgateway", "http://pg.dkto-dev:9091",
    )  # fmt: skip
    assert client.calls["run"]["service_account"] == "my-runner"
    assert client.calls["run"]["arguments"]["pushgateway"] == "http://pg.dkto-dev:9091"
    _dkto("submit", "--host", "http://kfp.test", *_sets(), "--service-account", "", "--pushgateway", "")
    assert client.calls["run"]["service_account"] is None
    assert client.calls["run"]["arguments"]["pushgateway"] == ""


def test_schedule_has_the_same_defaults(client: RecordingClient) -> None:
    _dkto("schedule", "--cron", "0 0 3 * * *", "--host", "http://kfp.test", *_sets())
    job = client.calls["schedule"]
    assert job["service_account"] == CLUSTER_SERVICE_ACCOUNT
    assert job["params"]["pushgateway"] == CLUSTER_PUSHGATEWAY
    assert job["max_concurrency"] == 1 and job["no_catchup"] is True
    _dkto(
        "schedule", "--cron", "0 0 3 * * *", "--host", "http://kfp.test",
        *_sets("pushgateway=http://pg.dkto-dev:9091"), "--service-account", "nightly",
    )  # fmt: skip
    assert client.calls["schedule"]["service_account"] == "nightly"
    assert client.calls["schedule"]["params"]["pushgateway"] == "http://pg.dkto-dev:9091"


def test_cluster_runs_refuse_storage_only_this_machine_has() -> None:
    """Every task of a cluster run is its own pod: a SQLite registry or a local outputs/checkpoint root
    would be a different empty file in each (and a retried training would restart at step 0)."""
    from components.shared.config import ConfigError

    local = PipelineParams.from_dict(
        {}, ["feedback_sources=[gs://b/feedback/]", "base_model=gs://b/models/base"]
    )
    with pytest.raises(ConfigError) as err:
        cluster_arguments(local)
    for name in ("registry_uri", "outputs_root", "checkpoint_root"):
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="feedback_sources"):
        cluster_arguments(PipelineParams.from_dict({}, [*REQUIRED, "feedback_sources=[/data/feedback]"]))
