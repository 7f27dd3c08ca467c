"""QuPath GeoJSON annotations, read as training annotations beside VOC XML.

A pathologist who boxes SRCs in QuPath exports them with *File > Export objects as
GeoJSON*. What QuPath 0.6 writes (the files in ``../shared/realdata/qupath-geojson``)::

    {"type": "FeatureCollection", "features": [
      {"type": "Feature", "id": "...",
       "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x, y], ...]]},
       "properties": {"objectType": "annotation",
                      "classification": {"name": "Tumor", "color": [200, 0, 0]},
                      "measurements": {"Area": 12.5, "Ratio": NaN}}}, ...]}

or a bare list of Features, or one Feature. Coordinates are pixels of the full-resolution
image (level 0 of a slide), continuous, origin at the top-left corner: the same grid as a
VOC file's. Measurements may hold ``NaN`` and ``Infinity``, which QuPath writes and
Python's ``json`` accepts.

Each object becomes boxes (``x1, y1, x2, y2`` pixels):

- ``Polygon`` (a rectangle is a 5-point polygon), ``MultiPolygon``: one box, the bounding
  box of its outer ring(s): one object is one cell, even in several parts.
- ``Point``: one square box of :attr:`~pathodet.data.voc.AnnotationRules.point_box_px`
  centred on it; ``MultiPoint`` (QuPath's counting tool): one such box per point.
- other geometries (lines): skipped, noted in ``issues``.

Objects of type ``annotation``, ``detection`` and ``cell`` are read (a bare geometry counts
as an annotation); others (``tile``, ``tma_core``...) are skipped and noted. The class is
``classification.name``: names in ``AnnotationRules.src_names`` are SRC boxes, other
classes are counted in ``other_classes`` and skipped, and unclassified objects are SRC
boxes unless ``AnnotationRules.unnamed_src`` is false.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pathodet.data.voc import (
    AnnotationError,
    AnnotationRules,
    VocAnnotation,
    read_annotation_bytes,
)

GEOJSON_SUFFIXES = (".geojson",)
"""Suffixes of a QuPath annotation file beside its image (``<stem>.geojson``)."""

OBJECT_TYPES = ("annotation", "detection", "cell")
"""QuPath object types read as annotations (``properties.objectType``)."""

_GEOMETRIES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon",
               "MultiPolygon", "GeometryCollection")  # fmt: skip


def _position(p: Any) -> tuple[float, float]:
    if isinstance(p, (list, tuple)) and len(p) >= 2:
        x, y = p[0], p[1]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            x, y = float(x), float(y)
            if math.isfinite(x) and math.isfinite(y):
                return x, y
            raise ValueError(f"coordinate ({x}, {y}) is not finite")
    raise ValueError(f"coordinate {json.dumps(p)[:40]} is not [x, y] numbers")


def _ring_box(ring: Any) -> list[float]:
    if not isinstance(ring, list) or not ring:
        raise ValueError("a polygon ring holds no coordinate")
    pts = np.array([_position(p) for p in ring])
    return [*pts.min(axis=0).tolist(), *pts.max(axis=0).tolist()]


def _outer_rings(geometry: dict) -> list[Any]:
    coords = geometry.get("coordinates")
    if not isinstance(coords, list) or not coords:
        raise ValueError(f"{geometry.get('type')} without coordinates")
    if geometry["type"] == "Polygon":
        return [coords[0]]
    if not all(isinstance(poly, list) and poly for poly in coords):
        raise ValueError("a MultiPolygon part holds no ring")
    return [poly[0] for poly in coords]


def geometry_boxes(geometry: Any, point_box_px: float) -> list[list[float]]:
    """Boxes ``[x1, y1, x2, y2]`` (pixels) of one GeoJSON geometry, as the module says.

    Raises:
        ValueError: not a geometry, a line, or coordinates that are not finite numbers.
    """
    if not isinstance(geometry, dict) or geometry.get("type") not in _GEOMETRIES:
        kind = geometry.get("type") if isinstance(geometry, dict) else type(geometry).__name__
        raise ValueError(f"no GeoJSON geometry (found {kind!r})")
    kind = geometry["type"]
    half = point_box_px / 2
    if kind in ("Polygon", "MultiPolygon"):
        boxes = np.array([_ring_box(r) for r in _outer_rings(geometry)])
        return [[*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()]]
    if kind in ("Point", "MultiPoint"):
        coords = geometry.get("coordinates")
        points = [coords] if kind == "Point" else coords
        if not isinstance(points, list) or not points:
            raise ValueError(f"{kind} without coordinates")
        centres = [_position(p) for p in points]
        return [[x - half, y - half, x + half, y + half] for x, y in centres]
    raise ValueError(f"geometry {kind} is not a cell outline or a point")


def _features(doc: Any) -> list[Any]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        kind = doc.get("type")
        if kind == "FeatureCollection":
            features = doc.get("features")
            if isinstance(features, list):
                return features
            raise ValueError("a FeatureCollection without a 'features' list")
        if kind == "Feature":
            return [doc]
        if kind in _GEOMETRIES:
            return [{"type": "Feature", "geometry": doc, "properties": {}}]
        raise ValueError(f"GeoJSON type {kind!r} is not a FeatureCollection, Feature or geometry")
    raise ValueError(f"a JSON {type(doc).__name__}, not GeoJSON")


def _class_name(props: dict) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        return name if isinstance(name, str) else None
    return cls if isinstance(cls, str) else None


def read_qupath(
    path: str | os.PathLike[str], rules: AnnotationRules | None = None
) -> VocAnnotation:
    """Read a QuPath GeoJSON export as annotation boxes (pixels of the annotated image).

    Returns a :class:`~pathodet.data.voc.VocAnnotation` without image size (GeoJSON has
    none): the caller checks boxes against the image. Objects that cannot be read are
    skipped and listed in ``issues`` (``feature 3: ...``); objects of other classes are
    counted in ``other_classes``. An empty file gives zero boxes.

    Raises:
        AnnotationError: the file cannot be read, is not JSON, or is not GeoJSON.
    """
    rules = rules or AnnotationRules()
    path = Path(path)
    raw = read_annotation_bytes(path)
    if raw is None:
        return VocAnnotation(None, None, np.zeros((0, 4), np.float32))
    try:
        features = _features(json.loads(raw))
    except RecursionError:
        raise AnnotationError(path, "not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and ours
        raise AnnotationError(path, f"not QuPath GeoJSON: {exc}") from None

    boxes: list[list[float]] = []
    labels: list[str] = []
    issues: list[str] = []
    others: Counter[str] = Counter()
    for k, feature in enumerate(features):
        if not isinstance(feature, dict):
            issues.append(f"feature {k}: not a JSON object; skipped")
            continue
        props = feature.get("properties")
        props = props if isinstance(props, dict) else {}
        kind = props.get("objectType", props.get("object_type", "annotation"))
        if kind not in OBJECT_TYPES:
            issues.append(f"feature {k}: objectType {kind!r} is not one of "
                          f"{', '.join(OBJECT_TYPES)}; skipped")  # fmt: skip
            continue
        name = _class_name(props)
        if not rules.is_src(name):
            others[(name or "").strip() or "(unclassified)"] += 1
            continue
        try:
            found = geometry_boxes(feature.get("geometry"), rules.point_box_px)
        except (ValueError, RecursionError) as exc:
            issues.append(f"feature {k}: {exc}; skipped")
            continue
        boxes += found
        labels += (
            [f"feature {k}"]
            if len(found) == 1
            else [f"feature {k} point {j}" for j in range(len(found))]
        )
    arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    return VocAnnotation(None, None, arr, None, issues, dict(others), labels)
