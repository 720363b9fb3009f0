"""Registration, promotion, rejection, rollback and concurrent promotion, on embedded SQLite and a server."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from components.promote.promotion import check_decision_matches, decision_file, gate_tags, promote_impl
from components.promote.registry import (
    CANDIDATE,
    PREVIOUS_PRODUCTION,
    PRODUCTION,
    ModelVersion,
    RegistryError,
    open_registry,
    storage_uri,
)
from components.promote.step import (
    PromoteConfig,
    RegisterConfig,
    RollbackConfig,
    promote,
    register_candidate,
    resolve_production,
    rollback,
)
from components.shared import storage
from components.shared.config import ConfigError
from components.shared.telemetry import StepTelemetry


def _decision_of(tmp_path: Path, seed: int) -> str:
    """The decision.json ``_register`` registered the version of ``seed`` with (its own gate's)."""
    return str(tmp_path / f"eval-{seed}" / "decision.json")


def _register(
    registry_uri, model_name, tmp_path, make_model, make_decision, *, seed, passed=True, baseline=None
):
    model = make_model(tmp_path / f"model-{seed}", seed=seed)
    decision = make_decision(
        tmp_path / f"eval-{seed}" / "decision.json", passed=passed, baseline_version=baseline
    )
    return register_candidate(
        RegisterConfig(
            registry_uri=registry_uri,
            model_name=model_name,
            candidate_model=str(model),
            decision=decision,
            code_version="abc1234",
            pipeline_run_id=f"run-{seed}",
        )
    )


def test_register_records_lineage_and_verified_files(
    registry_uri, model_name, tmp_path, make_model, make_decision
):
    result = _register(registry_uri, model_name, tmp_path, make_model, make_decision, seed=1)
    registry = open_registry(registry_uri)
    version = registry.get_version(model_name, result.version)
    tags = version.tags
    assert tags["gate"] == "passed"
    assert json.loads(tags["gate.reasons"]) == ["pickscore win rate 0.64 > 0.5 (CI 0.55-0.72)"]
    assert tags["gate.pickscore.win_rate"] == "0.64"
    assert tags["gate.baseline_version"] == "none"
    assert tags["base_model"] == "gs://models/sd15"
    assert tags["dataset_hash"] == "ds1"
    assert tags["training_config_hash"] == "cfg1"
    assert tags["code_version"] == "abc1234"
    assert tags["pipeline_run_id"] == "run-1"
    assert version.source == f"runs:/{version.run_id}/model"
    assert version.aliases == [CANDIDATE]
    # The server proxies artifacts (uploaded through MLflow); the embedded store writes them directly.
    proxied = registry_uri.startswith("http")
    assert (storage_uri(version.files_uri) is None) == proxied, version.files_uri
    # The registered files are byte-identical to the candidate's.
    model_uri, prod_version = resolve_production(registry_uri, model_name, "fallback")
    assert (model_uri, prod_version) == ("fallback", None)
    from components.promote.promotion import files_for

    files = Path(files_for(registry, version))
    src = tmp_path / "model-1"
    for rel in ("model_index.json", "unet/diffusion_pytorch_model.safetensors"):
        assert (files / rel).read_bytes() == (src / rel).read_bytes()


def test_promotion_moves_aliases_and_rollback_restores(
    registry_uri, model_name, tmp_path, make_model, make_decision
):
    v1 = _register(registry_uri, model_name, tmp_path, make_model, make_decision, seed=1).version
    first = promote(
        PromoteConfig(
            registry_uri=registry_uri,
            model_name=model_name,
            version=v1,
            decision=_decision_of(tmp_path, 1),
            pipeline_run_id="run-1",
        )
    )
    assert (first.outcome, first.production_before, first.production_after) == ("promoted", None, v1)

    second = promote(
        PromoteConfig(
            registry_uri=registry_uri,
            model_name=model_name,
            candidate_model=str(make_model(tmp_path / "m2", seed=2)),
            decision=make_decision(tmp_path / "d2.json", passed=True, baseline_version=v1),
            pipeline_run_id="run-2",
        )
    )
    v2 = second.version
    assert second.outcome == "promoted" and second.registered is not None
    registry = open_registry(registry_uri)
    assert registry.aliases(model_name) == {PRODUCTION: v2, PREVIOUS_PRODUCTION: v1, CANDIDATE: v2}
    old = registry.get_version(model_name, v1).tags
    assert old["replaced_by_run"] == "run-2" and old["replaced_by_version"] == v2 and "replaced_at" in old
    assert registry.get_version(model_name, v2).tags["promotion.replaces_version"] == v1
    uri, version = resolve_production(registry_uri, model_name, "fallback")
    assert version == v2 and storage.read_json(storage.join(uri, "model_index.json"))["seed"] == 2

    back = rollback(RollbackConfig(registry_uri=registry_uri, model_name=model_name, reason="bad images"))
    assert (back.production_before, back.production_after, back.rolled_back_version) == (v2, v1, v2)
    aliases = registry.aliases(model_name)
    # v1 replaced nothing, and v2 was rolled back: there is nothing further to fall back to.
    assert aliases[PRODUCTION] == v1 and PREVIOUS_PRODUCTION not in aliases
    restored = registry.get_version(model_name, v1).tags
    assert restored["rollback.reason"] == "bad images" and restored["rollback.from_version"] == v2
    assert restored["promotion.replaces_version"] == "none"
    removed = registry.get_version(model_name, v2).tags
    assert removed["rolled_back"] == "true" and removed["rolled_back.reason"] == "bad images"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(RollbackConfig(registry_uri=registry_uri, model_name=model_name))

    # Rolling forward to the rolled-back version undoes the rollback: its mark is cleared, and v1, which
    # nobody found bad, is not marked and stays the rollback target.
    again = rollback(RollbackConfig(registry_uri=registry_uri, model_name=model_name, to_version=v2))
    assert again.production_after == v2 and again.changed and again.rolled_back_version is None
    assert registry.get_version(model_name, v2).tags["rolled_back"] == "false"
    assert registry.get_version(model_name, v2).tags["promotion.replaces_version"] == v1
    assert registry.get_version(model_name, v1).tags.get("rolled_back") != "true"
    assert registry.aliases(model_name)[PREVIOUS_PRODUCTION] == v1
    # The same explicit rollback retried (its reply lost) changes nothing.
    same = rollback(RollbackConfig(registry_uri=registry_uri, model_name=model_name, to_version=v2))
    assert (same.changed, same.production_after) == (False, v2) and "already production" in same.message
    with pytest.raises(RegistryError, match="no version '99'"):
        rollback(RollbackConfig(registry_uri=registry_uri, model_name=model_name, to_version="99"))


def test_rolling_back_twice_walks_back_and_never_returns_to_a_rolled_back_version(
    registry_uri, model_name, tmp_path, make_model, make_decision
):
    """v1 -> v2 -> v3; v3 is bad: back to v2; v2 is bad too: back to v1 (not to v3 again)."""
    production = None
    versions = []
    for seed in (1, 2, 3):
        result = promote(
            PromoteConfig(
                registry_uri=registry_uri,
                model_name=model_name,
                candidate_model=str(make_model(tmp_path / f"m{seed}", seed=seed)),
                decision=make_decision(tmp_path / f"d{seed}.json", passed=True, baseline_version=production),
                pipeline_run_id=f"run-{seed}",
            )
        )
        assert result.promoted
        production = result.version
        versions.append(production)
    v1, v2, v3 = versions
    registry = open_registry(registry_uri)
    cfg = {"registry_uri": registry_uri, "model_name": model_name}

    first = rollback(RollbackConfig(**cfg, reason="v3 bad", pipeline_run_id="rb-1"))
    assert (first.production_before, first.production_after, first.previous_production) == (v3, v2, v1)
    assert registry.aliases(model_name)[PREVIOUS_PRODUCTION] == v1
    # A pipeline step retried after its first attempt succeeded (same run id) is a no-op.
    retried = rollback(RollbackConfig(**cfg, reason="v3 bad", pipeline_run_id="rb-1"))
    assert (retried.changed, retried.production_after) == (False, v2)
    assert registry.aliases(model_name)[PRODUCTION] == v2

    second = rollback(RollbackConfig(**cfg, reason="v2 bad too"))
    assert (second.production_before, second.production_after) == (v2, v1)
    aliases = registry.aliases(model_name)
    assert aliases[PRODUCTION] == v1 and PREVIOUS_PRODUCTION not in aliases
    assert registry.get_version(model_name, v3).tags["rolled_back"] == "true"
    assert registry.get_version(model_name, v2).tags["rolled_back"] == "true"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(RollbackConfig(**cfg))

    # A new promotion on top of v1, then a rollback of it, goes back to v1 and never to v2 or v3.
    v4 = promote(
        PromoteConfig(
            **cfg,
            candidate_model=str(make_model(tmp_path / "m4", seed=4)),
            decision=make_decision(tmp_path / "d4.json", passed=True, baseline_version=v1),
            pipeline_run_id="run-4",
        )
    ).version
    assert rollback(RollbackConfig(**cfg)).production_after == v1
    assert registry.get_version(model_name, v4).tags["rolled_back"] == "true"


def test_rollback_that_stopped_before_its_commit_is_repaired(
    embedded_registry_uri, model_name, tmp_path, make_model, make_decision
):
    """A rollback that tagged production rolled back and died before moving it: production did not move,
    so the next locked operation, even one that is not a rollback, clears the mark; a rollback then
    still goes to the previous version."""
    uri = embedded_registry_uri
    cfg = {"registry_uri": uri, "model_name": model_name}
    v1 = promote(
        PromoteConfig(
            **cfg,
            candidate_model=str(make_model(tmp_path / "m1", seed=1)),
            decision=make_decision(tmp_path / "d1.json", passed=True, baseline_version=None),
        )
    ).version
    v2 = promote(
        PromoteConfig(
            **cfg,
            candidate_model=str(make_model(tmp_path / "m2", seed=2)),
            decision=make_decision(tmp_path / "d2.json", passed=True, baseline_version=v1),
        )
    ).version
    registry = open_registry(uri)
    registry.set_tags(model_name, v2, {"rolled_back": "true"})  # the intent write, then nothing more
    # A promotion evaluated against v1 takes the lock, finds production moved (a conflict), and leaves.
    stale = promote(
        PromoteConfig(
            **cfg,
            candidate_model=str(make_model(tmp_path / "m3", seed=3)),
            decision=make_decision(tmp_path / "d3.json", passed=True, baseline_version=v1),
        )
    )
    assert stale.outcome == "conflict" and registry.aliases(model_name)[PRODUCTION] == v2
    assert registry.get_version(model_name, v2).tags["rolled_back"] == "false"
    back = rollback(RollbackConfig(**cfg))
    assert (back.production_before, back.production_after) == (v2, v1)
    assert registry.get_version(model_name, v2).tags["rolled_back"] == "true"


def test_a_rollback_retried_after_it_crashed_past_its_commit_does_not_roll_back_again(
    embedded_registry_uri, model_name, tmp_path, make_model, make_decision
):
    """Review r1: the step died after moving production but before promotion.promoted_by; its retry
    (same pipeline run id) must change nothing, not roll back a second time."""
    uri = embedded_registry_uri
    cfg = {"registry_uri": uri, "model_name": model_name}
    versions: list[str] = []
    for seed in (1, 2, 3):
        versions.append(
            promote(
                PromoteConfig(
                    **cfg,
                    candidate_model=str(make_model(tmp_path / f"m{seed}", seed=seed)),
                    decision=make_decision(
                        tmp_path / f"d{seed}.json",
                        passed=True,
                        baseline_version=versions[-1] if versions else None,
                    ),
                    pipeline_run_id=f"run-{seed}",
                )
            ).version
        )
    v1, v2, v3 = versions
    registry = open_registry(uri)
    # The writes rollback_impl makes for run rb-1 (v3 -> v2) up to and including its commit point, and
    # previous-production; promotion.promoted_by and the replaced_* tags never came.
    registry.set_tags(model_name, v3, {"rolled_back": "true", "rolled_back.by_run": "rb-1"})
    registry.set_tags(
        model_name,
        v2,
        {
            "promotion.requested_by_run": "rb-1",
            "rollback.by_run": "rb-1",
            "rollback.from_version": v3,
            "rollback.reason": "bad",
        },
    )
    registry.set_alias(model_name, PRODUCTION, v2)
    registry.set_alias(model_name, PREVIOUS_PRODUCTION, v1)
    assert registry.get_version(model_name, v2).tags["promotion.promoted_by"] == "promote"

    retry = rollback(RollbackConfig(**cfg, reason="bad", pipeline_run_id="rb-1"))
    assert not retry.changed and retry.production_after == v2
    assert registry.aliases(model_name)[PRODUCTION] == v2
    assert registry.aliases(model_name)[PREVIOUS_PRODUCTION] == v1
    assert registry.get_version(model_name, v2).tags.get("rolled_back") != "true"
    # Another run's rollback is a new one and goes on back.
    assert rollback(RollbackConfig(**cfg, pipeline_run_id="rb-2")).production_after == v1


def test_undoing_a_rollback_with_to_keeps_the_undone_version_as_the_rollback_target(
    embedded_registry_uri, model_name, tmp_path, make_model, make_decision
):
    """Review r3: --to a rolled-back version is an undo and marks nothing; --to an older version that was
    not rolled back is a rollback and marks production rolled back."""
    uri = embedded_registry_uri
    cfg = {"registry_uri": uri, "model_name": model_name}
    versions: list[str] = []
    for seed in (1, 2, 3):
        versions.append(
            promote(
                PromoteConfig(
                    **cfg,
                    candidate_model=str(make_model(tmp_path / f"m{seed}", seed=seed)),
                    decision=make_decision(
                        tmp_path / f"d{seed}.json",
                        passed=True,
                        baseline_version=versions[-1] if versions else None,
                    ),
                )
            ).version
        )
    v1, v2, v3 = versions
    registry = open_registry(uri)
    assert rollback(RollbackConfig(**cfg, reason="oops, wrong model")).production_after == v2
    undo = rollback(RollbackConfig(**cfg, to_version=v3, reason="undo: v3 was fine"))
    assert (undo.production_after, undo.rolled_back_version, undo.previous_production) == (v3, None, v2)
    assert "undoing the rollback of" in undo.message
    assert registry.get_version(model_name, v2).tags.get("rolled_back") != "true"
    assert registry.get_version(model_name, v3).tags["rolled_back"] == "false"
    assert registry.aliases(model_name)[PREVIOUS_PRODUCTION] == v2
    # A later default rollback goes back to v2, as if the accidental one had never happened.
    later = rollback(RollbackConfig(**cfg, reason="v3 really bad now"))
    assert (later.production_after, later.rolled_back_version) == (v2, v3)
    assert registry.aliases(model_name)[PREVIOUS_PRODUCTION] == v1

    # --to an older version that was never rolled back is a rollback: production is marked.
    assert rollback(RollbackConfig(**cfg, to_version=v3)).rolled_back_version is None  # undo again
    older = rollback(RollbackConfig(**cfg, to_version=v1, reason="both bad"))
    assert (older.production_after, older.rolled_back_version) == (v1, v3)
    assert registry.get_version(model_name, v3).tags["rolled_back"] == "true"


def test_to_a_version_an_earlier_unrelated_rollback_took_out_is_a_rollback_not_an_undo(
    embedded_registry_uri, model_name, tmp_path, make_model, make_decision
):
    """Review round 3: v3 rolled back to v2, then v4 promoted; --to v3 (v4 broken, the v3 alert a false
    alarm) counted as an undo, left v4 unmarked as previous-production, and the next default rollback
    restored the broken v4. Only undoing the rollback that put production in place is an undo."""
    cfg = {"registry_uri": embedded_registry_uri, "model_name": model_name}

    def promote_seed(seed: int, baseline: str | None) -> str:
        return promote(
            PromoteConfig(
                **cfg,
                candidate_model=str(make_model(tmp_path / f"m{seed}", seed=seed)),
                decision=make_decision(tmp_path / f"d{seed}.json", passed=True, baseline_version=baseline),
                pipeline_run_id=f"run-{seed}",
            )
        ).version

    v1 = promote_seed(1, None)
    v2 = promote_seed(2, v1)
    v3 = promote_seed(3, v2)
    assert (
        rollback(RollbackConfig(**cfg, reason="alert on v3", pipeline_run_id="rb-1")).production_after == v2
    )
    v4 = promote_seed(4, v2)
    back = rollback(
        RollbackConfig(**cfg, to_version=v3, reason="v4 is broken; v3 was fine", pipeline_run_id="rb-2")
    )
    assert (back.production_after, back.rolled_back_version, back.previous_production) == (v3, v4, v2)
    assert "undoing" not in back.message
    registry = open_registry(embedded_registry_uri)
    assert registry.get_version(model_name, v4).tags["rolled_back"] == "true"
    assert registry.get_version(model_name, v3).tags["rolled_back"] == "false"
    assert registry.aliases(model_name)[PREVIOUS_PRODUCTION] == v2
    # The next default rollback goes to v2, never back to the broken v4.
    again = rollback(RollbackConfig(**cfg, reason="v3 bad after all", pipeline_run_id="rb-3"))
    assert (again.production_after, again.rolled_back_version) == (v2, v3)

    # Whereas --to the version whose rollback put production in place is still an undo.
    undo = rollback(RollbackConfig(**cfg, to_version=v3, reason="undo rb-3", pipeline_run_id="rb-4"))
    assert (undo.production_after, undo.rolled_back_version, undo.previous_production) == (v3, None, v2)
    assert "undoing the rollback of" in undo.message


def test_rejected_candidate_stays_registered_with_reasons(
    registry_uri, model_name, tmp_path, make_model, make_decision
):
    result = promote(
        PromoteConfig(
            registry_uri=registry_uri,
            model_name=model_name,
            candidate_model=str(make_model(tmp_path / "m", seed=3)),
            decision=make_decision(
                tmp_path / "d.json", passed=False, baseline_version=None, reasons=["win rate CI crosses 0.5"]
            ),
        )
    )
    assert result.outcome == "rejected" and result.production_after is None
    registry = open_registry(registry_uri)
    (version,) = registry.list_versions(model_name)
    assert version.tags["gate"] == "rejected"
    assert json.loads(version.tags["gate.reasons"]) == ["win rate CI crosses 0.5"]
    assert PRODUCTION not in registry.aliases(model_name)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(RollbackConfig(registry_uri=registry_uri, model_name=model_name))


def test_stale_gate_is_a_conflict(registry_uri, model_name, tmp_path, make_model, make_decision):
    """A candidate evaluated against 'nothing in production' may not replace a production set since."""
    v1 = _register(registry_uri, model_name, tmp_path, make_model, make_decision, seed=1).version
    v2 = _register(registry_uri, model_name, tmp_path, make_model, make_decision, seed=2).version
    cfg = {"registry_uri": registry_uri, "model_name": model_name}
    telemetry = StepTelemetry("promote", run_id="test")
    first = PromoteConfig(version=v1, decision=_decision_of(tmp_path, 1), **cfg)
    assert promote_impl(first, telemetry).outcome == "promoted"
    late = promote_impl(PromoteConfig(version=v2, decision=_decision_of(tmp_path, 2), **cfg), telemetry)
    counts = {
        m: telemetry.registry.get_sample_value(f"dkto_promote_{m}_total") for m in ("promotions", "conflicts")
    }
    assert counts == {"promotions": 1.0, "conflicts": 1.0}
    assert late.outcome == "conflict" and "production is now " + v1 in late.message
    registry = open_registry(registry_uri)
    assert registry.aliases(model_name)[PRODUCTION] == v1
    assert registry.get_version(model_name, v2).tags["promotion"] == "conflict"


def test_concurrent_promotions_exactly_one_wins(
    registry_uri, model_name, tmp_path, make_model, make_decision
):
    """Two pipelines that both evaluated against production v1 finish at once: one promotes, one conflicts."""
    v1 = _register(registry_uri, model_name, tmp_path, make_model, make_decision, seed=1).version
    base = {"registry_uri": registry_uri, "model_name": model_name}
    assert promote(PromoteConfig(version=v1, decision=_decision_of(tmp_path, 1), **base)).promoted
    seeds = {
        _register(
            registry_uri, model_name, tmp_path, make_model, make_decision, seed=s, baseline=v1
        ).version: s
        for s in (2, 3)
    }
    racers = list(seeds)

    barrier = threading.Barrier(len(racers))
    results: dict[str, object] = {}

    def race(version: str) -> None:
        decision = _decision_of(tmp_path, seeds[version])
        config = PromoteConfig(version=version, decision=decision, pipeline_run_id=f"racer-{version}", **base)
        barrier.wait()
        try:
            results[version] = promote(config)
        except Exception as err:  # reported below, never swallowed
            results[version] = err

    threads = [threading.Thread(target=race, args=(v,)) for v in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    outcomes = sorted(getattr(r, "outcome", repr(r)) for r in results.values())
    assert outcomes == ["conflict", "promoted"], results
    winner = next(v for v, r in results.items() if getattr(r, "outcome", None) == "promoted")
    loser = next(v for v in racers if v != winner)
    assert results[loser].production_before == winner  # type: ignore[union-attr]
    registry = open_registry(registry_uri)
    aliases = registry.aliases(model_name)
    assert aliases[PRODUCTION] == winner and aliases[PREVIOUS_PRODUCTION] == v1
    assert registry.get_version(model_name, v1).tags["replaced_by_version"] == winner
    assert not registry._lock_holder(model_name + ".promotion-lock"), "lock left behind"


def test_crash_after_the_commit_write_is_repaired(
    embedded_registry_uri, model_name, tmp_path, make_model, make_decision
):
    """A promotion that died right after moving production (before previous-production): rollback still
    goes to the version production replaced, and the stale alias is repaired under the lock."""
    uri = embedded_registry_uri
    cfg = {"registry_uri": uri, "model_name": model_name}
    v1 = _register(uri, model_name, tmp_path, make_model, make_decision, seed=1).version
    assert promote(PromoteConfig(**cfg, version=v1, decision=_decision_of(tmp_path, 1))).promoted
    v2 = _register(uri, model_name, tmp_path, make_model, make_decision, seed=2, baseline=v1).version
    assert promote(PromoteConfig(**cfg, version=v2, decision=_decision_of(tmp_path, 2))).promoted
    v3 = _register(uri, model_name, tmp_path, make_model, make_decision, seed=3, baseline=v2).version
    registry = open_registry(uri)
    # The writes a promotion of v3 makes up to and including its commit point, then nothing more.
    registry.set_tags(model_name, v3, {"promotion.replaces_version": v2})
    registry.set_alias(model_name, PRODUCTION, v3)
    assert registry.aliases(model_name)[PREVIOUS_PRODUCTION] == v1  # stale: should be v2
    back = rollback(RollbackConfig(registry_uri=uri, model_name=model_name))
    assert (back.production_before, back.production_after) == (v3, v2)
    assert registry.aliases(model_name)[PREVIOUS_PRODUCTION] == v1
    assert registry.get_version(model_name, v3).tags["rolled_back"] == "true"


def test_a_version_is_promoted_only_on_its_own_decision(
    registry_uri, model_name, tmp_path, make_model, make_decision
):
    """A rejected version cannot ride another model's passing decision.json into production, and its
    recorded verdict is never rewritten (review finding 3)."""
    cfg = {"registry_uri": registry_uri, "model_name": model_name}
    bad = _register(registry_uri, model_name, tmp_path, make_model, make_decision, seed=1, passed=False)
    registry = open_registry(registry_uri)
    before = {
        k: v for k, v in registry.get_version(model_name, bad.version).tags.items() if k.startswith("gate")
    }
    assert before["gate"] == "rejected"
    other = make_decision(
        tmp_path / "other.json", passed=True, baseline_version=None, candidate_model="gs://b/runs/77/model"
    )
    with pytest.raises(ConfigError, match="evaluated candidate_model='gs://b/runs/77/model'"):
        promote(PromoteConfig(**cfg, version=bad.version, decision=other))
    # Same model name in the decision, but not the decision this version's gate recorded.
    relabelled = make_decision(tmp_path / "relabelled.json", passed=True, baseline_version=None)
    with pytest.raises(ConfigError, match="judged by a different decision.json"):
        promote(PromoteConfig(**cfg, version=bad.version, decision=relabelled))
    after = registry.get_version(model_name, bad.version).tags
    assert {k: v for k, v in after.items() if k.startswith("gate")} == before
    assert PRODUCTION not in registry.aliases(model_name)

    # Its own decision (given as the directory this time) is accepted, and says it was rejected.
    own = promote(PromoteConfig(**cfg, version=bad.version, decision=str(tmp_path / "eval-1")))
    assert own.outcome == "rejected"
    tags = registry.get_version(model_name, bad.version).tags
    assert tags["promotion.gate"] == "rejected" and tags["gate"] == "rejected"

    # A version registered without a verdict takes the first decision about its own model as its gate.
    model = make_model(tmp_path / "m2", seed=2)
    plain = register_candidate(RegisterConfig(**cfg, candidate_model=str(model))).version
    decision = make_decision(
        tmp_path / "d2.json", passed=True, baseline_version=None, candidate_model=str(model)
    )
    assert promote(PromoteConfig(**cfg, version=plain, decision=decision)).promoted
    tags = registry.get_version(model_name, plain).tags
    assert tags["gate"] == "passed" and tags["gate.decision_uri"] == str(Path(decision).resolve())


def test_a_rejected_version_is_not_promoted_on_a_new_decision_written_to_the_same_path(
    embedded_registry_uri, model_name, tmp_path, make_model, make_decision
):
    """Review r5: run A's rejected candidate, then run B retrains into the same directory and writes a
    passing decision to the same path; promoting A's version on it must be refused (gate.decision_sha256)."""
    cfg = {"registry_uri": embedded_registry_uri, "model_name": model_name}
    model, evaluation = tmp_path / "outputs" / "model", tmp_path / "outputs" / "eval"
    make_model(model, seed=100)
    make_decision(
        evaluation / "decision.json", passed=False, baseline_version=None, candidate_model=str(model)
    )
    rejected = register_candidate(
        RegisterConfig(**cfg, candidate_model=str(model), decision=str(evaluation), pipeline_run_id="A")
    )
    registry = open_registry(embedded_registry_uri)
    recorded = registry.get_version(model_name, rejected.version).tags["gate.decision_sha256"]
    assert len(recorded) == 64
    # Run B: new files, a passing decision, both at the same paths as run A's.
    shutil.rmtree(model)
    make_model(model, seed=200)
    make_decision(
        evaluation / "decision.json", passed=True, baseline_version=None, candidate_model=str(model)
    )
    with pytest.raises(ConfigError, match="judged by a different decision.json") as err:
        promote(PromoteConfig(**cfg, version=rejected.version, decision=str(evaluation), pipeline_run_id="B"))
    assert recorded[:12] in str(err.value)
    assert PRODUCTION not in registry.aliases(model_name)
    assert registry.get_version(model_name, rejected.version).tags["gate"] == "rejected"


def test_a_version_registered_without_a_decision_is_promoted_only_on_its_own_files(
    embedded_registry_uri, model_name, tmp_path, make_model, make_decision
):
    """With no gate verdict to compare, the decision's candidate_model must still hold the version's files
    (files_digest); a gs:// one cannot be checked without a download, so it is refused."""
    cfg = {"registry_uri": embedded_registry_uri, "model_name": model_name}
    model = make_model(tmp_path / "model", seed=1)
    plain = register_candidate(RegisterConfig(**cfg, candidate_model=str(model))).version
    (model / "extra.bin").write_bytes(b"retrained in place")
    decision = make_decision(
        tmp_path / "d.json", passed=True, baseline_version=None, candidate_model=str(model)
    )
    with pytest.raises(ConfigError, match="the files there changed since version"):
        promote(PromoteConfig(**cfg, version=plain, decision=decision))
    registry = open_registry(embedded_registry_uri)
    assert PRODUCTION not in registry.aliases(model_name)
    assert registry.get_version(model_name, plain).tags["gate"] == "unevaluated"

    remote = make_model(tmp_path / "remote", seed=2)
    on_gcs = register_candidate(
        RegisterConfig(**cfg, candidate_model=str(remote), extra_tags={"candidate_model": "gs://b/run/model"})
    ).version
    gcs_decision = make_decision(
        tmp_path / "g.json", passed=True, baseline_version=None, candidate_model="gs://b/run/model"
    )
    with pytest.raises(ConfigError, match="cannot be checked without downloading"):
        promote(PromoteConfig(**cfg, version=on_gcs, decision=gcs_decision))

    (model / "extra.bin").unlink()  # the registered files again: accepted
    assert promote(PromoteConfig(**cfg, version=plain, decision=decision)).promoted


def test_a_decision_recorded_from_a_pods_gcs_mount_matches_its_gs_uri() -> None:
    """Review r9: on a cluster the register step reads decision.json through KFP's /gcs/<bucket>/ mount;
    a later promote from a laptop names the same file gs://<bucket>/... and must be accepted."""
    pod_path = "/gcs/bkt/root/run-7/evaluate-candidate/evaluation"
    gs_uri = "gs://bkt/root/run-7/evaluate-candidate/evaluation"
    assert decision_file(pod_path) == decision_file(gs_uri) == f"{gs_uri}/decision.json"
    decision = {"passed": True, "reasons": [], "baseline_version": "3", "candidate_model": "/gcs/bkt/m"}
    # Tags of a version registered before gate.decision_sha256 existed: the path is all there is.
    tags = {k: v for k, v in gate_tags(decision, pod_path).items() if k != "gate.decision_sha256"}
    tags["candidate_model"] = "gs://bkt/m"
    version = ModelVersion(name="m", version="4", source="", files_uri="", aliases=[], tags=tags)
    check_decision_matches("m", version, {**decision, "candidate_model": "gs://bkt/m"}, gs_uri)
    with pytest.raises(ConfigError, match="already judged by gate.decision_uri"):
        check_decision_matches("m", version, decision, "gs://bkt/root/run-8/evaluate-candidate/evaluation")
