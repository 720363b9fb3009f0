"""The promote step: register a candidate model, move ``production`` if the gate passed, roll back.

Three entry points, each a plain function over a typed config:

- ``register_candidate(RegisterConfig)`` always registers the candidate (files uploaded and verified first),
  tagged with its lineage and the gate's verdict, so a rejected model stays visible with its reasons.
  It is idempotent: the same pipeline run's candidate (model URI, decision.json and files) registered again,
  by a retried step or a resent create, returns the version already made.
- ``promote(PromoteConfig)`` registers (unless a version is given), then moves ``production`` with a
  compare-and-set: only if ``production`` still points at the version the gate compared against
  (``decision.json``'s ``baseline_version``). ``run`` is the same function, for the KFP component.
- ``rollback(RollbackConfig)`` moves ``production`` back to ``previous-production`` (or a chosen version) and
  tags the version it took out ``rolled_back=true``, so a second rollback goes further back, never to it.

``resolve_production`` tells the evaluate step what to compare against.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from components.shared import storage
from components.shared.config import ConfigError, StepConfig
from components.shared.telemetry import StepTelemetry, get_logger

log = get_logger("promote")

DEFAULT_REGISTRY_URI = "sqlite:///outputs/registry/mlflow.db"


class RegistryConfig(StepConfig):
    """Where the model registry lives (shared by every promote-step config)."""

    registry_uri: str = Field(
        default_factory=lambda: os.environ.get("DKTO_REGISTRY_URI", DEFAULT_REGISTRY_URI),
        description="The model registry: 'sqlite:///path/to/mlflow.db' for an embedded MLflow registry on "
        "this machine, or an MLflow server URL such as 'http://mlflow.kubeflow:5000'. Default: "
        "$DKTO_REGISTRY_URI, else an embedded registry under outputs/registry.",
    )
    artifact_root: str | None = Field(
        None,
        description="Where registered model files are stored (a local directory or gs://bucket/prefix). "
        "Default: 'artifacts' beside an embedded registry's database, or the MLflow server's own "
        "artifact root.",
    )
    model_name: str = Field(
        "diffusion-kto", description="Name of the registered model whose versions and aliases are managed."
    )
    pipeline_run_id: str | None = Field(
        None,
        description="The pipeline run doing this (recorded on the registry for audit). Default: $DKTO_RUN_ID.",
    )
    pushgateway: str | None = Field(
        None,
        description="Prometheus Pushgateway address for this step's metrics (default: $DKTO_PUSHGATEWAY).",
    )

    @model_validator(mode="after")
    def _check_registry_uri(self) -> RegistryConfig:
        uri = self.registry_uri
        if not uri.startswith(("sqlite:///", "http://", "https://")):
            raise ValueError(
                f"registry_uri={uri!r}: use 'sqlite:///path/to/mlflow.db' (embedded) or an MLflow server "
                "URL 'http(s)://host:port'"
            )
        name = self.model_name
        if not name.strip() or any(ch in name for ch in "/'\"") or ".promotion-lock" in name:
            raise ValueError(
                f"model_name={name!r}: a non-empty name without '/' or quotes that does not contain "
                "'.promotion-lock' (reserved for the promotion lock)"
            )
        return self

    def run_id(self) -> str:
        """The pipeline run id recorded on what this step changes."""
        return self.pipeline_run_id or os.environ.get("DKTO_RUN_ID", "local")


class RegisterConfig(RegistryConfig):
    """Register a candidate model directory as a new version of ``model_name``, with lineage tags."""

    candidate_model: str = Field(
        ..., description="The trained model directory (diffusers layout or LoRA adapter), local or gs://."
    )
    decision: str | None = Field(
        None,
        description="The evaluate step's decision.json (or its output directory). Its verdict, reasons and "
        "metrics are recorded as tags. Without it the version is tagged gate=unevaluated.",
    )
    base_model: str | None = Field(
        None,
        description="The model fine-tuning started from. Default: read from the candidate's "
        "dkto_lora.json or training_summary.json when present.",
    )
    dataset_hash: str | None = Field(None, description="Hash of the training data (lineage tag).")
    training_config_hash: str | None = Field(
        None,
        description="Hash of the training config (lineage tag). Default: from training_summary.json if present.",
    )
    code_version: str | None = Field(
        None, description="Code version that trained the model, e.g. a git commit or image tag (lineage tag)."
    )
    extra_tags: dict[str, str] = Field(
        default_factory=dict, description="More tags to put on the new version (key -> value)."
    )
    upload_chunk_size_mib: int = Field(
        8,
        ge=1,
        description="Files larger than this go to GCS as resumable uploads in chunks of this size (MiB); "
        "each chunk continues from the offset the server confirmed and is retried on a transient error.",
    )


class PromoteConfig(RegisterConfig):
    """Register the candidate (unless ``version`` names one) and move ``production`` to it if the gate passed."""

    candidate_model: str | None = Field(  # type: ignore[assignment]
        None,
        description="The trained model directory to register first. Leave empty when 'version' names an "
        "already registered version.",
    )
    version: str | None = Field(
        None, description="An already registered version to promote instead of registering candidate_model."
    )
    lock_timeout_s: float = Field(
        60.0, gt=0, description="How long to wait for another promotion of the same model to finish."
    )
    lock_ttl_s: float = Field(
        300.0,
        gt=0,
        description="A promotion lock older than this is taken to belong to a crashed run and is broken.",
    )

    @model_validator(mode="after")
    def _check_what_to_promote(self) -> PromoteConfig:
        if (self.candidate_model is None) == (self.version is None):
            raise ValueError(
                "give exactly one of candidate_model (a model directory to register and promote) or "
                f"version (an already registered version); got candidate_model={self.candidate_model!r}, "
                f"version={self.version!r}"
            )
        if self.decision is None:
            raise ValueError(
                "decision is required to promote: the evaluate step's decision.json (or its output "
                "directory); production moves only on a passing gate"
            )
        return self


class RollbackConfig(RegistryConfig):
    """Move ``production`` back to ``previous-production`` or to a chosen version.

    The version taken out is tagged ``rolled_back=true``; a default rollback never goes back to it, so
    rolling back twice goes two versions back. Retrying a rollback that succeeded changes nothing when it
    names ``to_version`` or carries the same ``pipeline_run_id`` (not the default 'local').
    """

    to_version: str | None = Field(
        None,
        description="The version to make production again. Default: the 'previous-production' alias. "
        "Naming the version whose rollback put the current production version in place undoes that "
        "rollback: the version in production is then not marked rolled back and stays the one a later "
        "rollback returns to. Naming any other version rolls production back and marks it rolled back.",
    )
    reason: str | None = Field(None, description="Why the rollback happened (recorded as a tag).")
    lock_timeout_s: float = Field(60.0, gt=0, description="How long to wait for a running promotion.")
    lock_ttl_s: float = Field(
        300.0, gt=0, description="Age after which a promotion lock counts as abandoned."
    )


class RegisterResult(BaseModel):
    """What registration created."""

    model_name: str
    version: str
    files_uri: str = Field(description="Where the version's model files are (local path or gs://).")
    gate: Literal["passed", "rejected", "unevaluated"]
    reasons: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    already_registered: bool = Field(
        False,
        description="True when this candidate (same pipeline run, model URI, decision and files) was "
        "registered before, e.g. by a retried step, and that version was returned instead of a new one.",
    )


class PromoteResult(BaseModel):
    """What promotion did: ``outcome`` is promoted, rejected (gate failed) or conflict (production moved)."""

    model_name: str
    version: str
    outcome: Literal["promoted", "rejected", "conflict"]
    production_before: str | None = Field(description="Production version seen under the lock.")
    production_after: str | None
    expected_production: str | None = Field(description="Production version the gate compared against.")
    previous_production: str | None = None
    reasons: list[str] = Field(default_factory=list)
    message: str = ""
    registered: RegisterResult | None = None

    @property
    def promoted(self) -> bool:
        """True when production now points at this version."""
        return self.outcome == "promoted"


class RollbackResult(BaseModel):
    """What a rollback changed."""

    model_name: str
    production_before: str | None
    production_after: str
    previous_production: str | None
    rolled_back_version: str | None = Field(
        default=None,
        description="The version taken out of production and tagged rolled_back=true (never chosen "
        "again by a default rollback).",
    )
    message: str = ""
    changed: bool = Field(
        default=True,
        description="False when the rollback had already happened (production already at the target, or "
        "a retry of the same pipeline run) and nothing was changed.",
    )


def load_decision(uri: str) -> dict[str, Any]:
    """Read the evaluate step's decision.json (given the file or its output directory) and check its keys."""
    path = uri
    if not uri.endswith(".json"):
        path = storage.join(uri, "decision.json")
    try:
        decision = storage.read_json(path)
    except storage.StorageError as err:
        raise ConfigError(f"decision={uri!r}: {err} (expected the evaluate step's decision.json)") from None
    if not isinstance(decision, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(decision).__name__}")
    missing = [k for k in ("passed", "reasons", "baseline_version") if k not in decision]
    if missing:
        raise ConfigError(
            f"{path}: missing key(s) {missing}; decision.json must have passed (bool), reasons (list) and "
            "baseline_version (the production version compared against, or null)"
        )
    if not isinstance(decision["passed"], bool):
        raise ConfigError(f"{path}: 'passed' must be true or false, got {decision['passed']!r}")
    if decision["baseline_version"] is not None:
        decision["baseline_version"] = str(decision["baseline_version"])
    return decision


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _telemetry(config: RegistryConfig) -> StepTelemetry:
    return StepTelemetry("promote", run_id=config.run_id(), pushgateway=config.pushgateway)


def resolve_production(
    registry_uri: str, model_name: str, fallback_model: str, *, artifact_root: str | None = None
) -> tuple[str, str | None]:
    """The production model's files URI and version, or ``(fallback_model, None)`` if nothing is in production.

    The evaluate step compares the candidate against this and records the version as ``baseline_version``,
    which promotion later uses for its compare-and-set.
    """
    from components.promote.promotion import resolve_production_impl

    return resolve_production_impl(registry_uri, model_name, fallback_model, artifact_root=artifact_root)


def register_candidate(config: RegisterConfig) -> RegisterResult:
    """Register ``candidate_model`` as a new version tagged with lineage and the gate's verdict."""
    from components.promote.promotion import register_candidate_impl

    telemetry = _telemetry(config)
    try:
        return register_candidate_impl(config, telemetry)
    finally:
        telemetry.push()


def promote(config: PromoteConfig) -> PromoteResult:
    """Register if needed, then move ``production`` by compare-and-set when the gate passed."""
    from components.promote.promotion import promote_impl

    telemetry = _telemetry(config)
    try:
        return promote_impl(config, telemetry)
    finally:
        telemetry.push()


def rollback(config: RollbackConfig) -> RollbackResult:
    """Move ``production`` back to ``previous-production`` (or ``to_version``) and record who and why."""
    from components.promote.promotion import rollback_impl

    telemetry = _telemetry(config)
    try:
        return rollback_impl(config, telemetry)
    finally:
        telemetry.push()


def run(config: PromoteConfig) -> PromoteResult:
    """The step's entry point for the pipeline: same as ``promote``."""
    return promote(config)
