"""Typed configuration of training (the ``train:`` section); defaults are the paper's recipe.

DGHM section 4.2: mini-batch 8 with AP:NP tiles at 1:3, random 600x600 crops of the
800x800 tiles, flips and rotations, Adam at 1e-4 multiplied by 0.1 at epochs 9 and 12.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pathodet.data.augment import AugmentConfig
from pathodet.data.config import Strict


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
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    milestones: list[int] = Field([9, 12], description="epochs at which lr is multiplied")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    warmup_steps: int = Field(0, ge=0, description="linear lr warm-up over the first steps")
    grad_clip: float | None = Field(None, gt=0, description="max gradient L2 norm, or None")
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: default)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap (smoke runs)")
    checkpoint_every: int = Field(
        50, ge=0, description="write last.pt every N steps (and at each epoch end); 0 = epochs"
    )
    log_every: int = Field(10, ge=1, description="steps between metrics-log rows")
    val_tiles: int | None = Field(
        64, ge=1, description="held-out tiles used for the validation loss (None = all)"
    )
    val_batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.milestones != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
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
