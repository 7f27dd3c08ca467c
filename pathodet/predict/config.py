"""Typed configuration of prediction (``pathodet predict``): windows, thresholds, slides.

One :class:`PredictConfig` drives images and slides alike. What a checkpoint knows (the
window it learnt on, the pixel size) is left ``None`` here and filled from the checkpoint's
training config by :func:`for_checkpoint`, so a user sets only what differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from pathodet.core.config import Strict
from pathodet.core.machine import PrecisionSetting
from pathodet.model.config import InferenceConfig
from pathodet.predict.reader import MPP_PLAUSIBLE

if TYPE_CHECKING:
    from pathodet.training.config import Config

DEFAULT_TILE = 1024
"""Window side, pixels, when neither the caller nor a checkpoint gives one."""


class TissueConfig(Strict):
    """How tissue is found on a slide overview (units: µm per pixel, µm², optical density
    ``-log10(I / 256)``); see :mod:`pathodet.predict.tissue` for the reason of each value."""

    mask_mpp: float = Field(8.0, gt=0, description="µm/px of the overview the mask is made on")
    min_saturation: float = Field(
        0.07, ge=0, le=1, description="floor of Otsu's threshold: glass noise is below it"
    )
    max_saturation: float = Field(
        0.10, ge=0, le=1, description="ceiling of Otsu's threshold: pale tissue is above it"
    )
    max_value_dark: float = Field(
        0.2, ge=0, le=1, description="pixels darker than this (HSV value) are ink, not tissue"
    )
    ink_min_od: float = Field(
        0.3, ge=0, description="summed RGB optical density from which the ink colour test applies"
    )
    max_red_green: float = Field(
        1.0, gt=0, description="OD_R / OD_G above this is blue/green/black ink (H&E: <= 0.93)"
    )
    max_blue_green: float = Field(
        0.78, gt=0, description="OD_B / OD_G above this is red/black ink (H&E: <= 0.70)"
    )
    min_ink_um2: float = Field(
        2000.0, ge=0, description="ink blobs smaller than this are not pen strokes, µm²"
    )
    ink_margin_um: float = Field(16.0, ge=0, description="ink mask grown by this, µm")
    min_object_um2: float = Field(5000.0, ge=0, description="specks smaller than this dropped, µm²")
    max_hole_um2: float = Field(5000.0, ge=0, description="holes smaller than this filled, µm²")


class SlideConfig(Strict):
    """Whole slides: the pixel size to detect at, tissue, counts and how ranks share work."""

    target_mpp: float | None = Field(
        None,
        gt=0,
        description="µm/px the detector sees; None: the checkpoint's (data.mpp / data.scale, "
        "0.25 / data.scale when data.mpp is unknown), 0.25 without a checkpoint",
    )
    mpp_tolerance: float = Field(
        0.1, ge=0, description="relative resolution mismatch accepted without resizing"
    )
    assumed_mpp: float = Field(0.25, gt=0, description="level-0 µm/px of a slide that does not say")
    tissue: TissueConfig = TissueConfig()
    count_threshold: float = Field(
        0.5, ge=0, le=1, description="score at which a detection counts as an SRC (counts, density)"
    )
    density_um: float = Field(250.0, gt=0, description="side of a heatmap cell, µm")
    split: Literal["slides", "tiles"] = Field(
        "slides", description="under torchrun: share whole slides, or each slide's windows"
    )


class PredictConfig(Strict):
    """How images and slides are cut into windows, detected and merged (pixels are the
    detector's unless said otherwise)."""

    tile: int | None = Field(
        None,
        description="window side; None: the checkpoint's training tile, at least 4x the "
        f"overlap ({DEFAULT_TILE} without a checkpoint). On real DigestPath, windows of the "
        "training tile (512 at 20x) scored a held-out FROC of 0.308 against 0.161 with one "
        "1024 window per image (fold 0, docs/real-data.md)",
    )
    overlap: int = Field(128, ge=0, description="window overlap, at least the cell size")
    batch_size: int = Field(4, ge=1, description="windows per forward pass")
    precision: PrecisionSetting = "auto"
    score_threshold: float = Field(0.05, ge=0, le=1, description="keep detections above")
    nms_iou: float = Field(
        0.5, gt=0, le=1, description="suppress a detection overlapping a better one this much"
    )
    max_per_image: int = Field(2000, ge=1, description="detections kept per image")
    pad: Literal["reflect", "white"] = Field(
        "reflect", description="how an image is padded up to a whole window"
    )
    scale: float | None = Field(
        None,
        gt=0,
        description="images are resized by this before detection (boxes come back in image "
        "pixels); None: the checkpoint's data.scale, 1.0 without a checkpoint",
    )
    mpp: float | None = Field(
        None,
        gt=0,
        description="level-0 µm/px of every input: overrides what a slide's file says, and "
        "plain images are taken at this size and resized to the detector's µm/px; None: "
        "slides say their own (see pathodet.predict.reader), images are at the training "
        "data's µm/px (resized by the checkpoint's data.scale)",
    )
    num_workers: int = Field(1, ge=0, description="image-decoding / window-reading processes")
    overlays: bool = Field(False, description="also write overlay PNGs of images")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="torch, or ONNX Runtime on the CPU (a .onnx file from pathodet export, "
        "or a checkpoint exported on the fly); auto: ONNX Runtime for a .onnx file",
    )
    slides: SlideConfig = SlideConfig()

    @model_validator(mode="after")
    def _check(self) -> PredictConfig:
        if self.tile is not None and (self.tile < 64 or self.tile % 32):
            raise ValueError(f"tile must be a multiple of 32 and >= 64, got {self.tile}")
        if self.overlap >= (self.tile or DEFAULT_TILE):
            raise ValueError(f"overlap must be in [0, tile), got {self.overlap}")
        lo, hi = MPP_PLAUSIBLE
        if self.mpp is not None and not lo <= self.mpp <= hi:
            raise ValueError(f"mpp {self.mpp:g} is outside the plausible {lo:g}-{hi:g} µm/px "
                             "of a slide scanner")  # fmt: skip
        if self.mpp is not None and self.scale is not None:
            raise ValueError("set mpp (the images' µm/px) or scale, not both")
        return self

    @property
    def detection_scale(self) -> float:
        """Detector pixels per image pixel: ``scale``, 1.0 when unset."""
        return 1.0 if self.scale is None else self.scale

    @property
    def window(self) -> int:
        """Window side in detector pixels: ``tile``, :data:`DEFAULT_TILE` when unset."""
        return self.tile or DEFAULT_TILE

    def window_inference(self, model: InferenceConfig) -> InferenceConfig:
        """The per-window postprocess: this run's threshold and NMS, and no cap below the
        whole image's (``max_per_image`` applies after the merge)."""
        return model.model_copy(update={
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "max_detections": max(self.max_per_image, model.max_detections),
        })  # fmt: skip


def for_checkpoint(config: PredictConfig, train_cfg: Config | None) -> PredictConfig:
    """``config`` with what it leaves unset taken from a checkpoint's training config:
    detect at the pixel size (``data.scale``, and for slides ``data.mpp / data.scale``) and
    with the windows (``data.tiling.tile_size``) the model learnt on, but never below 4x the
    overlap (smaller windows compute each pixel many times over). Without a checkpoint
    (``train_cfg`` None): scale 1, :data:`DEFAULT_TILE` windows, 0.25 µm/px slides.

    With ``config.mpp`` (the images' µm/px) plain images are resized by
    ``mpp / target_mpp``, so they reach the detector at the pixel size it was trained at."""
    scale = config.scale
    tile = config.tile
    target = config.slides.target_mpp
    if train_cfg is None:
        scale = 1.0 if scale is None else scale
        tile = DEFAULT_TILE if tile is None else tile
        target = 0.25 if target is None else target
    else:
        d = train_cfg.data
        scale = d.scale if scale is None else scale
        if tile is None:
            tile = max(d.tiling.tile_size, -(-4 * config.overlap // 32) * 32)
        if target is None:
            target = d.detector_mpp
    if config.mpp is not None and config.scale is None:
        scale = config.mpp / target
    slides = config.slides.model_copy(update={"target_mpp": target})
    return config.model_copy(update={"scale": scale, "tile": tile, "slides": slides})
