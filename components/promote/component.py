"""KFP components of the registry steps: resolve production, register the candidate, gate, promote.

- ``resolve_production_model`` runs before evaluation: the production model's files and version, or the
  base model and an empty version when nothing is in production.
- ``register_candidate_model`` always runs after evaluation: every candidate becomes a registry version,
  tagged with the gate's verdict, reasons, metrics and lineage.
- ``gate_passed`` reads decision.json into one boolean. The pipeline conditions promotion on this
  single-output task, because ``kfp.local`` evaluates a ``dsl.If`` on one named output of a multi-output
  task (without ``dsl.Else``) as False and silently skips the branch.
- ``promote_model`` moves the ``production`` alias to the registered version by compare-and-set.

Module level imports only the standard library and kfp.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components.shared.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def resolve_production_model(
    registry_uri: str,
    model_name: str,
    base_model: str,
    registry_artifact_root: str = "",
    run_id: str = "local",
) -> NamedTuple("Production", [("model_uri", str), ("version", str)]):  # type: ignore[valid-type]
    """The production model's files URI and version; the base model and "" when nothing is in production.

    Args:
        registry_uri: `sqlite:///path.db` or an MLflow server URL.
        model_name: Registered model name.
        base_model: The model to compare against when nothing is in production.
        registry_artifact_root: Where the registry keeps model files (empty: its default).
        run_id: The pipeline run id.
    """
    from collections import namedtuple

    from components.promote.step import resolve_production
    from pipelines.runtime import prepare_step_env

    prepare_step_env(run_id, "")
    model_uri, version = resolve_production(
        registry_uri, model_name, base_model, artifact_root=registry_artifact_root or None
    )
    Production = namedtuple("Production", ["model_uri", "version"])  # noqa: N806 - KFP's output type
    return Production(model_uri, version or "")


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_candidate_model(
    candidate: Input[Model],
    evaluation: Input[Artifact],
    registry_uri: str,
    model_name: str,
    base_model: str,
    registry_artifact_root: str = "",
    run_id: str = "local",
    pushgateway: str = "",
    outputs_root: str = "",
) -> str:
    """Register the candidate as a new version (always), tagged gate=passed|rejected, reasons and lineage.

    Args:
        candidate: The trained model.
        evaluation: The evaluation directory (decision.json).
        registry_uri: `sqlite:///path.db` or an MLflow server URL.
        model_name: Registered model name.
        base_model: The model fine-tuning started from (lineage tag).
        registry_artifact_root: Where the registry keeps model files (empty: its default).
        run_id: The pipeline run id (recorded on the version).
        pushgateway: Prometheus Pushgateway address; empty pushes nothing.
        outputs_root: Root of the run records; empty writes none.

    Returns:
        The registered version.
    """
    from components.promote.step import RegisterConfig, register_candidate
    from components.shared.images import TRAINER_IMAGE
    from pipelines.runtime import durable_uri, prepare_step_env, record_step

    prepare_step_env(run_id, pushgateway)
    config = RegisterConfig.from_dict(
        {
            "registry_uri": registry_uri,
            "artifact_root": registry_artifact_root or None,
            "model_name": model_name,
            "pipeline_run_id": run_id,
            "candidate_model": durable_uri(candidate.uri, candidate.path),
            "decision": evaluation.path,
            "base_model": base_model,
            "code_version": TRAINER_IMAGE,
        }
    )
    result = register_candidate(config)
    record_step(
        outputs_root,
        run_id,
        "register",
        {"model_name": result.model_name, "version": result.version, "gate": result.gate},
    )
    return result.version


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate_passed(evaluation: Input[Artifact]) -> bool:
    """True when the evaluation's decision.json says the candidate passed the gate.

    Args:
        evaluation: The evaluation directory (decision.json).
    """
    from components.promote.step import load_decision

    return bool(load_decision(evaluation.path)["passed"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def promote_model(
    evaluation: Input[Artifact],
    registry_uri: str,
    model_name: str,
    version: str,
    registry_artifact_root: str = "",
    run_id: str = "local",
    pushgateway: str = "",
    outputs_root: str = "",
) -> str:
    """Move `production` to the registered version if it still points at the version evaluated against.

    Args:
        evaluation: The evaluation directory (decision.json with the baseline version).
        registry_uri: `sqlite:///path.db` or an MLflow server URL.
        model_name: Registered model name.
        version: The registered candidate version.
        registry_artifact_root: Where the registry keeps model files (empty: its default).
        run_id: The pipeline run id (recorded on the alias move).
        pushgateway: Prometheus Pushgateway address; empty pushes nothing.
        outputs_root: Root of the run records; empty writes none.

    Returns:
        The outcome: promoted, rejected or conflict.
    """
    from components.promote.step import PromoteConfig, promote
    from pipelines.runtime import prepare_step_env, record_step

    prepare_step_env(run_id, pushgateway)
    config = PromoteConfig.from_dict(
        {
            "registry_uri": registry_uri,
            "artifact_root": registry_artifact_root or None,
            "model_name": model_name,
            "pipeline_run_id": run_id,
            "version": version,
            "decision": evaluation.path,
        }
    )
    result = promote(config)
    record_step(
        outputs_root,
        run_id,
        "promote",
        {
            "version": result.version,
            "outcome": result.outcome,
            "production_before": result.production_before,
            "production_after": result.production_after,
            "message": result.message,
        },
    )
    if result.outcome == "conflict":
        raise RuntimeError(
            f"promotion of {model_name} v{version} lost a race: production moved from "
            f"{result.expected_production} to {result.production_before} during this run; {result.message}"
        )
    return result.outcome
