"""What ``pathodet bench losses`` compares: the methods (name -> loss and config overrides)
and the benchmark's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from pathodet.demo.settings import NMS_IOU, SplitSizes

COMINING = "train.comining.enabled=true"
ORIGINAL = "train.comining.attribute_aware=false"


@dataclass(frozen=True)
class Method:
    """One compared method: its label in the report, its loss and extra config overrides."""

    label: str
    loss: str
    overrides: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    "ce": Method("CE", "ce"),
    "focal": Method("focal", "focal"),
    "ghm": Method("GHM-C", "ghm"),
    "sce": Method("SCE", "sce"),
    "dghm": Method("DGHM-C", "dghm"),
    "dghm_star": Method("DGHM-C*", "dghm_star"),
    "oss": Method("OSS (all negatives)", "oss"),
    "oss_ap": Method("OSS (AP negatives)", "oss", ("loss.soft_sampling.ap_only=true",)),
    "score_ss": Method("score SS", "score_ss"),
    "cleanliness": Method("cleanliness", "cleanliness"),
    "comining": Method("co-mining (focal)", "focal", (COMINING,)),
    "comining_orig": Method("co-mining (focal, original)", "focal", (COMINING, ORIGINAL)),
    "comining_dghm": Method("co-mining (DGHM-C)", "dghm", (COMINING,)),
    "comining_dghm_orig": Method("co-mining (DGHM-C, original)", "dghm", (COMINING, ORIGINAL)),
    "joint_dghm": Method("Joint (DGHM-C)", "dghm", (COMINING, "train.comining.mine=false")),
    "pudet": Method("PUDet student (PU-selected)", "dghm"),
    "pudet_random": Method("PUDet student (random, U^R)", "dghm"),
}
"""Config name -> method. Score soft sampling's first-round detector is the focal run of the
same drop rate and seed, so ``focal`` runs before ``score_ss``. Co-mining runs with
attribute-aware mining (nothing mined in NP tiles) and as the paper's original (mining
everywhere); 'Joint' is the paper's control: the two views without co-generation. The
PUDet students (:mod:`pathodet.bench.pudet`) learn from the DGHM-C run of the same drop
rate and seed (their teacher) and the pool tiles it pseudo-labeled."""

PRIOR_METHOD = "focal"
TEACHER_METHOD = "dghm"


class LossBenchSettings(SplitSizes):
    """Everything the benchmark varies and fixes; defaults are the committed benchmark's."""

    seeds: list[int] = Field([0, 1], min_length=1, description="training seeds")
    drop_rates: list[float] = Field([0.0, 0.3, 0.5, 0.7], min_length=1)
    methods: list[str] = Field(list(METHODS), min_length=1)
    steps: int = Field(200, ge=1, description="training steps per run")
    image_size: int = Field(800, ge=256, description="image side, pixels")
    data_seed: int = Field(0, description="seed of the synthetic data and of the dropping")
    nms_iou: float = Field(NMS_IOU, gt=0, le=1, description="prediction NMS IoU")
    overrides: list[str] = Field(
        [], description="config overrides for every run (e.g. train.lr=0.001)"
    )
    pool_positive: int = Field(8, ge=1, description="PU pool: images with SRCs")
    pool_negative: int = Field(16, ge=1, description="PU pool: images without")
    pu_steps: int = Field(300, ge=1, description="PU classifier steps")
    pu_prior_steps: int = Field(150, ge=1, description="P-vs-U steps estimating pi_p")
    pu_prior: Literal["truth", "estimate"] = Field(
        "truth", description="pi_p: the pool's true SRC-tile share (known, as in the paper) "
        "or estimated by the classifier")  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> LossBenchSettings:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods repeat: {self.methods}")
        if (
            "score_ss" in self.methods
            and PRIOR_METHOD not in self.methods[: self.methods.index("score_ss")]
        ):
            raise ValueError("score_ss needs the focal run (its prior) listed before it")
        bad = [r for r in self.drop_rates if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"drop rates must be in [0, 1), got {bad}")
        return self


def quick_settings() -> LossBenchSettings:
    """``--quick``: a smoke run of every stage (minutes, not meaningful numbers)."""
    return LossBenchSettings(
        seeds=[0], drop_rates=[0.0, 0.5], methods=["focal", "dghm", "score_ss"], steps=6,
        train_positive=4, train_negative=4, test_positive=2, test_negative=2, image_size=512,
    )  # fmt: skip
