"""Write a synthetic dataset in exactly the DigestPath 2019 (task 1) layout.

::

    out/sig-train-pos/<stem>.jpeg  + <stem>.xml   AP images, VOC boxes of the annotated SRCs
    out/sig-train-neg/<stem>.jpeg (+ <stem>.xml)  NP images, about half with an empty XML
    out/full-annotations/<stem>.xml               every SRC drawn in each AP image
    out/synth.json                                parameters, per-image counts, totals (last)

Image ``i`` of an attribute is rendered from ``np.random.default_rng([seed, code, i])``
only, so runs are reproducible byte for byte and growing ``positive`` keeps the first
images. A hidden ``out/.synth-state.json`` records the generator parameters and the images
already written, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from pathodet import __version__
from pathodet.core.io import atomic_write_image, atomic_write_text
from pathodet.data.names import digestpath_name
from pathodet.data.synth.annotate import choose_annotated
from pathodet.data.synth.compose import synthesize_image
from pathodet.data.voc import write_voc

POS_DIR, NEG_DIR, FULL_DIR = "sig-train-pos", "sig-train-neg", "full-annotations"
STATE_FILE = ".synth-state.json"
SUMMARY_FILE = "synth.json"
ATTR_CODES = {"NP": 0, "AP": 1}
CLUSTER_MISS_RATIO = 2.0


def _slide(seed: int, attribute: str, slide_index: int, per_slide: int) -> dict:
    """Slide id, scan time and level-0 positions of the images cut from one slide."""
    code = ATTR_CODES[attribute]
    rng = np.random.default_rng([seed, code, slide_index, 7])
    # 7919 is coprime with 90000, so slide numbers never repeat within a dataset
    number = 10000 + ((2 * slide_index + code) * 7919 + seed * 104729) % 90000
    slide_id = f"2018_{number:05d}_{int(rng.integers(1, 4))}-{int(rng.integers(1, 10))}"
    scan = datetime(2018, 9, 1) + timedelta(seconds=int(rng.integers(0, 240 * 86400)))
    x = int(rng.integers(5000, 40000)) + np.cumsum(rng.integers(2500, 9000, per_slide))
    y = rng.integers(5000, 80000, per_slide)
    return {"slide_id": slide_id, "scan": scan, "x": x.tolist(), "y": y.tolist()}


def _plan(seed: int, attribute: str, i: int, size: int, per_slide: int) -> tuple:
    """The image's rng (advanced past the layout draws), width, height, JPEG quality, stem."""
    rng = np.random.default_rng([seed, ATTR_CODES[attribute], i])
    jitter = size // 100 if size >= 256 else 0
    width = size + int(rng.integers(-jitter, jitter + 1))
    height = size + int(rng.integers(-jitter, jitter + 1))
    quality = int(rng.integers(80, 96))
    with_xml = bool(rng.random() < 0.5)
    slide = _slide(seed, attribute, i // per_slide, per_slide)
    j = i % per_slide
    stem = digestpath_name(
        slide["slide_id"], slide["scan"], slide["x"][j], slide["y"][j], width, height
    )
    return rng, width, height, quality, with_xml, slide["slide_id"], stem


def _files(out: Path, rec: dict) -> list[Path]:
    stem = rec["stem"]
    if rec["attribute"] == "AP":
        return [
            out / POS_DIR / f"{stem}.jpeg",
            out / POS_DIR / f"{stem}.xml",
            out / FULL_DIR / f"{stem}.xml",
        ]
    files = [out / NEG_DIR / f"{stem}.jpeg"]
    return files + [out / NEG_DIR / f"{stem}.xml"] if rec["xml"] else files


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _make(out: Path, attribute: str, i: int, params: dict) -> dict:
    rng, width, height, quality, with_xml, slide_id, stem = _plan(
        params["seed"], attribute, i, params["size"], params["images_per_slide"]
    )
    image = synthesize_image(rng, height, width, attribute)
    rec = {
        "stem": stem,
        "attribute": attribute,
        "index": i,
        "slide_id": slide_id,
        "width": width,
        "height": height,
        "quality": quality,
        "n_src": int(len(image.src_boxes)),
        "n_annotated": 0,
        "n_in_cluster": int(image.in_cluster.sum()),
        "n_mimics": int(len(image.mimic_boxes)),
        "xml": attribute == "AP" or with_xml,
    }
    name = f"{stem}.jpeg"
    if attribute == "AP":
        keep = choose_annotated(rng, image.in_cluster, params["annotate_rate"], CLUSTER_MISS_RATIO)
        rec["n_annotated"] = int(keep.sum())
        write_voc(out / FULL_DIR / f"{stem}.xml", name, width, height, image.src_boxes)
        write_voc(out / POS_DIR / f"{stem}.xml", name, width, height, image.src_boxes[keep])
        atomic_write_image(out / POS_DIR / name, image.rgb, quality=quality)
    else:
        if with_xml:
            write_voc(out / NEG_DIR / f"{stem}.xml", name, width, height, np.zeros((0, 4)))
        atomic_write_image(out / NEG_DIR / name, image.rgb, quality=quality)
    return rec


def write_synthetic_dataset(
    out: str | Path,
    positive: int,
    negative: int,
    size: int = 2000,
    seed: int = 0,
    annotate_rate: float = 0.5,
    images_per_slide: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Render ``positive`` AP and ``negative`` NP images of about ``size`` x ``size`` pixels.

    Width and height each get a jitter of up to ``size // 100`` pixels (none below 256),
    like the real ~2000 x 2000 crops. ``images_per_slide`` consecutive images of one
    attribute share a slide id; AP and NP slides are distinct. Images already written by
    an earlier run with the same ``size``, ``seed``, ``annotate_rate`` and
    ``images_per_slide`` are kept as they are; files of images that an earlier run listed
    but this one does not (a smaller count, other parameters) are removed.
    ``progress(done, total)`` is called after each image.

    Returns the content written to ``out/synth.json``.

    Raises:
        ValueError: negative counts, ``size < 64``, ``images_per_slide < 1`` or
            ``annotate_rate`` outside [0, 1].
    """
    if positive < 0 or negative < 0:
        raise ValueError(f"image counts must be >= 0, got {positive}, {negative}")
    if size < 64:
        raise ValueError(f"size must be >= 64 pixels, got {size}")
    if images_per_slide < 1:
        raise ValueError(f"images_per_slide must be >= 1, got {images_per_slide}")
    if not 0.0 <= annotate_rate <= 1.0:
        raise ValueError(f"annotate_rate must be in [0, 1], got {annotate_rate}")
    out = Path(out)
    for sub in (POS_DIR, NEG_DIR, FULL_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
    gen = {
        "size": int(size),
        "seed": int(seed),
        "annotate_rate": float(annotate_rate),
        "images_per_slide": int(images_per_slide),
        "cluster_miss_ratio": CLUSTER_MISS_RATIO,
        "version": __version__,
    }
    state = _load(out / STATE_FILE)
    old = state.get("images", {}) if state.get("params") == gen else {}
    previous = {r["stem"]: r for r in _load(out / SUMMARY_FILE).get("images", [])}
    previous.update(state.get("images", {}))
    atomic_write_text(out / STATE_FILE, json.dumps({"params": gen, "images": old}))

    jobs = [("AP", i) for i in range(positive)] + [("NP", i) for i in range(negative)]
    records: list[dict] = []
    done: dict[str, dict] = dict(old)
    for k, (attribute, i) in enumerate(jobs):
        stem = _plan(seed, attribute, i, size, images_per_slide)[-1]
        rec = old.get(stem)
        if rec is None or not all(f.exists() for f in _files(out, rec)):
            rec = _make(out, attribute, i, gen)
            done[stem] = rec
            atomic_write_text(out / STATE_FILE, json.dumps({"params": gen, "images": done}))
        records.append(rec)
        if progress is not None:
            progress(k + 1, len(jobs))

    current = {r["stem"] for r in records}
    for stem, rec in previous.items():
        if stem not in current and "attribute" in rec:
            for f in _files(out, {"xml": True, **rec}):
                f.unlink(missing_ok=True)
    aps = [r for r in records if r["attribute"] == "AP"]
    totals = {
        key: int(sum(r[key] for r in aps)) for key in ("n_src", "n_annotated", "n_in_cluster")
    }
    totals.update(
        images=len(records),
        positive=positive,
        negative=negative,
        n_mimics=int(sum(r["n_mimics"] for r in records)),
        annotated_fraction=totals["n_annotated"] / max(1, totals["n_src"]),
    )
    summary = {
        "params": {"positive": positive, "negative": negative, **gen},
        "images": records,
        "totals": totals,
    }
    atomic_write_text(
        out / STATE_FILE, json.dumps({"params": gen, "images": {r["stem"]: r for r in records}})
    )
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    return summary
