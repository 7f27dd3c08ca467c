"""The detector as an ONNX graph, for CPU deployment with ONNX Runtime.

The graph holds what is learnt and heavy: normalisation, ResNet-18, the FPN and the
RetinaNet head. It maps ``images`` ``(B, 3, H, W)`` float32 in ``[0, 1]`` (``H`` and ``W``
multiples of 32) to the raw head outputs of every anchor, ``cls_logits`` ``(B, A)`` and
``bbox_deltas`` ``(B, A, 4)``, in the anchor order of
:class:`~pathodet.model.retinanet.SRCRetinaNet`. Anchors, decoding, thresholds and NMS stay
in pathodet (:func:`~pathodet.model.retinanet.postprocess`), so torch and ONNX Runtime
share them exactly.

The file's metadata (ONNX ``metadata_props``) carries what prediction needs besides the
weights: ``pathodet_config`` (the training config as JSON, from which the µm/px
``data.mpp / data.scale``, the scale, the tile and the anchors follow), and, for readers
that are not pathodet, ``mpp`` (µm/px the detector expects, level 0 of its input),
``mean`` and ``std`` (applied inside the graph), ``strides`` and ``format``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from pathodet.core.io import atomic_write_bytes
from pathodet.data.config import DataConfig
from pathodet.model.retinanet import IMAGENET_MEAN, IMAGENET_STD, STRIDES, SRCRetinaNet

FORMAT = "pathodet-onnx/1"
OPSET = 18


class HeadGraph(nn.Module):
    """``images -> (cls_logits, bbox_deltas)``: the part of the detector that is exported."""

    def __init__(self, model: SRCRetinaNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        x = (images - m.mean) / m.std
        out = m.head(list(m.backbone(x).values()))
        return out["cls_logits"].squeeze(-1), out["bbox_regression"]


def feature_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """``(H_l, W_l)`` of P3..P7 for an input of ``height`` x ``width`` pixels: every stride-2
    layer of ResNet-18 and of P6/P7 (kernel 3 or 7, padding 1 or 3) gives ``ceil(x / 2)``."""
    sizes, h, w = [], height, width
    for level in range(1, 8):
        h, w = -(-h // 2), -(-w // 2)
        if level >= 3:
            sizes.append((h, w))
    return sizes


def export_onnx(
    model: SRCRetinaNet, path: str | os.PathLike[str], train_config: dict, tile: int = 512
) -> Path:
    """Write ``model`` (in fp32, eval mode) to ``path`` as ONNX with its metadata.

    Batch, height and width are dynamic; ``tile`` is the example size traced.

    Raises:
        RuntimeError: the exporter failed (the message is torch's).
    """
    import onnx

    path = Path(path)
    graph = HeadGraph(model.float().eval()).requires_grad_(False)
    example = torch.rand(1, 3, tile, tile)
    batch, height, width = (torch.export.Dim(n, min=1, max=m) for n, m in
                            (("batch", 256), ("height", 1 << 15), ("width", 1 << 15)))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, (example,), dynamo=True, opset_version=OPSET, input_names=["images"],
            output_names=["cls_logits", "bbox_deltas"],
            dynamic_shapes={"images": {0: batch, 2: 32 * height, 3: 32 * width}},
            verbose=False,
        )  # fmt: skip
    proto = program.model_proto
    d = train_config.get("data", {})
    meta = {
        "format": FORMAT,
        "pathodet_config": json.dumps(train_config),
        "mpp": str(DataConfig.model_validate(d).detector_mpp),
        "mean": json.dumps(IMAGENET_MEAN),
        "std": json.dumps(IMAGENET_STD),
        "strides": json.dumps(STRIDES),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    return path
