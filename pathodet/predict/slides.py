"""Whole slides for :func:`pathodet.predict.pipeline.predict`: survey, window reading, outputs.

For each slide ``S``, ``out/slides/<S stem>/`` receives::

    detections.csv        image,x1,y1,x2,y2,score in level-0 pixels (predictions CSV)
    detections.geojson    the same as QuPath detections (level 0, class SRC, score)
    heatmap.png           SRC per mm^2 of tissue over the slide overview
    tissue.png            the overview, the tissue mask and the windows that were read
    summary.json          slide metadata, tissue area, SRC count and density, top regions,
                          timings; written last, so it marks the slide as complete

and ``out/slides.json`` lists every slide with its status (done, resumed, failed + why).

Under ``torchrun`` the work is shared in one of two ways (``split``):

* ``"slides"``: rank ``r`` takes slides ``r, r + N, ...`` and writes their folders; no rank
  reads another's slides or outputs. Rank 0 gathers the per-rank lists into ``slides.json``.
* ``"tiles"``: every slide is cut into N contiguous ranges of windows; each rank detects
  its range and writes its candidates to ``parts/``; rank 0 merges them (the same NMS as a
  single process, so the result is identical) and writes the slide's outputs. ``out``
  must be on a file system all ranks see.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pathodet.core.dist import DistInfo, barrier
from pathodet.core.io import atomic_write_bytes, atomic_write_text
from pathodet.data.geojson import write_geojson
from pathodet.data.predictions import ImagePredictions, write_predictions
from pathodet.predict.config import SlideConfig
from pathodet.predict.plan import SlidePlan, plan_slide
from pathodet.predict.reader import Slide, SlideError, SlideInfo, thumbnail
from pathodet.predict.slide_report import density_grid, heatmap_png, slide_summary, tissue_png
from pathodet.predict.tissue import tissue_mask

SLIDES_DIR = "slides"
RUN_SUMMARY = "slides.json"
OVERVIEW_SIDE = 1600  # pixels, long side of the pictures


class NoTissue(SlideError):
    """A slide on which the tissue detector finds nothing."""


def survey(
    path: Path, settings: SlideConfig, tile: int, overlap: int, mpp: float | None = None
) -> tuple:
    """Open a slide, find its tissue and lay the windows: ``(info, overview, plan)``.

    The overview (long side ``OVERVIEW_SIDE`` pixels) is for the pictures; the tissue mask
    is computed on a coarser one at ``settings.tissue.mask_mpp``.

    ``mpp`` overrides the level-0 µm/px the file says (:func:`~pathodet.predict.reader.resolve_mpp`).

    Raises:
        SlideError: unreadable slide. NoTissue: nothing on the glass.
    """
    with Slide(path, settings.assumed_mpp, mpp) as slide:
        info = slide.info
        mask_ds = max(1.0, settings.tissue.mask_mpp / float(np.mean(info.mpp)))
        small = thumbnail(slide, mask_ds)
        w0, h0 = info.level_dimensions[0]
        view = thumbnail(slide, max(1.0, max(w0, h0) / OVERVIEW_SIDE))
    mask = tissue_mask(small, mask_ds * float(np.mean(info.mpp)), settings.tissue)
    if not mask.any():
        raise NoTissue(f"{path}: no tissue found (saturation below threshold everywhere)")
    return info, view, plan_slide(info, mask, mask_ds, tile, overlap, settings)


def file_id(path: Path) -> dict:
    """What identifies a slide file for resuming: size and modification time."""
    try:
        st = path.stat()
    except OSError:
        return {}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def ranges(n: int, parts: int) -> list[range]:
    return [range(n * k // parts, n * (k + 1) // parts) for k in range(parts)]


def write_slide_outputs(
    folder: Path, info: SlideInfo, thumb: np.ndarray, plan: SlidePlan, boxes: np.ndarray,
    scores: np.ndarray, settings: SlideConfig, extra: dict,
) -> dict:  # fmt: skip
    """All per-slide files; ``summary.json`` last. Returns the summary."""
    name = info.path.name
    mpp = float(np.mean(info.mpp))
    write_predictions(folder / "detections.csv", {name: ImagePredictions(boxes, scores)})
    write_geojson(folder / "detections.geojson", boxes, scores, name)
    density = density_grid(boxes, scores, plan, mpp, info.level_dimensions[0],
                           settings.count_threshold, settings.density_um)  # fmt: skip
    summary = slide_summary(boxes, scores, plan, density, mpp, settings.count_threshold)
    title = (f"{name}: {summary['src_count']} SRC (score ≥ {settings.count_threshold:g}) "
             f"on {summary['tissue_area_mm2']:.2f} mm² of tissue")  # fmt: skip
    heatmap_png(folder / "heatmap.png", thumb, density, plan, title)
    tissue_png(folder / "tissue.png", thumb, plan)
    summary = {
        "slide": info.as_dict(),
        **summary,
        "detection_level": plan.level,
        "detection_mpp": info.level_mpp(plan.level) * plan.read / plan.tile,
        "windows": {"read": int(len(plan.windows)), "grid": int(plan.grid_size)},
        "read_megapixels": round(float(len(plan.windows)) * plan.tile**2 / 1e6, 3),
        "tissue_megapixels": round(summary["tissue_area_mm2"] / (mpp * 1e-3) ** 2 / 1e6, 3),
        **extra,
    }
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=1))
    return summary


def save_part(path: Path, boxes: np.ndarray, scores: np.ndarray, error: str | None) -> None:
    buf = io.BytesIO()
    np.savez(buf, boxes=boxes, scores=scores, error=np.array(error or ""))
    atomic_write_bytes(path, buf.getvalue())


def load_part(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    with np.load(path, allow_pickle=False) as z:
        return z["boxes"], z["scores"], str(z["error"])


def gather_tile_parts(
    parts: Path, path: Path, dist: DistInfo, detect: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray] | None:
    """``split="tiles"``: run this rank's ``detect()``, save its candidates to ``parts/``, and
    on rank 0 return everyone's concatenated (None on the other ranks).

    Raises:
        SlideError: on rank 0, when a rank failed (its message says which).
    """
    try:
        boxes, scores = detect()
        save_part(parts / f"rank{dist.rank}.npz", boxes, scores, None)
    except Exception as exc:  # noqa: BLE001 - rank 0 reports it after the barrier
        save_part(parts / f"rank{dist.rank}.npz", np.zeros((0, 4)), np.zeros(0),
                  f"rank {dist.rank}: {exc}")  # fmt: skip
    barrier()  # every part is written
    try:
        if not dist.is_main:
            return None
        loaded = [load_part(parts / f"rank{r}.npz") for r in range(dist.world_size)]
        for r in range(dist.world_size):
            (parts / f"rank{r}.npz").unlink()
        parts.rmdir()
        errors = [e for _, _, e in loaded if e]
        if errors:
            raise SlideError(f"{path}: " + "; ".join(errors))
        return np.concatenate([b for b, _, _ in loaded]), np.concatenate([s for _, s, _ in loaded])
    finally:
        barrier()  # rank 0 has read the parts


def run_summary(out: Path, records: list[dict], dist: DistInfo, split: str) -> dict:
    """Per-rank lists gathered by rank 0 into ``slides.json`` (after a barrier)."""
    if dist.world_size > 1 and split == "slides":
        atomic_write_text(out / f"slides.rank{dist.rank}.json", json.dumps(records))
        barrier()
        if not dist.is_main:
            return {"slides": records, "rank": dist.rank}
        records = []
        for r in range(dist.world_size):
            part = out / f"slides.rank{r}.json"
            records += json.loads(part.read_text())
            part.unlink()
    elif not dist.is_main:
        return {"slides": records, "rank": dist.rank}
    records.sort(key=lambda r: r["slide"])
    summary = {
        "slides": records,
        "done": sum(r["status"] != "failed" for r in records),
        "failed": sum(r["status"] == "failed" for r in records),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RUN_SUMMARY, json.dumps(summary, indent=1))
    return summary


def slide_inputs(inputs: Sequence[str | os.PathLike[str]], force: bool = False) -> list[Path]:
    """The inputs that are slides (files, or slide files inside folders); all files if ``force``."""
    from pathodet.data.digestpath import IMAGE_SUFFIXES
    from pathodet.predict.reader import SLIDE_SUFFIXES, is_slide_file

    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            for p in sorted(item.iterdir()):
                if p.is_file() and (is_slide_file(p) or
                                    (force and p.suffix.lower() in IMAGE_SUFFIXES + SLIDE_SUFFIXES)):  # fmt: skip
                    out.append(p)
        elif item.is_file() and (force or is_slide_file(item)):
            out.append(item)
    return out
