"""One cell, one box, under one rule (issue 25, kind 5).

Two boxes are the same cell at IoU >= 0.3, the DigestPath 2019 challenge's matching IoU,
everywhere pathodet asks: evaluation's matching, the review export, co-mining's overlap
drop and purification's pseudo-label check. Every expected value comes from boxes written
here with their IoU worked out by hand:

* ``A = (0, 0, 100, 10)``, area 1000, and ``(0, 0, w, 10)`` inside it: IoU = 10 w / 1000,
  so ``w = 31`` gives 0.31 (same cell) and ``w = 29`` gives 0.29 (another cell);
* a 10 x 10 annotation inside a 15 x 15 detection: IoU = 100 / 225 = 0.444 (the issue's
  case: the pathologist's box is tighter than the detector's).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from pathodet.eval import evaluate as eval_run
from pathodet.eval import metrics, overlays
from pathodet.eval.matching import greedy_match
from pathodet.model.boxes import SAME_CELL_IOU, same_cell
from pathodet.purify.pipeline import pseudo_hits
from pathodet.review.export import merged_annotations
from pathodet.review.store import Decision, cell_key
from pathodet.training import comining
from pathodet.training.config import CominingConfig
from pathodet.training.mining import co_generate, mine_batch

PACKAGE = Path(__file__).resolve().parents[1] / "pathodet"
A = np.array([[0.0, 0.0, 100.0, 10.0]])
SAME = np.array([[0.0, 0.0, 31.0, 10.0]])  # IoU 0.31 with A
OTHER = np.array([[0.0, 0.0, 29.0, 10.0]])  # IoU 0.29 with A
TIGHT = np.array([[20.0, 10.0, 30.0, 20.0]])  # the pathologist's 10 x 10 box
LOOSE = np.array([[17.5, 7.5, 32.5, 22.5]])  # the detection: 15 x 15 around it, IoU 0.444


def _accepted(box: np.ndarray) -> list[Decision]:
    b = tuple(float(v) for v in box.reshape(4))
    return [Decision(1, "img.png", cell_key(b), "accept", b, 0.9, "alice", "t")]  # type: ignore[arg-type]


def test_the_rule_is_the_challenge_iou_inclusive() -> None:
    assert SAME_CELL_IOU == 0.3
    assert same_cell(SAME, A).tolist() == [[True]]
    assert same_cell(OTHER, A).tolist() == [[False]]
    assert same_cell(LOOSE, TIGHT).tolist() == [[True]]  # 0.444
    exact = np.array([[0.0, 0.0, 30.0, 10.0]])  # 300 / 1000 = 0.3: inclusive
    assert same_cell(exact, A).tolist() == [[True]]
    # tensors in, a tensor out; an empty box is no cell; (N, M) shape
    t = same_cell(torch.tensor(np.concatenate([SAME, OTHER])).float(), torch.tensor(A).float())
    assert isinstance(t, torch.Tensor) and t.tolist() == [[True], [False]]
    assert same_cell(np.array([[5.0, 5, 5, 5]]), np.array([[5.0, 5, 5, 5]])).tolist() == [[False]]
    assert same_cell(np.zeros((0, 4)), A).shape == (0, 1)


@pytest.mark.parametrize(
    ("box", "truth", "same"),
    [(SAME, A, True), (OTHER, A, False), (LOOSE, TIGHT, True)],
    ids=["iou-0.31", "iou-0.29", "iou-0.444"],
)
def test_every_user_agrees_at_031_and_029(box: np.ndarray, truth: np.ndarray, same: bool) -> None:
    """Export, co-mining, evaluation and purification call one box pair the same cell or
    not, alike: a change detector for anyone who gives one of them its own threshold."""
    # review export: an accepted detection of an annotated cell adds no second box
    exported = merged_annotations(truth, _accepted(box))
    assert len(exported) == (1 if same else 2)
    # co-mining step 3: a mined box of an annotated cell is dropped
    mined, _ = co_generate(torch.tensor(box).float(), torch.tensor([0.9]), torch.tensor(truth))
    assert len(mined) == (0 if same else 1)
    # evaluation: the detection matches the annotated box
    assert greedy_match(box, np.array([0.9]), truth)[0] == (0 if same else -1)
    # purification: the pseudo box finds the true SRC
    assert pseudo_hits(box, truth) == ((1, 1) if same else (0, 0))


def test_the_accepted_looser_box_of_an_annotated_cell_is_not_a_second_cell() -> None:
    """The issue's case, by the rule alone: IoU 0.444 exported once (the old export rule,
    IoU >= 0.5, wrote a second box for this cell)."""
    assert merged_annotations(TIGHT, _accepted(LOOSE)).tolist() == TIGHT.tolist()


def test_every_same_cell_default_is_the_one_constant() -> None:
    """Each function whose parameter means "same cell" defaults to SAME_CELL_IOU."""
    defaults = {
        "greedy_match": inspect.signature(greedy_match).parameters["iou_threshold"].default,
        "co_generate": inspect.signature(co_generate).parameters["theta2"].default,
        "mine_batch": inspect.signature(mine_batch).parameters["theta2"].default,
        "evaluate": inspect.signature(metrics.evaluate).parameters["iou_threshold"].default,
        "curve": inspect.signature(metrics.curve).parameters["iou_threshold"].default,
        "per_image": inspect.signature(metrics.per_image).parameters["iou_threshold"].default,
        "run_evaluate": inspect.signature(eval_run.run_evaluate)
        .parameters["iou_threshold"]
        .default,
        "classify": inspect.signature(overlays.classify).parameters["iou"].default,
        "comining.MATCH_IOU": comining.MATCH_IOU,
    }
    assert defaults == dict.fromkeys(defaults, SAME_CELL_IOU)


def test_training_settings_use_the_one_rule_too() -> None:
    assert CominingConfig().theta2 == SAME_CELL_IOU
    assert comining.ANNOTATED_IOU == SAME_CELL_IOU


def test_the_constant_is_defined_once() -> None:
    """No module assigns its own SAME_CELL_IOU (or the old export constant)."""
    owners = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if "SAME_CELL_IOU" in names or "TRUTH_IOU" in names:
                owners.append(str(path.relative_to(PACKAGE)))
    assert owners == ["model/boxes.py"]
