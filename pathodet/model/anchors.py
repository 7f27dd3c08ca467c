"""Anchor boxes of the FPN levels, as one explicit ``(A, 4)`` tensor.

Level ``l`` (P3..P7) has stride ``2**(l)`` pixels; at every feature cell ``(y, x)`` it
places ``len(scales) * len(aspect_ratios)`` anchors centred on the cell centre
``((x + 0.5) * stride, (y + 0.5) * stride)``. Order: level, then y, then x, then anchor
(scale-major, ratio-minor), matching how the head flattens its outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pathodet.model.config import AnchorConfig


def cell_anchors(size: float, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """``(len(scales) * len(ratios), 4)`` anchors centred at 0; area ``(size * scale)**2``, h/w = ratio."""
    out = []
    for s in scales:
        area = (size * s) ** 2
        for r in ratios:
            w = math.sqrt(area / r)
            h = w * r
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def make_anchors(
    feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], cfg: AnchorConfig
) -> Tensor:
    """All anchors ``(A, 4)`` for feature maps of the given ``(h, w)`` sizes and strides."""
    if len(feature_sizes) != len(cfg.sizes):
        raise ValueError(f"{len(feature_sizes)} feature levels but {len(cfg.sizes)} anchor sizes")
    levels = []
    for (h, w), stride, size in zip(feature_sizes, strides, cfg.sizes, strict=True):
        base = cell_anchors(size, cfg.scales, cfg.aspect_ratios)
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
        levels.append((centres + base.view(1, -1, 4)).reshape(-1, 4))
    return torch.cat(levels)
