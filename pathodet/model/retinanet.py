"""RetinaNet with a ResNet-18 FPN backbone (P3-P7) and one foreground class.

Built from torchvision's parts (ResNet, FPN with P6/P7, RetinaNet heads) but without its
``GeneralizedRCNNTransform``: tiles are fed at native resolution (0.25 um/px at 40x, a
600-800 px tile), only normalised. ``forward`` returns raw head outputs and anchors;
losses live in :mod:`pathodet.losses` and never reach into the model.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FrozenBatchNorm2d, batched_nms
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from pathodet.core.machine import autocast, resolve_precision
from pathodet.model.anchors import make_anchors
from pathodet.model.boxes import decode
from pathodet.model.config import InferenceConfig, ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET18_CACHE_NAME = "resnet18-f37072fd.pth"  # torchvision's ImageNet weights file
STRIDES = (8, 16, 32, 64, 128)  # P3..P7

_warned_scratch = False


@dataclass
class HeadOutputs:
    """Raw outputs for a batch of ``B`` images of one size.

    Attributes:
        cls_logits: ``(B, A)`` SRC logit of every anchor.
        bbox_deltas: ``(B, A, 4)`` predicted ``(dx, dy, dw, dh)``.
        anchors: ``(A, 4)`` anchors in pixels of the input, shared by the batch.
        image_size: ``(H, W)`` of the input in pixels.
        level_sizes: number of anchors of each FPN level (P3..P7), summing to ``A``.
        features: the FPN outputs P3..P7, each ``(B, C, H_l, W_l)`` (self-distillation
            imitates them); empty when not kept.
    """

    cls_logits: Tensor
    bbox_deltas: Tensor
    anchors: Tensor
    image_size: tuple[int, int]
    level_sizes: list[int]
    features: list[Tensor] = field(default_factory=list)


def find_imagenet_weights(path: Path | None) -> Path | None:
    """The ResNet-18 ImageNet weights to load: ``path`` if given, else torchvision's cache."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: model.weights file does not exist")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_CACHE_NAME
    return cached if cached.is_file() else None


def resolve_norm(kind: str, pretrained: bool) -> str:
    """``auto`` -> ``frozen_bn`` with ImageNet weights, ``bn`` from scratch; others as given."""
    if kind == "auto":
        return "frozen_bn" if pretrained else "bn"
    return kind


def _norm_layer(kind: str, pretrained: bool):
    kind = resolve_norm(kind, pretrained)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "bn":
        return nn.BatchNorm2d
    return lambda c: nn.GroupNorm(32, c)


class SRCRetinaNet(nn.Module):
    """RetinaNet for one class. ``forward(images)`` -> :class:`HeadOutputs`.

    Args:
        cfg: the model section of the config.
        pretrained: whether ImageNet weights were loaded (recorded for checkpoints).
    """

    def __init__(self, cfg: ModelConfig, weights_file: Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.pretrained = weights_file is not None
        body = resnet18(weights=None, norm_layer=_norm_layer(cfg.norm, self.pretrained))
        if weights_file is not None:
            try:
                state = torch.load(weights_file, map_location="cpu", weights_only=True)
                missing, unexpected = body.load_state_dict(state, strict=False)
            except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"{weights_file}: cannot load ResNet-18 weights: {first}") from exc
            if [k for k in missing if not k.startswith("fc.")] or unexpected:
                raise ValueError(
                    f"{weights_file}: not a ResNet-18 state dict "
                    f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
        # C3-C5 (layers 2-4) -> FPN P3-P5, P6/P7 from P5 as in RetinaNet v2. Built directly
        # (not with torchvision's _resnet_fpn_extractor, which fixes the FPN width at 256) so
        # that cfg.fpn_channels is honoured; layer freezing is torchvision's rule.
        trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][: cfg.trainable_layers]
        if cfg.trainable_layers == 5:
            trainable.append("bn1")
        for name, param in body.named_parameters():
            if not any(name.startswith(layer) for layer in trainable):
                param.requires_grad_(False)
        self.backbone = BackboneWithFPN(
            body,
            return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
            in_channels_list=[128, 256, 512],
            out_channels=cfg.fpn_channels,
            extra_blocks=LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels),
        )
        self.head = RetinaNetHead(
            self.backbone.out_channels, cfg.anchors.per_location, num_classes=1
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._anchor_cache: dict[tuple, Tensor] = {}

    def anchors_for(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
        key = (tuple(feature_sizes), str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = make_anchors(feature_sizes, STRIDES, self.cfg.anchors).to(
                device
            )
        return self._anchor_cache[key]

    def forward(self, images: Tensor) -> HeadOutputs:
        """Run the detector on ``(B, 3, H, W)`` float images in ``[0, 1]`` (H, W multiples of 32 preferred)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        features = list(self.backbone(x).values())
        out = self.head(features)
        sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        anchors = self.anchors_for(sizes, images.device)
        return HeadOutputs(
            cls_logits=out["cls_logits"].squeeze(-1),
            bbox_deltas=out["bbox_regression"],
            anchors=anchors,
            image_size=(images.shape[-2], images.shape[-1]),
            level_sizes=[h * w * self.cfg.anchors.per_location for h, w in sizes],
            features=features,
        )


class FrozenDetector:
    """A trained detector used, not trained: eval mode, no gradients, the run's precision.

    The one place pathodet runs a detector it does not train: prediction (whole images
    and slides), soft sampling's first-round detector, the self-distillation teacher and
    the purification teacher all call it.

    Args:
        model: the detector; its parameters are frozen and it is moved to ``device``.
        precision: ``auto``, ``fp32`` or ``bf16`` (autocast; see
            :func:`~pathodet.core.machine.autocast`).
        inference: how :meth:`detect` turns outputs into boxes (default the model's).
    """

    def __init__(
        self,
        model: SRCRetinaNet,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        inference: InferenceConfig | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.precision = resolve_precision(precision, self.device, log=lambda _: None)
        self.inference = inference or model.cfg.inference

    @torch.no_grad()
    def __call__(self, images: Tensor) -> HeadOutputs:
        """Head outputs of ``(B, 3, H, W)`` float images in ``[0, 1]`` (moved to the device)."""
        with autocast(self.precision, self.device):
            return self.model(images.to(self.device))

    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": (K, 4), "scores": (K,)}`` in input pixels (:func:`postprocess`
        with :attr:`inference`)."""
        return postprocess(self(images), self.inference)


def decode_clipped(deltas: Tensor, anchors: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``(N, 4)`` deltas on their anchors -> ``(N, 4)`` float boxes clipped to ``(H, W)``."""
    h, w = image_size
    boxes = decode(deltas.float(), anchors)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


def postprocess(outputs: HeadOutputs, cfg: InferenceConfig) -> list[dict[str, Tensor]]:
    """Per image: score threshold, top-k per FPN level, decode, clip, NMS, keep the best.

    Scores are ``sigmoid(logit)`` in ``[0, 1]``.
    """
    h, w = outputs.image_size
    results = []
    for logits, deltas in zip(outputs.cls_logits, outputs.bbox_deltas, strict=True):
        boxes_all, scores_all, levels_all = [], [], []
        start = 0
        for level, n in enumerate(outputs.level_sizes):
            scores = logits[start : start + n].float().sigmoid()
            keep = scores > cfg.score_threshold
            idx = keep.nonzero(as_tuple=True)[0]
            if idx.numel() > cfg.topk_per_level:
                idx = idx[scores[idx].topk(cfg.topk_per_level).indices]
            boxes = decode_clipped(deltas[start + idx], outputs.anchors[start + idx], (h, w))
            boxes_all.append(boxes)
            scores_all.append(scores[idx])
            levels_all.append(torch.full_like(idx, level))
            start += n
        boxes = torch.cat(boxes_all)
        scores = torch.cat(scores_all)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores = boxes[valid], scores[valid]
        # one class: NMS across levels too (labels all equal)
        keep = batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), cfg.nms_iou)
        keep = keep[: cfg.max_detections]
        results.append({"boxes": boxes[keep], "scores": scores[keep]})
    return results


def build_retinanet(cfg: ModelConfig | None = None) -> SRCRetinaNet:
    """The detector from config; ImageNet weights when available, else scratch (said once)."""
    global _warned_scratch
    cfg = cfg or ModelConfig()
    weights = find_imagenet_weights(cfg.weights)
    if weights is None and not _warned_scratch:
        warnings.warn(
            "no ImageNet ResNet-18 weights (set model.weights or put "
            f"{RESNET18_CACHE_NAME} in torchvision's cache): training starts from scratch",
            stacklevel=2,
        )
        _warned_scratch = True
    return SRCRetinaNet(cfg, weights)
