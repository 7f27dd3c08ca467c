"""The shift baseline of :mod:`pathodet.eval.chance`, against geometry worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pathodet.data.predictions import ImagePredictions
from pathodet.eval.chance import chance_recall, shift_boxes
from pathodet.eval.metrics import ImageBoxes


def _square(cx: float, cy: float, side: float) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def test_a_shift_moves_the_centre_wraps_it_and_keeps_the_size():
    boxes = np.array([[10.0, 20.0, 30.0, 60.0], [90.0, 0.0, 100.0, 10.0]])
    moved = shift_boxes(boxes, 5.0, -30.0, (100, 80))
    # centres (20, 40) and (95, 5) -> (25, 10) and (100 -> 0, -25 -> 55)
    np.testing.assert_allclose(moved, [[15.0, -10.0, 35.0, 30.0], [-5.0, 50.0, 5.0, 60.0]])
    assert shift_boxes(np.zeros((0, 4)), 3.0, 4.0, (10, 10)).shape == (0, 4)


def _one_box_per_image(n: int, side: float, size: tuple[int, int], at: tuple[float, float]):
    truth = {f"{i}.png": ImageBoxes("AP", np.array([_square(*at, side)]), size) for i in range(n)}
    preds = {k: ImagePredictions(np.array([_square(*at, side)]), np.array([0.9])) for k in truth}
    return preds, truth


C = (
    2 * 0.3 / 1.3
)  # two side-s squares overlapping by a: IoU = a / (2 s^2 - a) >= 0.3 iff a >= C s^2


def test_one_box_hits_its_cell_by_chance_as_often_as_the_overlap_area_says():
    # A side-s square detection shifted uniformly over a W x H image matches its side-s
    # cell when (s - |dx|)(s - |dy|) >= C s^2. With u = 1 - |dx|/s, v = 1 - |dy|/s the region
    # uv >= C of the unit square has area (1 - C) + C ln C; four quadrants make the chance
    # p = 4 s^2 ((1 - C) + C ln C) / (W H). Not square, so width and height cannot swap.
    side, (w, h), n, draws = 20.0, (160, 60), 4000, 5
    p = 4 * side**2 * ((1 - C) + C * math.log(C)) / (w * h)
    preds, truth = _one_box_per_image(n, side, (w, h), (120.0, 30.0))
    got = chance_recall(preds, truth, 0.3, draws=draws, seed=1)
    se = math.sqrt(p * (1 - p) / (n * draws))
    assert got["t_recall"] == pytest.approx(p, abs=4 * se)
    assert got["r_recall"] is None
    assert chance_recall(preds, truth, 0.3, draws=draws, seed=1) == got  # seeded


@pytest.mark.parametrize("fraction", [0.3, 0.5, 1.0])
def test_a_box_moved_a_set_distance_keeps_its_cell_as_often_as_the_directions_allow(fraction):
    # Moved by d = fraction * s at angle t, the box still matches when
    # (s - d |cos t|)(s - d |sin t|) >= C s^2: the share of directions where that holds,
    # counted on a fine grid of angles. At 0.3 s every direction holds (worst at 45 degrees,
    # 0.79^2 > C), at half a side some do, at one side none (1 - 1 < C along an axis).
    side, n, draws = 20.0, 4000, 5
    t = np.linspace(0, 2 * np.pi, 200_001)[:-1]
    d = fraction * side
    overlap = np.clip(side - d * np.abs(np.cos(t)), 0, None) * np.clip(
        side - d * np.abs(np.sin(t)), 0, None
    )
    p = float(np.mean(overlap >= C * side**2))
    preds, truth = _one_box_per_image(n, side, (100, 100), (50.0, 50.0))
    got = chance_recall(preds, truth, 0.3, draws=draws, seed=2, distance=d)["t_recall"]
    se = math.sqrt(max(p * (1 - p), 1e-4) / (n * draws))
    assert got == pytest.approx(p, abs=4 * se)
    if fraction == 0.5:
        assert 0.0 < p < 1.0
    else:
        assert p == {0.3: 1.0, 1.0: 0.0}[fraction]


def test_a_lattice_covering_the_image_finds_every_cell_wherever_it_is_shifted():
    # Side-20 squares every 5 px over a 100 px image: after any wrapped shift every point
    # has a box centre within 2.5 px on each axis, IoU >= 17.5^2 / (800 - 17.5^2) = 0.62.
    side, step, w = 20.0, 5.0, 100
    lattice = np.array([_square(x, y, side) for x in np.arange(0, w, step)
                        for y in np.arange(0, w, step)])  # fmt: skip
    cells = np.array([_square(31.3, 47.9, side), _square(66.0, 28.4, side)])
    truth = {"a.png": ImageBoxes("AP", cells, (w, w)), "n.png": ImageBoxes("NP", np.zeros((0, 4)))}
    removed = {"a.png": ImageBoxes("AP", cells[:1], (w, w))}
    preds = {"a.png": ImagePredictions(lattice, np.full(len(lattice), 0.5))}
    for distance in (None, 20.0, 37.3):  # anywhere, or one or two cells away
        got = chance_recall(preds, truth, 0.3, removed, draws=6, seed=3, distance=distance)
        assert got == {"t_recall": 1.0, "r_recall": 1.0}


def test_removed_boxes_are_measured_against_the_same_shifted_detections():
    cells = np.array([_square(40, 40, 16), _square(60, 70, 16)])
    truth = {"a.png": ImageBoxes("AP", cells, (120, 100))}
    preds = {"a.png": ImagePredictions(cells.copy(), np.array([0.9, 0.8]))}
    got = chance_recall(preds, truth, 0.3, {"a.png": ImageBoxes("AP", cells, (120, 100))},
                        draws=50, seed=0)  # fmt: skip
    assert got["r_recall"] == got["t_recall"]  # the same boxes, the same draws
    assert got["t_recall"] < 0.5  # registration is lost: most shifts miss both cells


def test_bad_requests_are_refused_with_the_image_named():
    truth = {"a.png": ImageBoxes("AP", np.array([_square(5, 5, 4)]))}  # no size
    with pytest.raises(ValueError, match="a.png: the image size is unknown"):
        chance_recall({}, truth)
    with pytest.raises(ValueError, match="draws must be at least 1"):
        chance_recall({}, {}, draws=0)
    with pytest.raises(ValueError, match="distance must be at least 0"):
        chance_recall({}, {}, distance=-1.0)
    assert chance_recall({}, {"n.png": ImageBoxes("NP", np.zeros((0, 4)), (9, 9))}) == {
        "t_recall": None, "r_recall": None}  # fmt: skip
