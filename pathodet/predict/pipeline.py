"""``pathodet predict`` as one library call: images and whole slides through one path.

:func:`predict` loads the detector once, then sends every plain image and every slide
through :func:`~pathodet.predict.windows.detect_windows` and
:func:`~pathodet.predict.windows.merge` (an image is a one-level slide). What is written
where is described in :mod:`pathodet.predict.images` and :mod:`pathodet.predict.slides`.
Both resume: a run started again with the same model and settings (:func:`fingerprint`)
skips the images and slides already done.

Under ``torchrun`` images are predicted by rank 0 and slides are shared
(``config.slides.split``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from pathodet.core.dist import DistInfo, init_distributed, pick_device, shutdown
from pathodet.core.io import atomic_write_text
from pathodet.core.machine import machine_record, resolve_precision
from pathodet.data.images import read_image
from pathodet.data.predictions import ImagePredictions
from pathodet.model.retinanet import FrozenDetector
from pathodet.predict.config import PredictConfig, for_checkpoint
from pathodet.predict.images import (
    geojson_path,
    list_images,
    overlay_path,
    remove_temp_files,
    write_image_outputs,
    write_run_outputs,
)
from pathodet.predict.loader import (
    SlideInput,
    by_input,
    image_input,
    image_input_from_file,
    raise_errors,
    window_batches,
)
from pathodet.predict.reader import SlideError
from pathodet.predict.slides import (
    SLIDES_DIR,
    file_id,
    gather_tile_parts,
    ranges,
    run_summary,
    slide_inputs,
    survey,
    write_slide_outputs,
)
from pathodet.predict.windows import (
    Timings,
    WindowDetector,
    WindowPlan,
    detect_windows,
    merge,
)
from pathodet.training.checkpoint import load_detector

Progress = Callable[[str, int, int], None]
"""``progress(what, done, total)``: ``what`` is ``"images"`` (images done) or a slide's file
name (its windows done)."""


def checkpoint_fingerprint(checkpoint: Path) -> dict:
    """What identifies a checkpoint file for resuming: path, size and modification time."""
    st = Path(checkpoint).stat()
    return {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_size": st.st_size,
            "checkpoint_mtime_ns": st.st_mtime_ns}  # fmt: skip


def fingerprint(model_id: dict, config: PredictConfig) -> dict:
    """What a finished image or slide must have been predicted with to be kept on resume:
    the model and every setting that changes detections (not workers, overlays, device)."""
    settings = config.model_dump(mode="json", exclude={"num_workers", "overlays", "device"})
    return json.loads(json.dumps({"model": model_id, "predict": settings}))


def predict(
    config: PredictConfig,
    checkpoint: str | os.PathLike[str] | None,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    detector: WindowDetector | None = None,
    model_id: dict | None = None,
    all_slides: bool = False,
    dist: DistInfo | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Detect SRCs in images and whole slides; returns ``{"images": ..., "slides": ...}``
    (the parts that had inputs).

    Args:
        config: windows, thresholds and slide settings; what it leaves ``None`` comes from
            the checkpoint (:func:`~pathodet.predict.config.for_checkpoint`).
        checkpoint: a checkpoint of ``pathodet train``; or None with ``detector``.
        inputs: image files, folders, DigestPath roots, manifest CSVs and slide files.
        detector: a :data:`~pathodet.predict.windows.WindowDetector` to use instead of a
            checkpoint's (tests, benchmarks); ``model_id`` then identifies it for resuming.
        all_slides: every input file is a slide (any image, read through the slide path).
        dist: the process group (default: joined here when launched by torchrun).

    Raises:
        FileNotFoundError: an input that does not exist.
        ValueError: two inputs with the same name, no input, or neither checkpoint nor detector.
        CheckpointError: the checkpoint cannot be used.
    """
    out = Path(out)
    for item in map(Path, inputs):
        if not item.exists():
            raise FileNotFoundError(f"{item}: no such file or folder")
    slides = slide_inputs(inputs, force=all_slides)
    images = [] if all_slides else list_images(inputs, exclude=slides)
    own_dist = dist is None
    dist = init_distributed(pick_device(config.device, DistInfo())) if own_dist else dist
    try:
        device = pick_device(config.device, dist)
        precision = resolve_precision(config.precision, device, log)
        if detector is None and _engine(config, checkpoint) == "onnxruntime":
            onnx_detector = _onnx_detector(Path(checkpoint), out)
            train_cfg = onnx_detector.config
            config = for_checkpoint(config, train_cfg).model_copy(
                update={"precision": "fp32", "engine": "onnxruntime"}
            )
            onnx_detector.inference = config.window_inference(train_cfg.model.inference)
            detector = onnx_detector.detect
            model_id = checkpoint_fingerprint(Path(checkpoint))
        elif detector is None:
            if checkpoint is None:
                raise ValueError("predict needs a checkpoint (or a detector)")
            model, train_cfg = load_detector(checkpoint)
            config = for_checkpoint(config, train_cfg).model_copy(update={"precision": precision})
            inference = config.window_inference(model.cfg.inference)
            detector = FrozenDetector(model, device, precision, inference).detect
            model_id = checkpoint_fingerprint(Path(checkpoint))
        else:
            config = for_checkpoint(config, None).model_copy(update={"precision": precision})
        fp = fingerprint(model_id or {}, config)
        summary: dict = {}
        if images and dist.is_main:  # images are not shared among ranks
            machine = machine_record(precision, device)  # no threads: a rerun cannot change it
            stable = ("precision", "device", "cpu_model", "cpu_capability", "bf16_native", "torch")
            machine = {k: machine[k] for k in stable}
            summary["images"] = _predict_images(detector, images, out, config, fp, machine,
                                                progress)  # fmt: skip
            if log:
                src = "given by --mpp" if config.mpp else "the training images' (checkpoint)"
                log(f"images: level-0 pixel size {src}; resized by {config.detection_scale:g} "
                    f"to the detector's {config.slides.target_mpp:g} µm/px")  # fmt: skip
        if slides:
            summary["slides"] = _predict_slides(detector, slides, out, config, fp, dist, progress,
                                                log)  # fmt: skip
        return summary
    finally:
        if own_dist:
            shutdown()


def detect_merged(
    detector: WindowDetector, batches: Iterable[dict[str, Tensor]], plan: WindowPlan,
    config: PredictConfig, timings: Timings | None = None,
) -> ImagePredictions:  # fmt: skip
    """Detections of one image: :func:`detect_windows` then :func:`merge`, at most
    ``config.max_per_image``, best first, in the image's pixels."""
    b, s = detect_windows(detector, batches, plan, timings=timings)
    t = time.perf_counter()
    keep = merge(b, s, config.nms_iou)[: config.max_per_image]
    if timings is not None:
        timings.merge += time.perf_counter() - t
    return ImagePredictions(b[keep], s[keep])


def detect_image(
    detector: WindowDetector, rgb: np.ndarray, config: PredictConfig,
    timings: Timings | None = None,
) -> ImagePredictions:  # fmt: skip
    """Detections of one ``(H, W, 3)`` uint8 image in memory, in its pixel coordinates: the
    path of an image file in :func:`predict`, without the file (tests, benchmarks).

    The image is resized by ``config.scale`` first (windows and overlap are in resized
    pixels), as training resized it (:func:`~pathodet.data.images.rescale_image`), padded
    (``config.pad``), cut into windows, detected and merged (:func:`detect_merged`).
    """
    h, w = rgb.shape[:2]
    inp = image_input(None, (w, h), config.detection_scale, config.window,
                      config.overlap, config.pad, rgb=rgb)  # fmt: skip
    batches = window_batches([inp], [range(len(inp.plan.windows))], config.batch_size, 0)
    return detect_merged(detector, raise_errors(batches), inp.plan, config, timings)


def _engine(config: PredictConfig, checkpoint: str | os.PathLike[str] | None) -> str:
    """The engine a run uses: ``config.engine``, or for ``auto`` ONNX Runtime on a .onnx file.

    Raises:
        ValueError: no checkpoint, or the torch engine asked to run a .onnx file.
    """
    if checkpoint is None:
        raise ValueError("predict needs a checkpoint (or a detector)")
    is_onnx = Path(checkpoint).suffix.lower() == ".onnx"
    if config.engine == "torch" and is_onnx:
        raise ValueError(f"{checkpoint}: an ONNX file runs with --engine onnxruntime, not torch")
    return "onnxruntime" if config.engine == "onnxruntime" or is_onnx else "torch"


def _onnx_detector(checkpoint: Path, out: Path):
    """An :class:`~pathodet.predict.onnx_engine.OnnxDetector` of a .onnx file, or of a
    checkpoint exported once into ``out/.onnx/`` (kept for reruns, keyed by the checkpoint's
    size and modification time)."""
    from pathodet.model.onnx import export_onnx
    from pathodet.predict.onnx_engine import OnnxDetector

    if checkpoint.suffix.lower() != ".onnx":
        st = checkpoint.stat()
        path = out / ".onnx" / f"{checkpoint.stem}-{st.st_size}-{st.st_mtime_ns}.onnx"
        if not path.is_file():
            model, train_cfg = load_detector(checkpoint)
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(model, path, train_cfg.model_dump(mode="json"),
                        tile=train_cfg.data.tiling.tile_size)  # fmt: skip
        checkpoint = path
    return OnnxDetector(checkpoint)


def _predict_images(
    detector: WindowDetector, paths: list[Path], out: Path, config: PredictConfig, fp: dict,
    machine: dict, progress: Progress | None,
) -> dict:  # fmt: skip
    """Every image: detect, write its files as it finishes, then ``predictions.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out)
    state_file = out / "predict.json"
    same = state_file.is_file() and json.loads(state_file.read_text()).get("settings") == fp
    atomic_write_text(state_file, json.dumps({"settings": fp, "machine": machine}, indent=2))
    done = {i for i, p in enumerate(paths) if same and geojson_path(out, p).is_file()
            and (not config.overlays or overlay_path(out, p).is_file())}  # fmt: skip
    todo = [p for i, p in enumerate(paths) if i not in done]
    problems: dict[str, str] = {}
    inputs = []
    for p in todo:  # headers only: the windows of each image are laid before decoding
        try:
            inputs.append(image_input_from_file(p, config.detection_scale, config.window,
                                                config.overlap, config.pad))  # fmt: skip
        except ValueError as exc:
            problems[p.name] = str(exc)
    finished = len(done) + len(problems)
    indices = [range(len(inp.plan.windows)) for inp in inputs]
    batches = window_batches(inputs, indices, config.batch_size, config.num_workers)
    for j, group in by_input(batches):
        path = inputs[j].path
        try:
            found = detect_merged(detector, raise_errors(group), inputs[j].plan, config)
        except SlideError as exc:  # groupby skips the rest of this image's batches
            problems[path.name] = str(exc)
        else:  # the overlay decodes the image again, here (overlays are off by default)
            rgb = read_image(path) if config.overlays else None
            write_image_outputs(out, path, inputs[j].plan.size0, found, rgb)
        finished += 1
        if progress:
            progress("images", finished, len(paths))
    preds = write_run_outputs(out, paths, problems)
    return {
        "images": len(preds),
        "predictions": int(sum(len(p.scores) for p in preds.values())),
        "problems": len(problems),
        "skipped": len(done),
        "scale": config.detection_scale,
        "mpp": config.mpp,
        "detector_mpp": config.slides.target_mpp,
        "out": str(out),
    }


def _predict_slides(
    detector: WindowDetector, slides: list[Path], out: Path, config: PredictConfig, fp: dict,
    dist: DistInfo, progress: Progress | None, log: Callable[[str], None] | None = None,
) -> dict:  # fmt: skip
    """Every slide (this rank's share): its folder of outputs, then ``slides.json``."""
    names: dict[str, Path] = {}
    for p in slides:
        if p.stem in names and names[p.stem] != p:
            raise ValueError(f"two slides named {p.stem}: {names[p.stem]} and {p}")
        names[p.stem] = p
    split = config.slides.split
    mine = list(names.values())
    if split == "slides":
        mine = mine[dist.rank :: dist.world_size]
    records = []
    for path in mine:
        folder = out / SLIDES_DIR / path.stem
        slide_fp = {**fp, "slide_file": file_id(path)}
        prev = folder / "summary.json"
        try:
            if prev.is_file() and json.loads(prev.read_text()).get("fingerprint") == slide_fp:
                records.append({"slide": path.name, "status": "resumed", "folder": str(folder)})
                continue
        except ValueError:
            pass

        def step(done: int, total: int, name: str = path.name) -> None:
            if progress:
                progress(name, done, total)

        try:
            rec = _one_slide(detector, path, folder, config, slide_fp, dist, step)
        except Exception as exc:  # noqa: BLE001 - one bad slide never stops the others
            msg = str(exc) if isinstance(exc, SlideError) else (
                f"{path}: {type(exc).__name__}: {exc}")  # fmt: skip
            rec = {"slide": path.name, "status": "failed", "error": msg}
        if rec is not None:
            records.append(rec)
            if log and rec.get("mpp_note"):
                log(rec["mpp_note"])
    return run_summary(out, records, dist, split)


def _one_slide(
    detector: WindowDetector, path: Path, folder: Path, config: PredictConfig, fp: dict,
    dist: DistInfo, step: Callable[[int, int], None],
) -> dict | None:  # fmt: skip
    """Detect one slide and write its folder; None on a rank that only contributed windows."""
    t0 = time.perf_counter()
    timings = Timings()
    info, thumb, plan = survey(path, config.slides, config.window, config.overlap, config.mpp)
    n = len(plan.windows)
    shared = config.slides.split == "tiles" and dist.world_size > 1
    idx = ranges(n, dist.world_size)[dist.rank] if shared else range(n)
    slide = SlideInput(path, plan)
    batches = window_batches([slide], [idx], config.batch_size, config.num_workers)

    def detect() -> tuple[np.ndarray, np.ndarray]:
        return detect_windows(detector, raise_errors(batches), plan, len(idx), step, timings)

    found = gather_tile_parts(folder / "parts", path, dist, detect) if shared else detect()
    if found is None:
        return None
    boxes, scores = found
    t1 = time.perf_counter()
    keep = merge(boxes, scores, config.nms_iou)
    timings.merge = time.perf_counter() - t1
    timings.total = time.perf_counter() - t0
    summary = write_slide_outputs(
        folder, info, thumb, plan, boxes[keep], scores[keep], config.slides,
        {"timings": timings.as_dict(), "fingerprint": fp},
    )  # fmt: skip
    return {"slide": path.name, "status": "done", "folder": str(folder),
            "vendor": info.vendor, "mpp": float(np.mean(info.mpp)),
            "mpp_source": info.mpp_source, "mpp_note": info.mpp_note,
            "src_count": summary["src_count"], "tissue_area_mm2": summary["tissue_area_mm2"],
            "src_per_mm2": summary["src_per_mm2"]}  # fmt: skip
