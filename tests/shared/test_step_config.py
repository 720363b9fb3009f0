"""Tests of the typed config base: YAML loading, key=value overrides, readable validation errors."""

from __future__ import annotations

import pytest
from pydantic import Field

from components.shared.config import ConfigError, StepConfig, apply_overrides


class Inner(StepConfig):
    """A nested section."""

    depth: int = Field(2, ge=1, description="how deep")


class Example(StepConfig):
    """A config with a nested section and constrained fields."""

    name: str = Field(description="a required name")
    beta: float = Field(5000.0, gt=0, description="KL weight")
    inner: Inner = Inner()


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nbeta: 1000\ninner:\n  depth: 3\n")
    cfg = Example.from_yaml(str(path), ["beta=1e-7", "inner.depth=4"])
    assert cfg.name == "a"
    assert cfg.beta == pytest.approx(1e-7)  # YAML-parsed, so scientific notation is a float
    assert cfg.inner.depth == 4


def test_defaults_only_and_roundtrip():
    cfg = Example.from_dict({"name": "x"})
    again = Example.from_dict(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg
    assert cfg.config_hash() == again.config_hash()
    assert cfg.config_hash() != Example.from_dict({"name": "y"}).config_hash()


def test_errors_name_the_field():
    with pytest.raises(ConfigError) as err:
        Example.from_dict({"name": "x", "beta": -1, "inner": {"depth": 0}})
    text = str(err.value)
    assert "beta" in text and "inner.depth" in text and "-1" in text


def test_unknown_key_rejected():
    with pytest.raises(ConfigError, match="betta"):
        Example.from_dict({"name": "x", "betta": 1})


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["beta"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        Example.from_yaml(str(path))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nope.yaml", None, "cannot read the config file"),
        ("adir", "dir", "cannot read the config file"),
        ("bin.yaml", b"\xff\xfe", "cannot read the config file"),
        ("bad.yaml", b"beta: [1, 2\n", "not valid YAML"),
    ],
    ids=["missing", "a-folder", "not-utf8", "bad-yaml"],
)
def test_a_config_file_that_cannot_be_read_is_a_config_error_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"{name}: {message}"):
        Example.from_yaml(str(path))


@pytest.mark.parametrize("step", ["ingest", "label", "evaluate", "promote"])
def test_step_commands_print_one_line_for_a_missing_config_file(tmp_path, step):
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, [step, "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2, result.output
    assert "missing.yaml: cannot read the config file" in result.output
    assert "Traceback" not in result.output
