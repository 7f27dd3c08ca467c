"""Typed configuration of the detector (the ``model:`` section)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pathodet.core.config import Strict


class AnchorConfig(Strict):
    """Anchors per FPN level P3-P7: ``sizes[i]`` is the base side (pixels) at level i.

    The paper tunes anchor areas from 16^2 to 256^2; each level adds RetinaNet's three
    octave scales and three aspect ratios (h/w).
    """

    sizes: list[float] = [16, 32, 64, 128, 256]
    scales: list[float] = [1.0, 2 ** (1 / 3), 2 ** (2 / 3)]
    aspect_ratios: list[float] = [0.5, 1.0, 2.0]

    @property
    def per_location(self) -> int:
        return len(self.scales) * len(self.aspect_ratios)


class AssignConfig(Strict):
    """RetinaNet anchor labelling: IoU >= fg positive, < bg negative, in between ignored."""

    fg_iou: float = Field(0.5, gt=0, le=1)
    bg_iou: float = Field(0.4, ge=0, le=1)
    allow_low_quality: bool = True

    @model_validator(mode="after")
    def _order(self) -> AssignConfig:
        if self.bg_iou > self.fg_iou:
            raise ValueError(f"bg_iou ({self.bg_iou}) must not exceed fg_iou ({self.fg_iou})")
        return self


class InferenceConfig(Strict):
    """Turning head outputs into boxes."""

    score_threshold: float = Field(0.05, ge=0, le=1)
    topk_per_level: int = Field(1000, gt=0, description="candidates per FPN level before NMS")
    nms_iou: float = Field(0.5, gt=0, le=1)
    max_detections: int = Field(300, gt=0, description="per image (tile)")


class ModelConfig(Strict):
    """The detector."""

    backbone: Literal["resnet18"] = "resnet18"
    weights: Path | None = Field(
        None,
        description="local ImageNet ResNet-18 state dict; else torchvision's cache; else scratch",
    )
    init: Path | None = Field(
        None,
        description="a pathodet checkpoint whose detector weights start training "
        "(fine-tuning, e.g. from a model trained on synthetic data); same architecture",
    )
    norm: Literal["auto", "frozen_bn", "bn", "gn"] = "auto"
    trainable_layers: int = Field(5, ge=0, le=5)
    fpn_channels: int = Field(256, gt=0)
    anchors: AnchorConfig = AnchorConfig()
    assign: AssignConfig = AssignConfig()
    inference: InferenceConfig = InferenceConfig()
