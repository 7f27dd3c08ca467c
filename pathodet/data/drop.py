"""Controlled label dropping (DGHM paper, section 4.6).

``drop_annotations`` writes a copy of a DigestPath root in which a fraction ``rate`` of
each AP image's annotated boxes is removed. Images are hard links (no pixel is copied).
The removed boxes are recorded under ``removed-annotations/`` so that recall can later be
split into T-recall (on the kept, training annotations) and R-recall (on the removed ones).

Output layout::

    OUT/sig-train-pos/<stem>.jpeg        hard link to the source image
    OUT/sig-train-pos/<stem>.xml         the kept boxes
    OUT/sig-train-neg/...                hard links (images and any XML)
    OUT/removed-annotations/<stem>.xml   the removed boxes of each AP image
    OUT/full-annotations/<stem>.xml      linked from the source when it has them (synthetic)
    OUT/drop.json                        rate, seed, per-image and total counts, problems
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_text, link_or_copy
from pathodet.data.digestpath import FULL_DIR, NEG_DIR, POS_DIR, DatasetError, scan_digestpath
from pathodet.data.samples import load_samples
from pathodet.data.voc import write_voc

REMOVED_DIR = "removed-annotations"


def _image_rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on the seed and the image name (not on list order)."""
    digest = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def choose_dropped(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask ``(n,)`` of boxes to remove: exactly ``round(rate * n)`` of them (half up)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"drop rate must be in [0, 1], got {rate}")
    # the epsilon undoes float error in the product: 0.29 * 50 is 14.499999999999998, not 14.5
    n_drop = min(n, int(np.floor(rate * n + 0.5 + 1e-9)))
    mask = np.zeros(n, bool)
    mask[rng.choice(n, size=n_drop, replace=False)] = True
    return mask


def drop_annotations(
    root: str | os.PathLike[str], out: str | os.PathLike[str], rate: float, seed: int = 0
) -> dict:
    """Write ``out``, a copy of ``root`` with a fraction ``rate`` of each AP image's boxes removed.

    Reproducible: the same ``(rate, seed)`` removes the same boxes of an image whatever the
    other images are. Unreadable images are reported in ``problems`` and left out.

    Returns:
        The content of ``out/drop.json``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"drop rate must be in [0, 1], got {rate}")
    root, out = Path(root), Path(out)
    if out.resolve() == root.resolve():
        raise DatasetError(f"{out}: output must differ from the source root")
    records = scan_digestpath(root)
    samples, problems = load_samples(records, verify_image=False)

    images: dict[str, dict[str, int]] = {}
    for sample in samples:
        rec = sample.record
        folder = POS_DIR if rec.attribute == "AP" else NEG_DIR
        link_or_copy(rec.image, out / folder / rec.name)
        stem = rec.image.stem
        if rec.attribute == "NP":
            if rec.annotation is not None:
                link_or_copy(rec.annotation, out / folder / rec.annotation.name)
            continue
        dropped = choose_dropped(len(sample.boxes), rate, _image_rng(seed, rec.name))
        write_voc(
            out / folder / f"{stem}.xml", rec.name, sample.width, sample.height,
            sample.boxes[~dropped],
        )  # fmt: skip
        write_voc(
            out / REMOVED_DIR / f"{stem}.xml", rec.name, sample.width, sample.height,
            sample.boxes[dropped],
        )  # fmt: skip
        full = root / FULL_DIR / f"{stem}.xml"
        if full.is_file():
            link_or_copy(full, out / FULL_DIR / full.name)
        images[rec.name] = {"kept": int((~dropped).sum()), "removed": int(dropped.sum())}

    kept = sum(v["kept"] for v in images.values())
    removed = sum(v["removed"] for v in images.values())
    report = {
        "source": str(root),
        "rate": rate,
        "seed": seed,
        "positive_images": len(images),
        "negative_images": sum(s.attribute == "NP" for s in samples),
        "kept_boxes": kept,
        "removed_boxes": removed,
        "realised_rate": removed / (kept + removed) if kept + removed else 0.0,
        "images": images,
        "problems": [p.as_dict() for p in problems],
    }
    atomic_write_text(out / "drop.json", json.dumps(report, indent=2) + "\n")
    return report


def read_removed(root: str | os.PathLike[str], stem: str) -> Path | None:
    """Path of the removed-boxes XML of image ``stem`` in a dropped copy, if any."""
    path = Path(root) / REMOVED_DIR / f"{stem}.xml"
    return path if path.is_file() else None
