"""Detections as GeoJSON that QuPath (0.4+) imports as detection objects.

Each detection is a rectangle ``Polygon`` in image pixels (level 0 for slides; y down, as
QuPath), with ``objectType: detection``, the class ``SRC`` and the score as a measurement.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_text

SRC_CLASS = {"name": "SRC", "color": [220, 30, 30]}


def detections_geojson(boxes: np.ndarray, scores: np.ndarray, image: str | None = None) -> dict:
    """A FeatureCollection of ``(N, 4)`` boxes ``x1, y1, x2, y2`` with ``(N,)`` scores."""
    feats = []
    for (x1, y1, x2, y2), s in zip(np.asarray(boxes, float).reshape(-1, 4), scores, strict=True):
        ring = [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
        feats.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[round(float(a), 2),
                                                              round(float(b), 2)]
                                                             for a, b in ring]]},
            "properties": {"objectType": "detection", "classification": SRC_CLASS,
                           "measurements": {"score": round(float(s), 6)}},
        })  # fmt: skip
    out: dict = {"type": "FeatureCollection", "features": feats}
    if image is not None:
        out["properties"] = {"image": image}
    return out


def write_geojson(path: str | os.PathLike[str], boxes, scores, image: str | None = None) -> Path:
    return atomic_write_text(path, json.dumps(detections_geojson(boxes, scores, image)))


def read_geojson(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` (bounding boxes of the polygons) and scores of a detections file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    boxes, scores = [], []
    for f in data.get("features", []):
        ring = np.asarray(f["geometry"]["coordinates"][0], float)
        boxes.append([ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()])
        scores.append(float(f.get("properties", {}).get("measurements", {}).get("score", 1.0)))
    return np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float)
