"""GeoJSON as QuPath writes and reads it: detections out, boxes back in.

pathodet writes each detection as a rectangle ``Polygon`` feature that QuPath imports as a
detection object of class ``SRC`` with the score as a measurement; it reads boxes back from
its own files and from files QuPath wrote (annotations, cells, detections).

The format, as QuPath 0.4-0.6 reads and writes it (``qupath-core``,
``qupath/lib/io/PathObjectTypeAdapters.java``; checked against files QuPath 0.6 wrote, in
``../shared/realdata/qupath-geojson/``):

* a ``FeatureCollection`` of ``Feature`` s; each feature has an ``id``, a UUID string
  (since QuPath 0.4 it becomes the object's ID; any other string is ignored);
* ``geometry`` in level-0 pixels of the image, origin top left, y down; a rectangle is a
  ``Polygon`` with one closed ring of five points;
* ``properties`` QuPath reads: ``objectType`` (``"detection"``, ``"annotation"``,
  ``"cell"``, ``"tile"``, ``"tmaCore"``; absent means annotation), ``name``, ``color``
  (``[r, g, b]``), ``classification`` (``{"name", "color": [r, g, b]}``), ``isLocked``,
  ``measurements`` (since 0.4 an object ``{name: number}``, before a list of
  ``{"name", "value"}``; NaN and Infinity may appear, unquoted) and ``metadata`` (an object
  of strings, kept on objects that store metadata, such as annotations). Every other
  property is dropped on import.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_text
from pathodet.data.boxes import fit_to_image, validate_boxes, writable
from pathodet.data.digestpath import Problem

SRC_CLASS = {"name": "SRC", "color": [220, 30, 30]}
"""QuPath classification of a detected or confirmed signet-ring cell."""
SCORE = "score"
"""Measurement name of a detection's score (SRC probability, 0-1)."""
DECIMALS = 2
"""Coordinates are written to 0.01 pixel (QuPath 0.6 writes 2 decimals too)."""
ID_NAMESPACE = uuid.UUID("5f0d6a52-8a0e-4a8c-9d0c-2f1f6f1f5a11")
"""Namespace of the name-based (version 5) UUIDs of pathodet's features: the same
detection gets the same ``id`` in every run, so outputs are reproducible byte for byte."""
BOX_GEOMETRIES = ("Polygon", "MultiPolygon")
"""Geometries read as boxes (their bounding box); points and lines are skipped, counted."""


class GeoJSONError(ValueError):
    """A file that is not GeoJSON pathodet can read; the message names the file."""


def qupath_class(cls: dict) -> dict:
    """A copy of a classification ``{"name", "color": [r, g, b]}`` for one feature."""
    return {"name": cls["name"], "color": list(cls["color"])}


def feature_id(*parts: object) -> str:
    """A UUID string for a feature, fixed by ``parts`` (image, index, box ...)."""
    return str(uuid.uuid5(ID_NAMESPACE, "|".join(str(p) for p in parts)))


def rectangle(box: Sequence[float] | np.ndarray) -> list[list[list[float]]]:
    """Polygon coordinates of a box ``x1, y1, x2, y2`` (pixels): one closed ring, clockwise
    on screen (y down), rounded to :data:`DECIMALS`."""
    x1, y1, x2, y2 = (round(float(v), DECIMALS) for v in box)
    return [[[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]]


def has_area(box: Sequence[float] | np.ndarray) -> bool:
    """A box ``x1, y1, x2, y2`` (pixels) a GeoJSON file can hold: finite, with positive
    width and height once written to :data:`DECIMALS` (:func:`pathodet.data.boxes.writable`)."""
    return bool(writable(np.asarray(box, np.float64).reshape(1, 4), decimals=DECIMALS)[0])


def detection_feature(box: Sequence[float] | np.ndarray, score: float, fid: str) -> dict:
    """One detection as QuPath 0.4+ imports it: objectType ``detection``, class ``SRC``,
    the score as measurement ``score``."""
    return {
        "type": "Feature",
        "id": fid,
        "geometry": {"type": "Polygon", "coordinates": rectangle(box)},
        "properties": {
            "objectType": "detection",
            "classification": qupath_class(SRC_CLASS),
            "measurements": {SCORE: round(float(score), 6)},
        },
    }


def detections_geojson(boxes: np.ndarray, scores: np.ndarray, image: str | None = None) -> dict:
    """A FeatureCollection of ``(N, 4)`` boxes ``x1, y1, x2, y2`` (pixels; level 0 for
    slides) with ``(N,)`` scores; boxes with no area after rounding are left out
    (:func:`pathodet.data.boxes.writable`: a 0.003-px sliver cut at a window border, a
    non-finite number). ``image`` names the image in a top-level ``properties`` member,
    which QuPath ignores."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    keep = writable(boxes, scores, decimals=DECIMALS)
    boxes, scores = boxes[keep], scores[keep]
    feats = [
        detection_feature(
            b, s, feature_id(image or "", i, *rectangle(b)[0][0], *rectangle(b)[0][2])
        )
        for i, (b, s) in enumerate(zip(boxes, scores, strict=True))
    ]
    out: dict = {"type": "FeatureCollection", "features": feats}
    if image is not None:
        out["properties"] = {"image": image}
    return out


def write_geojson(
    path: str | os.PathLike[str], boxes: np.ndarray, scores: np.ndarray, image: str | None = None
) -> Path:
    """Write :func:`detections_geojson` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(detections_geojson(boxes, scores, image)))


@dataclass
class GeoJSONBoxes:
    """Boxes read from one GeoJSON file.

    Attributes:
        boxes: ``(N, 4)`` float64 ``x1, y1, x2, y2``: bounding boxes of the polygons, in
            the file's pixels (level 0), clipped to the image when its size was given.
        scores: ``(N,)`` the ``score`` measurement, 1.0 where there is none.
        clipped: boxes partly outside the image, clipped to it.
        skipped: features that are not boxes (points, lines, no geometry) or of another
            class than asked for.
        problems: features that could not be read or lie wholly outside the image, each
            naming the file and the feature; they are not in ``boxes``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    clipped: int = 0
    skipped: int = 0
    problems: list[Problem] = field(default_factory=list)


def _features(data, path: Path) -> list:
    """The features of a FeatureCollection, a lone Feature, a list of features, or a bare
    geometry (QuPath accepts all four)."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise GeoJSONError(f"{path}: not a GeoJSON object (a {type(data).__name__})")
    kind = data.get("type")
    if kind == "FeatureCollection":
        feats = data.get("features")
        if not isinstance(feats, list):
            raise GeoJSONError(f"{path}: FeatureCollection without a 'features' list")
        return feats
    if kind == "Feature":
        return [data]
    if isinstance(kind, str) and "coordinates" in data:
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise GeoJSONError(f"{path}: GeoJSON type {kind!r} is not a FeatureCollection or Feature")


def _bounds(geometry: dict) -> tuple[float, float, float, float]:
    """Bounding box of a Polygon / MultiPolygon; ValueError naming what is wrong."""
    coords = geometry.get("coordinates")
    rings = coords if geometry["type"] == "Polygon" else [r for p in coords or [] for r in p]
    points = np.asarray([pt[:2] for ring in rings or [] for pt in ring], np.float64)
    if points.size == 0:
        raise ValueError("no coordinates")
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError("coordinates are not [x, y] points")
    if not np.isfinite(points).all():
        raise ValueError("non-finite coordinate")
    (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def _score(properties: dict) -> float:
    """The ``score`` measurement (object or QuPath < 0.4 list form), 1.0 if absent."""
    m = properties.get("measurements")
    if isinstance(m, list):
        m = {e.get("name"): e.get("value") for e in m if isinstance(e, dict)}
    if not isinstance(m, dict) or m.get(SCORE) is None:
        return 1.0
    value = float(m[SCORE])  # a number, or a numeric string as QuPath also accepts
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"score {value} outside [0, 1]")
    return value


def _class_name(properties: dict) -> str | None:
    c = properties.get("classification")
    if isinstance(c, dict):
        return c.get("name")
    return c if isinstance(c, str) else None


def read_geojson_boxes(
    path: str | os.PathLike[str],
    image_size: tuple[int, int] | None = None,
    classes: set[str] | None = None,
) -> GeoJSONBoxes:
    """Boxes of the polygon features of a GeoJSON file, pathodet's or QuPath's.

    Args:
        path: the file (UTF-8 JSON; NaN and Infinity accepted, as QuPath writes them).
        image_size: ``(width, height)`` pixels (level 0) of the image the file belongs to.
            When given, boxes are fitted to it by the rule of every pathodet reader
            (:func:`pathodet.data.boxes.validate_boxes`, as for VOC annotations and the
            predictions CSV): a sub-pixel or small overhang is clipped and counted in
            ``clipped``; a box wholly outside, or overhanging by more than
            :func:`~pathodet.data.boxes.overhang_allowance`, is a problem.
        classes: read only features of these classification names; ``None``: all.

    Returns:
        :class:`GeoJSONBoxes`; a bad feature is a problem and the others are read.

    Raises:
        GeoJSONError: the file cannot be read or is not GeoJSON (the message names it).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GeoJSONError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeoJSONError(f"{path}: not JSON ({exc})") from exc
    boxes: list[tuple[float, ...]] = []
    scores: list[float] = []
    labels: list[str] = []
    out = GeoJSONBoxes(np.zeros((0, 4)), np.zeros(0))
    for i, feat in enumerate(_features(data, path)):
        if not isinstance(feat, dict):
            out.problems.append(Problem(str(path), f"feature {i}: not a GeoJSON object"))
            continue
        where = f"feature {i}" + (f" (id {feat['id']})" if "id" in feat else "")
        props = feat.get("properties") or {}
        geometry = feat.get("geometry")
        if not isinstance(geometry, dict) or geometry.get("type") not in BOX_GEOMETRIES:
            out.skipped += 1
            continue
        if classes is not None and _class_name(props) not in classes:
            out.skipped += 1
            continue
        try:
            box, score = _bounds(geometry), _score(props)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            out.problems.append(Problem(str(path), f"{where}: {exc}"))
            continue
        if box[2] <= box[0] or box[3] <= box[1]:
            out.problems.append(Problem(str(path), f"{where}: box {_fmt(box)} has no area"))
            continue
        boxes.append(box)
        scores.append(score)
        labels.append(where)
    out.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    out.scores = np.asarray(scores, np.float64)
    if image_size is not None and len(out.boxes):
        # the one rule of every reader (pathodet.data.boxes): its messages and count, and
        # the clipped coordinates in float64 (level-0 slide pixels need the precision)
        w, h = image_size
        _, out.clipped, problems = validate_boxes(out.boxes, w, h, str(path), labels)
        out.problems += problems
        fit = fit_to_image(out.boxes, w, h)
        out.boxes, out.scores = fit.boxes[fit.kept], out.scores[fit.kept]
    return out


def _fmt(box: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def read_geojson(
    path: str | os.PathLike[str], image_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` (bounding boxes of the polygons, pixels) and scores ``(N,)`` of a
    detections file (:func:`read_geojson_boxes` with every class).

    Raises:
        GeoJSONError: the file is not GeoJSON, or a feature is bad or outside the image
            (the message names the file and the feature).
    """
    found = read_geojson_boxes(path, image_size)
    if found.problems:
        more = f" (and {len(found.problems) - 1} more)" if len(found.problems) > 1 else ""
        raise GeoJSONError(f"{found.problems[0].file}: {found.problems[0].error}{more}")
    return found.boxes, found.scores
