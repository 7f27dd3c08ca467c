"""Mini-batches of tiles as tensors: what the DataLoader's ``collate_fn`` gives the trainer."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def collate(items: list[dict]) -> tuple[Tensor, list[Tensor], Tensor]:
    """Stack tile dicts (``image`` ``(h, w, 3)`` uint8, ``boxes``, ``attribute``) into tensors.

    Returns:
        ``images (B, 3, H, W)`` float in ``[0, 1]``, per-image ``(K, 4)`` float32 boxes, and
        ``is_ap (B,)`` bool: the tile's negatives are unannotated (AP or ``unknown``, not NP).
        All tiles must have the same size.
    """
    shapes = {it["image"].shape for it in items}
    if len(shapes) != 1:
        raise ValueError(f"tiles of one batch must share a size, got {sorted(shapes)}")
    images = torch.from_numpy(np.stack([it["image"] for it in items])).permute(0, 3, 1, 2)
    boxes = [torch.as_tensor(it["boxes"], dtype=torch.float32).view(-1, 4) for it in items]
    is_ap = torch.tensor([it["attribute"] != "NP" for it in items], dtype=torch.bool)
    return images.float().div_(255.0), boxes, is_ap


def collate_pseudo(items: list[dict]) -> tuple[Tensor, list[Tensor], Tensor, list[Tensor]]:
    """:func:`collate` plus per image ``(K,)`` bool: which boxes are pseudo-labels (all of a
    pseudo-labeled tile's, none of an annotated one's)."""
    images, boxes, is_ap = collate(items)
    pseudo = [torch.full((len(b),), bool(it.get("pseudo")), dtype=torch.bool)
              for b, it in zip(boxes, items, strict=True)]  # fmt: skip
    return images, boxes, is_ap, pseudo
