"""Plain images for :func:`pathodet.predict.pipeline.predict`: listing, decoding, outputs.

For the images of a run, ``out`` receives::

    predictions.csv            image,x1,y1,x2,y2,score (what ``pathodet evaluate`` reads)
    xml/<stem>.xml             VOC XML per image, like the challenge submission (+ score)
    geojson/<stem>.geojson     QuPath detections per image
    overlays/<stem>.png        the image with detections drawn (``overlays``)
    problems.json              images that could not be read, with the reason
    predict.json               the settings and checkpoint of the run, and the machine
                               (CPU, capability, precision; core.machine.machine_record)

Per-image files are written atomically as each image finishes, its GeoJSON last (it marks
the image done), and ``predictions.csv`` at the end from them, so a killed run that is
started again with the same settings skips the images already done and removes the
temporary files the kill left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_image, atomic_write_text, remove_stale_temps
from pathodet.data.digestpath import IMAGE_SUFFIXES, NEG_DIR, POS_DIR, load_records
from pathodet.data.geojson import read_geojson, write_geojson
from pathodet.data.overlay import draw_boxes
from pathodet.data.predictions import ImagePredictions, write_predictions
from pathodet.data.voc import write_voc


def list_images(
    inputs: Sequence[str | os.PathLike[str]], exclude: Sequence[Path] = ()
) -> list[Path]:
    """Image files named directly, in folders (not recursive), or in a DigestPath root.

    Files in ``exclude`` (the slides, which go through :mod:`pathodet.predict`) are left
    out, and then an empty list is no error.

    Raises:
        FileNotFoundError: an input that does not exist.
        ValueError: two images with the same file name (outputs are keyed by it), or none.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise FileNotFoundError(f"{item}: no such file or folder")
        if item.is_file() and item.suffix.lower() == ".csv":
            paths += [r.image for r in load_records(item)]
        elif item.is_file():
            paths.append(item)
        elif (item / POS_DIR).is_dir() or (item / NEG_DIR).is_dir():
            paths += [r.image for r in load_records(item)]
        else:
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    skip = {Path(p).resolve() for p in exclude}
    seen: dict[str, Path] = {}
    stems: dict[str, Path] = {}  # per-image outputs are named by stem: xml/<stem>.xml
    for p in paths:
        if p.resolve() in skip:
            continue
        if p.name in seen and seen[p.name] != p:
            raise ValueError(f"two images named {p.name}: {seen[p.name]} and {p}")
        if p.stem in stems and stems[p.stem].name != p.name:
            raise ValueError(f"two images named {p.stem}.*: {stems[p.stem]} and {p} would "
                             f"write the same outputs; rename one")  # fmt: skip
        seen[p.name], stems[p.stem] = p, p
    if not seen and not skip:
        raise ValueError(f"no images in {', '.join(map(str, inputs))}")
    return list(seen.values())


OUT_FILES = ("predictions.csv", "problems.json", "predict.json")
OUT_FOLDERS = ("xml", "geojson", "overlays")


def remove_temp_files(out: Path) -> None:
    """Delete the temporary files (``.NAME.*.tmp``) that a run killed mid-write left in the
    files and folders the image path of :func:`~pathodet.predict.pipeline.predict` writes."""
    patterns = [f".{name}.*.tmp" for name in OUT_FILES] + [f"{d}/.*.tmp" for d in OUT_FOLDERS]
    remove_stale_temps(out, patterns)


def geojson_path(out: Path, image: Path) -> Path:
    """The per-image GeoJSON, written last: an image with it is done."""
    return out / "geojson" / f"{image.stem}.geojson"


def overlay_path(out: Path, image: Path) -> Path:
    return out / "overlays" / f"{image.stem}.png"


def write_image_outputs(
    out: Path, image: Path, size: tuple[int, int], found: ImagePredictions,
    rgb: np.ndarray | None = None,
) -> None:  # fmt: skip
    """VOC XML, the overlay (when the decoded ``(H, W, 3)`` image ``rgb`` is given) and, last,
    the GeoJSON of one image of ``size = (w, h)`` pixels."""
    w, h = size
    write_voc(out / "xml" / f"{image.stem}.xml", image.name, w, h, found.boxes, found.scores)
    if rgb is not None:
        atomic_write_image(overlay_path(out, image), draw_boxes(rgb, found.boxes, (255, 40, 40)))
    write_geojson(geojson_path(out, image), found.boxes, found.scores, image.name)


def write_run_outputs(
    out: Path, images: Sequence[Path], problems: dict[str, str]
) -> dict[str, ImagePredictions]:
    """``predictions.csv`` from every finished image's GeoJSON, and ``problems.json``;
    returns what the CSV holds."""
    preds: dict[str, ImagePredictions] = {}
    for p in images:
        if p.name not in problems and geojson_path(out, p).is_file():
            preds[p.name] = ImagePredictions(*read_geojson(geojson_path(out, p)))
    write_predictions(out / "predictions.csv", preds)
    atomic_write_text(out / "problems.json", json.dumps(
        [{"file": k, "error": v} for k, v in problems.items()], indent=1))  # fmt: skip
    return preds
