"""The run configuration: YAML files under ``configs/`` validated into pydantic models.

A config file has one section per stage: ``data:``, ``model:``, ``loss:``, ``train:``.
Unknown or mistyped keys are errors naming the key and the file; values given with ``--set key=value`` override the file and are validated the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pathodet.data.config import DataConfig, Strict
from pathodet.engine.config import TrainConfig
from pathodet.losses.config import LossConfig
from pathodet.model.config import ModelConfig


class Config(Strict):
    """Everything one run needs."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names file and key."""


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=14", "data.root=/x"]`` -> ``[("train.epochs", 14), ...]`` (YAML-typed values)."""
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=14")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
        out.append((key.strip(), value))
    return out


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> Config:
    """Read ``path`` (YAML; ``None`` for the defaults), apply ``key=value`` overrides, validate.

    Relative paths inside the file stay relative to the current directory.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown key or wrong type.
    """
    source = str(path) if path is not None else "defaults"
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        # a section whose keys are all commented out (``data:``) means "all defaults"
        tree = {k: ({} if v is None else v) for k, v in (loaded or {}).items()}
    try:
        Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(f"{source} with --set overrides", exc)) from None


def same_config(saved: Any, cfg: Config) -> bool:
    """True when ``saved`` (a config as dumped to JSON/YAML by an earlier run) is ``cfg``.

    Compared as validated models, not as dicts: a key added to pathodet since the run was
    saved takes its default, so a finished run still counts as current when the new key
    does not change what it did; a removed or renamed key makes it stale.
    """
    try:
        return Config.model_validate(saved) == cfg
    except ValidationError:
        return False
