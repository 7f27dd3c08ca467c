"""Challenge metrics on hand-made cases; every expected number is worked out here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pathodet.data.predictions import (
    ImagePredictions,
    PredictionsError,
    predictions_csv,
    read_predictions,
)
from pathodet.eval.matching import greedy_match, iou_matrix
from pathodet.eval.metrics import ImageBoxes, evaluate, froc_points
from pathodet.eval.report import cross_validation


def P(*rows):
    """Predictions from ``(x1, y1, x2, y2, score)`` rows."""
    a = np.asarray(rows, float).reshape(-1, 5)
    return ImagePredictions(a[:, :4], a[:, 4])


def T(attr, *boxes):
    return ImageBoxes(attr, np.asarray(boxes, float).reshape(-1, 4))


A = [0, 0, 10, 10]
B = [8, 0, 18, 10]


def test_iou_on_continuous_coordinates():
    assert iou_matrix([A], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    assert iou_matrix([A], [[10, 0, 20, 10]])[0, 0] == 0.0  # touching, no +1 pixel
    assert iou_matrix([[0, 0, 0.5, 0.5]], [[0, 0, 1, 1]])[0, 0] == pytest.approx(0.25)


def test_prediction_overlapping_two_cells_takes_the_higher_iou():
    # P1 on A: inter 80, union 120 -> 2/3; on B: inter 40, union 160 -> 1/4
    m = greedy_match(np.array([[2, 0, 12, 10]]), np.array([0.9]), np.array([A, B]))
    assert m.tolist() == [0]
    # then P2 exactly on B matches B; P3 on A finds A taken and B taken -> unmatched
    boxes = np.array([[2, 0, 12, 10], B, A], float)
    m = greedy_match(boxes, np.array([0.9, 0.8, 0.7]), np.array([A, B]))
    assert m.tolist() == [0, 1, -1]


def test_descending_score_order_decides_who_matches():
    # the lower-IoU prediction has the higher score: it takes the box
    boxes = np.array([A, [3, 0, 13, 10]], float)  # IoU with A: 1 and 70/130
    m = greedy_match(boxes, np.array([0.4, 0.9]), np.array([A]))
    assert m.tolist() == [-1, 0]


def test_equal_scores_keep_file_order():
    boxes = np.array([[3, 0, 13, 10], A], float)
    m = greedy_match(boxes, np.array([0.5, 0.5]), np.array([A]))
    assert m.tolist() == [0, -1]


def test_iou_threshold_is_inclusive():
    # IoU exactly 0.3: [0,0,10,10] vs [0,0,3,10] -> 30 / 100
    assert greedy_match(np.array([[0, 0, 3, 10]]), np.array([1.0]), np.array([A]), 0.3)[0] == 0
    assert greedy_match(np.array([[0, 0, 2.9, 10]]), np.array([1.0]), np.array([A]), 0.3)[0] == -1


def test_duplicates_on_one_cell_count_once():
    truth = {"a.jpg": T("AP", A)}
    m = evaluate({"a.jpg": P([*A, 0.9], [1, 0, 11, 10, 0.8])}, truth)
    assert m["recall"] == 1.0
    assert m["precision"] == 0.5  # 1 matched of 2 predictions
    assert m["precision_ok"] is True


def test_recall_precision_nfp_froc_by_hand():
    truth = {
        "p1.jpg": T("AP", A, [30, 30, 40, 40]),
        "p2.jpg": T("AP", [50, 50, 60, 60]),
        "n1.jpg": T("NP"),
        "n2.jpg": T("NP"),
    }
    preds = {
        "p1.jpg": P([*A, 0.9], [100, 100, 110, 110, 0.6]),  # one hit, one miss
        "p2.jpg": P([50, 50, 60, 60, 0.3]),  # a hit at low score
        "n1.jpg": P([0, 0, 5, 5, 0.8], [9, 9, 19, 19, 0.5], [20, 20, 30, 30, 0.2]),
        "n2.jpg": P([0, 0, 5, 5, 0.7]),
    }
    m = evaluate(preds, truth)
    assert m["num_gt"] == 3 and m["num_positive_images"] == 2 and m["num_negative_images"] == 2
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)  # 2 matched of 3 in AP images
    assert m["nfp"] == pytest.approx(4 / 2)
    assert m["nfp_score"] == pytest.approx(98.0)
    # thresholds and (recall, nfp): inf (0, 0); .9 (1/3, 0); .8 (1/3, .5); .7 (1/3, 1);
    # .6 (1/3, 1); .5 (1/3, 1.5); .3 (2/3, 1.5); .2 (2/3, 2)
    assert m["froc_points"] == {
        "1": pytest.approx(1 / 3), "2": pytest.approx(2 / 3), "4": pytest.approx(2 / 3),
        "8": pytest.approx(2 / 3), "16": pytest.approx(2 / 3), "32": pytest.approx(2 / 3),
    }  # fmt: skip
    assert m["froc"] == pytest.approx((1 / 3 + 5 * 2 / 3) / 6)


def test_ties_between_a_hit_and_a_false_positive_enter_together():
    truth = {"p.jpg": T("AP", A), "n.jpg": T("NP")}
    preds = {"p.jpg": P([*A, 0.5]), "n.jpg": P([0, 0, 5, 5, 0.5], [0, 0, 5, 5, 0.5])}
    m = evaluate(preds, truth)
    # at t = .5 recall 1 with nfp 2; above it recall 0 with nfp 0
    assert m["froc_points"]["1"] == 0.0
    assert m["froc_points"]["2"] == 1.0


def test_images_without_predictions_and_no_threshold_meeting_k():
    truth = {"p.jpg": T("AP", A), "q.jpg": T("AP", B), "n.jpg": T("NP")}
    many_fp = [[i, i, i + 5, i + 5, 0.95] for i in range(40)]
    preds = {"p.jpg": P([*A, 0.9]), "n.jpg": P(*many_fp)}  # q.jpg has none
    m = evaluate(preds, truth)
    assert m["recall"] == 0.5
    assert m["nfp"] == 40.0 and m["nfp_score"] == 60.0
    # the hit (0.9) only enters after all 40 FPs (0.95): nfp 40 > 32 -> every point is 0
    assert set(m["froc_points"].values()) == {0.0} and m["froc"] == 0.0


def test_no_negative_images():
    m = evaluate({"p.jpg": P([*A, 0.2])}, {"p.jpg": T("AP", A)})
    assert m["nfp"] == 0.0 and m["num_negative_images"] == 0
    assert m["froc"] == 1.0  # without NP images nothing is a normal-region FP


def test_no_annotations_at_all():
    m = evaluate({"n.jpg": P([0, 0, 5, 5, 0.9])}, {"n.jpg": T("NP"), "p.jpg": T("AP")})
    assert m["recall"] is None and m["froc"] is None and m["froc_points"] is None
    assert m["precision"] is None  # no prediction in positive images
    assert m["nfp"] == 1.0
    json.dumps(m)  # serialisable as it is


def test_t_recall_r_recall_and_true_metrics():
    truth = {"p.jpg": T("AP", A), "n.jpg": T("NP")}
    removed = {"p.jpg": T("AP", [30, 30, 40, 40], [60, 60, 70, 70]), "n.jpg": T("NP")}
    full = {"p.jpg": T("AP", A, [30, 30, 40, 40], [60, 60, 70, 70]), "n.jpg": T("NP")}
    preds = {"p.jpg": P([*A, 0.9], [30, 30, 40, 40, 0.8], [80, 80, 90, 90, 0.7])}
    m = evaluate(preds, truth, removed=removed, full_truth=full)
    assert m["t_recall"] == 1.0
    assert m["r_recall"] == 0.5 and m["num_removed"] == 2
    assert m["true_recall"] == pytest.approx(2 / 3) and m["num_true"] == 3
    assert m["true_precision"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(1 / 3)  # biased low by the unannotated cell


def _slow_froc(preds, truth, iou=0.3):
    """Reference: rerun a plain-Python greedy matching at every threshold."""

    def iou_of(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    scores = sorted({float(s) for p in preds.values() for s in p.scores}, reverse=True)
    n_gt = sum(len(t.boxes) for t in truth.values() if t.attribute == "AP")
    n_neg = sum(t.attribute == "NP" for t in truth.values())
    pts = []
    for t in [math.inf, *scores]:
        hits = fps = 0
        for name, tr in truth.items():
            p = preds.get(name, ImagePredictions())
            cand = sorted(
                [(float(s), k) for k, s in enumerate(p.scores) if s >= t], key=lambda x: -x[0]
            )  # fmt: skip  (stable: file order on ties)
            if tr.attribute == "NP":
                fps += len(cand)
                continue
            free = [True] * len(tr.boxes)
            for _, k in cand:
                best, best_j = -1.0, -1
                for j, g in enumerate(tr.boxes):
                    v = iou_of(p.boxes[k], g)
                    if free[j] and v > best:
                        best, best_j = v, j
                if best_j >= 0 and best >= iou:
                    free[best_j] = False
                    hits += 1
        pts.append((hits / n_gt, fps / n_neg))
    return {str(k): max([r for r, f in pts if f <= k], default=0.0) for k in (1, 2, 4, 8, 16, 32)}


@pytest.mark.parametrize("seed", range(8))
def test_froc_matches_a_slow_reference_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    truth, preds = {}, {}
    for i in range(6):
        attr = "AP" if i < 3 else "NP"
        n = rng.integers(0, 6) if attr == "AP" else 0
        xy = rng.uniform(0, 80, (n, 2))
        truth[f"{i}.jpg"] = ImageBoxes(attr, np.hstack([xy, xy + rng.uniform(5, 15, (n, 2))]))
        m = rng.integers(0, 12)
        if m:
            xy = rng.uniform(0, 80, (m, 2))
            # coarse scores so ties happen
            preds[f"{i}.jpg"] = ImagePredictions(
                np.hstack([xy, xy + rng.uniform(5, 15, (m, 2))]), rng.integers(1, 6, m) / 5
            )
    if not sum(len(t.boxes) for t in truth.values()):
        pytest.skip("no boxes drawn")
    got = evaluate(preds, truth)["froc_points"]
    want = _slow_froc(preds, truth)
    assert got == pytest.approx(want)


def test_froc_points_helper():
    recall = np.array([0.0, 0.2, 0.5, 0.9])
    nfp = np.array([0.0, 0.5, 3.0, 40.0])
    assert froc_points(recall, nfp) == {"1": 0.2, "2": 0.2, "4": 0.5, "8": 0.5, "16": 0.5,
                                        "32": 0.5}  # fmt: skip


def test_predictions_csv_round_trip_and_errors(tmp_path):
    preds = {"a b.jpeg": P([1.25, 2, 30.5, 40, 0.75], [3, 4, 5, 6, 0.5]), "c.jpeg": P()}
    path = tmp_path / "p.csv"
    path.write_text(predictions_csv(preds))
    back = read_predictions(path)
    assert list(back) == ["a b.jpeg"]  # an image without predictions has no row
    np.testing.assert_allclose(back["a b.jpeg"].boxes, [[1.25, 2, 30.5, 40], [3, 4, 5, 6]])
    np.testing.assert_allclose(back["a b.jpeg"].scores, [0.75, 0.5])

    header = "image,x1,y1,x2,y2,score\n"
    bad = {
        "nan": (header + "a.jpg,1,1,5,5,0.5\na.jpg,nan,1,5,5,0.5\n", ":3: NaN"),
        "inf": (header + "a.jpg,1,1,inf,5,0.5\n", ":2: NaN or infinite"),
        "reversed": (header + "a.jpg,5,1,1,5,0.5\n", ":2: box with x2 <= x1"),
        "score": (header + "a.jpg,1,1,5,5,1.5\n", ":2: score 1.5 outside"),
        "text": (header + "a.jpg,1,one,5,5,0.5\n", ":2: x1,y1,x2,y2,score must be numbers"),
        "columns": ("image,x1,y1,x2,y2\na.jpg,1,1,5,5\n", "missing column(s) score"),
        "name": (header + ",1,1,5,5,0.5\n", ":2: empty image name"),
    }
    for key, (text, msg) in bad.items():
        p = tmp_path / f"{key}.csv"
        p.write_text(text)
        with pytest.raises(PredictionsError) as info:
            read_predictions(p)
        assert str(p) in str(info.value) and msg in str(info.value), key


def test_cross_validation_mean_and_sample_std(tmp_path):
    for i, (r, f) in enumerate([(0.5, 0.4), (0.7, 0.6), (0.9, 0.5)]):
        d = tmp_path / f"fold{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"recall": r, "froc": f, "r_recall": None}))
    s = cross_validation(sorted(tmp_path.iterdir()))
    assert s["recall"]["mean"] == pytest.approx(0.7)
    assert s["recall"]["std"] == pytest.approx(0.2)  # sqrt(((.2)^2 + 0 + (.2)^2) / 2)
    assert s["froc"]["mean"] == pytest.approx(0.5) and s["froc"]["std"] == pytest.approx(0.1)
    assert "r_recall" not in s


def test_max_side_leaves_out_boxes_larger_than_any_src(make_root, tmp_path):
    """Two SRCs (50 x 50 and 20 x 30 px) on the AP image, the first hit at 0.90; the NP
    image has two 300-px false positives above it (0.96, 0.95) and a 40-px one below
    (0.50). FROC points 1-32 FPs per NP image (1 NP image): with every box, 2 FPs come
    before the hit, so recall is 0 at 1 FP and 1/2 from 2 on: FROC 5/12. Without boxes
    longer than 60 px the hit comes first: FROC 1/2. A box exactly 60 px long stays."""
    from typer.testing import CliRunner

    from pathodet.cli import app
    from pathodet.eval.evaluate import largest_annotated_side, run_evaluate

    root = make_root(pos={"ap": (400, 400, [(100, 100, 150, 150), (10, 10, 30, 40)])},
                     neg={"np": (400, 400, None)})  # fmt: skip
    assert largest_annotated_side(root) == 50.0
    preds = {"ap.jpeg": P([100, 100, 150, 150, 0.90], [200, 200, 260, 230, 0.20]),
             "np.jpeg": P([0, 0, 300, 300, 0.96], [50, 50, 350, 120, 0.95],
                          [10, 10, 50, 50, 0.50])}  # fmt: skip
    (tmp_path / "p.csv").write_text(predictions_csv(preds))
    every = run_evaluate(root, tmp_path / "p.csv", tmp_path / "every", plot=False)
    assert every["froc"] == pytest.approx(5 / 12) and "oversized_predictions" not in every
    sized = run_evaluate(root, tmp_path / "p.csv", tmp_path / "sized", plot=False, max_side=60)
    assert sized["froc"] == pytest.approx(1 / 2)
    assert sized["oversized_predictions"] == 2 and sized["num_predictions"] == 3
    assert "Not the challenge's score" in (tmp_path / "sized" / "report.md").read_text()
    assert "Not the challenge's score" not in (tmp_path / "every" / "report.md").read_text()
    with pytest.raises(ValueError, match="max_side"):
        run_evaluate(root, tmp_path / "p.csv", tmp_path / "bad", plot=False, max_side=0)
    res = CliRunner().invoke(app, ["evaluate", "--data", str(root), "--predictions",
                                   str(tmp_path / "p.csv"), "--out", str(tmp_path / "cli"),
                                   "--max-side", "60"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["oversized_predictions"] == 2
    res = CliRunner().invoke(app, ["evaluate", "--cv", str(tmp_path / "cli"), "--out",
                                   str(tmp_path / "cv"), "--max-side", "60"])  # fmt: skip
    assert res.exit_code == 2 and "--max-side" in res.output and not (tmp_path / "cv").exists()
    empty = make_root(neg={"np": (400, 400, None)}, name="no-boxes")
    with pytest.raises(ValueError, match="no-boxes: no annotated SRC box"):
        largest_annotated_side(empty)
    (root / "sig-train-pos" / "ap.xml").write_text("<annotation><object>")  # cut short
    with pytest.raises(ValueError, match=r"could not be read.*ap\.xml"):
        largest_annotated_side(root)  # not the largest of what could be read


def test_operating_point_counts_only_boxes_at_or_above_the_threshold():
    from pathodet.eval.cv import operating_point

    kept, dropped = [0, 0, 10, 10], [40, 0, 50, 10]  # one kept and one dropped SRC box
    truth = {"a.jpg": T("AP", kept, [20, 0, 30, 10]), "n.jpg": T("NP")}
    removed = {"a.jpg": T("AP", dropped, [60, 0, 70, 10])}
    preds = {  # hits: kept 0.9, second kept 0.2, dropped 0.8; one unmatched box 0.6
        "a.jpg": P([*kept, 0.9], [20, 0, 30, 10, 0.2], [*dropped, 0.8], [100, 0, 110, 10, 0.6]),
        "n.jpg": P([0, 0, 10, 10, 0.7]),
    }
    at = operating_point(preds, truth, 0.5, 0.3, removed)
    # at >= 0.5: of the kept boxes one found (1/2), of the dropped ones one (1/2); the AP
    # image keeps 3 detections of which 1 is a kept box's hit (the dropped box's hit counts
    # against precision, as in evaluate; NP images' boxes do not enter precision)
    assert at == {"threshold_at_1fp": 0.5, "recall_at_1fp": 0.5, "r_recall_at_1fp": 0.5,
                  "precision_at_1fp": pytest.approx(1 / 3)}  # fmt: skip
    at_all = operating_point(preds, truth, 0.0, 0.3, removed)
    assert (at_all["recall_at_1fp"], at_all["r_recall_at_1fp"]) == (1.0, 0.5)
    # no threshold reaches 1 FP per NP image: nothing is kept, so nothing is found (as FROC's
    # point at 1 FP), and a collapsed run counts as 0 in a mean over folds
    assert operating_point(preds, truth, None, 0.3, removed) == {
        "threshold_at_1fp": None, "precision_at_1fp": None, "recall_at_1fp": 0.0,
        "r_recall_at_1fp": 0.0}  # fmt: skip
    assert "r_recall_at_1fp" not in operating_point(preds, truth, 0.5, 0.3)
