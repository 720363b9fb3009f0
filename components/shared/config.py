"""Typed step configuration: one pydantic base class for every step.

Each step declares a ``StepConfig`` subclass whose fields carry help text in user terms. A config is
loaded from YAML (a local path or gs:// URI), then overridden by ``key=value`` pairs from the command
line (dotted keys reach nested models; values are parsed as YAML scalars), and validated before any
heavy work starts: a bad value fails with the field's name and what would be valid.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound="StepConfig")


class ConfigError(ValueError):
    """A configuration that cannot be used, with a message that names the field and the fix."""


class StepConfig(BaseModel):
    """Base class of every step's config: strict keys, YAML in and out, a stable content hash."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any], overrides: Iterable[str] = ()) -> T:
        """Build and validate a config from a mapping plus ``key=value`` overrides."""
        merged = apply_overrides(dict(data), overrides)
        try:
            return cls.model_validate(merged)
        except ValidationError as err:
            raise ConfigError(format_validation_error(cls.__name__, err)) from None

    @classmethod
    def from_yaml(cls: type[T], uri: str | None, overrides: Iterable[str] = ()) -> T:
        """Load a YAML file (local or gs://), apply overrides, validate. ``uri=None`` starts from defaults."""
        data: dict[str, Any] = {}
        if uri:
            from components.shared import storage

            # Everything that can go wrong with the user's file is their input: one ConfigError naming it.
            try:
                text = storage.read_text(uri)
            except (storage.StorageError, OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"{uri}: cannot read the config file ({err})") from err
            try:
                loaded = yaml.safe_load(text) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"{uri}: not valid YAML ({' '.join(str(err).split())})") from err
            if not isinstance(loaded, dict):
                raise ConfigError(
                    f"{uri}: expected a YAML mapping at the top level, got {type(loaded).__name__}"
                )
            data = loaded
        return cls.from_dict(data, overrides)

    def to_yaml(self) -> str:
        """The config as YAML, with every field (defaults included) so a run can be reproduced."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def config_hash(self) -> str:
        """A short, stable hash of the config's content (used for lineage tags and cache keys)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict; values are parsed as YAML (so ``1e-7`` is a float)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (for example beta=5000)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def format_validation_error(name: str, err: ValidationError) -> str:
    """Turn pydantic's error list into one readable message naming each bad field."""
    lines = [f"invalid {name}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {loc}: {e['msg']}{got_s}")
    return "\n".join(lines)
