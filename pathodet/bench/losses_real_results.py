"""The real-data loss benchmark's finished runs: read them back, bring old ones up to date,
and put a lost ``--out`` back from the report that recorded them.

Each finished run is one ``result.json`` under ``--out`` (layout in
:mod:`pathodet.bench.losses_real`); the report's ``losses-real.json`` keeps them all,
configs included.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pathodet.bench.losses_real import (
    AT_1FP,
    IN_SIZE,
    RealLossBenchSettings,
    at_operating_point,
    fold_dir,
    fold_manifest,
    in_size,
    plan,
    prepare_data,
    rate_name,
    run_config,
)
from pathodet.core.io import atomic_write_text
from pathodet.data.digestpath import DatasetError, read_manifest
from pathodet.data.samples import read_annotation
from pathodet.training.config import same_config


def collect(out: Path, s: RealLossBenchSettings | None = None) -> list[dict]:
    """The finished runs' results under ``out``; with ``s``, only those made with its
    training seed, drop seed and overrides (any budget, rate, method or fold)."""
    results = [json.loads(p.read_text())
               for p in sorted(out.glob("runs/*/*/*/fold-*/result.json"))]  # fmt: skip
    if s is None:
        return results
    same = (s.seed, s.drop_seed, s.overrides)
    return [r for r in results
            if (r["seed"], r.get("drop_seed", 0), r.get("overrides", [])) == same]  # fmt: skip


def add_figures(out: Path, log: Callable[[str], None] = print) -> int:
    """Add the figures a finished run under ``out`` lacks because it was made before they
    existed: :func:`~pathodet.bench.losses_real.in_size` and
    :func:`~pathodet.bench.losses_real.at_operating_point` with its chance recalls
    (``result.json`` rewritten atomically), and those of a run with no 1-FP threshold
    recorded when such a run got none (now zeros); returns how many runs gained one. A run
    whose files are gone (its predictions, ``train-ap.csv``, ``fold.json``, or the images
    they name) is logged and left without them, and a restored run (:func:`restore`) is
    skipped."""
    added = 0
    for path in sorted(out.glob("runs/*/*/*/fold-*/result.json")):
        result = json.loads(path.read_text())
        if "restored_from" in result:  # put back from a report: its files were lost
            continue
        folder, changed = path.parent, False
        if IN_SIZE not in result:
            try:
                result[IN_SIZE] = in_size(folder)
                changed = True
            except (OSError, ValueError) as exc:  # files moved or deleted: that run goes without
                log(f"{folder}: no in-size figures ({exc})")
        if result["train"].get(AT_1FP, {}).get("chance") is None:  # absent, or no 1-FP point
            try:
                result["train"][AT_1FP] = at_operating_point(
                    folder, out, result["rate"], result.get("drop_seed", 0)
                )
                changed = True
            except (OSError, ValueError) as exc:
                log(f"{folder}: no training recall at the 1-FP point ({exc})")
        if changed:
            atomic_write_text(path, json.dumps(result, indent=1))
            added += 1
    return added


def held_out_boxes(folds_csv: Path, fold: int) -> int:
    """How many annotated SRC boxes the held-out ``fold`` of the split has (a run's
    ``test.num_gt``)."""
    return sum(len(read_annotation(r.annotation).boxes) for r in read_manifest(folds_csv)
               if r.fold == fold and r.attribute == "AP" and r.annotation is not None)  # fmt: skip


def restore(report_json: Path, root: Path, out: Path, s: RealLossBenchSettings,
            log: Callable[[str], None] = print) -> int:  # fmt: skip
    """Put back, as ``result.json``, the runs a report (``losses-real.json``) recorded, so
    a grid whose ``--out`` was lost resumes where the report left off; returns how many.

    A recorded run is restored only when it belongs to ``s`` (its seed, drop seed, overrides,
    budget, rate, fold and method), its held-out fold has as many boxes here as it had
    (the same release and split), and its config, with the data path moved to this
    ``out``, is today's :func:`run_config`; a run that fails the last two is logged and
    left out, to be trained again, as are runs of other grids (counted in one line). A run
    already under ``out`` is left as it is. A restored result keeps its ``commit`` and
    ``root`` and names the report in ``restored_from``.

    Raises:
        DatasetError: ``report_json`` is not a list of results.
    """
    try:
        recorded = json.loads(report_json.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{report_json}: cannot read a report ({exc})") from exc
    if not isinstance(recorded, list) or not all(isinstance(r, dict) for r in recorded):
        raise DatasetError(f"{report_json}: not a losses-real.json (a list of results)")
    folds_csv = prepare_data(root, out, s)
    cells, restored, other_grid = set(plan(s)), 0, 0
    boxes: dict[int, int] = {}
    for r in recorded:
        same_run = (r.get("seed"), r.get("drop_seed", 0), r.get("overrides", []),
                    r.get("steps")) == (s.seed, s.drop_seed, s.overrides, s.steps)  # fmt: skip
        if not same_run or (r.get("rate"), r.get("fold"), r.get("method")) not in cells:
            other_grid += 1
            continue
        rate, fold, method = r["rate"], r["fold"], r["method"]
        folder = fold_dir(out, s.steps, rate, method, fold, s.drop_seed)
        if (folder / "result.json").is_file():
            continue
        name = f"{method} {rate_name(rate, s.drop_seed)} fold {fold}"
        if fold not in boxes:
            boxes[fold] = held_out_boxes(folds_csv, fold)
        if (r.get("test") or {}).get("num_gt") != boxes[fold]:
            log(f"{name}: its held-out fold had {(r.get('test') or {}).get('num_gt')} boxes, "
                f"here {boxes[fold]} (another release or split); not restored")  # fmt: skip
            continue
        saved = r.get("config")
        if not isinstance(saved, dict):
            log(f"{name}: {report_json} has no config for it (written before configs were "
                "kept); not restored")  # fmt: skip
            continue
        cfg = run_config(s, fold_manifest(out, folds_csv, rate, fold, s.drop_seed), method)
        if rate == 0 and s.curve_every:
            cfg.train.snapshot_every = s.curve_every
        saved = {**saved, "data": {**saved.get("data", {}), "root": str(cfg.data.root)}}
        if not same_config(saved, cfg):
            log(f"{name}: made with another recipe than today's; not restored")
            continue
        result = {**r, "config": saved, "restored_from": str(report_json)}
        atomic_write_text(folder / "result.json", json.dumps(result, indent=1))
        restored += 1
    if other_grid:
        log(f"{other_grid} recorded run(s) of other grids (seed, drop seed, --set, budget, "
            "rate, fold or method) left out")  # fmt: skip
    return restored
