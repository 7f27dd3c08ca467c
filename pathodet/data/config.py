"""Typed configuration of the data stage (the ``data:`` section of a config file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pathodet.core.config import Strict
from pathodet.data.voc import SRC_NAME, AnnotationRules

DEFAULT_MPP = 0.25
"""µm/px taken for images whose ``data.mpp`` is unknown: DigestPath's 40x scans (the
project's default elsewhere: ``predict.slides.assumed_mpp``)."""


class TilingConfig(Strict):
    """Sliding windows over an image (paper section 4.2: 800x800, stride 300)."""

    tile_size: int = Field(800, gt=0, description="window side, pixels")
    stride: int = Field(300, gt=0, description="window step, pixels")
    min_visible: float = Field(
        0.5, ge=0.0, le=1.0, description="keep a box when this fraction of its area is inside"
    )


class DataConfig(Strict):
    """Where the data is and how it is cut.

    ``root`` is a DigestPath-layout folder or a manifest CSV; ``folds`` a manifest CSV with a
    ``fold`` column written by ``pathodet data folds`` (optional). Without one, records that
    carry no fold are split on the fly into ``num_folds`` slide-grouped folds (``fold_seed``).
    """

    root: Path | None = None
    folds: Path | None = None
    pseudo: Path | None = Field(
        None,
        description="a pathodet purify output folder: its selected, pseudo-labeled tiles "
        "join the training tiles (PU purification; attribute AP or unknown, both AP-like)",
    )
    held_out_fold: int = Field(0, ge=0)
    num_folds: int = Field(5, ge=2, description="folds made on the fly when none are given")
    fold_seed: int = 0
    fold_group: Literal["case", "slide"] = Field(
        "case", description="folds made on the fly keep each case (or only each slide) together"
    )
    scale: float = Field(
        1.0,
        gt=0,
        le=4,
        description="images are resized by this factor before the detector sees them, in "
        "training and prediction: 0.5 detects 40x scans at 20x (a quarter of the pixels)",
    )
    mpp: float | None = Field(
        None,
        gt=0,
        description="µm per pixel of the images as read (null: unknown); the checkpoint "
        "records mpp / scale as the µm/px the detector was trained at",
    )
    src_names: tuple[str, ...] = Field(
        (SRC_NAME,),
        min_length=1,
        description="class names of SRC objects in annotation files (VOC <name>, QuPath "
        "classification name; compared without case); objects of other classes are skipped "
        "and counted",
    )
    unnamed_src: bool = Field(
        True,
        description="an annotated object with no class (a VOC object without <name>, an "
        "unclassified QuPath object) is an SRC box",
    )
    point_box_um: float = Field(
        14.0,
        gt=0,
        description="side, µm, of the box around a point annotation (QuPath points): 56 px, "
        "the median DigestPath SRC box, at 0.25 µm/px; converted with data.mpp (0.25 when null)",
    )
    cache_mb: int = Field(
        2048,
        ge=0,
        description="decoded (resized) images each data-loading process keeps in memory, MiB; "
        "tiles are drawn at random over images, so without room for most of them every tile "
        "decodes its image again",
    )
    tiling: TilingConfig = TilingConfig()

    @property
    def detector_mpp(self) -> float:
        """µm/px the detector sees: ``mpp / scale``, with :data:`DEFAULT_MPP` when ``mpp``
        is unknown (what prediction and an exported model take as the model's pixel size)."""
        return (self.mpp or DEFAULT_MPP) / self.scale

    def annotation_rules(self) -> AnnotationRules:
        """Which annotated objects are SRC boxes, and the box of a point, in image pixels:
        ``point_box_um / mpp`` (``mpp`` unknown: :data:`DEFAULT_MPP`)."""
        mpp = self.mpp or DEFAULT_MPP
        return AnnotationRules(tuple(self.src_names), self.unnamed_src, self.point_box_um / mpp)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.tiling.stride > self.tiling.tile_size:
            raise ValueError(
                f"tiling.stride ({self.tiling.stride}) larger than tiling.tile_size "
                f"({self.tiling.tile_size}) would skip pixels"
            )
        return self
