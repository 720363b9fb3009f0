"""PipelineParams from one YAML file, and KFP cron validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from components.shared.config import ConfigError
from pipelines.commands import localize
from pipelines.params import PipelineParams, load_params, validate_cron


def test_load_from_yaml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "feedback_sources: [data/feedback.jsonl]\nbase_model: models/tiny\nbeta: 1000\n"
        "train_options: {lora_rank: 4}\n"
    )
    params = load_params(str(path), ["max_steps=2", "gate_floors={pickscore: 0.1}"])
    assert params.beta == 1000
    assert params.max_steps == 2
    assert params.train_options == {"lora_rank": 4}
    assert params.gate_floors == {"pickscore": 0.1}
    args = params.pipeline_arguments()
    assert args["feedback_sources"] == ["data/feedback.jsonl"]
    assert set(args) == set(PipelineParams.model_fields)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gate_primary_metric=hps", "not among the scorers"),
        ("num_nodes=2", "multi-node is GPU-only"),
        ("registry_uri=postgres://db", "must be sqlite:///path.db or http"),
        ("objective=ppo", "objective"),
        ("bogus=1", "bogus"),
        # what would otherwise fail hours into a run, inside a task
        ("source_format=jsonl2", "source_format"),
        ("labeling_policy=user_filter", "user_filter needs the users' ids"),
        ("resolution=500", "multiple of 8"),
        ("train_options={lora_rnak: 16}", "lora_rnak"),
        ("train_options={checkpoint_dir: /tmp/shared}", "set by the pipeline"),
        ("train_options={beta: 1.0}", "set by the pipeline"),
        ("eval_options={sead: 7}", "sead"),
        ("gate_max_regression={aesthetic: 0.1}", "never computed"),
        # refused by EvaluateConfig only inside the evaluate task, after training (review)
        ("scorers=[nosuchscorer]", r"scorers: \['nosuchscorer'\] are not scorers; valid names: aesthetic"),
        ("scorer_models={hps: /models/hps}", r"scorer_models: \['hps'\] are not among the scorers"),
        ("model_name=", "model_name: empty"),
        ("model_name=' '", "model_name: empty"),
        ("feedback_sources=['']", r"feedback_sources: entries \[0\] are empty"),
        ("registry_uri=http://", "must be sqlite:///path.db or http"),
        # the launcher refuses these only inside the training task (components.train.launcher)
        (
            "distributed_strategy=fsdp",
            "distributed_strategy: 'fsdp' cannot train.*use_lora=true does not work",
        ),
        ("distributed_strategy=deepspeed_zero2", "distributed_strategy: 'deepspeed_zero2' cannot.*use_lora"),
        (
            "train_options={lora_rank: many}",
            r"train_options: the training settings are refused: invalid TrainConfig:\s+- lora_rank",
        ),
    ],
)
def test_invalid_params_name_the_field(override: str, message: str) -> None:
    base = ["feedback_sources=[a.jsonl]", "base_model=m"]
    extra = ["gpus_per_node=0"] if override.startswith("num_nodes") else []
    if override.startswith("scorers="):
        extra.append("gate_primary_metric=nosuchscorer")
    with pytest.raises(ConfigError, match=message):
        load_params(None, [*base, *extra, override])


def test_localize_makes_local_roots_and_sqlite_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params = load_params(None, ["feedback_sources=[a.jsonl]", "base_model=m", "checkpoint_root=gs://b/ckpt"])
    local = localize(params)
    assert local.outputs_root == str(tmp_path / "outputs")
    assert local.checkpoint_root == "gs://b/ckpt"
    assert local.registry_uri == f"sqlite:///{tmp_path}/outputs/registry/mlflow.db"


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 3 * * *",
        "0 */30 * * * *",
        "0 0 3 * * MON-FRI",
        # what robfig/cron v1's cron.Parse (KFP's ScheduledWorkflow) also accepts
        "@daily",
        "@midnight",
        "@every 24h",
        "@every 1h30m",
        "0 0 3 ? * sun",
        "0 0 3 1,15 JAN-jun/2 *",
        "30 5/10 0-23/6 31 12 0,6",
        " 0 0 3 * * * ",  # six fields: robfig/cron splits on whitespace
    ],
)
def test_valid_cron(cron: str) -> None:
    assert validate_cron(cron) == cron


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 3 * * *", "has 5 fields; KFP needs 6"),
        ("0 0 3 * * * *", "has 7 fields"),
        ("0 0 3 * * ;rm", "day-of-week field ';rm'"),
        ("0 99 3 * * *", "minutes field '99' is not valid \\(99 is outside 0-59\\)"),
        ("0 0 24 * * *", "hours field '24'.*outside 0-23"),
        ("0 0 3 0 * *", "day-of-month field '0'.*outside 1-31"),
        ("0 0 3 * 13 *", "month field '13'"),
        ("0 0 3 * * 7", "day-of-week field '7'.*outside 0-6"),
        ("0 0 3 L * *", "day-of-month field 'L'"),
        ("0 0 3 * * MON#2", "day-of-week field 'MON#2'"),
        ("x y z a b c", "seconds field 'x'"),
        ("0 0 3 * FOO *", "month field 'FOO'"),
        ("0 0 3 * * FRI-MON", "starts after it ends"),
        ("0 */0 3 * * *", "step '0' must be a positive"),
        ("0 0 3 1,,2 * *", "day-of-month field '1,,2'"),
        ("@dialy", "not a descriptor KFP knows"),
        ("@every", "not a descriptor"),
        ("@every 24", "not a descriptor"),
        ("@every 0s", "not a descriptor"),
        # Review round 2, finding 3: what KFP's robfig/cron rejects and the check used to pass (or crash on).
        (" @daily", "not a descriptor KFP knows"),
        ("@daily ", "not a descriptor KFP knows"),
        ("@every  24h", "not a descriptor KFP knows"),
        ("@every 24h ", "not a descriptor KFP knows"),
        ("@every ٣h", "not a descriptor KFP knows"),
        ("0 0 3 * * \u0663", "day-of-week field '\u0663'"),
        ("0 0 \u00b2 * * *", "hours field '\u00b2'"),
        ("0 */\u0663 3 * * *", "step '\u0663' must be a positive"),
    ],
)
def test_invalid_cron(cron: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_cron(cron)


def test_strategy_conflicts_of_train_options_are_refused_at_load() -> None:
    """EMA and the unpaired reference point cannot run under FSDP; the strategies that can are accepted."""
    base = ["feedback_sources=[a.jsonl]", "base_model=m", "use_lora=false"]
    with pytest.raises(ConfigError, match="distributed_strategy: 'fsdp'.*use_ema=true"):
        load_params(None, [*base, "distributed_strategy=fsdp", "train_options={use_ema: true}"])
    with pytest.raises(ConfigError, match="reference_point=unpaired"):
        load_params(None, [*base, "distributed_strategy=fsdp", "train_options={reference_point: unpaired}"])
    for strategy in ("ddp", "fsdp", "deepspeed_zero2"):
        assert load_params(None, [*base, f"distributed_strategy={strategy}"]).distributed_strategy == strategy
    ema = load_params(None, [*base, "distributed_strategy=deepspeed_zero2", "train_options={use_ema: true}"])
    assert ema.train_options == {"use_ema": True}


def test_pipeline_and_registry_commands_share_the_default_registry() -> None:
    """`dkto run --local` registers where `dkto models` / `dkto rollback` look by default."""
    from components.promote.step import DEFAULT_REGISTRY_URI
    from pipelines.params import PipelineParams

    assert PipelineParams.model_fields["registry_uri"].default == DEFAULT_REGISTRY_URI


def test_uniform_sampling_is_the_one_pipeline_field_train_options_may_set() -> None:
    params = load_params(
        None, ["feedback_sources=[a.jsonl]", "base_model=m", "train_options={desirable_ratio: null}"]
    )
    assert params.train_options == {"desirable_ratio": None}
    with pytest.raises(ConfigError, match="set by the pipeline"):
        load_params(
            None, ["feedback_sources=[a.jsonl]", "base_model=m", "train_options={desirable_ratio: 0.5}"]
        )


def test_an_unsubstituted_run_id_is_refused() -> None:
    """KFP backends before 2.4 pass the placeholder through: every run would share one checkpoint dir."""
    from pipelines.runtime import prepare_step_env

    with pytest.raises(RuntimeError, match="KFP 2.4"):
        prepare_step_env("{{$.pipeline_job_uuid}}", "")


def test_eval_options_refused_at_load_are_exactly_those_the_evaluate_component_refuses(
    tmp_path: Path,
) -> None:
    """The load-time check and the component's run-time guard must name the same fields."""
    from types import SimpleNamespace

    from components.evaluate.component import evaluate_candidate
    from components.evaluate.step import EvaluateConfig
    from pipelines.params import PIPELINE_OWNED_EVAL_FIELDS

    artifact = SimpleNamespace(path=str(tmp_path), uri=str(tmp_path), metadata={})
    with pytest.raises(ValueError, match="eval_options may not set") as err:
        evaluate_candidate.python_func(
            candidate=artifact,
            labeled=artifact,
            baseline_model="base",
            baseline_version="",
            evaluation=artifact,
            report=artifact,
            metrics=artifact,
            eval_options={name: None for name in EvaluateConfig.model_fields},
        )
    refused = set(re.findall(r"'(\w+)'", str(err.value).split("]")[0]))
    assert refused == PIPELINE_OWNED_EVAL_FIELDS
    with pytest.raises(ConfigError, match="set by the pipeline"):
        load_params(
            None, ["feedback_sources=[a.jsonl]", "base_model=m", "eval_options={num_inference_steps: 10}"]
        )
