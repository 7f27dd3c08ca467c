"""Tissue detection on a slide overview: Otsu on saturation, specks and holes removed.

Glass is bright and grey (low saturation); H&E-stained tissue is pink to purple (high
saturation). On the overview at ``mask_mpp`` microns per pixel (8 by default: a 40x slide
shrunk 32 times), a pixel is tissue when its HSV saturation exceeds Otsu's threshold,
floored at ``min_saturation`` so that a slide of bare glass, whose saturation is noise,
yields no tissue rather than half of it. Very dark pixels (pen marks, scanner edges) are
not tissue. Specks smaller than ``min_object_mm2`` are dropped and holes smaller than
``max_hole_mm2`` filled, both given in mm^2 so they mean the same at any resolution.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from pathodet.predict.config import TissueConfig


def tissue_mask(rgb: np.ndarray, mpp: float, settings: TissueConfig | None = None) -> np.ndarray:
    """``(h, w)`` bool tissue mask of an ``(h, w, 3)`` uint8 overview at ``mpp`` µm/pixel."""
    settings = settings or TissueConfig()
    hsv = rgb2hsv(rgb)
    sat, val = hsv[..., 1], hsv[..., 2]
    bright = val > settings.max_value_dark
    thr = settings.min_saturation
    if bright.any() and np.ptp(sat[bright]) > 1e-6:
        thr = max(thr, float(threshold_otsu(sat[bright])))
    mask = (sat > thr) & bright
    px_mm2 = (mpp * 1e-3) ** 2  # mm^2 per overview pixel
    min_obj = max(1, int(round(settings.min_object_mm2 / px_mm2)))
    max_hole = max(1, int(round(settings.max_hole_mm2 / px_mm2)))
    mask = remove_small_objects(mask, max_size=min_obj)
    return remove_small_holes(mask, max_size=max_hole)
