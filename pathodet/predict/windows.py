"""Detection on whole images: overlapping tiles, batched, merged without seam duplicates.

An image is cut into ``tile`` x ``tile`` windows overlapping by ``overlap`` pixels (the last
window of a row or column aligned to the border). Each window is detected on its own; a
detection is kept only when its centre lies in the window's *core*: the part of the
window closer to its own centre than to the neighbour's, i.e. the overlap is split at its
middle. Every point of the image lies in exactly one core, so a cell is reported by one
window only; when ``overlap`` is at least the cell size, that window sees the whole cell.
A final NMS over the whole image removes what remains (cells straddling a core border with
boxes from both sides).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import nms

from pathodet.core.machine import share_cores
from pathodet.data.predictions import ImagePredictions
from pathodet.data.samples import read_image, rescale_image
from pathodet.data.tiling import window_starts
from pathodet.model.retinanet import SRCRetinaNet, postprocess
from pathodet.training.step import Precision, autocast

MIN_BOX_SIDE = 1.0
"""Pixels: a detection clipped to the image edge that is narrower or lower than this is
dropped. It is no cell, and written with two decimals it could become an empty box."""


def big_enough(boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: boxes ``(N, 4)`` at least :data:`MIN_BOX_SIDE` wide and high."""
    return (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE)


DEFAULT_TILE = 1024
"""Window side when neither the caller nor a checkpoint gives one."""


@dataclass(frozen=True)
class PredictSettings:
    """How whole images are cut and merged (pixels), and how detections are filtered."""

    tile: int | None = None
    """Window side in the detector's pixels; ``None``: the checkpoint's training tile
    (``data.tiling.tile_size``, see :func:`run_predict`), :data:`DEFAULT_TILE` elsewhere.
    On real DigestPath, windows of the training tile (512 at 20x) scored a held-out FROC of
    0.308 against 0.161 with one 1024 window per image (fold 0, docs/real-data.md)."""
    overlap: int = 128
    batch_size: int = 4
    precision: Precision = "auto"
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_per_image: int = 2000
    pad: Literal["reflect", "white"] = "reflect"
    """How an image is padded up to a whole window (see :func:`_pad_to`)."""
    scale: float | None = None
    """Images are resized by this before detection (boxes come back in image pixels);
    ``None``: the checkpoint's ``data.scale`` (see :func:`run_predict`), 1.0 elsewhere."""

    def __post_init__(self) -> None:
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.tile is not None and (self.tile < 64 or self.tile % 32):
            raise ValueError(f"tile must be a multiple of 32 and >= 64, got {self.tile}")
        if not 0 <= self.overlap < (self.tile or DEFAULT_TILE):
            raise ValueError(f"overlap must be in [0, tile), got {self.overlap}")


def core_bounds(starts: Sequence[int], tile: int) -> list[tuple[float, float]]:
    """Per window along one axis, ``[lo, hi)`` of its core (image pixels).

    >>> core_bounds([0, 896, 976], 1024)
    [(-inf, 960.0), (960.0, 1000.0), (1000.0, inf)]
    """
    cuts = [(s + t + tile) / 2 for s, t in zip(starts[:-1], starts[1:], strict=True)]
    lo = [-np.inf, *cuts]
    hi = [*cuts, np.inf]
    return list(zip(lo, hi, strict=True))


def _pad_to(rgb: np.ndarray, h: int, w: int, mode: str = "reflect") -> np.ndarray:
    """Pad bottom/right to at least ``h`` x ``w``: mirrored tissue (``reflect``) or white.

    White padding makes a straight edge between tissue and a white strip, which a detector
    trained on crops inside images never saw: on real DigestPath images at 20x (1000 px,
    padded to 1024) a column of false positives lined the right edge of normal images.
    Mirrored tissue has no such edge; what is found in the padding is clipped away.
    """
    ph, pw = max(0, h - rgb.shape[0]), max(0, w - rgb.shape[1])
    if ph or pw:
        pads = ((0, ph), (0, pw), (0, 0))
        if mode == "white":
            return np.pad(rgb, pads, constant_values=255)
        return np.pad(rgb, pads, mode="symmetric")
    return rgb


WindowDetector = Callable[[Tensor], list[dict[str, Tensor]]]
"""``(B, 3, h, w)`` float images in [0, 1] -> per window ``{"boxes" (K, 4), "scores" (K,)}``."""


def retinanet_detector(
    model: SRCRetinaNet, settings: PredictSettings, device: torch.device
) -> WindowDetector:
    """The detector's windows-to-boxes function at the run's threshold and precision."""
    # per window: the run's threshold and NMS, and no cap below the whole image's
    inf = model.cfg.inference.model_copy(update={
        "score_threshold": settings.score_threshold,
        "nms_iou": settings.nms_iou,
        "max_detections": max(settings.max_per_image, model.cfg.inference.max_detections),
    })  # fmt: skip
    model.eval()

    @torch.no_grad()
    def detect(images: Tensor) -> list[dict[str, Tensor]]:
        share_cores()  # another pathodet process may have started or ended
        with autocast(settings.precision, device):
            outputs = model(images.to(device))
        return postprocess(outputs, inf)

    return detect


def detect_image(
    model: SRCRetinaNet | WindowDetector,
    rgb: np.ndarray,
    settings: PredictSettings,
    device: torch.device | None = None,
) -> ImagePredictions:
    """Detections of one ``(H, W, 3)`` uint8 image in its pixel coordinates.

    ``model`` is the detector, or any :data:`WindowDetector` (tests use a pixel-rule one).
    With ``settings.scale`` not 1 the image is resized first (windows and overlap are in
    resized pixels) and the boxes are mapped back to the image's own pixels.
    """
    if settings.scale not in (None, 1.0):
        h, w = rgb.shape[:2]
        small = rescale_image(rgb, settings.scale)
        found = detect_image(model, small, replace(settings, scale=1.0), device)
        fx, fy = w / small.shape[1], h / small.shape[0]
        boxes = found.boxes * np.array([fx, fy, fx, fy])
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return ImagePredictions(boxes, found.scores)
    if isinstance(model, SRCRetinaNet):
        detect = retinanet_detector(model, settings, device or torch.device("cpu"))
    else:
        detect = model
    h, w = rgb.shape[:2]
    # an image smaller than the tile is padded up to a multiple of 32 and run as one window
    tile = settings.tile or DEFAULT_TILE
    th = min(tile, -(-h // 32) * 32)
    tw = min(tile, -(-w // 32) * 32)
    padded = _pad_to(rgb, th, tw, settings.pad)
    ys = window_starts(padded.shape[0], th, th - settings.overlap)
    xs = window_starts(padded.shape[1], tw, tw - settings.overlap)
    cores_y, cores_x = core_bounds(ys, th), core_bounds(xs, tw)
    windows = [(x, y, cx, cy) for y, cy in zip(ys, cores_y, strict=True)
               for x, cx in zip(xs, cores_x, strict=True)]  # fmt: skip
    boxes, scores = [], []
    for k in range(0, len(windows), settings.batch_size):
        chunk = windows[k : k + settings.batch_size]
        batch = np.stack([padded[y : y + th, x : x + tw] for x, y, _, _ in chunk])
        images = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        for (x, y, (cx0, cx1), (cy0, cy1)), det in zip(chunk, detect(images), strict=True):
            b = det["boxes"].float().cpu().numpy().astype(np.float64) + [x, y, x, y]
            mx, my = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            keep = (mx >= cx0) & (mx < cx1) & (my >= cy0) & (my < cy1)
            boxes.append(b[keep])
            scores.append(det["scores"].float().cpu().numpy().astype(np.float64)[keep])
    b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    s = np.concatenate(scores) if scores else np.zeros(0)
    b[:, 0::2] = b[:, 0::2].clip(0, w)  # padding is not image
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    ok = big_enough(b)
    b, s = b[ok], s[ok]
    keep = nms(torch.from_numpy(b), torch.from_numpy(s), settings.nms_iou).numpy()
    keep = keep[: settings.max_per_image]
    return ImagePredictions(b[keep], s[keep])


class ImageFiles(torch.utils.data.Dataset):
    """Decodes images in DataLoader workers: ``{"index", "image"}`` or ``{"index", "error"}``."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            return {"index": i, "image": read_image(self.paths[i])}
        except Exception as exc:  # one bad file must not stop the batch
            text = str(exc)  # read_image's errors already start with the path
            named = text.startswith(str(self.paths[i]))
            return {"index": i, "error": text if named else f"{self.paths[i]}: {text}"}


def _as_is(item: dict) -> dict:
    """Items pass through the loader unconverted (decoded images are read-only arrays)."""
    return item


def detect_files(
    model: SRCRetinaNet,
    paths: Sequence[Path],
    settings: PredictSettings,
    device: torch.device,
    num_workers: int = 1,
) -> Iterator[tuple[int, ImagePredictions | str, np.ndarray | None]]:
    """``(index, predictions or error message, decoded (H, W, 3) image or None)`` per path.

    Decoding runs in ``num_workers`` processes, ahead of the detector; the decoded image is
    passed on so callers (overlays, sizes) never decode it again.
    """
    loader = torch.utils.data.DataLoader(
        ImageFiles(paths), batch_size=None, num_workers=num_workers, collate_fn=_as_is,
        prefetch_factor=2 if num_workers else None,
    )  # fmt: skip
    for item in loader:
        if "error" in item:
            yield item["index"], item["error"], None
            continue
        rgb = np.asarray(item["image"])
        yield item["index"], detect_image(model, rgb, settings, device), rgb
