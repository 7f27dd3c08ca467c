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

Labelling tools vary: Chinese tools save ``<?xml version="1.0" encoding="GBK"?>`` (any
encoding Python's codecs know is read, see :func:`decode_xml`), multi-label exports name
other classes (``lymphocyte``, ``not_sure``: only the names in
:attr:`AnnotationRules.src_names` are SRC boxes, the others are counted and skipped), and
other detectors add elements (``<confidence>``), which are ignored.
"""

from __future__ import annotations

import codecs
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
import numpy as np
from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden

from pathodet.core.io import atomic_write_text
from pathodet.data.boxes import writable

SRC_NAME = "ring_cell_cancer"
"""The class name of an SRC box in DigestPath 2019 task 1 XML (every one of the 7,194 boxes
of the release's 64 AP images in ``../shared/digestpath``)."""

DEFAULT_POINT_BOX_PX = 56.0
"""Side, pixels, of the box put around an annotation that is a point (QuPath's point tool):
the median SRC box side of the DigestPath 2019 release (box sides 17-188 px, median 56)."""


@dataclass(frozen=True)
class AnnotationRules:
    """Which annotated objects are SRC boxes, and how big a point annotation is.

    Attributes:
        src_names: class names of SRC objects (VOC ``<name>``, QuPath
            ``classification.name``), compared without surrounding spaces and case.
        unnamed_src: an object with no class name (a VOC object without ``<name>``, an
            unclassified QuPath object) is an SRC box; a pathologist who boxes only SRCs
            often leaves them unclassified.
        point_box_px: side, pixels, of the square box centred on a point annotation.
    """

    src_names: tuple[str, ...] = (SRC_NAME,)
    unnamed_src: bool = True
    point_box_px: float = DEFAULT_POINT_BOX_PX

    def is_src(self, name: str | None) -> bool:
        """Whether an object named ``name`` (``None`` or blank: unnamed) is an SRC box."""
        if name is None or not name.strip():
            return self.unnamed_src
        return name.strip().casefold() in {n.strip().casefold() for n in self.src_names}


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
        other_classes: objects of classes that are not SRC (skipped), counted by name.
        labels: one label per box naming it in problems (``object 3``, ``feature 2``);
            empty: box ``i`` is ``box i``.
    """

    width: int | None
    height: int | None
    boxes: np.ndarray
    scores: np.ndarray | None = None
    issues: list[str] = field(default_factory=list)
    other_classes: dict[str, int] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)


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


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# "<?" in UTF-16/32 without a byte-order mark (XML 1.0, appendix F)
_NO_BOM = (
    (b"<\0\0\0", "utf-32-le"),
    (b"\0\0\0<", "utf-32-be"),
    (b"<\0?\0", "utf-16-le"),
    (b"\0<\0?", "utf-16-be"),
)
_DECLARED = re.compile(rb"""^\s*<\?xml\s[^>]*?\bencoding\s*=\s*["']([^"']*)["']""")


def decode_xml(raw: bytes, path: str | os.PathLike[str]) -> str:
    """The text of an XML document in its encoding: a byte-order mark decides, else the
    ``encoding`` of the XML declaration (any codec Python knows: GBK, GB18030, Big5,
    Shift_JIS, Latin-1, UTF-16...), else UTF-8, the XML default (XML 1.0, section 4.3.3
    and appendix F).

    Raises:
        AnnotationError: the declared encoding is unknown to Python, or the bytes are not
            valid text in it; the message names ``path``.
    """
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            encoding = codec
            break
    else:
        encoding = next((c for head, c in _NO_BOM if raw.startswith(head)), "utf-8")
        if encoding == "utf-8":
            m = _DECLARED.match(raw[:1024])
            if m:
                encoding = m.group(1).decode("ascii", "replace").strip() or "utf-8"
    try:
        return raw.decode(encoding)
    except LookupError:
        raise AnnotationError(
            path,
            f"unknown text encoding {encoding!r} in the XML declaration; save the file as "
            "UTF-8 (or in an encoding Python knows, e.g. GBK)",
        ) from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(
            path,
            f"not valid {encoding} text: byte(s) {exc.object[exc.start : exc.end]!r} at "
            f"offset {exc.start}",
        ) from None


def parse_xml(raw: bytes, path: str | os.PathLike[str]) -> Element:
    """Parse untrusted XML with ``defusedxml``: a document type declaration (DTD), entity
    declarations and external references are refused, so neither an external entity (XXE,
    e.g. ``<!ENTITY x SYSTEM "file:///etc/passwd">``) nor nested entities (billion laughs)
    are ever expanded. Annotation files need none of them.

    The bytes are decoded first (:func:`decode_xml`), so any encoding Python knows is read
    (expat alone refuses multi-byte ones such as GBK).

    Raises:
        AnnotationError: an unknown or wrong encoding, malformed XML, or XML declaring a
            DTD or entities; the message names ``path``.
    """
    text = decode_xml(raw, path)
    try:
        return SafeET.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
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
    except ValueError as exc:  # expat's own refusals, e.g. an encoding it cannot handle
        raise AnnotationError(path, f"cannot parse XML: {exc}") from None


def read_annotation_bytes(path: Path) -> bytes | None:
    """The bytes of an annotation file, or None when it is empty or only whitespace (an
    image without boxes).

    Raises:
        AnnotationError: the file cannot be read.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(path, f"cannot read annotation: {exc.strerror or exc}") from exc
    return raw if raw.strip() else None


def read_voc(path: str | os.PathLike[str], rules: AnnotationRules | None = None) -> VocAnnotation:
    """Parse a VOC XML file.

    An empty file or one with no ``<object>`` gives zero boxes. Objects with missing or
    non-numeric coordinates are skipped and listed in ``issues``; objects whose ``<name>``
    is not an SRC name of ``rules`` (default: ``ring_cell_cancer``; no ``<name>``: SRC) are
    skipped and counted in ``other_classes``. Geometric checks (``xmin >= xmax``, outside
    the image) are the caller's, who knows the image size.

    The XML is parsed with :func:`parse_xml`: any encoding Python knows; DTDs and entities
    are refused.

    Raises:
        AnnotationError: the file cannot be read, is in an unknown encoding, is not
            well-formed XML, or declares a DTD or entities.
    """
    rules = rules or AnnotationRules()
    path = Path(path)
    raw = read_annotation_bytes(path)
    if raw is None:
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
    labels: list[str] = []
    others: Counter[str] = Counter()
    for k, obj in enumerate(root.iter("object")):
        name = obj.findtext("name")
        if not rules.is_src(name):
            others[(name or "").strip() or "(unnamed)"] += 1
            continue
        try:
            bnd = obj.find("bndbox")
            box = [_number(bnd, t) for t in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as exc:
            issues.append(f"object {k}: {exc}")
            continue
        boxes.append(box)
        labels.append(f"object {k}")
        score = obj.find("score")
        if score is not None and score.text:
            try:
                scores.append(float(score.text))
            except ValueError:
                issues.append(f"object {k}: score {score.text!r} is not a number")
    arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    score_arr = np.asarray(scores, np.float32) if scores and len(scores) == len(boxes) else None
    return VocAnnotation(width, height, arr, score_arr, issues, dict(others), labels)


def voc_xml(
    filename: str,
    width: int,
    height: int,
    boxes: np.ndarray,
    scores: np.ndarray | None = None,
    name: str = SRC_NAME,
) -> str:
    """Render a VOC XML document for ``boxes`` (``(N, 4)`` pixels) of one image.

    Boxes :func:`~pathodet.data.boxes.writable` refuses (zero width or height once read
    back as float32, NaN) are left out, so that :func:`read_voc` and the sample loader
    accept every box written.
    """
    boxes = np.asarray(boxes)
    if boxes.dtype not in (np.float32, np.float64):
        boxes = boxes.astype(np.float64)
    boxes = boxes.reshape(-1, 4)
    keep = writable(boxes.astype(np.float32), scores)  # as read_voc reads them: float32
    boxes = boxes[keep]
    scores = None if scores is None else np.asarray(scores).reshape(-1)[keep]
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
    """Write a VOC XML file atomically. See :func:`voc_xml` (degenerate boxes are left out)."""
    return atomic_write_text(path, voc_xml(filename, width, height, boxes, scores))
