"""Typed configuration of the loss (the ``loss:`` section); defaults are the papers'."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from pathodet.core.config import Strict

LossName = Literal[
    "ce", "focal", "ghm", "sce", "dghm", "dghm_star", "oss", "score_ss", "cleanliness"
]


class FocalParams(Strict):
    alpha: float = 0.25
    gamma: float = Field(2.0, ge=0)


class GHMParams(Strict):
    bins: int = Field(10, ge=1)
    momentum: float = Field(0.0, ge=0, lt=1)


class DGHMParams(Strict):
    """Eq. 9-12: ``mu_n`` for noisy outliers (AP negatives), ``mu_c`` for clean ones."""

    mu_n: float = Field(2.0, ge=0)
    mu_c: float = Field(0.5, ge=0)
    lam: float = Field(0.9, ge=0, le=1, description="outlier threshold on g")
    bins: int = Field(10, ge=1)
    pseudo_group: Literal["noisy", "clean"] = Field(
        "noisy",
        description="the group of positives matched to pseudo-labels (co-mining's mined "
        "boxes, PU purification's teacher boxes). 'noisy' (default): a pseudo-label is a "
        "detector's guess, as uncertain as an AP negative's label; when the supervised view "
        "disagrees strongly (an outlier, g >= lam) the pseudo-label is likely wrong and mu_n "
        "down-weights it. 'clean': treated as annotated positives, so strong disagreement "
        "is up-weighted by mu_c",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """Configs and checkpoints written before the rename call it ``mined_group``."""
        if isinstance(data, dict) and "mined_group" in data:
            data = dict(data)
            data.setdefault("pseudo_group", data.pop("mined_group"))
        return data


class SCEParams(Strict):
    alpha: float = Field(0.01, ge=0)
    beta: float = Field(1.0, ge=0)
    log_zero: float = Field(-4.0, lt=0)


class SoftSamplingParams(Strict):
    """Gompertz weights ``a + (1-a) exp(-b exp(-c x))`` on negatives (OSS and score SS)."""

    a: float = Field(0.25, ge=0, le=1)
    b: float = Field(50.0, gt=0)
    c: float = Field(20.0, gt=0)
    ap_only: bool = Field(False, description="down-weight AP negatives only (NP ones are clean)")
    base: Literal["ce", "focal"] = "focal"
    prior_checkpoint: Path | None = Field(None, description="score SS: first-round detector")
    threshold: float | None = Field(
        None, ge=0, le=1, description="score SS: T; None = median prior score on annotated boxes"
    )


class CleanlinessParams(Strict):
    top_n: int = Field(30, ge=1, description="candidate positives per annotated box")
    alpha: float = Field(0.75, ge=0, le=1)
    gamma: float = Field(1.0, ge=0)


class LossConfig(Strict):
    """Which classification loss, its parameters, and the regression loss."""

    name: LossName = "dghm"
    focal: FocalParams = FocalParams()
    ghm: GHMParams = GHMParams()
    dghm: DGHMParams = DGHMParams()
    sce: SCEParams = SCEParams()
    soft_sampling: SoftSamplingParams = SoftSamplingParams()
    cleanliness: CleanlinessParams = CleanlinessParams()
    smooth_l1_beta: float = Field(1 / 9, ge=0, description="regression: smooth-L1 transition")
    reg_weight: float = Field(1.0, ge=0)
