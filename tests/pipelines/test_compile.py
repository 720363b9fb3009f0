"""The compiled pipeline: golden YAML, reload, and the Kubernetes settings each task must carry."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.commands import compile_pipeline
from pipelines.params import ClusterSettings, PipelineParams

GOLDEN = Path(__file__).parent / "golden" / "pipeline.yaml"
UPDATE_ENV = "DKTO_UPDATE_GOLDEN"


def _strip_sdk_version(text: str) -> str:
    return re.sub(r"^sdkVersion: .*$", "sdkVersion: <stripped>", text, flags=re.M)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")


@pytest.fixture(scope="module")
def docs(compiled: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    spec, platform = list(yaml.safe_load_all(compiled.read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_matches_golden_file(compiled: Path) -> None:
    """Any change to the DAG, a component or a setting shows up as a reviewable diff of the golden YAML.

    Regenerate with ``DKTO_UPDATE_GOLDEN=1 pytest tests/pipelines/test_compile.py``.
    """
    got = _strip_sdk_version(compiled.read_text())
    if os.environ.get(UPDATE_ENV):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got)
    assert GOLDEN.exists(), f"no golden file; run with {UPDATE_ENV}=1 to create {GOLDEN}"
    assert got == _strip_sdk_version(GOLDEN.read_text()), (
        f"compiled pipeline differs from {GOLDEN}; if the change is intended, rerun with {UPDATE_ENV}=1"
    )


def test_reloads_as_a_component(compiled: Path) -> None:
    from kfp import components

    pipeline = components.load_component_from_file(str(compiled))
    assert pipeline.name == "diffusion-kto-retrain"
    assert set(pipeline.component_spec.inputs or {}) == set(PipelineParams.model_fields)


def test_pipeline_parameters_match_params_model(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Every PipelineParams field is a pipeline parameter with the same default, so one YAML drives both."""
    spec, _ = docs
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == set(PipelineParams.model_fields)
    defaults = PipelineParams.model_validate({"feedback_sources": ["x"], "base_model": "m"}).model_dump(
        mode="json"
    )
    for name, definition in inputs.items():
        if name in ("feedback_sources", "base_model"):
            assert not definition.get("isOptional"), f"{name} must be required"
            continue
        assert definition["defaultValue"] == defaults[name], name
        assert definition.get("description"), f"{name} has no description in the KFP UI"
    assert spec["pipelineInfo"]["displayName"]
    assert spec["pipelineInfo"]["description"]


def _tasks(spec: dict[str, Any]) -> dict[str, Any]:
    """All tasks of the DAG, nested DAGs (exit handler, condition) included, by task name."""
    out: dict[str, Any] = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def test_training_task_kubernetes_settings(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, executors = docs
    settings = ClusterSettings.from_dict({})
    train = executors["exec-train-model"]
    assert train["tolerations"] == [
        {"effect": "NoSchedule", "key": settings.gpu_toleration_key, "operator": "Exists"}
    ]
    assert train["nodeSelector"]["labels"] == settings.gpu_node_selector
    assert train["emptyDirMounts"] == [
        {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": settings.shm_size, "volumeName": "dshm"}
    ]
    assert int(train["activeDeadlineSeconds"]) == settings.train_timeout_s
    resources = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == settings.gpu_type
    # The GPU count is the run's gpus_per_node parameter, not a constant.
    assert "gpus_per_node" in resources["accelerator"]["resourceCount"]
    assert resources["resourceCpuLimit"] == settings.train_cpu
    assert resources["resourceMemoryLimit"] == settings.train_memory
    retry = _tasks(spec)["train-model"]["retryPolicy"]
    assert retry["maxRetryCount"] == settings.train_retries
    # Argo stops retrying once maxDuration has passed since the first attempt started: the window must
    # cover every attempt running to its timeout (kfp's default of 1 h would forbid most retries).
    window = int(retry["backoffMaxDuration"].rstrip("s"))
    assert window >= (settings.train_retries + 1) * settings.train_timeout_s
    for name in ("resolve-production-model", "register-candidate-model", "promote-model"):
        assert _tasks(spec)[name]["retryPolicy"]["maxRetryCount"] >= 1, name
    assert _tasks(spec)["train-model"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == (
        "{{$.pipeline_job_uuid}}"
    )


def test_cpu_steps_stay_off_gpus(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, executors = docs
    for name in ("ingest-feedback", "label-feedback", "register-candidate-model", "promote-model"):
        resources = spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]["resources"]
        assert "accelerator" not in resources, name
        assert resources["resourceCpuRequest"] == ClusterSettings.from_dict({}).step_cpu
        assert "tolerations" not in executors.get(f"exec-{name}", {}), name


def test_caching_off_for_side_effects_on_for_pure_steps(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = docs
    tasks = _tasks(spec)
    for name in (
        "promote-model",
        "register-candidate-model",
        "record-run-outcome",
        "resolve-production-model",
        "ingest-feedback",
    ):
        assert tasks[name]["cachingOptions"] == {}, f"{name} must never come from the cache"
    for name in ("label-feedback", "train-model", "evaluate-candidate"):
        assert tasks[name]["cachingOptions"] == {"enableCache": True}, f"{name} is pure and cacheable"


def test_credentials_come_from_secrets_not_parameters(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, executors = docs
    for name in ("register-candidate-model", "promote-model", "resolve-production-model"):
        secret = executors[f"exec-{name}"]["secretAsEnv"][0]
        assert secret["secretName"] == ClusterSettings.from_dict({}).registry_secret
        assert {e["envVar"] for e in secret["keyToEnv"]} == {
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
        }
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert not [n for n in inputs if re.search(r"password|token|secret|key", n)]


def test_promotion_gated_on_a_single_output_task(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """The If reads gate-passed's only output (kfp.local skips an If on one output of a multi-output task)."""
    spec, _ = docs
    tasks = _tasks(spec)
    conditions = {
        n: t["triggerPolicy"]["condition"]
        for n, t in tasks.items()
        if t.get("triggerPolicy", {}).get("condition")
    }
    assert len(conditions) == 1, conditions
    ((branch, condition),) = conditions.items()
    assert "pipelinechannel--gate-passed-Output" in condition and "true" in condition
    branch_tasks = spec["components"][tasks[branch]["componentRef"]["name"]]["dag"]["tasks"]
    assert list(branch_tasks) == ["promote-model"]
    gate_outputs = spec["components"]["comp-gate-passed"]["outputDefinitions"]["parameters"]
    assert list(gate_outputs) == ["Output"]
    assert tasks["record-run-outcome"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_components_use_project_images_without_runtime_installs(
    docs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    from components.shared.images import BASE_IMAGE, TRAINER_IMAGE

    spec, _ = docs
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] in (BASE_IMAGE, TRAINER_IMAGE), name
        script = " ".join(container["command"])
        assert "pip install" not in script, f"{name} installs packages at run time"
    images = {n: e["container"]["image"] for n, e in spec["deploymentSpec"]["executors"].items()}
    assert images["exec-train-model"] == TRAINER_IMAGE
    assert images["exec-ingest-feedback"] == BASE_IMAGE


def test_compiling_imports_no_heavy_library() -> None:
    """Compiling runs where torch is not installed: component modules import only stdlib and kfp."""
    import subprocess
    import sys

    code = (
        "import sys; import pipelines.pipeline; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'mlflow', 'pandas') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"compiling the pipeline imported {out}"


def test_every_task_pod_carries_the_project_labels(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """k8s/'s NetworkPolicy admits only labelled pods to the Pushgateway: no task may go without the label;
    only the training pod carries the trainer label the PodMonitor scrapes."""
    from pipelines.params import PROJECT_POD_LABELS, TRAINER_POD_LABELS

    spec, executors = docs
    for name in spec["deploymentSpec"]["executors"]:
        labels = executors.get(name, {}).get("podMetadata", {}).get("labels", {})
        assert PROJECT_POD_LABELS.items() <= labels.items(), f"{name} pod lacks {PROJECT_POD_LABELS}"
        is_trainer = TRAINER_POD_LABELS.items() <= labels.items()
        assert is_trainer == (name == "exec-train-model"), f"{name}: trainer label {labels}"


def _train_metrics_port(spec: dict[str, Any]) -> int:
    """The metrics port the compiled pipeline hands the training task (a compile-time constant)."""
    return int(
        _tasks(spec)["train-model"]["inputs"]["parameters"]["metrics_port"]["runtimeValue"]["constant"]
    )


def test_training_serves_metrics_on_the_cluster_port(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """On the cluster the train task serves /metrics on 9090 (the PodMonitor's port), not a run parameter."""
    spec, _ = docs
    assert ClusterSettings.from_dict({}).train_metrics_port == 9090
    assert _train_metrics_port(spec) == 9090
    assert "metrics_port" not in spec["root"]["inputDefinitions"]["parameters"]


def test_local_and_custom_settings_change_the_metrics_port(tmp_path: Path) -> None:
    """Local runs compile without a port (0: serve nothing), so parallel local runs never collide;
    a cluster file can move the port and the labels."""
    local = yaml.safe_load_all(compile_pipeline(tmp_path / "local.yaml", ClusterSettings.local()).read_text())
    assert _train_metrics_port(next(local)) == 0
    custom = ClusterSettings.from_dict({"train_metrics_port": 9400, "pod_labels": {"team": "ml"}})
    spec, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "custom.yaml", custom).read_text())
    assert _train_metrics_port(spec) == 9400
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-ingest-feedback"]["podMetadata"]["labels"] == {"team": "ml"}
    assert executors["exec-train-model"]["podMetadata"]["labels"] == {
        "team": "ml",
        "app.kubernetes.io/component": "trainer",
    }


def test_trainjob_launcher_setting_drops_the_pods_gpus(tmp_path: Path) -> None:
    """train_with_trainjob: the KFP training pod only launches and follows a TrainJob, so it asks for no
    GPU, no GPU node and no trainer label (its workers carry those), and tells the component so."""
    settings = ClusterSettings.from_dict({"train_with_trainjob": True})
    spec, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "launcher.yaml", settings).read_text())
    container = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert "accelerator" not in container["resources"]
    assert container["resources"]["resourceCpuRequest"] == settings.step_cpu
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-model"]
    assert "nodeSelector" not in executor and "tolerations" not in executor
    assert "app.kubernetes.io/component" not in executor["podMetadata"]["labels"]
    use_trainjob = _tasks(spec)["train-model"]["inputs"]["parameters"]["use_trainjob"]
    assert use_trainjob["runtimeValue"]["constant"] is True
