"""Reading a DigestPath 2019 (task 1) dataset, or any partially annotated set via a manifest.

Layout of the released data, taken as it is::

    <root>/sig-train-pos/<stem>.jpeg   AP images (abnormal: some SRCs boxed, many not)
    <root>/sig-train-pos/<stem>.xml    VOC boxes of the annotated SRCs
                                       (or <stem>.geojson: a QuPath export, when no .xml)
    <root>/sig-train-neg/<stem>.jpeg   NP images (normal: no SRC at all)
    <root>/sig-train-neg/<stem>.xml    optional, holds no object

Every image carries its attribute, AP or NP, from its folder (or manifest row). This module
lists images (:class:`ImageRecord`) without opening them; :mod:`pathodet.data.samples`
opens and validates them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pathodet.core.io import atomic_write_text
from pathodet.data.names import case_of, parse_digestpath_name

Attribute = Literal["AP", "NP", "unknown"]
"""``unknown``: a pseudo-labeled tile from an unlabeled slide or image (PU purification);
its negatives are as uncertain as an AP image's. Datasets and manifests hold AP and NP only."""
POS_DIR = "sig-train-pos"
NEG_DIR = "sig-train-neg"
FULL_DIR = "full-annotations"  # synthetic data only: every SRC, annotated or not
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".tif", ".tiff")
MANIFEST_COLUMNS = ("image", "attribute", "annotation")


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file: the file and what is wrong, as the user should read it."""

    file: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "error": self.error}


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset before it is opened.

    Attributes:
        image: path of the image file.
        attribute: ``"AP"`` (abnormal, partially annotated) or ``"NP"`` (normal, no SRC);
            ``"unknown"`` only for pseudo-labeled tiles (:mod:`pathodet.data.pseudo`).
        annotation: path of its VOC XML or QuPath GeoJSON, or ``None`` when there is none.
        slide_id: the slide the image was cut from.
        fold: the cross-validation fold when read from a split manifest, else ``None``.
        case_id: the patient case of the slide (default grouping key for folds); empty
            means "parse it from the slide id" (:func:`pathodet.data.names.case_of`).
    """

    image: Path
    attribute: Attribute
    annotation: Path | None
    slide_id: str
    fold: int | None = None
    case_id: str = ""

    def __post_init__(self) -> None:
        if not self.case_id:
            object.__setattr__(self, "case_id", case_of(self.slide_id))

    @property
    def name(self) -> str:
        """The file name, the key by which predictions and metrics refer to the image."""
        return self.image.name


class DatasetError(ValueError):
    """The dataset as a whole cannot be used (missing root, no image at all)."""


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


ANNOTATION_SUFFIXES = (".xml", ".geojson")
"""Annotation files beside an image, in order of preference: ``<stem>.xml`` (VOC, as
DigestPath ships them), else ``<stem>.geojson`` (a QuPath export, :mod:`pathodet.data.qupath`)."""


def _sidecar_xml(image: Path) -> Path | None:
    """The annotation file beside ``image``: ``<stem>.xml``, else ``<stem>.geojson``, else None."""
    for suffix in ANNOTATION_SUFFIXES:
        found = image.with_suffix(suffix)
        if found.is_file():
            return found
    return None


def scan_digestpath(root: str | os.PathLike[str]) -> list[ImageRecord]:
    """List the images of a DigestPath-layout root, AP first, each folder sorted by name.

    Raises:
        DatasetError: the root does not exist or holds neither ``sig-train-pos`` nor
            ``sig-train-neg``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist or is not a folder")
    if not (root / POS_DIR).is_dir() and not (root / NEG_DIR).is_dir():
        raise DatasetError(
            f"{root}: not a DigestPath layout (expected {POS_DIR}/ and/or {NEG_DIR}/ inside)"
        )
    records: list[ImageRecord] = []
    for folder, attribute in ((POS_DIR, "AP"), (NEG_DIR, "NP")):
        for image in _images_in(root / folder):
            records.append(
                ImageRecord(
                    image=image,
                    attribute=attribute,
                    annotation=_sidecar_xml(image),
                    slide_id=parse_digestpath_name(image.stem).slide_id,
                )
            )
    return records


def read_manifest(path: str | os.PathLike[str]) -> list[ImageRecord]:
    """Read a manifest CSV: columns ``image,attribute,annotation`` (+ optional ``slide_id``, ``case_id``, ``fold``).

    Relative paths are taken relative to the manifest's folder. ``annotation`` may be empty.
    ``slide_id`` defaults to the one parsed from the image name, ``case_id`` to the case
    that slide id names.

    Raises:
        DatasetError: the file is missing, lacks a required column, or a row is malformed
            (the message names the file and the line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read manifest: {exc.strerror or exc}") from exc
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in ("image", "attribute") if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    base = path.parent
    records = []
    for row in reader:
        line = reader.line_num  # physical line: blank lines are skipped but still counted
        image = (row.get("image") or "").strip()
        attribute = (row.get("attribute") or "").strip().upper()
        if not image:
            raise DatasetError(f"{path}, line {line}: empty image path")
        if attribute not in ("AP", "NP"):
            raise DatasetError(
                f"{path}, line {line}: attribute must be AP or NP, got {row.get('attribute')!r}"
            )
        ann = (row.get("annotation") or "").strip()
        fold_text = (row.get("fold") or "").strip()
        try:
            fold = int(fold_text) if fold_text else None
        except ValueError as exc:
            raise DatasetError(
                f"{path}, line {line}: fold {fold_text!r} is not an integer"
            ) from exc
        image_path = base / image
        records.append(
            ImageRecord(
                image=image_path,
                attribute=attribute,  # type: ignore[arg-type]
                annotation=(base / ann) if ann else None,
                slide_id=(row.get("slide_id") or "").strip()
                or parse_digestpath_name(image_path.stem).slide_id,
                fold=fold,
                case_id=(row.get("case_id") or "").strip(),
            )
        )
    return records


def write_manifest(
    path: str | os.PathLike[str], records: Sequence[ImageRecord], *, relative_to: Path | None = None
) -> Path:
    """Write records as a manifest CSV (atomically), with ``slide_id``, ``fold``, ``case_id``."""
    path = Path(path)
    base = (relative_to or path.parent).resolve()

    def rel(p: Path | None) -> str:
        if p is None:
            return ""
        p = p.resolve()
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            return p.as_posix()

    lines: list[list[str]] = [[*MANIFEST_COLUMNS, "slide_id", "fold", "case_id"]]
    for r in records:
        fold = "" if r.fold is None else str(r.fold)
        lines.append([rel(r.image), r.attribute, rel(r.annotation), r.slide_id, fold, r.case_id])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    return atomic_write_text(path, buf.getvalue())


def load_records(source: str | os.PathLike[str]) -> list[ImageRecord]:
    """Records of a DigestPath root (a folder) or a manifest (a ``.csv`` file)."""
    source = Path(source)
    if source.suffix.lower() == ".csv":
        return read_manifest(source)
    return scan_digestpath(source)
