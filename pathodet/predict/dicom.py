"""A DICOM whole-slide instance that OpenSlide refuses, read frame by frame with pydicom.

OpenSlide 4 reads a DICOM WSI series (a folder of conformant instances). A lone instance,
or one that omits what OpenSlide needs to place it in a series (``ImageType``'s flavour:
OpenSlide's "Couldn't get image flavor"), is what a PACS export or a converter often gives;
pathodet reads such an instance itself as a one-level slide.

What is supported (DICOM PS3.3 A.32.8, VL Whole Slide Microscopy Image IOD): 8-bit colour
frames (RGB or YBR, any transfer syntax pydicom can decode) tiling the total pixel matrix
in the ``TILED_FULL`` order (row by row, left to right; the order when
``DimensionOrganizationType`` is ``TILED_FULL`` or absent and no per-frame positions are
given). ``TILED_SPARSE`` instances (per-frame positions) are refused with the reason.

Pixel size: ``PixelSpacing`` of the shared functional groups (mm, rows then columns), else
``ImagedVolumeWidth``/``Height`` (mm) over the matrix size; the objective power from
``OpticalPathSequence``'s ``ObjectiveLensPower``. They are offered to
:func:`~pathodet.predict.reader.resolve_mpp` as OpenSlide's properties would be, which
checks them for plausibility.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np

from pathodet.predict.tiled import TiledLevel

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
"""VL Whole Slide Microscopy Image Storage."""


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether the file carries the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


class DicomSlide(TiledLevel):
    """One DICOM WSI instance with OpenSlide's interface, one level (:class:`TiledLevel`).

    Frames are decoded on demand by pydicom and the last 64 kept.

    Raises:
        ValueError: the file is no VL whole-slide image, or is organised in a way this reader
            does not support (the message says which).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import pydicom

        self.path = Path(path)
        with warnings.catch_warnings():  # non-conformant value lengths are common and harmless
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(self.path, stop_before_pixels=True)
        if str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS:
            raise ValueError(f"not a DICOM whole-slide image (SOP class {ds.get('SOPClassUID')})")
        organisation = str(ds.get("DimensionOrganizationType", "TILED_FULL"))
        if organisation != "TILED_FULL" or "PerFrameFunctionalGroupsSequence" in ds:
            raise ValueError(f"DICOM frames organised as {organisation} with per-frame "
                             "positions; only TILED_FULL instances are read")  # fmt: skip
        if int(ds.SamplesPerPixel) != 3 or int(ds.BitsAllocated) != 8:
            raise ValueError(f"{ds.SamplesPerPixel} samples of {ds.BitsAllocated} bits per "
                             "pixel; 8-bit colour is read")  # fmt: skip
        self._layout(int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows),
                     int(ds.Columns), int(ds.Rows), cached=64)  # fmt: skip
        rows = -(-self.height // self.tile_h)
        frames = int(ds.get("NumberOfFrames", 1))
        if frames < self.cols * rows:
            raise ValueError(f"{frames} frames cannot tile {self.width}x{self.height} pixels "
                             f"in {self.tile_w}x{self.tile_h} frames ({self.cols * rows} needed)")  # fmt: skip
        self.properties = {"openslide.vendor": "dicom", **_resolution(ds)}

    def _decode(self, index: int) -> np.ndarray:
        from pydicom.pixels import pixel_array

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(self.path, index=index)  # reads only this frame from the file


def _resolution(ds: object) -> dict[str, str]:
    """OpenSlide-style ``mpp-x``/``mpp-y`` (µm) and ``objective-power`` from a dataset."""
    props: dict[str, str] = {}
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing  # type: ignore[attr-defined]
        props["openslide.mpp-y"], props["openslide.mpp-x"] = (str(float(v) * 1000) for v in spacing)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        try:
            props["openslide.mpp-x"] = str(
                float(ds.ImagedVolumeWidth) * 1000 / int(ds.TotalPixelMatrixColumns)
            )  # type: ignore[attr-defined]
            props["openslide.mpp-y"] = str(
                float(ds.ImagedVolumeHeight) * 1000 / int(ds.TotalPixelMatrixRows)
            )  # type: ignore[attr-defined]
        except (AttributeError, TypeError, ValueError, ZeroDivisionError):
            pass
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError, ValueError):
        power = float(ds.OpticalPathSequence[0].ObjectiveLensPower)  # type: ignore[attr-defined]
        props["openslide.objective-power"] = str(power)
    return props
