"""From the ``data:`` and ``train:`` config sections to training and validation tiles.

Records come from ``data.folds`` (a manifest with a fold column) or ``data.root``; records
without a fold are split on the fly into slide-grouped folds. Fold ``data.held_out_fold``
validates, the others train. Unreadable images are reported and left out, never fatal.
With ``data.pseudo`` (a ``pathodet purify`` folder) the selected pseudo-labeled tiles train
too (never validate).

With co-mining on, the tiles also get their colour view and, where the dataset has
``full-annotations/`` (synthetic data), every true SRC box, so mining can be scored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pathodet.data.augment import ColourView, TileAugment
from pathodet.data.config import DataConfig
from pathodet.data.digestpath import FULL_DIR, DatasetError, Problem, load_records
from pathodet.data.folds import assign_folds, split
from pathodet.data.pseudo import load_pseudo_samples
from pathodet.data.samples import Sample, load_sample, load_samples
from pathodet.data.tiling import TileDataset, boxes_in_window, rescale_factors
from pathodet.training.config import TrainConfig


@dataclass
class TrainingData:
    """Tiles of the training folds and of the held-out fold, with what was left out.

    ``ap_tiles`` / ``np_tiles`` index the training tiles the batch sampler draws from.
    ``full_truth``: image name -> ``(T, 4)`` every true SRC box (image pixels) of the
    training images, on synthetic data with co-mining on; None otherwise (the annotations
    are in the tiles).
    """

    train: TileDataset
    val: TileDataset
    ap_tiles: list[int]
    np_tiles: list[int]
    problems: list[Problem]
    full_truth: dict[str, np.ndarray] | None = None


def images_in(cache_mb: int, samples: Sequence[Sample], scale: float) -> int:
    """How many decoded images of ``samples`` (resized by ``scale``) fit in ``cache_mb`` MiB
    (uint8 RGB; at least 2, consecutive tiles often share an image)."""
    if not samples:
        return 2
    mean_bytes = np.mean([s.width * s.height * 3 * scale**2 for s in samples])
    return max(2, int(cache_mb * 2**20 // max(mean_bytes, 1)))


def training_data(data: DataConfig, train: TrainConfig) -> TrainingData:
    """Read, split and tile the dataset named by ``data``.

    Raises:
        DatasetError: no ``data.root``, a missing root, or nothing trainable in it.
    """
    source = data.folds or data.root
    if source is None:
        raise DatasetError("data.root is not set: add --set data.root=/path/to/digestpath")
    records = load_records(source)
    if not records:
        raise DatasetError(f"{source}: no images found")
    if any(r.fold is None for r in records):
        try:
            records = assign_folds(records, data.num_folds, data.fold_seed, data.fold_group)
        except ValueError as exc:
            raise DatasetError(f"{source}: {exc} (lower data.num_folds)") from None
    if data.held_out_fold not in {r.fold for r in records}:
        raise DatasetError(f"{source}: no image in held-out fold {data.held_out_fold}")
    train_records, val_records = split(records, data.held_out_fold)
    rules = data.annotation_rules()  # which objects are SRC boxes (data.src_names, ...)
    train_samples, problems = load_samples(train_records, rules=rules)
    val_samples, val_problems = load_samples(val_records, rules=rules)
    truth = full_truth(train_samples) if train.comining.enabled else None
    if truth is not None and data.scale != 1.0:  # into the detector's (resized) pixels
        factor = {
            s.record.name: rescale_factors(s.width, s.height, data.scale) for s in train_samples
        }
        truth = {n: (b * factor[n]).astype(np.float32) for n, b in truth.items()}
    if data.pseudo is not None:
        pseudo, pseudo_problems = load_pseudo_samples(data.pseudo)
        train_samples, problems = train_samples + pseudo, problems + pseudo_problems
    t = data.tiling
    tiles = TileDataset(train_samples, t.tile_size, t.stride, t.min_visible, scale=data.scale,
                        cache_images=images_in(data.cache_mb, train_samples, data.scale))  # fmt: skip
    val = TileDataset(val_samples, t.tile_size, t.stride, t.min_visible, scale=data.scale)
    attrs = tiles.attributes()
    counts = tiles.box_counts() if train.ap_tiles == "annotated" else [1] * len(tiles)
    # pseudo-labeled tiles of attribute unknown are AP-like: drawn with the AP tiles
    ap = [i for i, (a, c) in enumerate(zip(attrs, counts, strict=True)) if a != "NP" and c > 0]
    np_ = [i for i, a in enumerate(attrs) if a == "NP"]
    if not ap:
        raise DatasetError(
            f"{source}: no AP training tile holds an annotated box; nothing to learn from"
        )
    return TrainingData(tiles, val, ap, np_, problems + val_problems, truth)


def full_truth(samples: list[Sample]) -> dict[str, np.ndarray] | None:
    """Every true SRC box per image from ``<root>/full-annotations/<stem>.xml`` (the
    synthetic layout: the image's folder's parent is the root); NP images have none.

    Returns:
        image name -> ``(T, 4)`` float32 boxes, or None when no AP image has the file (real
        data: the truth is unknown).
    """
    truth: dict[str, np.ndarray] = {}
    found = False
    for s in samples:
        boxes = np.zeros((0, 4), np.float32)
        if s.attribute == "AP":
            xml = s.record.image.parent.parent / FULL_DIR / f"{s.record.image.stem}.xml"
            if xml.is_file():
                found = True
                boxes = load_sample(s.record, verify_image=False, annotation=xml).boxes
        truth[s.record.name] = boxes
    return truth if found else None


class AugmentedTiles(torch.utils.data.Dataset):
    """``dataset[(index, seed)]``: tile ``index`` augmented with ``seed`` (see the sampler).

    With ``view``, the item also has ``image_a``: the augmented tile's colour view. With
    ``full_truth`` (image name -> every true box), ``full_truth_boxes``: the true SRCs in
    the augmented tile, transformed as the annotated boxes are.
    """

    def __init__(
        self,
        tiles: TileDataset,
        augment: TileAugment,
        view: ColourView | None = None,
        full_truth: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.tiles, self.augment, self.view = tiles, augment, view
        self.full_truth = full_truth

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        item = self.tiles[index]
        if self.full_truth is not None:
            boxes = self.full_truth[item["name"]]
            item["full_truth_boxes"] = boxes_in_window(
                boxes, item["window"], self.tiles.min_visible
            )[0]
        item = self.augment(item, seed)
        if self.view is not None:
            item["image_a"] = self.view(item["image"], seed)
        return item


def validation_batches(
    val: TileDataset, limit: int | None, batch: int, seed: int
) -> list[list[int]]:
    """Fixed batches of held-out tiles: at most ``limit`` tiles, AP and NP alike, same-size tiles.

    The subset is a seeded random sample drawn once, so every epoch is validated on the same
    tiles and validation losses are comparable across epochs.
    """
    order = np.random.default_rng([seed, 7]).permutation(len(val))
    if limit is not None:
        order = order[:limit]
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in sorted(int(k) for k in order):
        x1, y1, x2, y2 = val.refs[i].window
        by_shape[(x2 - x1, y2 - y1)].append(i)
    return [
        idx[k : k + batch] for _, idx in sorted(by_shape.items()) for k in range(0, len(idx), batch)
    ]
