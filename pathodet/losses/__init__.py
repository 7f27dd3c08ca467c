"""Classification losses for partially annotated detection: pure functions over tensors.

Every loss is elementwise over one sigmoid logit per anchor (the detector has one
foreground class, SRC). Inputs are flat over the non-ignored anchors of the whole
mini-batch: ``logits (N,)``, ``targets (N,)`` in ``[0, 1]``, and where a loss needs it
``ap_image (N,)`` bool (the anchor comes from an AP image), ``iou (N,)`` (max IoU with the
annotated boxes), ``weight (N,)``. Each returns a scalar tensor.
"""

from pathodet.losses.ce import ce_loss
from pathodet.losses.dghm import dghm_c_loss, dghm_groups
from pathodet.losses.focal import focal_loss
from pathodet.losses.ghm import ghm_c_loss, ghm_weights
from pathodet.losses.sce import sce_loss
from pathodet.losses.soft_sampling import gompertz, overlap_weights, score_weights

__all__ = [
    "ce_loss",
    "dghm_c_loss",
    "dghm_groups",
    "focal_loss",
    "ghm_c_loss",
    "ghm_weights",
    "gompertz",
    "overlap_weights",
    "sce_loss",
    "score_weights",
]
