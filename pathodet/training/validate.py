"""The epoch-end validation: the loss over fixed held-out batches, and what the detections score.

:class:`~pathodet.training.train.Trainer` calls :func:`validate` after every epoch on the
batches of :func:`~pathodet.training.data.validation_batches`; its result decides the best
checkpoint (highest FROC when ``val_metrics`` is given, else lowest loss).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pathodet.core.machine import PrecisionSetting, autocast
from pathodet.data.predictions import ImagePredictions
from pathodet.data.tiling import TileDataset
from pathodet.losses.criterion import Criterion, Targets
from pathodet.model.config import InferenceConfig
from pathodet.model.retinanet import SRCRetinaNet, postprocess
from pathodet.training.batch import collate

ValMetrics = Callable[[dict[str, ImagePredictions], dict[str, tuple[str, np.ndarray]]], dict]
"""Scores validation detections: per tile predictions and ``(attribute, boxes)`` truth ->
``{"froc": ..., "recall": ..., ...}`` (values may be None). ``pathodet train`` passes
:func:`pathodet.eval.validation.tile_metrics`; the best checkpoint then maximises FROC."""


@torch.no_grad()
def validate(
    model: SRCRetinaNet,
    criterion: Criterion,
    tiles: TileDataset,
    batches: list[list[int]],
    inference: InferenceConfig,
    device: torch.device,
    precision: PrecisionSetting,
    prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
    val_metrics: ValMetrics | None = None,
) -> dict[str, float]:
    """Mean ``loss``, ``cls`` and ``reg`` over ``batches`` of ``tiles`` (the held-out fold's
    tile dataset; each batch a list of indices into it), in eval mode under ``precision``'s
    autocast; with ``val_metrics``, also its metrics of the detections on those tiles, keyed
    ``tile<i>``. Empty when there are no batches.

    ``criterion`` should be a fresh one (its GHM-C statistics a copy): it is called here.
    ``prior`` gives score soft sampling's prior scores of a batch of images (B, 3, H, W).
    """
    if not batches:
        return {}
    model.eval()
    totals = {"loss": 0.0, "cls": 0.0, "reg": 0.0}
    preds: dict[str, ImagePredictions] = {}
    truth: dict[str, tuple[str, np.ndarray]] = {}
    for idx in batches:
        images, boxes, is_ap = collate([tiles[i] for i in idx])
        images = images.to(device)
        prior_scores = prior(images) if prior is not None else None
        with autocast(precision, device):
            outputs = model(images)
        targets = Targets([b.to(device) for b in boxes], is_ap.to(device),
                          prior_scores=prior_scores)  # fmt: skip
        losses = criterion(outputs, targets)
        for k in totals:
            totals[k] += float(losses[k]) / len(batches)
        if val_metrics is not None:
            dets = postprocess(outputs, inference)
            for i, det, b, a in zip(idx, dets, boxes, is_ap.tolist(), strict=True):
                preds[f"tile{i}"] = ImagePredictions(
                    det["boxes"].float().cpu().numpy(), det["scores"].float().cpu().numpy()
                )
                truth[f"tile{i}"] = ("AP" if a else "NP", b.numpy())
    if val_metrics is not None:
        extra = val_metrics(preds, truth)
        totals.update({k: float(v) for k, v in extra.items() if v is not None})
    return totals
