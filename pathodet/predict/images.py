"""``pathodet predict``: a checkpoint over image files, folders or a DigestPath root.

Writes into ``out``::

    predictions.csv            image,x1,y1,x2,y2,score (what ``pathodet evaluate`` reads)
    xml/<stem>.xml             VOC XML per image, like the challenge submission (+ score)
    geojson/<stem>.geojson     QuPath detections per image
    overlays/<stem>.png        the image with detections drawn (``overlays=True``)
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from pathodet.core.dist import env_dist_info, pick_device
from pathodet.core.io import atomic_write_image, atomic_write_text, remove_stale_temps
from pathodet.core.machine import machine_record, resolve_precision
from pathodet.data.digestpath import IMAGE_SUFFIXES, NEG_DIR, POS_DIR, load_records
from pathodet.data.geojson import read_geojson, write_geojson
from pathodet.data.overlay import draw_boxes
from pathodet.data.predictions import ImagePredictions, write_predictions
from pathodet.data.voc import write_voc
from pathodet.predict.windows import PredictSettings, detect_files
from pathodet.training.checkpoint import load_detector
from pathodet.training.config import Config


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


def checkpoint_fingerprint(checkpoint: Path) -> dict:
    """What identifies a checkpoint file for resuming: path, size and modification time."""
    st = checkpoint.stat()
    return {"checkpoint": str(checkpoint.resolve()), "checkpoint_size": st.st_size,
            "checkpoint_mtime_ns": st.st_mtime_ns}  # fmt: skip


def _fingerprint(checkpoint: Path, settings: PredictSettings) -> dict:
    return {**checkpoint_fingerprint(checkpoint), **asdict(settings)}


OUT_FILES = ("predictions.csv", "problems.json", "predict.json")
OUT_FOLDERS = ("xml", "geojson", "overlays")


def remove_temp_files(out: Path) -> None:
    """Delete the temporary files (``.NAME.*.tmp``) that a run killed mid-write left in the
    files and folders :func:`run_predict` writes."""
    patterns = [f".{name}.*.tmp" for name in OUT_FILES] + [f"{d}/.*.tmp" for d in OUT_FOLDERS]
    remove_stale_temps(out, patterns)


def for_checkpoint(settings: PredictSettings, cfg: Config) -> PredictSettings:
    """Fill what the caller left unset from the checkpoint's config: detect at the pixel
    size (``data.scale``) and with the windows (``data.tiling.tile_size``) it learnt on,
    but never below 4x the overlap (smaller windows compute each pixel many times over)."""
    if settings.scale is None:
        settings = replace(settings, scale=cfg.data.scale)
    if settings.tile is None:
        tile = max(cfg.data.tiling.tile_size, -(-4 * settings.overlap // 32) * 32)
        settings = replace(settings, tile=tile)
    return settings


def run_predict(
    checkpoint: Path,
    inputs: Sequence[str | os.PathLike[str]],
    out: Path,
    settings: PredictSettings,
    overlays: bool = False,
    num_workers: int = 1,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Predict every image; returns ``{"images", "predictions", "problems", "skipped"}``."""
    paths = list_images(inputs)
    model, cfg = load_detector(checkpoint)
    dev = pick_device(device, env_dist_info())
    model.to(dev)
    settings = replace(settings, precision=resolve_precision(settings.precision, dev))
    settings = for_checkpoint(settings, cfg)
    out.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out)
    fp = _fingerprint(Path(checkpoint), settings)
    state_file = out / "predict.json"
    same = state_file.is_file() and json.loads(state_file.read_text()).get("settings") == fp
    machine = machine_record(settings.precision, dev)  # what a rerun cannot change, no threads
    stable = ("precision", "device", "cpu_model", "cpu_capability", "bf16_native", "torch")
    record = {"settings": fp, "machine": {k: machine[k] for k in stable}}
    atomic_write_text(state_file, json.dumps(record, indent=2))

    def geo(p: Path) -> Path:
        return out / "geojson" / f"{p.stem}.geojson"

    def overlay(p: Path) -> Path:
        return out / "overlays" / f"{p.stem}.png"

    done = {i for i, p in enumerate(paths)
            if same and geo(p).is_file() and (not overlays or overlay(p).is_file())}  # fmt: skip
    todo = [p for i, p in enumerate(paths) if i not in done]
    problems: dict[str, str] = {}
    for k, (i, result, rgb) in enumerate(detect_files(model, todo, settings, dev, num_workers)):
        path = todo[i]
        if isinstance(result, str):
            problems[path.name] = result
        else:
            h, w = rgb.shape[:2]
            write_voc(out / "xml" / f"{path.stem}.xml", path.name, w, h, result.boxes,
                      result.scores)  # fmt: skip
            if overlays:
                img = draw_boxes(rgb, result.boxes, (255, 40, 40))
                atomic_write_image(overlay(path), img)
            # last: an image with its GeoJSON is done (a killed run skips it when resumed)
            write_geojson(geo(path), result.boxes, result.scores, path.name)
        if progress:
            progress(len(done) + k + 1, len(paths))
    preds: dict[str, ImagePredictions] = {}
    for p in paths:
        if p.name not in problems and geo(p).is_file():
            preds[p.name] = ImagePredictions(*read_geojson(geo(p)))
    write_predictions(out / "predictions.csv", preds)
    atomic_write_text(out / "problems.json", json.dumps(
        [{"file": k, "error": v} for k, v in problems.items()], indent=1))  # fmt: skip
    return {
        "images": len(preds),
        "predictions": int(sum(len(p.scores) for p in preds.values())),
        "problems": len(problems),
        "skipped": len(done),
        "out": str(out),
    }
