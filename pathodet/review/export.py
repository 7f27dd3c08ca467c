"""Reviewed cases back into training data: a DigestPath-layout copy with the new annotations.

``pathodet review export`` writes ``out`` as a DigestPath root that ``pathodet train`` reads:

* every image of the data root, hard-linked (or copied) into ``sig-train-pos/`` or
  ``sig-train-neg/``;
* for AP images, a VOC XML holding the original annotated boxes plus the detections the
  reviewers accepted and the cells they added (an accepted detection that is the same cell
  as an annotated box, by :func:`pathodet.model.boxes.same_cell`, IoU >= 0.3 as the
  evaluation's matching, is not added twice);
* an NP image on which a reviewer confirmed an SRC is not normal: it is exported as AP
  with that annotation, and listed under ``relabelled`` in the report;
* ``hard_negatives.csv``: every rejected detection (image, box, score, reviewer): cells a
  pathologist looked at and called not-SRC, the confirmed hard negatives;
* ``slides/<name>.reviewed.geojson``: decisions on whole slides, as QuPath annotations
  (:func:`decision_feature`: class ``SRC`` for accepted and added cells, ``Not SRC`` for
  rejected ones; reviewer, decision and time in the ``metadata`` QuPath keeps);
* ``export.json``: what was written; written last.

Every file is written atomically, and the export only writes inside ``out``: a killed
export run again completes with nothing duplicated, and removes the temporary files that
the kill left.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_text, link_or_copy, remove_stale_temps
from pathodet.data.digestpath import NEG_DIR, POS_DIR
from pathodet.data.geojson import (
    SCORE,
    SRC_CLASS,
    feature_id,
    has_area,
    qupath_class,
    rectangle,
)
from pathodet.data.images import image_size
from pathodet.data.voc import write_voc
from pathodet.model.boxes import same_cell
from pathodet.review.cases import Case
from pathodet.review.store import Decision, ReviewStore

NOT_SRC_CLASS = {"name": "Not SRC", "color": [140, 140, 140]}
"""QuPath classification of a detection a reviewer rejected (grey, as in the review app)."""


def merged_annotations(annotated: np.ndarray, decisions: list[Decision]) -> np.ndarray:
    """``(M', 4)`` boxes (image pixels): the annotated boxes plus the accepted and added
    cells that are not the same cell (:func:`pathodet.model.boxes.same_cell`) as one
    already there, so one cell gets one box under the rule evaluation matches by. A
    decided box with no area is left out."""
    boxes = [np.asarray(annotated, np.float64).reshape(-1, 4)]
    for d in decisions:
        if d.action not in ("accept", "add") or not has_area(d.box):
            continue  # a box with no area (after rounding to 0.01 px) is no cell
        b = np.asarray(d.box, np.float64).reshape(1, 4)
        have = np.concatenate(boxes)
        if same_cell(b, have).any():
            continue
        boxes.append(b)
    return np.concatenate(boxes)


def decision_feature(d: Decision) -> dict:
    """One slide decision as a QuPath annotation (GeoJSON as QuPath 0.4-0.6 reads it, see
    :mod:`pathodet.data.geojson`): a rectangle in level-0 pixels, a UUID ``id`` fixed by
    the case and decision, class ``SRC`` (accept, add) or ``Not SRC`` (reject), the
    detection's score as measurement ``score`` when it has one, and reviewer, decision and
    time (ISO 8601, UTC) as ``metadata`` strings.

    An annotation, not a detection: QuPath keeps ``metadata`` on annotations (objects that
    store metadata) and drops every property it does not know, so the reviewer, decision
    and time survive an import only there; pathologists can also edit annotations."""
    props: dict = {
        "objectType": "annotation",
        "classification": qupath_class(NOT_SRC_CLASS if d.action == "reject" else SRC_CLASS),
    }
    if d.score is not None:
        props["measurements"] = {SCORE: d.score}
    props["metadata"] = {"reviewer": d.reviewer, "decision": d.action, "time": d.created_at}
    return {
        "type": "Feature",
        "id": feature_id(d.case_name, d.id, d.cell),
        "geometry": {"type": "Polygon", "coordinates": rectangle(d.box)},
        "properties": props,
    }


def remove_temp_files(out: Path) -> None:
    """Delete the temporary files (``.NAME.*.tmp``, ``.NAME.link.tmp``) that an export killed
    mid-write left in the files and folders :func:`export_reviews` writes."""
    patterns = (".hard_negatives.csv.*.tmp", ".export.json.*.tmp", f"{POS_DIR}/.*.tmp",
                f"{NEG_DIR}/.*.tmp", "slides/.*.tmp")  # fmt: skip
    remove_stale_temps(out, patterns)


def export_reviews(store: ReviewStore, run: str, cases: list[Case], out: Path) -> dict:
    """Write the reviewed copy of ``cases`` (see the module docstring); returns the report."""
    remove_temp_files(out)
    by_case: dict[str, list[Decision]] = {}
    for d in store.decisions(run):
        by_case.setdefault(d.case_name, []).append(d)
    report: dict = {"run": run, "images": 0, "ap": 0, "np": 0, "added_boxes": 0,
                    "hard_negatives": 0, "relabelled": [], "slides": []}  # fmt: skip
    negatives = io.StringIO()
    writer = csv.writer(negatives, lineterminator="\n")
    writer.writerow(["image", "x1", "y1", "x2", "y2", "score", "reviewer"])
    for case in cases:
        decisions = by_case.get(case.name, [])
        for d in decisions:
            if d.action == "reject":
                writer.writerow([case.name, *(f"{v:.1f}" for v in d.box),
                                 "" if d.score is None else f"{d.score:.4f}", d.reviewer])  # fmt: skip
                report["hard_negatives"] += 1
        if case.kind == "slide":
            if decisions:
                doc = {
                    "type": "FeatureCollection",
                    "features": [decision_feature(d) for d in decisions if has_area(d.box)],
                }
                path = out / "slides" / f"{Path(case.name).stem}.reviewed.geojson"
                atomic_write_text(path, json.dumps(doc))
                report["slides"].append(str(path.relative_to(out)))
            continue
        boxes = merged_annotations(case.annotated, decisions)
        attribute = case.attribute
        if attribute == "NP" and len(boxes):
            attribute = "AP"
            report["relabelled"].append(case.name)
        folder = out / (POS_DIR if attribute == "AP" else NEG_DIR)
        stale = out / (NEG_DIR if attribute == "AP" else POS_DIR)  # from an earlier export
        (stale / case.name).unlink(missing_ok=True)
        (stale / f"{Path(case.name).stem}.xml").unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / case.name
        if not target.exists():
            link_or_copy(case.path, target)
        if attribute == "AP":
            w, h = image_size(case.path, verify=False)  # header only, under the pixel guard
            write_voc(folder / f"{Path(case.name).stem}.xml", case.name, w, h, boxes, None)
            report["added_boxes"] += int(len(boxes) - len(case.annotated))
        report["images"] += 1
        report["ap" if attribute == "AP" else "np"] += 1
    atomic_write_text(out / "hard_negatives.csv", negatives.getvalue())
    atomic_write_text(out / "export.json", json.dumps(report, indent=1))
    return report
