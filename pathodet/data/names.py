"""DigestPath file names: slide id, scan time and level-0 position of each image.

Released images are named like::

    2018_64982_1-3_2019-02-25 21_57_36-lv0-33516-59515-2003-2010.jpeg
    <slide id>   _<scan date> <scan time>-lv0-<x>-<y>-<width>-<height>

The slide id is everything before the scan date; images cut from one slide share it
and must stay in one cross-validation fold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_NAME = re.compile(
    r"^(?P<slide>.+?)_(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}_\d{2}_\d{2})"
    r"(?:-lv(?P<level>\d+)-(?P<x>\d+)-(?P<y>\d+)-(?P<w>\d+)-(?P<h>\d+))?$"
)


@dataclass(frozen=True)
class DigestPathName:
    """The parts of a DigestPath image name; position fields are level-0 pixels or ``None``."""

    slide_id: str
    scan_time: datetime | None
    level: int | None = None
    x: int | None = None
    y: int | None = None
    width: int | None = None
    height: int | None = None


def parse_digestpath_name(stem: str) -> DigestPathName:
    """Split a file stem (no suffix) into its parts.

    Names that do not follow the DigestPath pattern are their own slide: the whole stem
    becomes the slide id, so grouping still works (each such image is its own group).
    """
    m = _NAME.match(stem)
    if m is None:
        return DigestPathName(slide_id=stem, scan_time=None)
    try:
        scan: datetime | None = datetime.strptime(f"{m['date']} {m['time']}", "%Y-%m-%d %H_%M_%S")
    except ValueError:  # looks like a date but is none (e.g. 2019-02-31): keep the slide id
        scan = None
    pos = (
        {k: int(m[k]) for k in ("level", "x", "y")} | {"width": int(m["w"]), "height": int(m["h"])}
        if m["level"] is not None
        else {}
    )
    return DigestPathName(slide_id=m["slide"], scan_time=scan, **pos)


def digestpath_name(
    slide_id: str, scan_time: datetime, x: int, y: int, width: int, height: int
) -> str:
    """Compose a stem in the DigestPath pattern (level 0), e.g. for synthetic data."""
    return (
        f"{slide_id}_{scan_time:%Y-%m-%d %H_%M_%S}-lv0-{int(x)}-{int(y)}-{int(width)}-{int(height)}"
    )
