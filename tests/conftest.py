"""Hand-made test data for the data layer: small JPEG/PNG images and hand-written VOC XML.

Nothing here uses the library's own writers (``voc_xml``, ``write_manifest``, the synthetic
generator), so the reader is checked against files written independently of it.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in two pytest-xdist workers, one per core. Each computes on
    # one thread, always (set before torch is imported): a test that compares two
    # in-process trainings bit for bit must see the same thread count in both, and
    # pathodet's core sharing (machine.share_cores) would switch between one and two
    # threads as the other worker starts and stops computing.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The most the suite had in its temporary directory at once: 2.6 GB, sampled every 2 s over a
# `make test` on 2026-11-30 (passed tests' directories are removed as they end; pyproject.toml).
TMP_NEEDED_GB = 4.0


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to start, in one line, when the temporary directory cannot hold the suite's files.

    Without this a full disk shows up as dozens of unrelated errors (a torch zip writer's
    "unexpected pos", pytest's "could not create numbered dir"), as it did in one CI run.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller has checked
    base = (
        session.config.option.basetemp
        or os.environ.get("PYTEST_DEBUG_TEMPROOT")  # pytest uses it before the system temp
        or tempfile.gettempdir()
    )
    probe = Path(base)
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    if free_gb < TMP_NEEDED_GB:
        raise pytest.UsageError(
            f"{probe}: {free_gb:.1f} GB free; the tests need about {TMP_NEEDED_GB:.0f} GB there "
            "(2.6 GB of checkpoints at once when they pass; a failed test's files are kept): "
            "free some space or set TMPDIR to a larger disk"
        )


# A real DigestPath name: slide id, scan date and time (with a space), level-0 x, y, w, h.
REAL_STEM = "2018_64982_1-3_2019-02-25 21_57_36-lv0-33516-59515-2003-2010"


def stem(slide: str, k: int, *, w: int = 2000, h: int = 2000) -> str:
    """A DigestPath-style stem for image ``k`` of ``slide`` (space in the scan time)."""
    return f"{slide}_2019-02-{10 + k % 18:02d} 21_57_{k % 60:02d}-lv0-{1000 * k}-{500 * k}-{w}-{h}"


def image_bytes(width: int, height: int, *, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """Encoded bytes of a small random RGB image."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, width: int, height: int, *, seed: int = 0) -> Path:
    """Write a random RGB image; JPEG or PNG by suffix."""
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(width, height, fmt=fmt, seed=seed))
    return path


def coord_text(v: float | str) -> str:
    """Verbatim for strings, ``12`` for integers, exact ``repr`` for floats (float32 too)."""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return repr(float(v))


def voc_text(
    boxes: Iterable[Sequence[float | str]],
    *,
    width: int | None = None,
    height: int | None = None,
    name: str = "ring_cell_cancer",
) -> str:
    """A VOC document written by hand: ``<size>`` when given, one ``<object>`` per box.

    Box coordinates are written with ``repr`` (so floats stay floats, ints stay ints) or
    verbatim when given as strings.
    """
    parts = ["<annotation>", "  <folder>sig-train-pos</folder>"]
    if width is not None:
        parts.append(
            f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
        )
    for b in boxes:
        x1, y1, x2, y2 = (coord_text(v) for v in b)
        parts += [
            "  <object>",
            f"    <name>{name}</name>",
            "    <pose>Unspecified</pose>",
            "    <bndbox>",
            f"      <xmin>{x1}</xmin>",
            f"      <ymin>{y1}</ymin>",
            f"      <xmax>{x2}</xmax>",
            f"      <ymax>{y2}</ymax>",
            "    </bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def write_voc_text(path: Path, boxes, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(voc_text(boxes, **kw), encoding="utf-8")
    return path


def parse_boxes(path: Path) -> np.ndarray:
    """Boxes of a VOC file, read with plain ElementTree (independent of ``read_voc``)."""
    root = ET.parse(path).getroot()
    rows = [
        [float(obj.find(f"bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax")]
        for obj in root.findall("object")
    ]
    return np.asarray(rows, np.float32).reshape(-1, 4)


def random_boxes(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """``n`` boxes strictly inside a ``width x height`` image, with fractional coordinates."""
    size = rng.uniform(4, 40, (n, 2))
    x1 = rng.uniform(0, width - 41, n)
    y1 = rng.uniform(0, height - 41, n)
    boxes = np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], axis=1)
    return np.round(boxes, 3).astype(np.float32)


def sorted_rows(boxes: np.ndarray) -> list[tuple[float, ...]]:
    """A box array as a sorted list of rows: compares two arrays as multisets."""
    return sorted(tuple(float(v) for v in row) for row in np.asarray(boxes).reshape(-1, 4))


def tiny_training(epochs: int, steps_per_epoch: int) -> list[str]:
    """Config overrides for a seconds-long training on 256-px tiles (a 16-channel FPN, no
    workers, no colour jitter): for tests that need a checkpoint, not a good detector."""
    return [f"train.epochs={epochs}", f"train.max_steps_per_epoch={steps_per_epoch}",
            "train.milestones=[1]", "train.val_tiles=2", "train.num_workers=0",
            "train.batch_size=2", "model.fpn_channels=16", "data.scale=1.0",
            "data.tiling.tile_size=256", "data.tiling.stride=256", "train.augment.crop=128",
            "train.augment.hed_jitter=0"]  # fmt: skip


@pytest.fixture
def make_root(tmp_path):
    """Build a DigestPath-layout root.

    ``make_root(pos={stem: (w, h, boxes_or_None)}, neg={stem: (w, h, boxes_or_None)})``;
    ``None`` boxes means no XML is written. Returns the root.
    """

    def make(pos=None, neg=None, name="root") -> Path:
        root = tmp_path / name
        for folder, spec in (("sig-train-pos", pos or {}), ("sig-train-neg", neg or {})):
            (root / folder).mkdir(parents=True, exist_ok=True)
            for i, (s, (w, h, boxes)) in enumerate(spec.items()):
                write_image(root / folder / f"{s}.jpeg", w, h, seed=i)
                if boxes is not None:
                    write_voc_text(root / folder / f"{s}.xml", boxes, width=w, height=h)
        return root

    return make
