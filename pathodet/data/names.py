"""DigestPath file names: slide id, case id, scan time and level-0 position of each image.

Released images are named like::

    2018_64982_1-3_2019-02-25 21_57_36-lv0-33516-59515-2003-2010.jpeg
    <slide id>   _<scan date> <scan time>-lv0-<x>-<y>-<width>-<height>

The slide id is everything before the scan date; images cut from one slide share it.
Some NP slides carry no name at all, only the scan stamp::

    2018-07-04 00_01_20-lv0-27019-31137-2000-2000.jpeg

and then the scan stamp itself is the slide id (one scan, one slide).

Several slides may come from one patient case; the case shows in the slide name in the
release's namings (see :func:`case_of`). Cross-validation folds keep a case together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_STAMP = r"(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}_\d{2}_\d{2})"
_POSITION = r"(?:-lv(?P<level>\d+)-(?P<x>\d+)-(?P<y>\d+)-(?P<w>\d+)-(?P<h>\d+))?$"
_NAME = re.compile(r"^(?P<slide>.+?)_" + _STAMP + _POSITION)
_STAMP_ONLY = re.compile(r"^" + _STAMP + _POSITION)

# Slide namings of the DigestPath 2019 task-1 release and the case each shows (checked
# on the released training names; the block/slide suffix is what is dropped):
_CASE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # 2018_67251_1-3: year, case number, block -> 2018_67251
    (re.compile(r"^(\d{4}_\d+)_[\d-]+$"), r"\1"),
    # 2019-32176-1-1-1: year-case-block... -> 2019-32176
    (re.compile(r"^(\d{4}-\d+)-[\d-]+$"), r"\1"),
    # 18-36771A, 18-36771B: year-case and a block letter -> 18-36771
    (re.compile(r"^(\d{2}-\d+)[A-Z]$"), r"\1"),
    # 1901991002, 1901991003: 7-digit case and 3-digit block -> 1901991
    (re.compile(r"^(\d{7})\d{3}$"), r"\1"),
    # 1901940-1, G1900703-2: case and block after a hyphen -> 1901940, G1900703
    (re.compile(r"^([A-Z]?\d{7})-\d+$"), r"\1"),
    # D20190116702: D, year, 5-digit case, 2-digit block -> D2019 01167
    (re.compile(r"^(D\d{4}\d{5})\d{2}$"), r"\1"),
)


def case_of(slide_id: str) -> str:
    """The patient case a slide id names, or the slide id itself when it shows none.

    ``2018_67251_1-3`` -> ``2018_67251``; ``18-36771A`` -> ``18-36771``;
    ``1901991002`` -> ``1901991``; ``1901940-1`` -> ``1901940``;
    ``2019-32176-1-1-1`` -> ``2019-32176``; ``D20190116702`` -> ``D201901167``;
    a scan stamp or any other name -> unchanged (the slide is its own case).
    """
    for pattern, case in _CASE_RULES:
        if pattern.match(slide_id):
            return pattern.sub(case, slide_id)
    return slide_id


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

    @property
    def case_id(self) -> str:
        """The patient case (:func:`case_of` of the slide id)."""
        return case_of(self.slide_id)


def parse_digestpath_name(stem: str) -> DigestPathName:
    """Split a file stem (no suffix) into its parts.

    A stem that is only a scan stamp and position names its slide by the stamp
    (``2018-07-04 00_01_20``). Names that follow no DigestPath pattern are their own
    slide: the whole stem becomes the slide id, so grouping still works.
    """
    m = _NAME.match(stem)
    stamp_only = _STAMP_ONLY.match(stem)
    if stamp_only is not None:
        m = stamp_only
        slide = f"{m['date']} {m['time']}"
    elif m is not None:
        slide = m["slide"]
    else:
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
    return DigestPathName(slide_id=slide, scan_time=scan, **pos)


def digestpath_name(
    slide_id: str, scan_time: datetime, x: int, y: int, width: int, height: int
) -> str:
    """Compose a stem in the DigestPath pattern (level 0), e.g. for synthetic data."""
    return (
        f"{slide_id}_{scan_time:%Y-%m-%d %H_%M_%S}-lv0-{int(x)}-{int(y)}-{int(width)}-{int(height)}"
    )
