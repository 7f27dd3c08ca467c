"""One optimisation step and the batch collation it needs.

Kept separate from the (later) training loop so benchmarks and scripts can time and
reuse exactly the step the trainer runs.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from pathodet.losses.config import LossConfig
from pathodet.losses.criterion import detection_loss
from pathodet.model.config import AssignConfig
from pathodet.model.retinanet import SRCRetinaNet

Precision = Literal["fp32", "bf16"]


def collate(items: list[dict]) -> tuple[Tensor, list[Tensor], Tensor]:
    """Stack tile dicts (``image`` ``(h, w, 3)`` uint8, ``boxes``, ``attribute``) into tensors.

    Returns:
        ``images (B, 3, H, W)`` float in ``[0, 1]``, per-image ``(K, 4)`` float32 boxes, and
        ``ap (B,)`` bool. All tiles must have the same size.
    """
    shapes = {it["image"].shape for it in items}
    if len(shapes) != 1:
        raise ValueError(f"tiles of one batch must share a size, got {sorted(shapes)}")
    images = torch.from_numpy(np.stack([it["image"] for it in items])).permute(0, 3, 1, 2)
    boxes = [torch.as_tensor(it["boxes"], dtype=torch.float32).view(-1, 4) for it in items]
    ap = torch.tensor([it["attribute"] == "AP" for it in items], dtype=torch.bool)
    return images.float().div_(255.0), boxes, ap


def autocast(precision: Precision, device: torch.device):
    """Autocast context for ``bf16`` (CPU or CUDA), a no-op for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step(
    model: SRCRetinaNet,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    boxes: list[Tensor],
    ap: Tensor,
    loss_cfg: LossConfig,
    assign_cfg: AssignConfig | None = None,
    precision: Precision = "fp32",
    prior_scores: Tensor | None = None,
) -> dict[str, float]:
    """Forward, loss, backward and optimiser step on one mini-batch; returns the loss terms.

    The network runs under autocast for ``bf16``; the loss is always computed in fp32.
    """
    model.train()
    device = images.device
    with autocast(precision, device):
        outputs = model(images)
    losses = detection_loss(outputs, boxes, ap, loss_cfg, assign_cfg, prior_scores)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}
