"""The run configuration: YAML files under ``configs/`` validated into pydantic models.

A config file has one section per stage: ``data:``, ``model:``, ``loss:``, ``train:``
(:class:`Config`). Unknown or mistyped keys are errors naming the key and the file; values
given with ``--set key=value`` override the file and are validated the same.

The ``train:`` section (:class:`TrainConfig`) defaults to the paper's recipe: DGHM section
4.2, mini-batch 8 with AP:NP tiles at 1:3, random 600x600 crops of the 800x800 tiles, flips
and rotations, Adam at 1e-4 multiplied by 0.1 at epochs 9 and 12.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from pathodet.core.config import Strict
from pathodet.data.augment import AugmentConfig, ColourViewConfig
from pathodet.data.config import DataConfig
from pathodet.losses.config import LossConfig
from pathodet.model.boxes import SAME_CELL_IOU
from pathodet.model.config import ModelConfig


class CominingConfig(Strict):
    """Co-mining (the ``train.comining`` section; co-mining paper, Algorithm 1).

    One detector (shared weights) sees every training tile twice: as is (view ``o``) and
    colour-changed (view ``a``). Each view's detached predictions go through co-generation
    (score >= ``tau``, NMS at ``theta1``, drop boxes that are the same cell as an annotated
    box: IoU >= ``theta2``, by default pathodet's one same-cell rule); what survives from one view joins the annotations that supervise the
    other (eq. 1), and the loss is the sum of both views' losses (eq. 2).

    How mined positives enter DGHM-C is ``loss.dghm.pseudo_group``.
    """

    enabled: bool = False
    tau: float = Field(0.6, ge=0, le=1, description="score threshold of co-generation")
    theta1: float = Field(0.5, gt=0, le=1, description="NMS IoU of co-generation")
    theta2: float = Field(
        SAME_CELL_IOU,
        ge=0,
        le=1,
        description="drop a mined box that is the same cell as an annotated box (IoU >= "
        "theta2; default the same-cell rule of evaluation and review export, 0.3)",
    )
    attribute_aware: bool = Field(
        True,
        description="mine in AP tiles only: NP tiles hold no SRC, their labels are clean "
        "(False = the paper's original, which mines everywhere)",
    )
    mine: bool = Field(
        True, description="False: two views, no co-generation (the paper's 'Joint' baseline)"
    )
    max_candidates: int = Field(
        1000, ge=1, description="highest-scoring anchors per tile kept for NMS (a cost bound)"
    )
    view: ColourViewConfig = ColourViewConfig()


class DistillConfig(Strict):
    """Self-distillation from a teacher of the same architecture (the ``train.distill``
    section; PU purification paper, Eq. 8): ``L = L_det + gamma L_hint + lambda L_kd``.

    The teacher is a trained detector (usually the one whose pseudo-labels the student
    trains on); it runs frozen, in eval mode, on every training batch.
    """

    enabled: bool = False
    teacher: Path | None = Field(None, description="the teacher's checkpoint (RUN/last.pt)")
    gamma: float = Field(1.0, ge=0, description="weight of the hint loss (Eq. 11)")
    lam: float = Field(
        1.0, ge=0, description="weight of the classification + regression distillation"
    )
    temperature: float = Field(2.0, gt=0, description="T of the classification term (Eq. 14)")
    psi: float = Field(
        0.5, gt=0, le=1, description="imitation region: IoU above psi x the box's best anchor"
    )


class TrainConfig(Strict):
    """How a detector is trained."""

    epochs: int = Field(14, ge=1)
    batch_size: int = Field(8, ge=1, description="global mini-batch over all processes")
    ap_fraction: float = Field(0.25, ge=0, le=1, description="AP share of a batch (1:3)")
    ap_tiles: Literal["annotated", "all"] = Field(
        "annotated",
        description="AP tiles to sample: those holding an annotated box, or every AP tile",
    )
    augment: AugmentConfig = AugmentConfig()
    comining: CominingConfig = CominingConfig()
    distill: DistillConfig = DistillConfig()
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    milestones: list[int] = Field([9, 12], description="epochs at which lr is multiplied")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    warmup_steps: int = Field(0, ge=0, description="linear lr warm-up over the first steps")
    grad_clip: float | None = Field(None, gt=0, description="max gradient L2 norm, or None")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 where the CPU or GPU computes it natively, else fp32"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (None: the usable cores / local ranks)"
    )
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap (smoke runs)")
    checkpoint_every: int = Field(
        50, ge=0, description="write last.pt every N steps (and at each epoch end); 0 = epochs"
    )
    snapshot_every: int = Field(
        0, ge=0, description="also keep the weights every N steps as step-<N>.pt (a curve of "
        "held-out FROC against steps, as bench losses draws); 0 = none",
    )  # fmt: skip
    log_every: int = Field(10, ge=1, description="steps between metrics-log rows")
    val_tiles: int | None = Field(
        64, ge=1, description="held-out tiles used for the validation loss (None = all)"
    )
    val_batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.milestones != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        if self.distill.enabled and self.comining.enabled:
            raise ValueError("train.distill and train.comining cannot be combined")
        return self

    def lr_at(self, epoch: int, step: int) -> float:
        """Learning rate at ``epoch`` (0-based) and global ``step`` (0-based).

        ``lr * lr_gamma ** (number of milestones <= epoch)``, times ``(step + 1) /
        warmup_steps`` during warm-up. Milestone 9 means the 10th epoch is the first at the
        lower rate, as torch's ``MultiStepLR``.
        """
        lr = self.lr * self.lr_gamma ** sum(m <= epoch for m in self.milestones)
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr


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
