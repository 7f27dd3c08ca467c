"""The detector: RetinaNet with a ResNet-18 FPN (P3-P7), one foreground class (SRC).

The model knows nothing about losses: it maps images to per-anchor logits and box
deltas (:mod:`retinanet`), anchors are explicit tensors (:mod:`anchors`), and anchor
labelling (:mod:`assign`) is a separate function the loss side calls.
"""

from pathodet.model.config import ModelConfig
from pathodet.model.retinanet import HeadOutputs, SRCRetinaNet, build_retinanet

__all__ = ["HeadOutputs", "ModelConfig", "SRCRetinaNet", "build_retinanet"]
