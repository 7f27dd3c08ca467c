"""``pathodet predict`` on whole slides: one folder of results per slide, and a run summary.

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

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pathodet.core.dist import DistInfo, barrier
from pathodet.core.io import atomic_write_bytes, atomic_write_text
from pathodet.data.geojson import write_geojson
from pathodet.data.predictions import ImagePredictions, write_predictions
from pathodet.predict.plan import SlidePlan, SlideSettings, plan_slide
from pathodet.predict.reader import Slide, SlideError, SlideInfo, thumbnail
from pathodet.predict.slide_report import density_grid, heatmap_png, slide_summary, tissue_png
from pathodet.predict.slide_windows import Timings, detect_windows, merge
from pathodet.predict.tissue import tissue_mask
from pathodet.predict.windows import PredictSettings, WindowDetector

SLIDES_DIR = "slides"
RUN_SUMMARY = "slides.json"
OVERVIEW_SIDE = 1600  # pixels, long side of the pictures


class NoTissue(SlideError):
    """A slide on which the tissue detector finds nothing."""


def survey(path: Path, settings: SlideSettings, tile: int, overlap: int) -> tuple:
    """Open a slide, find its tissue and lay the windows: ``(info, overview, plan)``.

    The overview (long side ``OVERVIEW_SIDE`` pixels) is for the pictures; the tissue mask
    is computed on a coarser one at ``settings.tissue.mask_mpp``.

    Raises:
        SlideError: unreadable slide. NoTissue: nothing on the glass.
    """
    with Slide(path, settings.assumed_mpp) as slide:
        info = slide.info
        mask_ds = max(1.0, settings.tissue.mask_mpp / float(np.mean(info.mpp)))
        small = thumbnail(slide, mask_ds)
        w0, h0 = info.level_dimensions[0]
        view = thumbnail(slide, max(1.0, max(w0, h0) / OVERVIEW_SIDE))
    mask = tissue_mask(small, mask_ds * float(np.mean(info.mpp)), settings.tissue)
    if not mask.any():
        raise NoTissue(f"{path}: no tissue found (saturation below threshold everywhere)")
    return info, view, plan_slide(info, mask, mask_ds, tile, overlap, settings)


def _file_id(path: Path) -> dict:
    """What identifies a slide file for resuming: size and modification time."""
    try:
        st = path.stat()
    except OSError:
        return {}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _ranges(n: int, parts: int) -> list[range]:
    return [range(n * k // parts, n * (k + 1) // parts) for k in range(parts)]


def write_slide_outputs(
    folder: Path, info: SlideInfo, thumb: np.ndarray, plan: SlidePlan, boxes: np.ndarray,
    scores: np.ndarray, settings: SlideSettings, extra: dict,
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


def _save_part(path: Path, boxes: np.ndarray, scores: np.ndarray, error: str | None) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, boxes=boxes, scores=scores, error=np.array(error or ""))
    atomic_write_bytes(path, buf.getvalue())


def _load_part(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    with np.load(path, allow_pickle=False) as z:
        return z["boxes"], z["scores"], str(z["error"])


def run_slides(
    detector: WindowDetector,
    slides: Sequence[Path],
    out: Path,
    settings: PredictSettings,
    slide_settings: SlideSettings,
    fingerprint: dict,
    dist: DistInfo | None = None,
    split: str = "slides",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Detect on every slide; returns the run summary (also written to ``slides.json``).

    ``fingerprint`` identifies the model and settings: a slide whose ``summary.json``
    carries the same one is not done again (a killed run resumes by slide).
    """
    dist = dist or DistInfo()
    if split not in ("slides", "tiles"):
        raise ValueError(f"split must be 'slides' or 'tiles', got {split!r}")
    names: dict[str, Path] = {}
    for p in map(Path, slides):
        if p.stem in names and names[p.stem] != p:
            raise ValueError(f"two slides named {p.stem}: {names[p.stem]} and {p}")
        names[p.stem] = p
    fp = {**fingerprint, "predict": asdict(settings), "slides": asdict(slide_settings)}
    fp = json.loads(json.dumps(fp, default=str))
    root = out / SLIDES_DIR
    mine = list(names.values())
    if split == "slides":
        mine = mine[dist.rank :: dist.world_size]
    records = []
    for path in mine:
        folder = root / path.stem
        prev = folder / "summary.json"
        slide_fp = {**fp, "slide_file": _file_id(path)}
        if prev.is_file():
            try:
                if json.loads(prev.read_text()).get("fingerprint") == slide_fp:
                    records.append({"slide": path.name, "status": "resumed",
                                    "folder": str(folder)})  # fmt: skip
                    continue
            except ValueError:
                pass

        def step(done: int, total: int, name: str = path.name) -> None:
            if progress:
                progress(name, done, total)

        try:
            rec = _one_slide(
                detector, path, folder, settings, slide_settings, slide_fp, dist, split, step
            )
        except Exception as exc:  # noqa: BLE001 - one bad slide never stops the others
            msg = (
                str(exc) if isinstance(exc, SlideError) else f"{path}: {type(exc).__name__}: {exc}"
            )
            rec = {"slide": path.name, "status": "failed", "error": msg}
        if rec is not None:
            records.append(rec)
    return _run_summary(out, records, dist, split)


def _one_slide(
    detector: WindowDetector, path: Path, folder: Path, settings: PredictSettings,
    slide_settings: SlideSettings, fp: dict, dist: DistInfo, split: str,
    step: Callable[[int, int], None],
) -> dict | None:  # fmt: skip
    """Detect one slide and write its folder; None on a rank that only contributed tiles."""
    t0 = time.perf_counter()
    timings = Timings()
    info, thumb, plan = survey(path, slide_settings, settings.tile, settings.overlap)
    n = len(plan.windows)
    shared = split == "tiles" and dist.world_size > 1
    idx = _ranges(n, dist.world_size)[dist.rank] if shared else range(n)
    args = (settings.batch_size, slide_settings.num_workers, slide_settings.assumed_mpp, step)
    if not shared:
        boxes, scores = detect_windows(detector, path, plan, idx, *args, timings=timings)
    else:
        parts = folder / "parts"
        try:
            boxes, scores = detect_windows(detector, path, plan, idx, *args, timings=timings)
            _save_part(parts / f"rank{dist.rank}.npz", boxes, scores, None)
        except Exception as exc:  # noqa: BLE001 - rank 0 reports it after the barrier
            _save_part(parts / f"rank{dist.rank}.npz", np.zeros((0, 4)), np.zeros(0),
                       f"rank {dist.rank}: {exc}")  # fmt: skip
        barrier()  # every part is written
        try:
            if not dist.is_main:
                return None
            loaded = [_load_part(parts / f"rank{r}.npz") for r in range(dist.world_size)]
            for r in range(dist.world_size):
                (parts / f"rank{r}.npz").unlink()
            parts.rmdir()
            errors = [e for _, _, e in loaded if e]
            if errors:
                raise SlideError(f"{path}: " + "; ".join(errors))
            boxes = np.concatenate([b for b, _, _ in loaded])
            scores = np.concatenate([s for _, s, _ in loaded])
        finally:
            barrier()  # rank 0 has read the parts
    t1 = time.perf_counter()
    keep = merge(boxes, scores, settings.nms_iou)
    timings.merge = time.perf_counter() - t1
    timings.total = time.perf_counter() - t0
    summary = write_slide_outputs(
        folder, info, thumb, plan, boxes[keep], scores[keep], slide_settings,
        {"timings": timings.as_dict(), "fingerprint": fp},
    )  # fmt: skip
    return {"slide": path.name, "status": "done", "folder": str(folder),
            "src_count": summary["src_count"], "tissue_area_mm2": summary["tissue_area_mm2"],
            "src_per_mm2": summary["src_per_mm2"]}  # fmt: skip


def _run_summary(out: Path, records: list[dict], dist: DistInfo, split: str) -> dict:
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
