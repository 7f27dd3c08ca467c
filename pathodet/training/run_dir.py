"""The files of a training run folder that identify the run: its resolved config and the
checkpoint names (see :mod:`pathodet.training.train` for the whole folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pathodet.core.io import atomic_write_text
from pathodet.training.checkpoint import CheckpointError
from pathodet.training.config import (
    Config,
    ConfigError,
    load_config,
    parse_overrides,
    same_config,
)

CONFIG_FILE, LAST, BEST = "config.yaml", "last.pt", "best.pt"


def snapshot_name(step: int) -> str:
    """The file name of the weights kept at ``step`` (``train.snapshot_every``)."""
    return f"step-{step:06d}.pt"


def absolute_paths(cfg: Config) -> Config:
    """A copy of ``cfg`` with every file path absolute, so a run resumes from any directory."""
    cfg = cfg.model_copy(deep=True)
    for section, key in (("data", "root"), ("data", "folds"), ("data", "pseudo"),
                         ("model", "weights"), ("model", "init")):  # fmt: skip
        obj = getattr(cfg, section)
        if getattr(obj, key) is not None:
            setattr(obj, key, Path(getattr(obj, key)).absolute())
    ss = cfg.loss.soft_sampling
    if ss.prior_checkpoint is not None:
        ss.prior_checkpoint = Path(ss.prior_checkpoint).absolute()
    dc = cfg.train.distill
    if dc.teacher is not None:
        dc.teacher = Path(dc.teacher).absolute()
    return cfg


RESUMABLE_KEYS = frozenset({"train.epochs", "train.num_workers", "train.threads",
                            "train.device", "train.precision", "train.checkpoint_every", "train.log_every",
                            "train.snapshot_every"})  # fmt: skip
"""Config keys a resumed run may change: how long, where and in which precision it runs,
not what it learns (a run started in bf16 on one machine may continue in fp32 on another)."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return out


def config_changes(saved: Config, cfg: Config) -> list[str]:
    """The dotted config keys whose values differ between ``saved`` and ``cfg``, except
    :data:`RESUMABLE_KEYS` (sorted)."""
    a, b = _flat(saved.model_dump(mode="json")), _flat(cfg.model_dump(mode="json"))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)
                  and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS))  # fmt: skip


def check_resume_config(checkpoint: Path, state: dict, cfg: Config) -> None:
    """Refuse to resume ``cfg`` from a checkpoint written by another config.

    Raises:
        CheckpointError: naming ``checkpoint`` and the keys that differ.
    """
    try:
        saved = Config.model_validate_json(state["config"])
    except (KeyError, TypeError, ValidationError):
        raise CheckpointError(f"{checkpoint}: its stored config is missing or invalid") from None
    changed = config_changes(saved, cfg)
    if changed:
        raise CheckpointError(
            f"{checkpoint}: written by another config ({', '.join(changed[:6])}"
            f"{', ...' if len(changed) > 6 else ''} differ); a resumed run may only change "
            f"{', '.join(sorted(RESUMABLE_KEYS))}; start a new run with --out instead"
        )


def can_resume(run_dir: Path, cfg: Config) -> bool:
    """True when ``run_dir`` holds a ``last.pt`` of a run of exactly ``cfg`` (with
    :func:`absolute_paths`), so that ``train(cfg, run_dir, resume=True)`` continues it."""
    try:
        saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return same_config(saved, absolute_paths(cfg)) and (run_dir / LAST).is_file()


def save_run_config(cfg: Config, run_dir: Path) -> None:
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(run_dir / CONFIG_FILE, text)


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config to continue the run in ``run_dir`` with: its own ``config.yaml`` plus
    ``overrides`` (``key=value``), which may only touch :data:`RESUMABLE_KEYS`.

    Raises:
        ConfigError: an override of a key that would change what the run learns.
        CheckpointError: ``run_dir`` holds no ``last.pt`` to resume from.
    """
    bad = [k for k, _ in parse_overrides(overrides) if k not in RESUMABLE_KEYS]
    if bad:
        raise ConfigError(f"--resume: {', '.join(bad)} cannot change in a resumed run "
                          f"(allowed: {', '.join(sorted(RESUMABLE_KEYS))})")  # fmt: skip
    if not (Path(run_dir) / LAST).is_file():
        raise CheckpointError(f"{run_dir}: no last.pt to resume from")
    return load_config(Path(run_dir) / CONFIG_FILE, overrides)
