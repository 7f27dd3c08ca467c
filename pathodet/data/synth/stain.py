"""H&E rendering: Beer-Lambert from stain concentrations, stain variation, blur, noise, JPEG.

The transmitted light at a pixel is ``I_c = I0_c * exp(-sum_s C_s * v_s[c])`` for every
colour channel ``c``, with ``C_s`` the concentration (optical density) of stain ``s`` and
``v_s`` its unit optical-density vector. Hematoxylin uses the Ruifrok-Johnston vector
(the one behind :func:`skimage.color.rgb2hed`) blended with a typical slide estimate; eosin is a per-image blend between the
Ruifrok-Johnston eosin vector and a bluer one typical of vectors estimated on real slides
(eosin on slides absorbs some blue, which makes stroma pink rather than magenta); the third
stain is a neutral grey absorber (section thickness, mucin haze). Stain variation between
labs and slides is simulated by rotating the vectors a little and scaling the amounts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image
from skimage.color import rgb_from_hed


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


HEMATOXYLIN = _unit(rgb_from_hed[0])  # Ruifrok & Johnston (2001)
EOSIN = _unit(rgb_from_hed[1])  # Ruifrok & Johnston (2001)
EOSIN_SLIDE = _unit([0.20, 0.80, 0.56])  # bluer eosin direction as estimated on slides
HEMATOXYLIN_SLIDE = _unit([0.56, 0.72, 0.41])  # hematoxylin direction as estimated on slides
NEUTRAL = _unit([1.0, 1.0, 1.0])


@dataclass
class Stain:
    """One image's staining and illumination.

    Attributes:
        vectors: ``(3, 3)`` rows = unit OD vectors (R, G, B) of hematoxylin, eosin, neutral.
        amounts: ``(3,)`` multipliers applied to the three concentration maps.
        background: ``(3,)`` incident light ``I0`` per RGB channel, 0-255 (glass colour).
    """

    vectors: np.ndarray
    amounts: np.ndarray
    background: np.ndarray


def default_stain() -> Stain:
    """A middle-of-the-road H&E with no perturbation."""
    eosin = _unit(0.2 * EOSIN + 0.8 * EOSIN_SLIDE)
    return Stain(
        np.stack([HEMATOXYLIN, eosin, NEUTRAL]).astype(np.float32),
        np.ones(3, np.float32),
        np.array([242.0, 240.0, 244.0], np.float32),
    )


def random_stain(rng: np.random.Generator) -> Stain:
    """A perturbed H&E (stain vectors rotated by a few degrees, amounts scaled ~±25%)."""
    s = rng.uniform(0.0, 0.7)
    h = _unit((1 - s) * HEMATOXYLIN + s * HEMATOXYLIN_SLIDE + rng.normal(0, 0.03, 3))
    t = rng.uniform(0.6, 1.0)
    e = _unit((1 - t) * EOSIN + t * EOSIN_SLIDE + rng.normal(0, 0.04, 3))
    amounts = np.array(
        [rng.uniform(0.8, 1.2), rng.uniform(0.75, 1.3), rng.uniform(0.7, 1.4)], np.float32
    )
    base = rng.uniform(232, 248)
    background = np.clip(base + rng.normal(0, 3, 3), 220, 252).astype(np.float32)
    return Stain(np.stack([h, e, NEUTRAL]).astype(np.float32), amounts, background)


def render(hem: np.ndarray, eos: np.ndarray, neutral: np.ndarray, stain: Stain) -> np.ndarray:
    """Beer-Lambert: ``(H, W)`` concentration maps -> ``(H, W, 3)`` float32 RGB in 0-255."""
    out = np.empty(hem.shape + (3,), np.float32)
    m = stain.vectors * stain.amounts[:, None]
    for c in range(3):
        od = hem * m[0, c]
        od += eos * m[1, c]
        od += neutral * m[2, c]
        np.exp(-od, out=od)
        out[..., c] = od * stain.background[c]
    return out


def degrade(
    rgb: np.ndarray,
    rng: np.random.Generator,
    blur_sigma: float | None = None,
    noise_sigma: float | None = None,
) -> np.ndarray:
    """Focus blur (Gaussian, pixels) and sensor noise (0-255 units): float RGB -> uint8 RGB.

    Defaults draw ``blur_sigma`` in [0.5, 1.3] and ``noise_sigma`` in [1, 3] per image.
    """
    if blur_sigma is None:
        blur_sigma = float(rng.uniform(0.5, 1.3))
    if noise_sigma is None:
        noise_sigma = float(rng.uniform(1.0, 3.0))
    img = np.ascontiguousarray(rgb, dtype=np.float32)
    if blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
    if noise_sigma > 0:
        noise = rng.standard_normal(img.shape[:2], dtype=np.float32) * noise_sigma
        img += noise[..., None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode ``(H, W, 3)`` uint8 RGB as JPEG (to see compression artefacts)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))
