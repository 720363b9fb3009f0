"""``dkto submit`` / ``dkto schedule`` defaults: the pods run as k8s/'s service account and push to k8s/'s
Pushgateway unless told otherwise.

No Kubeflow Pipelines server can run here, so the commands talk to a stand-in that records what a
``kfp.Client`` would have been asked; the compiled package it receives is the real one.
"""

from __future__ import annotations

import http.server
import sys
import threading
from collections.abc import Iterator
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
        self.recurring: dict[str, str] = {}  # id -> display name, as the server keeps them
        self.deleted: list[str] = []

    def create_run_from_pipeline_package(self, package: str, **kwargs: Any) -> Any:
        self.calls["run"] = {"package": Path(package).read_text(), **kwargs}
        return type("Run", (), {"run_id": "run-1"})()

    def create_experiment(self, name: str, namespace: str | None = None) -> Any:
        return type("Experiment", (), {"experiment_id": "exp-1"})()

    def create_recurring_run(self, **kwargs: Any) -> Any:
        kwargs["package"] = Path(kwargs["pipeline_package_path"]).read_text()
        self.calls["schedule"] = kwargs
        job_id = f"job-{len(self.recurring) + len(self.deleted) + 1}"
        self.recurring[job_id] = kwargs["job_name"]
        return type("Job", (), {"recurring_run_id": job_id})()

    def list_recurring_runs(self, *, experiment_id: str, page_token: str = "", page_size: int = 10) -> Any:
        runs = [
            type("R", (), {"recurring_run_id": i, "display_name": n})() for i, n in self.recurring.items()
        ]
        return type("Page", (), {"recurring_runs": runs, "next_page_token": ""})()

    def delete_recurring_run(self, recurring_run_id: str) -> dict:
        del self.recurring[recurring_run_id]
        self.deleted.append(recurring_run_id)
        return {}


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
        *_sets("pushgateway=http://pg.dkto-dev:9091"), "--service-account", "nightly", "--replace",
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


def test_schedule_refuses_a_second_schedule_of_the_same_name_unless_replaced(client: RecordingClient) -> None:
    """Two schedules would each allow one run at a time, so their runs could overlap on one registry."""
    from pipelines.cli import app

    args = ["schedule", "--cron", "0 0 3 * * *", "--host", "http://kfp.test", *_sets()]
    _dkto(*args)
    assert client.recurring == {"job-1": "diffusion-kto-retrain-nightly"}
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "already has a recurring run" in again.output
    assert list(client.recurring) == ["job-1"]
    _dkto(*args, "--replace")
    assert client.deleted == ["job-1"] and list(client.recurring) == ["job-2"]
    _dkto(*args, "--name", "weekly")  # another name is another schedule
    assert sorted(client.recurring.values()) == ["diffusion-kto-retrain-nightly", "weekly"]


def test_a_failing_replacement_leaves_the_old_schedule(client: RecordingClient, tmp_path: Path) -> None:
    """--replace deletes the old recurring run only after the new one exists."""
    from pipelines.cli import app

    args = ["schedule", "--cron", "0 0 3 * * *", "--host", "http://kfp.test", *_sets()]
    _dkto(*args)
    bad_cluster = tmp_path / "cluster.yaml"
    bad_cluster.write_text("train_retries: -1\n")
    failed = CliRunner().invoke(app, [*args, "--replace", "--cluster", str(bad_cluster)])
    assert failed.exit_code != 0
    assert client.recurring == {"job-1": "diffusion-kto-retrain-nightly"} and client.deleted == []


@pytest.fixture
def kfp_host() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server in place of the KFP API: it answers healthz and records every request path."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"multi_user": false}')

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run the `dkto` console script's entry point with these arguments; its exit code."""
    from pipelines.cli import main

    monkeypatch.setattr(sys, "argv", ["dkto", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0)


def test_submit_checks_the_parameters_before_contacting_the_cluster(
    kfp_host: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A parameter file a cluster cannot run is refused with one line, and the KFP host hears nothing."""
    host, requests = kfp_host
    code = _main(
        monkeypatch,
        "submit",
        "--host",
        host,
        "--set",
        "feedback_sources=[gs://b/feedback/]",
        "--set",
        "base_model=gs://b/models/base",
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: a cluster run needs storage every pod can reach"), err
    assert "registry_uri" in err and "Traceback" not in err
    assert requests == []


@pytest.mark.parametrize(
    "args",
    [
        ["compile", "--cluster", "{tmp}/cluster.yaml", "--out", "{tmp}/pipeline.yaml"],
        [
            "run",
            "--local",
            "--set",
            "feedback_sources=[a.jsonl]",
            "--set",
            "base_model=m",
            "--set",
            "bogus=1",
        ],
        ["schedule", "--cron", "0 3 * * *", "--host", "http://127.0.0.1:9", "--set", "base_model=m"],
    ],
    ids=["bad-cluster-file", "unknown-field", "five-field-cron"],
)
def test_a_config_error_is_one_line_on_stderr_with_exit_code_2(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The message names the field and the fix; a 40-line traceback through typer and pydantic hides it."""
    (tmp_path / "cluster.yaml").write_text("train_retries: -1\n")
    code = _main(monkeypatch, *(arg.format(tmp=tmp_path) for arg in args))
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) <= 3, captured.err


def test_schedule_checks_the_cluster_file_before_contacting_the_cluster(
    kfp_host: tuple[str, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review round 2, finding 4: schedule compiled after creating the KFP client and the experiment."""
    host, requests = kfp_host
    bad_cluster = tmp_path / "cluster.yaml"
    bad_cluster.write_text("train_retries: -1\n")
    code = _main(
        monkeypatch, "schedule", "--cron", "@daily", "--host", host, *_sets(), "--cluster", str(bad_cluster)
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: invalid ClusterSettings"), err
    assert "train_retries" in err and "Traceback" not in err
    assert requests == []


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "--host", "http://127.0.0.1:9", "--config", "{missing}"],
        ["schedule", "--cron", "@daily", "--host", "http://127.0.0.1:9", "--config", "{missing}"],
        ["run", "--local", "--config", "{missing}"],
        ["submit", "--host", "http://127.0.0.1:9", *_sets(), "--cluster", "{missing}"],
        ["schedule", "--cron", "@daily", "--host", "http://127.0.0.1:9", *_sets(), "--cluster", "{missing}"],
        ["compile", "--cluster", "{missing}", "--out", "{tmp}/pipeline.yaml"],
        ["train", "--config", "{missing}"],
    ],
    ids=[
        "submit-config",
        "schedule-config",
        "run-config",
        "submit-cluster",
        "schedule-cluster",
        "compile",
        "train",
    ],
)
def test_a_mistyped_input_file_is_one_line_on_stderr_with_exit_code_2(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review round 2, finding 4: a --config/--cluster path that does not exist raised StorageError with a
    traceback; it is the user's input, named with its option."""
    missing = str(tmp_path / "no-such.yaml")
    code = _main(monkeypatch, *(arg.format(tmp=tmp_path, missing=missing) for arg in args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: {missing}: cannot read the config file"), err
    assert "no such file" in err and "Traceback" not in err
