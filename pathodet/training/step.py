"""One optimisation step and the batch collation it needs.

Kept apart from the training loop so benchmarks and scripts time and reuse exactly the
forward/backward the trainer runs.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor

from pathodet.core.machine import PrecisionSetting, resolve_precision
from pathodet.losses.config import LossConfig
from pathodet.losses.criterion import detection_loss
from pathodet.losses.ghm import CountReduce
from pathodet.model.config import AssignConfig
from pathodet.model.retinanet import SRCRetinaNet

Precision = PrecisionSetting
"""``auto``, ``fp32`` or ``bf16``: ``auto`` is resolved by :func:`autocast` (bf16 where native)."""


def collate(items: list[dict]) -> tuple[Tensor, list[Tensor], Tensor]:
    """Stack tile dicts (``image`` ``(h, w, 3)`` uint8, ``boxes``, ``attribute``) into tensors.

    Returns:
        ``images (B, 3, H, W)`` float in ``[0, 1]``, per-image ``(K, 4)`` float32 boxes, and
        ``ap (B,)`` bool: the tile's negatives are unannotated (AP or ``unknown``, not NP).
        All tiles must have the same size.
    """
    shapes = {it["image"].shape for it in items}
    if len(shapes) != 1:
        raise ValueError(f"tiles of one batch must share a size, got {sorted(shapes)}")
    images = torch.from_numpy(np.stack([it["image"] for it in items])).permute(0, 3, 1, 2)
    boxes = [torch.as_tensor(it["boxes"], dtype=torch.float32).view(-1, 4) for it in items]
    ap = torch.tensor([it["attribute"] != "NP" for it in items], dtype=torch.bool)
    return images.float().div_(255.0), boxes, ap


def collate_pseudo(items: list[dict]) -> tuple[Tensor, list[Tensor], Tensor, list[Tensor]]:
    """:func:`collate` plus per image ``(K,)`` bool: which boxes are pseudo-labels (all of a
    pseudo-labeled tile's, none of an annotated one's)."""
    images, boxes, ap = collate(items)
    pseudo = [torch.full((len(b),), bool(it.get("pseudo")), dtype=torch.bool)
              for b, it in zip(boxes, items, strict=True)]  # fmt: skip
    return images, boxes, ap, pseudo


def autocast(precision: Precision, device: torch.device):
    """Autocast context for ``bf16`` (CPU or CUDA), a no-op for ``fp32``; ``auto`` is
    resolved first (:func:`~pathodet.core.machine.resolve_precision`: bf16 where native)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def loss_and_gradients(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    boxes: list[Tensor],
    ap: Tensor,
    loss_cfg: LossConfig,
    assign_cfg: AssignConfig | None = None,
    precision: Precision = "fp32",
    prior_scores: Tensor | None = None,
    reduce: CountReduce | None = None,
    ghm_acc_sum: Tensor | None = None,
    world_size: int = 1,
    grad_clip: float | None = None,
    mined: list[Tensor] | None = None,
) -> tuple[dict[str, Tensor], float]:
    """Forward, loss and backward of one mini-batch, up to (not including) the optimiser step.

    The network (``model`` may be DDP-wrapped) runs under autocast for ``bf16``; the loss is
    always fp32. Under DDP each rank's loss is its share of the global-batch loss
    (``reduce`` makes the statistics global) and DDP averages gradients, so the loss is
    scaled by ``world_size`` to backpropagate the global loss.

    ``mined``: per image ``(K,)`` bool, the pseudo-labeled boxes (see ``detection_loss``).

    Returns:
        the loss terms (tensors, this rank's share) and the total gradient norm, clipped
        to ``grad_clip`` when given (``nan``/``inf`` when the gradients are not finite).
    """
    model.train()
    with autocast(precision, images.device):
        outputs = model(images)
    losses = detection_loss(
        outputs, boxes, ap, loss_cfg, assign_cfg, prior_scores, reduce, ghm_acc_sum, mined
    )
    return losses, backward(losses["loss"], optimizer, world_size, grad_clip)


def backward(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    world_size: int = 1,
    grad_clip: float | None = None,
) -> float:
    """Fresh gradients of ``loss * world_size`` (see :func:`loss_and_gradients`); returns
    their total norm, clipped to ``grad_clip`` when given."""
    optimizer.zero_grad(set_to_none=True)
    (loss * world_size).backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return float(torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf")))


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
    """One single-process optimisation step (benchmarks); returns the loss terms.

    The trainer runs the same :func:`loss_and_gradients` and adds the divergence check.
    """
    losses, _ = loss_and_gradients(
        model, optimizer, images, boxes, ap, loss_cfg, assign_cfg, precision, prior_scores
    )
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}
