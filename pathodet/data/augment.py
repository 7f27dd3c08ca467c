"""Training-time augmentation of tiles, boxes carried through (DGHM paper section 4.2).

A tile (800x800 by default) is randomly cropped to the training size (600x600), flipped
and rotated by multiples of 90 degrees with albumentations, which moves the boxes with the
pixels; a box cut by the crop is clipped to it, or dropped when less than ``min_visible``
of its area stays inside. Optional HED stain jitter (Tellez et al. 2018) perturbs the
hematoxylin, eosin and DAB optical densities of each tile independently.

A tile may carry ``full_truth_boxes`` (every real SRC, synthetic data only): they follow the
same crop, flips and rotation as the annotated boxes, so that what co-mining mines can be
checked against the truth.

:class:`ColourView` makes co-mining's second view: photometric changes only (colour
jitter, optional Gaussian blur and HED stain jitter), so the two views stay pixel-aligned
and a box mined in one is a box in the other.

Every random choice comes from the seed passed with the tile, so a tile and seed give the
same result in any worker process, in any order: that is what makes training
deterministic and resumable.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from skimage.color import hed2rgb, rgb2hed

from pathodet.core.config import Strict


class AugmentConfig(Strict):
    """Augmentation of training tiles (the ``train.augment`` section)."""

    crop: int = Field(600, gt=0, description="random crop side, pixels (tiles smaller are padded)")
    hflip: bool = True
    vflip: bool = False
    rotate90: bool = Field(True, description="rotate by a random multiple of 90 degrees")
    hed_jitter: float = Field(
        0.0, ge=0, le=0.5, description="HED stain jitter sigma (0 = off; 0.03-0.05 typical)"
    )
    min_visible: float = Field(
        0.5, ge=0, le=1, description="drop a box when less than this fraction stays in the crop"
    )


def hed_jitter(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift each HED density channel: ``s' = s * U(1-sigma, 1+sigma) + U(-sigma, sigma) * r``.

    ``r`` is the channel's 99th percentile in the tile, so the shift is a fraction of the
    stain's own range (skimage's density units are small: a raw shift of 0.05 would be as
    large as the stain itself).

    Args:
        rgb: ``(h, w, 3)`` uint8. sigma: jitter strength (0 returns the input).

    Returns:
        ``(h, w, 3)`` uint8.
    """
    if sigma <= 0:
        return rgb
    hed = rgb2hed(rgb)
    alpha = rng.uniform(1 - sigma, 1 + sigma, size=3)
    # skimage's HED densities are small (H&E about 0-0.15); the shift is relative to each
    # channel's range in this tile (99th percentile), so sigma is unitless for both terms
    scale = np.percentile(np.abs(hed).reshape(-1, 3), 99, axis=0)
    beta = rng.uniform(-sigma, sigma, size=3) * scale
    out = hed2rgb(hed * alpha + beta)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


class TileAugment:
    """Callable ``(item, seed) -> item`` over :class:`~pathodet.data.tiling.TileDataset` items.

    ``image`` becomes ``(crop, crop, 3)`` uint8; ``boxes`` ``(K', 4)`` float32 and
    ``box_index`` ``(K',)`` follow the pixels (boxes dropped by the crop disappear from both).
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        import albumentations as A  # 2-3 s to import: only where tiles are augmented

        self.cfg = cfg
        ops: list = [
            A.RandomCrop(cfg.crop, cfg.crop, pad_if_needed=True, fill=255, pad_position="random")
        ]  # fmt: skip
        if cfg.hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        if cfg.vflip:
            ops.append(A.VerticalFlip(p=0.5))
        if cfg.rotate90:
            ops.append(A.RandomRotate90(p=1.0))
        # One Compose per transform, each seeded on its own: albumentations seeds every
        # transform of a Compose alike, which would tie the flip to the crop position.
        # Boxes left with less than min_visible of their area (albumentations compares with a
        # 1e-7 slack, hence the small margin so exactly min_visible is kept) or thinner than
        # a pixel are dropped.
        params = A.BboxParams(
            format="pascal_voc",
            label_fields=["box_index"],
            min_visibility=max(0.0, cfg.min_visible - 1e-6),
            min_width=1.0,
            min_height=1.0,
            clip=True,
        )
        self.stages = [A.Compose([op], bbox_params=params, seed=0) for op in ops]

    def __call__(self, item: dict, seed: int) -> dict:
        seed = int(seed) % (2**32)
        seeds = np.random.SeedSequence([seed, 0]).generate_state(len(self.stages))
        h, w = item["image"].shape[:2]
        boxes = np.asarray(item["boxes"], np.float32).reshape(-1, 4)
        index = np.asarray(item["box_index"], np.int64).reshape(-1)
        truth = item.get("full_truth_boxes")
        if truth is not None:  # carried along with negative indices -1, -2, ...
            truth = np.asarray(truth, np.float32).reshape(-1, 4)
            boxes = np.concatenate([boxes, truth])
            index = np.concatenate([index, -1 - np.arange(len(truth), dtype=np.int64)])
        boxes = boxes.copy()
        # albumentations wants boxes inside the image; tiles already clip theirs
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        res = {"image": item["image"], "bboxes": boxes, "box_index": index}
        for stage, stage_seed in zip(self.stages, seeds, strict=True):
            stage.set_random_seed(int(stage_seed))
            res = stage(image=res["image"], bboxes=res["bboxes"], box_index=res["box_index"])
        image = res["image"]
        if self.cfg.hed_jitter > 0:
            rng = np.random.default_rng([seed, 1])
            image = hed_jitter(image, self.cfg.hed_jitter, rng)
        out = dict(item)
        out["image"] = np.ascontiguousarray(image)
        boxes = np.asarray(res["bboxes"], np.float32).reshape(-1, 4)
        index = np.asarray(res["box_index"], np.int64).reshape(-1)
        annotated = index >= 0
        out["boxes"], out["box_index"] = boxes[annotated], index[annotated]
        if truth is not None:
            out["full_truth_boxes"] = boxes[~annotated]
        return out


class ColourViewConfig(Strict):
    """Co-mining's second view (``train.comining.view``): photometric only, pixel-aligned.

    The co-mining paper's Table 4 found colour jitter better than blur or no augmentation.
    Jitter factors are drawn uniformly in ``[1 - x, 1 + x]`` (hue: a shift in ``[-x, x]``
    of the colour circle).
    """

    brightness: float = Field(0.2, ge=0, le=1)
    contrast: float = Field(0.2, ge=0, le=1)
    saturation: float = Field(0.2, ge=0, le=1)
    hue: float = Field(0.04, ge=0, le=0.5)
    blur_sigma: float = Field(
        0.0, ge=0, le=10, description="Gaussian blur sigma drawn in [0.1, this], pixels (0 = off)"
    )
    hed_jitter: float = Field(
        0.0, ge=0, le=0.5, description="HED stain jitter sigma on top (0 = off; 0.03-0.05)"
    )


class ColourView:
    """Callable ``(image, seed) -> image``: ``(h, w, 3)`` uint8 in, same shape out."""

    def __init__(self, cfg: ColourViewConfig) -> None:
        import albumentations as A

        self.cfg = cfg
        ops: list = [
            A.ColorJitter(
                brightness=(1 - cfg.brightness, 1 + cfg.brightness),
                contrast=(1 - cfg.contrast, 1 + cfg.contrast),
                saturation=(1 - cfg.saturation, 1 + cfg.saturation),
                hue=(-cfg.hue, cfg.hue), p=1.0,
            )
        ]  # fmt: skip
        if cfg.blur_sigma > 0:
            ops.append(A.GaussianBlur(sigma_limit=(0.1, max(cfg.blur_sigma, 0.1)), p=1.0))
        self.stages = [A.Compose([op], seed=0) for op in ops]

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        seed = int(seed) % (2**32)
        seeds = np.random.SeedSequence([seed, 2]).generate_state(len(self.stages))
        for stage, stage_seed in zip(self.stages, seeds, strict=True):
            stage.set_random_seed(int(stage_seed))
            image = stage(image=image)["image"]
        if self.cfg.hed_jitter > 0:
            image = hed_jitter(image, self.cfg.hed_jitter, np.random.default_rng([seed, 3]))
        return np.ascontiguousarray(image)
