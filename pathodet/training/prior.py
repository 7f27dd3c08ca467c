"""Score soft sampling's first-round detector: per-anchor prior scores and the threshold T.

Wu et al. (2018) weight each negative by a Gompertz curve of the score a detector trained in
a first round gives it, relative to ``T``, the median score that detector gives the
annotated boxes. Here the prior detector runs frozen on the same (augmented) batch as the
trained one, so its per-anchor scores line up with the trained detector's anchors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pathodet.core.machine import PrecisionSetting, resolve_precision
from pathodet.data.tiling import TileDataset
from pathodet.model.assign import POSITIVE, assign_retinanet
from pathodet.model.config import AssignConfig, ModelConfig
from pathodet.model.retinanet import FrozenDetector
from pathodet.training.batch import collate
from pathodet.training.checkpoint import CheckpointError, load_detector
from pathodet.training.config import Config


class PriorScorer:
    """A frozen first-round detector: ``scorer(images)`` -> ``(B, A)`` scores in ``[0, 1]``.

    Raises:
        CheckpointError: the checkpoint cannot be loaded, or its anchors differ from this
            run's (``model.anchors`` must match for per-anchor scores).
    """

    def __init__(
        self,
        checkpoint: Path,
        model_cfg: ModelConfig,
        device: torch.device,
        precision: PrecisionSetting,
    ) -> None:
        model, prior_cfg = load_detector(checkpoint)
        if prior_cfg.model.anchors != model_cfg.anchors:
            raise CheckpointError(
                f"{checkpoint}: the prior detector's anchors differ from this run's "
                "(model.anchors must match for per-anchor scores)"
            )
        self.detector = FrozenDetector(model, device, precision)

    def __call__(self, images: Tensor) -> Tensor:
        return self.detector(images).cls_logits.float().sigmoid()


def median_box_score(
    scorer: PriorScorer,
    tiles: TileDataset,
    indices: list[int],
    assign: AssignConfig,
    limit: int = 64,
) -> float:
    """``T``: the median over annotated boxes of the best prior score among the box's positive anchors.

    Args:
        indices: tiles holding annotated boxes (a seeded random ``limit`` of them are used).

    Raises:
        ValueError: no annotated box got a positive anchor.
    """
    scores: list[float] = []
    # a seeded random sample: the first tiles in dataset order come from few images
    order = np.random.default_rng(0).permutation(len(indices))[:limit]
    for i in (indices[k] for k in order):
        images, boxes, _ = collate([tiles[i]])
        out = scorer.detector(images)
        s = out.cls_logits[0].float().sigmoid().cpu()
        lab = assign_retinanet(
            out.anchors.cpu(), boxes[0], assign.fg_iou, assign.bg_iou, assign.allow_low_quality
        )
        pos = lab.labels == POSITIVE
        for k in range(len(boxes[0])):
            mine = pos & (lab.matched == k)
            if mine.any():
                scores.append(float(s[mine].max()))
    if not scores:
        raise ValueError("no annotated box matched an anchor: cannot set the score threshold T")
    return float(np.median(scores))


def score_prior(
    cfg: Config,
    tiles: TileDataset,
    indices: list[int],
    device: torch.device,
    log: Callable[[str], None] | None = None,
) -> PriorScorer:
    """Score soft sampling's first-round detector; sets ``loss.soft_sampling.threshold`` in
    ``cfg`` (the median prior score on annotated boxes) when it is not given.

    Raises:
        ValueError: ``loss.soft_sampling.prior_checkpoint`` is not set.
    """
    ss = cfg.loss.soft_sampling
    if ss.prior_checkpoint is None:
        raise ValueError(
            "loss score_ss needs a first-round detector: set "
            "loss.soft_sampling.prior_checkpoint=RUN/best.pt (e.g. a focal run)"
        )
    precision = resolve_precision(cfg.train.precision, device, log=lambda _: None)
    prior = PriorScorer(ss.prior_checkpoint, cfg.model, device, precision)
    if ss.threshold is None:
        t = median_box_score(prior, tiles, indices, cfg.model.assign)
        ss.threshold = t
        if log is not None:
            log(f"score soft sampling: T = {t:.4f} (median prior score on boxes)")
    return prior
