"""Registration, compare-and-set promotion and rollback on a ``Registry``.

Consistency under crashes: every alias move happens under the model's promotion lock and has exactly one
commit write, the ``production`` alias. Before it, the new production version is tagged with the version it
replaces (``promotion.replaces_version``); after it, ``previous-production`` and the audit tags follow.
A crash before the commit leaves production untouched (at most an unused intent tag); a crash after it
leaves production correct and ``previous-production`` possibly stale, which the next locked operation
repairs from the intent tag, and which rollback never trusts over that tag. So no crash point leaves
production pointing at an unverified model or rollback pointing at the wrong one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

from components.promote.registry import (
    CANDIDATE,
    FILES_DIGEST_TAG,
    PREVIOUS_PRODUCTION,
    PRODUCTION,
    Lease,
    ModelVersion,
    Registry,
    RegistryError,
    files_digest,
    open_registry,
    storage_uri,
)
from components.promote.step import (
    PromoteConfig,
    PromoteResult,
    RegisterConfig,
    RegisterResult,
    RollbackConfig,
    RollbackResult,
    load_decision,
)
from components.shared import storage
from components.shared.config import ConfigError
from components.shared.telemetry import StepTelemetry, get_logger

log = get_logger("promote")

REPLACES = "promotion.replaces_version"
#: sha256 of the decision.json a version's gate verdict came from (see ``decision_digest``).
DECISION_DIGEST = "gate.decision_sha256"
ROLLED_BACK = "rolled_back"
ANONYMOUS_RUN = "local"
METRIC_FIELDS = (
    "candidate_mean",
    "baseline_mean",
    "mean_diff",
    "diff_ci_low",
    "diff_ci_high",
    "win_rate",
    "win_rate_ci_low",
    "win_rate_ci_high",
)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _open(config: Any) -> Registry:
    return open_registry(config.registry_uri, artifact_root=config.artifact_root)


def _read_optional_json(uri: str) -> dict[str, Any]:
    try:
        data = storage.read_json(uri)
    except (storage.StorageError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _absolute(uri: str | None) -> str | None:
    """Local paths are recorded absolute so the lineage tag still points at the files from elsewhere."""
    if uri is None or storage.is_gcs(uri) or storage_uri(uri) != uri:
        return uri
    return str(Path(uri).resolve())


def _canonical(uri: str) -> str:
    """``uri`` as the same file is named from anywhere: a KFP pod's ``/gcs/<bucket>/...`` (the GCS FUSE
    mount KFP gives ``Artifact.path`` for gs:// artifacts) as ``gs://<bucket>/...``, local paths absolute."""
    if uri.startswith("/gcs/") and len(uri) > len("/gcs/"):
        return "gs://" + uri[len("/gcs/") :]
    return _absolute(uri) or uri


def decision_file(uri: str) -> str:
    """The decision.json a ``decision`` setting names (the file or its directory), as ``_canonical`` names
    it, so the same file given two ways (or from a pod and from a laptop) compares equal."""
    path = uri if uri.endswith(".json") else storage.join(uri, "decision.json")
    return _canonical(path)


def decision_digest(decision: dict[str, Any]) -> str:
    """sha256 of a loaded decision.json's canonical JSON: which verdict, whatever path it was read from."""
    canonical = json.dumps(decision, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_decision_matches(name: str, version: ModelVersion, decision: dict[str, Any], uri: str) -> None:
    """Refuse to promote ``version`` on a decision.json that did not evaluate it.

    The decision must name the model the version was registered from (its ``gate.candidate_model``,
    ``model_uri`` or ``candidate_model`` tag), and a version already judged by a gate may only be promoted
    on that same decision (the same content, ``gate.decision_sha256``: a path can be rewritten by a later
    run), so a passing verdict about another model cannot carry a rejected one into production. A version
    registered without a decision is promoted only when the files its decision evaluated are still the
    version's files (``files_digest``); that is checked for a local ``candidate_model`` and refused for a
    gs:// one, whose files would have to be downloaded to be checked.
    """
    evaluated = decision.get("candidate_model")
    tags = version.tags
    origins = [tags[k] for k in ("gate.candidate_model", "model_uri", "candidate_model") if tags.get(k)]
    known = set(origins) | {_canonical(o) for o in origins}
    if not evaluated or not ({str(evaluated), _canonical(str(evaluated))} & known):
        raise ConfigError(
            f"decision={uri!r} evaluated candidate_model={evaluated!r}, but version {version.version} of "
            f"{name!r} was registered from {origins or 'an unknown model'}; promote a version with the "
            "decision.json of its own evaluation"
        )
    recorded_digest = tags.get(DECISION_DIGEST)
    if recorded_digest is not None:
        if recorded_digest != decision_digest(decision):
            raise ConfigError(
                f"decision={uri!r}: version {version.version} of {name!r} was judged by a different "
                f"decision.json (gate={tags.get('gate')}, gate.decision_uri={tags.get('gate.decision_uri')!r}, "
                f"{DECISION_DIGEST}={recorded_digest[:12]}…; this file's is "
                f"{decision_digest(decision)[:12]}…); a version is promoted only on its own gate's decision. "
                "Register the candidate again with the new decision instead."
            )
        return
    recorded = tags.get("gate.decision_uri")
    if recorded is not None:
        # Registered before gate.decision_sha256 was recorded: the path is all there is to compare.
        if decision_file(recorded) != decision_file(uri):
            raise ConfigError(
                f"decision={uri!r}: version {version.version} of {name!r} was already judged by "
                f"gate.decision_uri={recorded!r} (gate={tags.get('gate')}); a version is promoted only on "
                "its own gate's decision. Register the candidate again with the new decision instead."
            )
        return
    _check_files_unchanged(name, version, str(evaluated), uri)


def _check_files_unchanged(name: str, version: ModelVersion, evaluated: str, uri: str) -> None:
    """For a version registered without a decision: the evaluated directory must hold the version's files."""
    registered = version.tags.get(FILES_DIGEST_TAG)
    if registered is None:
        # Registered without a registration key (not by this step): nothing to compare the files with.
        return
    if storage.is_gcs(_canonical(evaluated)) or storage_uri(evaluated) != evaluated:
        raise ConfigError(
            f"decision={uri!r}: version {version.version} of {name!r} was registered without a decision, "
            f"and whether candidate_model={evaluated!r} still holds its files ({FILES_DIGEST_TAG}) cannot "
            "be checked without downloading them; register the candidate with this decision instead "
            "(promote without version=)"
        )
    local = Path(evaluated)
    now = files_digest(storage.file_manifest(local)) if local.is_dir() else None
    if now != registered:
        raise ConfigError(
            f"decision={uri!r} evaluated candidate_model={evaluated!r}, but "
            + ("that directory is gone" if now is None else "the files there changed")
            + f" since version {version.version} of {name!r} was registered from it ({FILES_DIGEST_TAG} "
            f"{registered[:12]}…{'' if now is None else f', now {now[:12]}…'}); the decision did not "
            "evaluate this version's files. Register the candidate again with this decision instead."
        )


def gate_tags(decision: dict[str, Any], decision_uri: str) -> dict[str, str]:
    """Tags recording the gate's verdict, its reasons and its numbers (one tag per metric statistic)."""
    tags = {
        "gate": "passed" if decision["passed"] else "rejected",
        "gate.reasons": json.dumps(list(decision.get("reasons") or [])),
        "gate.baseline_version": str(decision.get("baseline_version") or "none"),
        "gate.decision_uri": decision_uri,
        DECISION_DIGEST: decision_digest(decision),
    }
    if decision.get("candidate_model"):
        # What the gate actually evaluated, to compare with the registered files' origin when auditing.
        tags["gate.candidate_model"] = str(decision["candidate_model"])
    if decision.get("primary_metric"):
        tags["gate.primary_metric"] = str(decision["primary_metric"])
    if decision.get("n_prompts") is not None:
        tags["gate.n_prompts"] = str(decision["n_prompts"])
    for metric, stats in (decision.get("metrics") or {}).items():
        if not isinstance(stats, dict):
            continue
        for key in METRIC_FIELDS:
            if stats.get(key) is not None:
                tags[f"gate.{metric}.{key}"] = f"{float(stats[key]):.6g}"
    return tags


def lineage_tags(config: RegisterConfig) -> dict[str, str]:
    """Where the candidate came from; unknown fields are filled from files the trainer writes beside it."""
    summary = _read_optional_json(storage.join(config.candidate_model or "", "training_summary.json"))
    lora = _read_optional_json(storage.join(config.candidate_model or "", "dkto_lora.json"))
    # The trainer's summary (components/train/loop.py _write_output) is TrainResult's fields (data_hash,
    # config_hash) plus base_model; the older names are still read for summaries written before.
    trained_config = summary.get("config")
    trained: dict[str, Any] = trained_config if isinstance(trained_config, dict) else {}
    base_model = (
        config.base_model
        or lora.get("base_model")
        or summary.get("base_model")
        or summary.get("pretrained_model")
        or trained.get("pretrained_model")
    )
    config_hash = config.training_config_hash or summary.get("config_hash") or None
    data_hash = config.dataset_hash or summary.get("data_hash") or summary.get("dataset_hash") or None
    tags = {
        "base_model": base_model,
        "dataset_hash": data_hash,
        "training_config_hash": config_hash,
        "code_version": config.code_version or summary.get("code_version"),
        "pipeline_run_id": config.run_id(),
        "registered_at": _now(),
        "candidate_model": _absolute(config.candidate_model),
    }
    out = {k: str(v) for k, v in tags.items() if v is not None}
    out.update({k: str(v) for k, v in config.extra_tags.items()})
    return out


def registration_key(config: RegisterConfig, decision: dict[str, Any] | None) -> str:
    """What makes two registrations the same one: the pipeline run, the candidate's URI and its decision.

    A retried register step (pipelines retry steps) or a create the MLflow client resent computes the same
    key, so it finds the version already made instead of adding one; the registry adds the files' digest,
    so files rewritten in place under the same key still become a new version. Timestamps the step adds
    (``registered_at``) and free-form tags are deliberately not part of it.
    """
    identity = {
        "pipeline_run_id": config.run_id(),
        "candidate_model": _absolute(config.candidate_model),
        "decision_sha256": None if decision is None else decision_digest(decision),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def register_candidate_impl(config: RegisterConfig, telemetry: StepTelemetry) -> RegisterResult:
    """Upload and register the candidate (once per registration key), tagged with lineage and the gate
    verdict; set ``candidate``."""
    if not config.candidate_model:
        raise RegistryError("candidate_model is empty: give the trained model directory to register")
    tags = lineage_tags(config)
    reasons: list[str] = []
    gate = "unevaluated"
    decision: dict[str, Any] | None = None
    if config.decision:
        decision = load_decision(config.decision)
        tags.update(gate_tags(decision, decision_file(config.decision)))
        gate = tags["gate"]
        reasons = [str(r) for r in decision.get("reasons") or []]
    else:
        tags["gate"] = gate
    registry = _open(config)
    started = time.monotonic()
    version = registry.register_version(
        config.model_name,
        config.candidate_model,
        tags,
        chunk_size=config.upload_chunk_size_mib * 1024 * 1024,
        registration_key=registration_key(config, decision),
    )
    registry.set_alias(config.model_name, CANDIDATE, version.version)
    if version.reused:
        telemetry.counter(
            "registrations_reused_total", "Registrations that found the candidate already registered"
        ).inc()
    else:
        telemetry.counter("registrations_total", "Model versions registered", ("gate",)).labels(gate).inc()
        if gate == "rejected":
            telemetry.counter("rejections_total", "Candidates registered with a failing gate").inc()
    telemetry.gauge("register_seconds", "Time to upload, verify and register the candidate").set(
        time.monotonic() - started
    )
    log.info(
        "%s %s version %s (gate=%s) from %s; files at %s",
        "found already registered" if version.reused else "registered",
        config.model_name,
        version.version,
        gate,
        config.candidate_model,
        version.files_uri,
    )
    return RegisterResult(
        model_name=config.model_name,
        version=version.version,
        files_uri=version.files_uri,
        gate=gate,  # type: ignore[arg-type]
        reasons=reasons,
        tags=version.tags,
        already_registered=version.reused,
    )


def is_rolled_back(version: ModelVersion) -> bool:
    """True when a rollback took ``version`` out of production (a default rollback never returns to it)."""
    return version.tags.get(ROLLED_BACK) == "true"


def is_undo_of(registry: Registry, name: str, current: str, target: str) -> bool:
    """True when moving production from ``current`` to ``target`` undoes the rollback that put ``current``
    in production: that rollback took ``target`` out (``rollback.from_version``) and is the latest move of
    ``current`` into production (its ``rollback.by_run`` and ``rollback.at`` are the run and time that last
    requested it, intent tags written before the commit, so a later promotion of ``current`` is told
    apart), and ``target`` is still marked rolled back."""
    tags = registry.get_version(name, current).tags
    return (
        tags.get("rollback.from_version") == str(target)
        and tags.get("rollback.by_run") is not None
        and tags.get("rollback.by_run") == tags.get("promotion.requested_by_run")
        and tags.get("rollback.at") == tags.get("promotion.requested_at")
        and is_rolled_back(registry.get_version(name, target))
    )


def fallback_of(registry: Registry, name: str, replaces: str | None, exclude: set[str]) -> str | None:
    """The version a default rollback goes to: the first one along the ``promotion.replaces_version`` chain
    from ``replaces`` that was not rolled back and is not in ``exclude`` (None when the chain ends first).

    Versions promoted again by ``version=`` can make the chain loop; each version is visited once.
    """
    seen = set(exclude)
    while replaces not in (None, "none") and replaces not in seen:
        seen.add(replaces)
        version = registry.get_version(name, replaces)
        if not is_rolled_back(version):
            return version.version
        replaces = version.tags.get(REPLACES)
    return None


def repair_previous_production(registry: Registry, name: str) -> str | None:
    """Make the derived state agree with production (crash repair); called under the lock.

    ``previous-production`` becomes the first version along production's ``promotion.replaces_version``
    chain that was not rolled back. A production version tagged rolled back belongs to a rollback that
    stopped before its commit write, so production never moved and the tag is cleared. Returns the
    previous-production version after repair.
    """
    aliases = registry.aliases(name)
    prod = aliases.get(PRODUCTION)
    if prod is None:
        return aliases.get(PREVIOUS_PRODUCTION)
    production = registry.get_version(name, prod)
    if is_rolled_back(production):
        log.warning("repairing %s: version %s is production but was tagged rolled back", name, prod)
        registry.set_tags(name, prod, {ROLLED_BACK: "false"})
    replaces = production.tags.get(REPLACES)
    if replaces is None:
        return aliases.get(PREVIOUS_PRODUCTION)
    want = fallback_of(registry, name, replaces, {prod})
    if aliases.get(PREVIOUS_PRODUCTION) != want:
        log.warning(
            "repairing %s: previous-production %s -> %s (an earlier promotion or rollback stopped after "
            "its commit)",
            name,
            aliases.get(PREVIOUS_PRODUCTION),
            want,
        )
        if want is None:
            registry.delete_alias(name, PREVIOUS_PRODUCTION)
        else:
            registry.set_alias(name, PREVIOUS_PRODUCTION, want)
    return want


def move_production(
    registry: Registry,
    lease: Lease,
    name: str,
    new_version: str,
    current: str | None,
    run_id: str,
    action: str,
    extra_tags: dict[str, str] | None = None,
    *,
    previous: str | None,
) -> None:
    """Under the lock: intent tags, the one commit write (``production``), then the derived state.

    ``extra_tags`` carry the intent (a promotion's ``promotion.replaces_version``); ``previous`` is what
    ``previous-production`` points at afterwards.
    """
    when = _now()
    intent = {
        "promotion.requested_at": when,
        "promotion.requested_by_run": run_id,
        **(extra_tags or {}),
    }
    if is_rolled_back(registry.get_version(name, new_version)):
        # Put back into production on purpose (an explicit rollback or a new passing gate).
        intent[ROLLED_BACK] = "false"
    registry.set_tags(name, new_version, intent)
    lease.check()
    registry.set_alias(name, PRODUCTION, new_version)  # the commit point
    if previous is None:
        registry.delete_alias(name, PREVIOUS_PRODUCTION)
    else:
        registry.set_alias(name, PREVIOUS_PRODUCTION, previous)
    if current is not None:
        registry.set_tags(
            name,
            current,
            {
                "replaced_at": when,
                "replaced_by_run": run_id,
                "replaced_by_version": new_version,
                "replaced_by": action,
            },
        )
    registry.set_tags(name, new_version, {"promotion.promoted_at": when, "promotion.promoted_by": action})
    registry.set_model_tags(
        name,
        {
            "last_production_change": json.dumps(
                {"action": action, "from": current, "to": new_version, "run": run_id, "at": when}
            )
        },
    )


def promote_impl(config: PromoteConfig, telemetry: StepTelemetry) -> PromoteResult:
    """Register (if needed) and compare-and-set ``production``; see the module docstring for crash safety."""
    assert config.decision is not None  # checked by PromoteConfig
    decision = load_decision(config.decision)
    expected = decision["baseline_version"]
    reasons = [str(r) for r in decision.get("reasons") or []]
    registry = _open(config)
    name = config.model_name
    registered: RegisterResult | None = None
    if config.version is None:
        registered = register_candidate_impl(config, telemetry)
        version = registered.version
    else:
        chosen = registry.get_version(name, config.version)
        check_decision_matches(name, chosen, decision, config.decision)
        version = chosen.version
        promoting = {
            "promotion.decision_uri": decision_file(config.decision),
            "promotion.gate": "passed" if decision["passed"] else "rejected",
        }
        if "gate.decision_uri" not in chosen.tags:
            # Registered unevaluated: this decision is its first verdict. A recorded verdict is never rewritten.
            promoting.update(gate_tags(decision, decision_file(config.decision)))
        registry.set_tags(name, version, promoting)

    def outcome(
        kind: Literal["promoted", "rejected", "conflict"],
        before: str | None,
        after: str | None,
        message: str,
        previous: str | None = None,
    ) -> PromoteResult:
        # Every return of this function differs only in these fields; the rest is the same run's context.
        return PromoteResult(
            model_name=name,
            version=version,
            outcome=kind,
            production_before=before,
            production_after=after,
            expected_production=expected,
            previous_production=previous,
            reasons=reasons,
            message=message,
            registered=registered,
        )

    if not decision["passed"]:
        if registered is None:
            telemetry.counter("rejections_total", "Candidates registered with a failing gate").inc()
        current = registry.aliases(name).get(PRODUCTION)
        message = f"gate rejected version {version}; production stays at {current or 'nothing'}"
        log.info("%s: %s", message, "; ".join(reasons))
        return outcome("rejected", current, current, message)

    run_id = config.run_id()
    waited = time.monotonic()
    with registry.lock(name, owner=run_id, timeout_s=config.lock_timeout_s, ttl_s=config.lock_ttl_s) as lease:
        telemetry.gauge("lock_wait_seconds", "Time spent waiting for the promotion lock").set(
            time.monotonic() - waited
        )
        previous = repair_previous_production(registry, name)
        current = registry.aliases(name).get(PRODUCTION)
        if current == version:
            message = f"version {version} is already production; nothing changed"
            return outcome("promoted", current, current, message, previous)
        if current != expected:
            telemetry.counter("conflicts_total", "Promotions refused because production moved").inc()
            message = (
                f"the gate compared version {version} against production "
                f"{expected or 'nothing'}, but production is now {current or 'nothing'} (another run "
                "promoted in between); production not moved. Re-evaluate against the new production."
            )
            registry.set_tags(name, version, {"promotion": "conflict", "promotion.conflict": message})
            log.warning("%s", message)
            return outcome("conflict", current, current, message, previous)
        move_production(
            registry,
            lease,
            name,
            version,
            current,
            run_id,
            "promote",
            {REPLACES: current or "none", "promotion": "promoted"},
            previous=current,
        )
    telemetry.counter("promotions_total", "Versions moved to production").inc()
    message = f"production {current or 'nothing'} -> {version}; previous-production = {current or 'none'}"
    log.info("%s: %s", name, message)
    return outcome("promoted", current, version, message, current)


def rollback_impl(config: RollbackConfig, telemetry: StepTelemetry) -> RollbackResult:
    """Move production back (to ``to_version`` or ``previous-production``) and record it.

    The version taken out is tagged ``rolled_back=true`` so no default rollback returns to it; the target
    keeps the ``promotion.replaces_version`` it was promoted with, so rolling back again walks further
    back (v3 -> v2 -> v1) instead of toggling between the last two. A rollback that already happened
    (production is ``to_version``, or the same named pipeline run rolled back to production) changes nothing.
    ``to_version`` naming the version whose rollback put the current production version in place is an
    undo: the version taken out is not tagged rolled back and becomes ``previous-production``, so a later
    default rollback returns to it (``is_undo_of``). Any other ``to_version`` is a rollback of production.
    """
    registry = _open(config)
    name = config.model_name
    run_id = config.run_id()
    with registry.lock(name, owner=run_id, timeout_s=config.lock_timeout_s, ttl_s=config.lock_ttl_s) as lease:
        previous = repair_previous_production(registry, name)
        current = registry.aliases(name).get(PRODUCTION)
        if current is not None and config.to_version is None and run_id != ANONYMOUS_RUN:
            tags = registry.get_version(name, current).tags
            # Both are intent tags written before the commit write, so a step that died right after moving
            # production is recognised too (promotion.promoted_by is written last and may be missing);
            # requested_by_run tells it from a later promotion of the same version by another run.
            if tags.get("rollback.by_run") == run_id and tags.get("promotion.requested_by_run") == run_id:
                # A retried step (its first reply lost or it crashed past the commit): this run already
                # made this version production.
                return _rollback_done(
                    name, current, previous, f"run {run_id} already rolled back to {current}"
                )
        target = config.to_version or previous
        if target is None:
            raise RegistryError(
                f"model {name!r}: nothing to roll back to (production is {current or 'unset'} and there is "
                "no previous-production that was not rolled back); pass --to VERSION"
            )
        chosen = registry.get_version(name, target)
        target = chosen.version
        if target == current:
            return _rollback_done(name, current, previous, f"version {target} is already production")
        when = _now()
        tags = {
            "rollback.reason": config.reason or "",
            "rollback.by_run": run_id,
            "rollback.from_version": str(current),
            "rollback.at": when,
            # One timestamp for both, so is_undo_of can tell this move into production from a later one.
            "promotion.requested_at": when,
        }
        # --to the version whose rollback put current in production is an undo of that rollback: current was
        # not found bad, so it is not marked rolled back and stays the rollback target (it becomes what the
        # target replaces). Any other --to, even to a version some earlier rollback took out, is a rollback
        # of current (review round 3: v3 -> v2, v4 promoted, --to 3 left the bad v4 unmarked).
        undo = (
            current is not None
            and config.to_version is not None
            and is_undo_of(registry, name, current, target)
        )
        if undo:
            tags[REPLACES] = str(current)
        elif REPLACES not in chosen.tags:
            # Never in production before: falling back from it goes where falling back from current would.
            tags[REPLACES] = previous if previous not in (None, target) else "none"
        if current is not None and not undo:
            # Intent, before the commit write: a crash before it is undone by repair_previous_production.
            registry.set_tags(
                name,
                current,
                {
                    ROLLED_BACK: "true",
                    "rolled_back.at": when,
                    "rolled_back.reason": config.reason or "",
                    "rolled_back.by_run": run_id,
                },
            )
        after = fallback_of(registry, name, tags.get(REPLACES, chosen.tags.get(REPLACES)), {target})
        move_production(registry, lease, name, target, current, run_id, "rollback", tags, previous=after)
    telemetry.counter("rollbacks_total", "Production rolled back").inc()
    message = (
        f"production {current or 'nothing'} -> {target} (rollback"
        + (f", undoing the rollback of {target}" if undo else "")
        + f"); previous-production = {after or 'none'}"
        + (f"; version {current} tagged rolled_back=true" if current and not undo else "")
    )
    log.info("%s: %s", name, message)
    return RollbackResult(
        model_name=name,
        production_before=current,
        production_after=target,
        previous_production=after,
        rolled_back_version=None if undo else current,
        message=message,
    )


def _rollback_done(name: str, current: str, previous: str | None, why: str) -> RollbackResult:
    message = f"{why}; nothing changed (production = {current}, previous-production = {previous or 'none'})"
    log.info("%s: %s", name, message)
    return RollbackResult(
        model_name=name,
        production_before=current,
        production_after=current,
        previous_production=previous,
        message=message,
        changed=False,
    )


def resolve_production_impl(
    registry_uri: str, model_name: str, fallback_model: str, *, artifact_root: str | None = None
) -> tuple[str, str | None]:
    """Production's files (a local path or gs:// URI) and version, or the fallback with ``None``."""
    registry = open_registry(registry_uri, artifact_root=artifact_root)
    version = registry.get_alias(model_name, PRODUCTION)
    if version is None:
        return fallback_model, None
    return files_for(registry, version), version.version


def files_for(registry: Registry, version: ModelVersion) -> str:
    """A URI ``components.shared.storage`` can read for a version's files."""
    return registry.readable_files(version)
