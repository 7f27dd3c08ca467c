"""PASCAL VOC XML annotations as DigestPath ships them.

A DigestPath 2019 annotation looks like::

    <annotation>
      <size><width>2000</width><height>2000</height></size>
      <object>
        <name>ring_cell_cancer</name>
        <bndbox><xmin>12.0</xmin><ymin>40.5</ymin><xmax>61</xmax><ymax>88</ymax></bndbox>
      </object>
      ...
    </annotation>

Boxes are ``(x1, y1, x2, y2)`` in pixels of the image they belong to, on continuous
coordinates; the files may write them as floats.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
import numpy as np
from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden

from pathodet.core.io import atomic_write_text

SRC_NAME = "ring_cell_cancer"


class AnnotationError(ValueError):
    """An annotation file that cannot be used at all (unreadable or malformed XML)."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = str(path)
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclass
class VocAnnotation:
    """What one VOC file says.

    Attributes:
        width, height: the ``<size>`` entry in pixels, or ``None`` when absent/unparsable.
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` of every object whose four numbers parsed.
        scores: ``(N,)`` float32 scores when the file carries them (predictions), else ``None``.
        issues: human-readable notes about objects that could not be parsed (skipped).
    """

    width: int | None
    height: int | None
    boxes: np.ndarray
    scores: np.ndarray | None = None
    issues: list[str] = field(default_factory=list)


def _number(node: Element | None, tag: str) -> float:
    if node is None:
        raise ValueError("missing <bndbox>")
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"missing <{tag}>")
    value = float(child.text.strip())
    if not np.isfinite(value):
        raise ValueError(f"<{tag}> is not finite: {child.text.strip()!r}")
    return value


def parse_xml(raw: bytes, path: str | os.PathLike[str]) -> Element:
    """Parse untrusted XML with ``defusedxml``: a document type declaration (DTD), entity
    declarations and external references are refused, so neither an external entity (XXE,
    e.g. ``<!ENTITY x SYSTEM "file:///etc/passwd">``) nor nested entities (billion laughs)
    are ever expanded. Annotation files need none of them.

    Raises:
        AnnotationError: malformed XML, or XML declaring a DTD or entities; the message
            names ``path``.
    """
    try:
        return SafeET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DTDForbidden as exc:
        raise AnnotationError(
            path,
            f"refused: the XML declares a DTD (<!DOCTYPE {exc.name}>); DTDs and entities are "
            "refused in annotation files (they allow external-entity and billion-laughs attacks)",
        ) from None
    except EntitiesForbidden as exc:
        raise AnnotationError(
            path, f"refused: the XML declares entity {exc.name!r}; DTDs and entities are refused"
        ) from None
    except DefusedXmlException as exc:
        raise AnnotationError(
            path, f"refused: {exc}; DTDs, entities and external references are refused"
        ) from None
    except SafeET.ParseError as exc:
        raise AnnotationError(path, f"malformed XML: {exc}") from exc


def read_voc(path: str | os.PathLike[str]) -> VocAnnotation:
    """Parse a VOC XML file.

    An empty file or one with no ``<object>`` gives zero boxes. Objects with missing or
    non-numeric coordinates are skipped and listed in ``issues``; geometric checks
    (``xmin >= xmax``, outside the image) are the caller's, who knows the image size.

    The XML is parsed with :func:`parse_xml`: DTDs and entities are refused.

    Raises:
        AnnotationError: the file cannot be read, is not well-formed XML, or declares a
            DTD or entities.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(path, f"cannot read annotation: {exc.strerror or exc}") from exc
    if not raw.strip():
        return VocAnnotation(None, None, np.zeros((0, 4), np.float32))
    root = parse_xml(raw, path)

    width = height = None
    size = root.find("size")
    if size is not None:
        try:
            width = int(round(_number(size, "width")))
            height = int(round(_number(size, "height")))
        except ValueError:
            width = height = None

    boxes: list[list[float]] = []
    scores: list[float] = []
    issues: list[str] = []
    for k, obj in enumerate(root.iter("object")):
        try:
            bnd = obj.find("bndbox")
            box = [_number(bnd, t) for t in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as exc:
            issues.append(f"object {k}: {exc}")
            continue
        boxes.append(box)
        score = obj.find("score")
        if score is not None and score.text:
            try:
                scores.append(float(score.text))
            except ValueError:
                issues.append(f"object {k}: score {score.text!r} is not a number")
    arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    score_arr = np.asarray(scores, np.float32) if scores and len(scores) == len(boxes) else None
    return VocAnnotation(width, height, arr, score_arr, issues)


def voc_xml(
    filename: str,
    width: int,
    height: int,
    boxes: np.ndarray,
    scores: np.ndarray | None = None,
    name: str = SRC_NAME,
) -> str:
    """Render a VOC XML document for ``boxes`` (``(N, 4)`` pixels) of one image."""
    boxes = np.asarray(boxes)
    if boxes.dtype not in (np.float32, np.float64):
        boxes = boxes.astype(np.float64)
    boxes = boxes.reshape(-1, 4)
    lines = [
        "<annotation>",
        f"  <filename>{escape(filename)}</filename>",
        f"  <size><width>{int(width)}</width><height>{int(height)}</height><depth>3</depth></size>",
    ]
    for i, box in enumerate(boxes):
        # shortest text that reads back to the same value of the array's dtype (``:g`` kept
        # only 6 digits: 1234.5678 became 1234.57)
        x1, y1, x2, y2 = (np.format_float_positional(v, unique=True, trim="-") for v in box)
        lines.append("  <object>")
        lines.append(f"    <name>{escape(name)}</name>")
        if scores is not None:
            lines.append(f"    <score>{float(scores[i]):.6f}</score>")
        lines.append(
            f"    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
        )
        lines.append("  </object>")
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def write_voc(
    path: str | os.PathLike[str],
    filename: str,
    width: int,
    height: int,
    boxes: np.ndarray,
    scores: np.ndarray | None = None,
) -> Path:
    """Write a VOC XML file atomically. See :func:`voc_xml`."""
    return atomic_write_text(path, voc_xml(filename, width, height, boxes, scores))
