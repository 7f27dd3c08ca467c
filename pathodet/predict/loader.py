"""The one window loader of images and slides: inputs opened once per worker, windows out.

:class:`Windows` hands out the windows of a list of inputs, a plain image or a whole slide
each, as ``{"input", "index", "image"}``. Every input is opened lazily, the first time a
DataLoader worker is asked for one of its windows, and kept open until the worker moves on
to another input. So the data sent to workers is only paths and plans:

* a slide (:class:`SlideInput`) is opened with :class:`~pathodet.predict.reader.Slide` and
  each window read from its detection level (:func:`read_window`);
* a plain image (:class:`ImageInput`) is a one-level slide that is decoded whole when
  opened, resized by the detection scale as training resized it (PIL's box filter,
  :func:`~pathodet.data.images.rescale_image`, applied to the whole image: resizing window
  by window would give other pixels) and padded to whole windows; a window is a crop.

:func:`window_batches` groups the windows of each input into batches that never mix inputs,
the input of :func:`~pathodet.predict.windows.detect_windows`. A window that cannot be read
gives a batch ``{"input", "error"}`` instead of failing the loader, so the caller decides:
one unreadable image is a problem to report, an unreadable slide window fails that slide.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import torch
from torch import Tensor

from pathodet.data.images import image_size, read_image, rescale_image, rescaled_size
from pathodet.predict.plan import SlidePlan
from pathodet.predict.reader import Slide, SlideError
from pathodet.predict.windows import ImagePlan, image_plan, pad_to


def read_window(slide: Slide, x0: int, y0: int, level: int, read: int, tile: int) -> np.ndarray:
    """``(tile, tile, 3)`` uint8: the ``read`` x ``read`` pixels of ``level`` at level-0
    ``(x0, y0)``, resized to ``tile`` when they differ (area averaging when shrinking)."""
    rgb = slide.read(x0, y0, level, read, read)
    if read != tile:
        interp = cv2.INTER_AREA if read > tile else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (tile, tile), interpolation=interp)
    return rgb


class OpenInput(Protocol):
    """An opened image or slide: ``window(i)`` is window ``i`` of its plan, ``(h, w, 3)`` uint8."""

    def window(self, i: int) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SlideInput:
    """A whole slide and its windows (:func:`~pathodet.predict.slides.survey`)."""

    path: Path
    plan: SlidePlan

    def open(self) -> OpenInput:
        """Raises: SlideError. (The plan is in level pixels: the µm/px is not needed here.)"""
        return _OpenSlide(Slide(self.path), self.plan)


class _OpenSlide:
    def __init__(self, slide: Slide, plan: SlidePlan) -> None:
        self.slide, self.plan = slide, plan

    def window(self, i: int) -> np.ndarray:
        x0, y0 = self.plan.origin(i)
        p = self.plan
        return read_window(self.slide, round(x0), round(y0), p.level, p.read, p.tile)

    def close(self) -> None:
        self.slide.close()


@dataclass(frozen=True)
class ImageInput:
    """A plain image as a one-level slide: its windows after resizing by ``scale`` and padding.

    Attributes:
        path: the image file; or None with ``rgb`` (an image already in memory).
        plan: the windows (:func:`image_input` lays them from the image's header).
        scale: detector pixels per image pixel (``PredictConfig.scale``).
        pad: how the resized image is padded to whole windows (:func:`~pathodet.predict.windows.pad_to`).
    """

    path: Path | None
    plan: ImagePlan
    scale: float
    pad: Literal["reflect", "white"]
    rgb: np.ndarray | None = field(default=None, repr=False, compare=False)

    def open(self) -> OpenInput:
        """Decode, resize and pad. Raises: ValueError naming the file."""
        rgb = self.rgb if self.rgb is not None else read_image(self.path)  # type: ignore[arg-type]
        if (rgb.shape[1], rgb.shape[0]) != self.plan.size0:
            raise ValueError(f"{self.path}: decoded {rgb.shape[1]}x{rgb.shape[0]} pixels, its "
                             f"header says {self.plan.size0[0]}x{self.plan.size0[1]}")  # fmt: skip
        small = rgb if self.scale == 1.0 else rescale_image(rgb, self.scale)
        return _OpenImage(pad_to(small, self.plan.tile_h, self.plan.tile_w, self.pad), self.plan)


class _OpenImage:
    def __init__(self, padded: np.ndarray, plan: ImagePlan) -> None:
        self.padded, self.plan = padded, plan

    def window(self, i: int) -> np.ndarray:
        x, y = self.plan.windows[i]
        return self.padded[y : y + self.plan.tile_h, x : x + self.plan.tile_w]

    def close(self) -> None:
        pass


def image_input(
    path: Path | None, size0: tuple[int, int], scale: float, tile: int, overlap: int,
    pad: Literal["reflect", "white"], rgb: np.ndarray | None = None,
) -> ImageInput:  # fmt: skip
    """The :class:`ImageInput` of an image of ``size0 = (w, h)`` pixels."""
    plan = image_plan(size0, rescaled_size(size0, scale), tile, overlap)
    return ImageInput(path, plan, scale, pad, rgb)


def image_input_from_file(
    path: Path, scale: float, tile: int, overlap: int, pad: Literal["reflect", "white"]
) -> ImageInput:
    """:func:`image_input` from the file's header (nothing is decoded here).

    Raises:
        ValueError: the file is no image, or is beyond the pixel guard (the message names it).
    """
    try:
        size = image_size(path, verify=False)
    except ValueError as exc:
        hint = ""
        if "guard" in str(exc) and Path(path).suffix.lower() in (".tif", ".tiff"):
            hint = "; with --slides a strip TIFF is read strip by strip, at any size"
        raise ValueError(f"{path}: cannot decode image: {exc}{hint}") from exc
    return image_input(path, size, scale, tile, overlap, pad)


Input = SlideInput | ImageInput


class Windows(torch.utils.data.Dataset):
    """Windows ``(input, index)`` of ``inputs`` as ``{"input", "index", "hwc" (h, w, 3) uint8,
    "slide"}``, or ``{"input", "index", "error"}`` when the input cannot be opened or the
    window read.

    Each process opens one input at a time, when first asked for one of its windows.
    """

    def __init__(self, inputs: Sequence[Input], windows: Sequence[tuple[int, int]]) -> None:
        self.inputs, self.windows = list(inputs), list(windows)
        self._open: tuple[int, OpenInput | str] | None = None

    def __len__(self) -> int:
        return len(self.windows)

    def _get(self, j: int) -> OpenInput | str:
        if self._open is None or self._open[0] != j:
            self.close()
            try:
                self._open = (j, self.inputs[j].open())
            except Exception as exc:  # one bad file must not stop the batch
                self._open = (j, _named(exc, self.inputs[j].path))
        return self._open[1]

    def __getitem__(self, k: int) -> dict:
        j, i = self.windows[k]
        source = self._get(j)
        if isinstance(source, str):
            return {"input": j, "index": i, "error": source}
        try:
            rgb = source.window(i)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            return {"input": j, "index": i, "error": _named(exc, self.inputs[j].path)}
        rgb = np.require(rgb, requirements=["C", "W"])  # an image's crops are read-only views
        slide = isinstance(self.inputs[j], SlideInput)
        return {"input": j, "index": i, "hwc": torch.from_numpy(rgb), "slide": slide}

    def close(self) -> None:
        if self._open is not None and not isinstance(self._open[1], str):
            self._open[1].close()
        self._open = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": None}


def _named(exc: Exception, path: Path | None) -> str:
    """The error's message, starting with the file when it does not already."""
    text = str(exc)
    return text if path is None or text.startswith(str(path)) else f"{path}: {text}"


def _collate(items: list[dict]) -> dict:
    """One batch of one input. The ``(B, 3, h, w)`` images keep the memory layout each input
    had before the loaders were one (so results stay bit for bit): an image's windows are
    a ``(B, h, w, 3)`` stack seen as ``(B, 3, h, w)`` (channels-last memory, as the crops of
    one decoded array were); a slide's are stored ``(B, 3, h, w)``. With an image's windows
    stored ``(B, 3, h, w)``, fp32 on AVX2 kernels gave other last digits in a process with
    another thread count (``tests/test_reliability_faults.py``, killed and rerun)."""
    errors = [it["error"] for it in items if "error" in it]
    if errors:
        return {"input": items[0]["input"], "error": errors[0]}
    hwc = torch.stack([it["hwc"] for it in items])
    image = hwc.permute(0, 3, 1, 2)
    if items[0].get("slide"):
        image = image.contiguous()
    return {"input": items[0]["input"], "index": torch.as_tensor([it["index"] for it in items]),
            "image": image}  # fmt: skip


def window_batches(
    inputs: Sequence[Input], indices: Sequence[Sequence[int]], batch_size: int, num_workers: int
) -> Iterable[dict]:
    """Batches of the windows ``indices[j]`` of each input ``j``, in order, read by
    ``num_workers`` processes (0: in this one): ``{"input", "index" (B,), "image" (B, 3, h,
    w) uint8}``, or ``{"input", "error"}`` for a batch with a window that could not be read.
    A batch never mixes inputs."""
    windows: list[tuple[int, int]] = []
    batches: list[list[int]] = []
    for j, idx in enumerate(indices):
        start = len(windows)
        windows += [(j, int(i)) for i in idx]
        batches += [list(range(k, min(k + batch_size, len(windows))))
                    for k in range(start, len(windows), batch_size)]  # fmt: skip
    return torch.utils.data.DataLoader(
        Windows(inputs, windows), batch_sampler=batches, num_workers=num_workers,
        collate_fn=_collate, prefetch_factor=2 if num_workers else None,
    )  # fmt: skip


def by_input(batches: Iterable[dict]) -> Iterator[tuple[int, Iterator[dict]]]:
    """``(input, its batches)`` in order, from :func:`window_batches`."""
    return groupby(batches, key=lambda b: b["input"])


def raise_errors(batches: Iterable[dict]) -> Iterator[dict[str, Tensor]]:
    """The batches, raising :class:`~pathodet.predict.reader.SlideError` at an error batch."""
    for b in batches:
        if "error" in b:
            raise SlideError(b["error"])
        yield b
