"""What the demo runs: data sizes, the training recipe, and the time budget turned into steps.

The budget is converted into a number of training steps with this machine's measured
speed (:mod:`pathodet.demo.calibrate`: a few steps of the recipe on a throwaway model, and
one prediction window, before anything is trained). The step count is rounded down onto a
coarse ladder and the measurement is kept in the output folder, so a given ``(seed,
budget_minutes)`` on one machine trains the same number of steps and gives the same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field

from pathodet.core.config import Strict
from pathodet.data.sampler import APNPBatchSampler
from pathodet.demo.calibrate import ladder_steps
from pathodet.training.config import Config, load_config
from pathodet.training.data import training_data

TRAINER_OVERHEAD = 1.1
"""A step inside the trainer (data loading, validation each epoch, checkpoints every 50
steps) over the bare step the calibration times. Measured in one demo (fp32, AVX2
kernels, light recipe, Intel Xeon restricted to AVX2): 1.19 s per step in the trainer against
1.11 s calibrated (1.07), and 1.14 s against 0.97 s (1.18) in the final demo run."""

FIXED_SECONDS = 30.0
"""Seconds of the demo's work that does not scale with the model: synthesis (21 s on a
2-core CPU), overlays and the report."""

DEMO_WINDOWS = 100
"""Prediction windows of the demo, each costing about the measured ``window_seconds``
with its reading and postprocessing. Measured: evaluation and slide took 64 s at 0.66 s
per window and 83 s at 0.85 s (fp32, AVX2 kernels)."""

BUDGET_USE = 0.9
"""Share of the budget planned; the rest is margin for a busy machine and for rounding
the steps to whole epochs."""

NOMINAL_SPEED = {"step_seconds": 0.35, "window_seconds": 0.5}
"""Planned speed when ``steps`` is given and nothing is measured (only the progress bars'
plan depends on it): the bf16 AVX-512/AMX development machine's."""

NMS_IOU = 0.3
"""Prediction NMS: SRCs hardly overlap, and at RetinaNet's 0.5 nested boxes of different
sizes survive on every cell cluster (measured on the demo's test split: FROC 0.835 at 0.5,
0.864 at 0.3 for DGHM-C; precision 0.021 and 0.079)."""

RECIPES = {"full": [], "light": ["model.fpn_channels=64"]}
"""Overrides of :func:`demo_config` per recipe. ``light`` halves the FPN and head width
(a training step 1.36x faster in fp32 on AVX2 kernels) for machines that would otherwise
fit too few steps into the budget. Measured on the demo's split (seed 0, fp32, AVX2
kernels; docs/benchmarks/slow-machine.md): DGHM-C held-out FROC 0.675 after 308 full
steps (478 s), 0.878 after 396 light steps (443 s)."""

MIN_FULL_STEPS = 600
"""Below this many steps per model in the budget, ``recipe: auto`` takes the light recipe
(the full one reached 0.873 after 968 steps in bf16, 0.675 after 308 in fp32)."""

LOSSES = {"dghm": "DGHM-C", "focal": "focal"}
"""The two trained models: config loss name -> label in the report."""


class SplitSizes(Strict):
    """Image counts of a synthetic training root and its fully annotated test root (the
    demo's and the loss benchmark's)."""

    train_positive: int = Field(16, ge=1, description="AP training images")
    train_negative: int = Field(16, ge=1, description="NP training images")
    test_positive: int = Field(12, ge=1, description="AP test images (fully annotated)")
    test_negative: int = Field(12, ge=1, description="NP test images")


class DemoSettings(SplitSizes):
    """Everything the demo does; every field has the ``make demo`` default."""

    seed: int = 0
    budget_minutes: float = Field(20.0, gt=0, description="wall-clock budget of the whole demo")
    steps: int | None = Field(
        None, ge=1, description="training steps per model; None: from budget_minutes"
    )
    image_size: int = Field(1000, ge=256, description="image side, pixels")
    folds: int = Field(8, ge=2, description="slide-grouped folds; one validates (best.pt)")
    annotate_rate: float = Field(0.5, gt=0, le=1, description="share of SRCs annotated (train)")
    slide_width: int = Field(6000, ge=512, description="demo slide, level-0 pixels")
    slide_height: int = Field(4000, ge=512, description="demo slide, level-0 pixels")
    tile: int = Field(1024, description="prediction window, pixels")
    overlays: int = Field(3, ge=0, description="test images drawn in the report")
    nms_iou: float = Field(NMS_IOU, gt=0, le=1, description="prediction NMS IoU")
    recipe: Literal["auto", "full", "light"] = Field(
        "auto", description="auto: full unless the budget fits too few of its steps here"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="training and prediction; auto: bf16 where native, else fp32"
    )

    def train_steps(self, speed: dict) -> int:
        """Training steps per model: ``steps``, else what fits the budget at the measured
        ``speed`` (``step_seconds``, ``window_seconds`` of :mod:`pathodet.demo.calibrate`),
        rounded down onto the step ladder, at least 20."""
        if self.steps is not None:
            return self.steps
        seconds = self.budget_minutes * 60.0 * BUDGET_USE - fixed_seconds(speed)
        return ladder_steps(seconds / (len(LOSSES) * step_seconds(speed)))

    def planned_seconds(self, speed: dict) -> float:
        """Planned duration of the whole demo at the measured ``speed``."""
        return fixed_seconds(speed) + len(LOSSES) * self.train_steps(speed) * step_seconds(speed)


def step_seconds(speed: dict) -> float:
    """Planned seconds per training step: the measured bare step times the trainer's overhead."""
    return speed["step_seconds"] * TRAINER_OVERHEAD


def fixed_seconds(speed: dict) -> float:
    """Planned seconds of everything but training: fixed work, the prediction windows and
    the calibration itself."""
    return (
        FIXED_SECONDS
        + DEMO_WINDOWS * speed["window_seconds"]
        + speed.get("calibration_seconds", 0.0)
    )


def schedule(steps: int, batches_per_epoch: int) -> tuple[int, list[int]]:
    """``(epochs, milestones)`` for about ``steps`` steps: the paper's 14-epoch schedule
    (learning rate x0.1 after 9 and 12 epochs) stretched to the number of epochs."""
    epochs = max(1, round(steps / max(batches_per_epoch, 1)))
    milestones = sorted({math.ceil(epochs * m / 14) for m in (9, 12)} - {0, epochs})
    return epochs, [m for m in milestones if m < epochs]


def config_for_steps(make: Callable[[int, list[int]], Config], steps: int) -> Config:
    """``make(epochs, milestones)`` for about ``steps`` steps on :func:`schedule`; the number
    of batches per epoch is read from a probe config's training data."""
    probe = make(1, [])
    data = training_data(probe.data, probe.train)
    tc = probe.train
    per_epoch = APNPBatchSampler(
        data.ap_tiles, data.np_tiles, tc.batch_size, tc.ap_fraction, tc.seed
    ).batches_per_epoch()
    return make(*schedule(steps, per_epoch))


def demo_config(
    root: str | Path,
    loss: str,
    seed: int,
    epochs: int,
    milestones: list[int],
    folds: int = 8,
    extra: list[str] | None = None,
) -> Config:
    """The training config of one demo model (also written to its run folder).

    Paper recipe (section 4.2) with what a 2-core CPU needs to learn within minutes:
    512-px tiles and 256-px crops (SRCs are 30-90 px), a 128-channel FPN and head (a
    quarter of the head's work), bf16 autocast where the CPU computes it natively (2x; fp32
    elsewhere: ``train.precision=auto``), from scratch with batch norm and a
    higher Adam rate (3e-4 after 20 warm-up steps), one held-out fold of 8 for validation.
    ``extra`` overrides (``section.key=value``) are applied last, e.g. by the loss benchmark.
    """
    cfg = load_config(
        None,
        [
            f"data.num_folds={folds}",
            f"data.fold_seed={seed}",
            "data.tiling.tile_size=512",
            "data.tiling.stride=256",
            "model.fpn_channels=128",
            "model.norm=bn",
            f"loss.name={loss}",
            f"train.epochs={epochs}",
            f"train.milestones={milestones}",
            "train.lr=0.0003",
            "train.warmup_steps=20",
            "train.augment.crop=256",
            "train.precision=auto",
            f"train.seed={seed}",
            "train.num_workers=1",
            "train.checkpoint_every=50",
            "train.val_tiles=32",
            *(extra or []),
        ],
    )
    cfg.data.root = Path(root)  # assigned, not parsed: a path is never read as YAML
    return cfg
