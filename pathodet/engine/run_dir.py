"""The files of a training run folder that identify the run: its resolved config and the
checkpoint names (see :mod:`pathodet.engine.train` for the whole folder)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pathodet.config import Config, same_config
from pathodet.data.io import atomic_write_text

CONFIG_FILE, LAST, BEST = "config.yaml", "last.pt", "best.pt"


def absolute_paths(cfg: Config) -> Config:
    """A copy of ``cfg`` with every file path absolute, so a run resumes from any directory."""
    cfg = cfg.model_copy(deep=True)
    for section, key in (("data", "root"), ("data", "folds"), ("data", "pseudo"),
                         ("model", "weights")):  # fmt: skip
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
