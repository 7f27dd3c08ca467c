"""DigestPath file names: slide id, scan time and level-0 position."""

from __future__ import annotations

import random
from datetime import datetime

import pytest
from conftest import REAL_STEM

from pathodet.data.names import DigestPathName, digestpath_name, parse_digestpath_name


def test_real_name_all_fields():
    got = parse_digestpath_name(REAL_STEM)
    assert got == DigestPathName(
        slide_id="2018_64982_1-3",
        scan_time=datetime(2019, 2, 25, 21, 57, 36),
        level=0,
        x=33516,
        y=59515,
        width=2003,
        height=2010,
    )


@pytest.mark.parametrize(
    "stem, slide",
    [
        ("D20180234801_2019-05-21 15_37_04-lv1-6832-7636-4158-2011", "D20180234801"),
        ("2018_01234_1-1_2019-02-25 21_57_36-lv0-0-0-2000-2000", "2018_01234_1-1"),
        ("a b_c-d_2019-02-25 21_57_36-lv0-1-2-3-4", "a b_c-d"),  # spaces in the slide id
        ("x_2019-02-25 21_57_36", "x"),  # no position suffix
    ],
)
def test_slide_id(stem, slide):
    assert parse_digestpath_name(stem).slide_id == slide


def test_level_one_position():
    got = parse_digestpath_name("S1_2019-05-21 15_37_04-lv1-6832-7636-4158-2011")
    assert (got.level, got.x, got.y, got.width, got.height) == (1, 6832, 7636, 4158, 2011)


def test_no_position_suffix_gives_none_positions():
    got = parse_digestpath_name("S1_2019-05-21 15_37_04")
    assert got.scan_time == datetime(2019, 5, 21, 15, 37, 4)
    assert (got.level, got.x, got.y, got.width, got.height) == (None,) * 5


@pytest.mark.parametrize(
    "stem",
    ["image_001", "slide_2019-02-25_21_57_36-lv0-1-2-3-4", "", "a b c"],
)
def test_other_names_are_their_own_slide(stem):
    got = parse_digestpath_name(stem)
    assert got.slide_id == stem
    assert got.scan_time is None and got.x is None


def test_impossible_date_does_not_crash():
    # Matches the pattern but 2019-02-31 is no date: used to raise ValueError, which made a
    # whole dataset scan fail on one odd file name.
    got = parse_digestpath_name("2018_1_2019-02-31 21_57_36-lv0-1-2-3-4")
    assert got.slide_id == "2018_1"
    assert got.scan_time is None
    assert (got.x, got.y, got.width, got.height) == (1, 2, 3, 4)


def test_images_of_one_slide_share_the_id():
    a = parse_digestpath_name("2018_64982_1-3_2019-02-25 21_57_36-lv0-33516-59515-2003-2010")
    b = parse_digestpath_name("2018_64982_1-3_2019-02-26 08_01_02-lv0-100-200-1990-2000")
    c = parse_digestpath_name("2018_64982_1-4_2019-02-25 21_57_36-lv0-33516-59515-2003-2010")
    assert a.slide_id == b.slide_id != c.slide_id


def test_compose_then_parse_round_trip():
    r = random.Random(7)
    for _ in range(200):
        slide = "".join(r.choice("ab_-1 9X") for _ in range(r.randint(1, 12))).strip("_ ")
        slide = slide or "s"
        when = datetime(r.randint(2000, 2030), r.randint(1, 12), r.randint(1, 28), r.randint(0, 23), r.randint(0, 59), r.randint(0, 59))  # fmt: skip
        x, y, w, h = (r.randint(0, 10**6) for _ in range(4))
        stem = digestpath_name(slide, when, x, y, w, h)
        assert stem == f"{slide}_{when:%Y-%m-%d %H_%M_%S}-lv0-{x}-{y}-{w}-{h}"
        got = parse_digestpath_name(stem)
        # a slide id that itself ends in "_<date> <time>" would be ambiguous; these do not
        assert got == DigestPathName(slide, when, 0, x, y, w, h)


def test_a_scan_stamp_alone_names_its_slide():
    # NP slides of the release named by scan date and time only: the stamp is the slide
    got = parse_digestpath_name("2019-02-25 21_57_36")
    assert got.slide_id == "2019-02-25 21_57_36" and got.scan_time is not None
    a = parse_digestpath_name("2018-07-04 00_01_20-lv0-27019-31137-2000-2000")
    b = parse_digestpath_name("2018-07-04 00_01_20-lv0-34393-1200-2000-2000")
    assert a.slide_id == b.slide_id == "2018-07-04 00_01_20"
    assert (a.x, a.y) == (27019, 31137)
