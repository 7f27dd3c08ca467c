"""Faults: checkpoints that would run code or come from another config, a full disk while
checkpointing, and SIGKILL during prediction, review export and review decisions.

Kills land at chosen points: the child process (``KILLER`` below) wraps ``os.replace``, the
last step of every atomic write, and SIGKILLs itself just before or just after the rename
of a chosen file; a kill timed from outside would land anywhere and make the test flaky.
The one kill from outside (review decisions) only needs to land while the child writes.

Training's own SIGKILL-and-resume test is ``test_train.py::
test_sigkill_then_resume_matches_uninterrupted_run``; garbage, foreign, future-version and
missing checkpoints are ``test_train.py::test_bad_checkpoints_are_refused_with_the_file_name``.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import REPO, tiny
from typer.testing import CliRunner

from pathodet.cli import app
from pathodet.core.io import atomic_write_image
from pathodet.data.digestpath import load_records
from pathodet.data.synth import synthesize_image, write_synthetic_dataset
from pathodet.model import build_retinanet
from pathodet.model.retinanet import resolve_norm
from pathodet.review.cases import load_cases, run_id
from pathodet.review.export import export_reviews
from pathodet.review.store import ACTIONS, ReviewStore
from pathodet.training import checkpoint as checkpoint_mod
from pathodet.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_detector,
    save_checkpoint,
)
from pathodet.training.config import load_config
from pathodet.training.logs import read_metrics
from pathodet.training.train import Trainer, train

CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
runner = CliRunner()

KILLER = '''\
"""The pathodet CLI, SIGKILLed when it renames its KILL_NTH-th file named like KILL_AT."""
import fnmatch
import os
import signal
import sys

pattern = os.environ.get("KILL_AT")
nth, when = int(os.environ.get("KILL_NTH", "1")), os.environ.get("KILL_WHEN", "before")
real_replace, seen = os.replace, 0


def replace(src, dst, *args, **kwargs):
    global seen
    hit = pattern is not None and fnmatch.fnmatch(os.path.basename(os.fspath(dst)), pattern)
    seen += hit
    if hit and seen == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if hit and seen == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace
from pathodet.cli import main  # noqa: E402

sys.argv[0] = "pathodet"
main()
'''


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: two spinning OpenMP threads on a shared 2-core machine are ~50x
    slower, and the children run with OMP_NUM_THREADS=1 too, so results match theirs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def killer(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("killer") / "killer.py"
    path.write_text(KILLER)
    return path


def run_killed(killer: Path, args: list[str], at: str, nth: int, when: str = "before"):
    """Run ``pathodet ARGS`` in a child that SIGKILLs itself at the given rename."""
    env = {**CHILD_ENV, "KILL_AT": at, "KILL_NTH": str(nth), "KILL_WHEN": when}
    return subprocess.run([sys.executable, str(killer), *args], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


def temp_files(root: Path) -> list[str]:
    """Files an atomic write leaves when killed between writing and renaming."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp"))


def csv_rows(path: Path) -> list[tuple[str, ...]]:
    with path.open(newline="") as f:
        return [tuple(r) for r in csv.reader(f)]


def detector_checkpoint(path: Path, *sets: str) -> Path:
    """A small untrained detector saved as pathodet train would (config + weights).

    The classification weights are scaled up so that scores spread out (an untrained
    head gives every anchor ~0.01) and a threshold keeps some detections and drops others.
    """
    cfg = load_config(REPO / "configs/focal.yaml", ["model.fpn_channels=32", *sets])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no ImageNet weights": from scratch is the point
        model = build_retinanet(cfg.model)
    cfg.model.norm = resolve_norm(cfg.model.norm, model.pretrained)  # type: ignore[assignment]
    weights = model.state_dict()
    weights["head.classification_head.cls_logits.weight"] *= 3000.0
    save_checkpoint(path, {"config": cfg.model_dump_json(), "model": weights})
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The tiny training set of test_train.py (same generator call, so the same images)."""
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, positive=4, negative=4, size=512, seed=3, images_per_slide=1)
    return root


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    return detector_checkpoint(tmp_path_factory.mktemp("ckpt") / "detector.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Four small synthetic AP images (PNG, so overlays and reads are exact)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    for i in range(4):
        atomic_write_image(folder / f"img {i}.png", synthesize_image(rng, 96, 128, "AP").rgb)
    return folder


# ---------------------------------------------------------------- 1. unsafe checkpoints


class RunsCode:
    """Unpickles as ``os.system("touch MARKER")``: what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def booby_trapped(path: Path, good: Path, marker: Path) -> Path:
    """A copy of the valid checkpoint ``good`` with a code-running object added."""
    state = torch.load(good, map_location="cpu", weights_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "hook": RunsCode(marker)}, path)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(detector, tmp_path):
    evil = booby_trapped(tmp_path / "evil.pt", detector, tmp_path / "pwned")
    # the payload is live: a plain pickle load runs it
    control = booby_trapped(tmp_path / "control.pt", detector, tmp_path / "control-ran")
    torch.load(control, map_location="cpu", weights_only=False)
    assert (tmp_path / "control-ran").exists()

    for load in (load_checkpoint, load_detector):
        with pytest.raises(CheckpointError, match=r"evil\.pt: refused: .*posix\.system"):
            load(evil)
    assert not (tmp_path / "pwned").exists()


def test_resuming_from_a_checkpoint_that_would_run_code_is_refused(data, detector, tmp_path):
    cfg = load_config(REPO / "configs/focal.yaml", tiny(data))
    run = tmp_path / "run"
    booby_trapped(run / "last.pt", detector, tmp_path / "pwned")
    with pytest.raises(CheckpointError, match=r"last\.pt: refused"):
        train(cfg, run, resume=True, progress=False, log=lambda m: None)
    assert not (tmp_path / "pwned").exists()


@dataclass
class Bad:
    """A checkpoint ``pathodet predict`` must refuse, and what its message says."""

    make: str
    message: str


BAD_FOR_PREDICT = {
    "runs code": Bad("evil", "refused"),
    "anchors differ": Bad("anchors", "weights do not fit its config"),
    "other backbone": Bad("backbone", "its config does not validate"),
}


def make_bad(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "evil":
        return booby_trapped(path, good, folder / "pwned")
    state = load_checkpoint(good)
    cfg = json.loads(state["config"])
    if kind == "anchors":  # 3 anchors per place in the config, weights for 9
        cfg["model"]["anchors"]["aspect_ratios"] = [1.0]
    else:  # an architecture this pathodet does not build
        cfg["model"]["backbone"] = "resnet50"
    save_checkpoint(path, {**state, "config": json.dumps(cfg)})
    return path


@pytest.mark.parametrize("kind", list(BAD_FOR_PREDICT))
def test_predict_refuses_a_bad_checkpoint_in_one_line(kind, detector, images, tmp_path):
    bad = BAD_FOR_PREDICT[kind]
    ckpt = make_bad(bad.make, detector, tmp_path)
    with pytest.raises(CheckpointError, match=rf"{ckpt.name}: {bad.message}"):
        load_detector(ckpt)
    out = tmp_path / "out"  # the command in process: no Python start-up per case
    res = CliRunner().invoke(app, ["predict", str(ckpt), str(images), "--out", str(out),
                                   "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output[-2000:]
    assert f"{ckpt}: {bad.message}" in res.output and "Traceback" not in res.output
    assert not out.exists(), "nothing is written before the checkpoint loads"
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("key, value", [("model.anchors.aspect_ratios", "[1.0]"),
                                        ("loss.name", "ce")])  # fmt: skip
def test_resume_refuses_a_config_that_differs_from_the_checkpoint(key, value, data, tmp_path):
    sets = tiny(data, **{"train.epochs": "1", "train.max_steps_per_epoch": "1"})
    cfg = load_config(REPO / "configs/focal.yaml", sets)
    run = tmp_path / "run"
    trainer = Trainer(cfg, run, progress=False, log=lambda m: None)
    trainer.save()  # a run at step 0
    trainer.logs.close()
    changed = load_config(run / "config.yaml", [f"{key}={value}"])  # as if hand-edited
    with pytest.raises(CheckpointError, match=r"last\.pt: written by another config") as info:
        train(changed, run, resume=True, progress=False, log=lambda m: None)
    assert key in str(info.value)  # the message names what differs
    # a key a resumed run may change is accepted, and the run continues
    more = load_config(run / "config.yaml", ["train.epochs=2"])
    assert train(more, run, resume=True, progress=False, log=lambda m: None)["steps"] >= 1


def test_training_seconds_add_up_over_a_resume(data, tmp_path):
    """A resumed run's training time continues from its checkpoint's, not from zero."""
    sets = tiny(data, **{"train.epochs": "1", "train.max_steps_per_epoch": "1"})
    run = tmp_path / "run"
    t0 = time.perf_counter()
    first = train(load_config(REPO / "configs/focal.yaml", sets), run, progress=False,
                  log=lambda m: None)["train_seconds"]  # fmt: skip
    assert 0 < first <= time.perf_counter() - t0
    state = load_checkpoint(run / "last.pt")
    assert 0 < state["train_seconds"] <= first
    state["train_seconds"] = 1000.0  # as if the segments before the kill took 1000 s
    save_checkpoint(run / "last.pt", state)
    more = load_config(run / "config.yaml", ["train.epochs=2"])
    t0 = time.perf_counter()
    total = train(more, run, resume=True, progress=False, log=lambda m: None)["train_seconds"]
    assert 1000.0 < total <= 1000.0 + time.perf_counter() - t0


# ---------------------------------------------------------------- 2. full disk


class FullDisk:
    """A file object that takes half of the first write of at least ``from_bytes`` bytes
    and then reports ENOSPC (smaller writes before it go through)."""

    def __init__(self, f, from_bytes: int = 0) -> None:
        self.f, self.written, self.from_bytes = f, 0, from_bytes

    def write(self, data: bytes) -> int:
        if len(data) < self.from_bytes:
            n = self.f.write(data)
            self.written += n
            return n
        self.written += self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self.f, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def fill_disk(monkeypatch: pytest.MonkeyPatch, where: str) -> list[FullDisk]:
    """Make the next atomic write fail with ENOSPC: in its first ``write`` (half written),
    in the first write of a tensor's bytes (``"tensor"``: a checkpoint's header and record
    name already written, the failure inside a record), or in ``fsync``."""
    opened: list[FullDisk] = []
    real_fdopen = os.fdopen
    if where in ("write", "tensor"):
        from_bytes = 1024 if where == "tensor" else 0

        def fdopen(fd: int, *args, **kwargs):
            opened.append(FullDisk(real_fdopen(fd, *args, **kwargs), from_bytes))
            return opened[-1]

        monkeypatch.setattr(os, "fdopen", fdopen)
    else:

        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", fsync)
    return opened


@pytest.mark.parametrize("where", ["write", "tensor", "fsync"])
def test_full_disk_while_saving_keeps_the_previous_checkpoint(where, tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    old = {"model": {"w": torch.arange(4096.0)}, "step": 1}
    save_checkpoint(path, old)
    before = path.read_bytes()
    opened = fill_disk(monkeypatch, where)
    with pytest.raises(OSError) as exc:
        save_checkpoint(path, {"model": {"w": torch.zeros(4096)}, "step": 2})
    monkeypatch.undo()
    assert exc.value.errno == errno.ENOSPC
    assert str(path) in str(exc.value) and "previous one is kept" in str(exc.value)
    if where != "fsync":
        assert opened and opened[0].written > 0, "the failure came partway through the file"
    if where == "tensor":
        assert opened[0].written > 4096 * 4 // 2, "and partway through the tensor's bytes"
    assert path.read_bytes() == before
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], old["model"]["w"])
    assert sorted(os.listdir(tmp_path)) == ["last.pt"], "no temporary file is left"


def disk_full_at_second_last_pt(monkeypatch, half_written: bool) -> None:
    """The second write of a ``last.pt`` finds the disk full: its header and first record
    name written, then half of a tensor and ENOSPC (``half_written``), or ENOSPC at once."""
    real_write = checkpoint_mod.atomic_write
    calls = {"last": 0}

    def write(path, write_to):
        if Path(path).name == "last.pt":
            calls["last"] += 1
            if calls["last"] == 2:
                if not half_written:
                    raise OSError(errno.ENOSPC, "No space left on device")
                with pytest.MonkeyPatch.context() as mp:
                    fill_disk(mp, "tensor")
                    return real_write(path, write_to)
        return real_write(path, write_to)

    monkeypatch.setattr(checkpoint_mod, "atomic_write", write)


def test_full_disk_during_training_stops_the_run_and_resume_matches(data, tmp_path, monkeypatch):
    """ENOSPC at the second last.pt write (step 2): the run stops with the error, last.pt
    still holds step 1, and resuming from it ends where an undisturbed run ends."""
    every_step = {"train.checkpoint_every": "1"}  # 2 epochs x 3 steps, last.pt at each
    cfg = load_config(REPO / "configs/focal.yaml", tiny(data, **every_step))
    full, broken = tmp_path / "full", tmp_path / "broken"
    train(cfg, full, progress=False, log=lambda m: None)

    disk_full_at_second_last_pt(monkeypatch, half_written=True)
    with pytest.raises(OSError, match=r"last\.pt: checkpoint not written") as exc:
        train(cfg, broken, progress=False, log=lambda m: None)
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert temp_files(broken) == []
    assert load_checkpoint(broken / "last.pt")["step"] == 1

    train(cfg, broken, resume=True, progress=False, log=lambda m: None)
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(broken / "last.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k

    def losses(run: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["value"]) for r in read_metrics(run)
                if r["split"] == "train" and r["name"] == "loss"]  # fmt: skip

    assert losses(broken) == losses(full)


def test_train_cli_on_a_full_disk_says_how_to_resume_in_one_line(data, tmp_path, monkeypatch):
    """``pathodet train`` on a full disk: exit 2, one line naming last.pt and the resume
    command, no traceback; the checkpoint of the previous step is intact."""
    disk_full_at_second_last_pt(monkeypatch, half_written=False)
    run = tmp_path / "run"
    sets = [x for kv in tiny(data, **{"train.checkpoint_every": "1"}) for x in ("--set", kv)]
    res = CliRunner().invoke(app, ["train", str(REPO / "configs/focal.yaml"), "--out", str(run),
                                   "--quiet", *sets])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert "last.pt: checkpoint not written (No space left on device)" in res.output
    assert f"pathodet train --resume {run}" in res.output
    assert load_checkpoint(run / "last.pt")["step"] == 1


# ---------------------------------------------------------------- 3. SIGKILL in predict


def predict_args(ckpt: Path, images: Path, out: Path) -> list[str]:
    return ["predict", str(ckpt), str(images), "--out", str(out), "--tile", "128",
            "--overlap", "32", "--score-threshold", "0.02", "--workers", "0", "--overlays",
            "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def predicted(detector, images, tmp_path_factory) -> dict[str, bytes]:
    """The files of an uninterrupted prediction run."""
    out = tmp_path_factory.mktemp("predicted") / "out"
    res = runner.invoke(app, predict_args(detector, images, out))
    assert res.exit_code == 0, res.output
    files = snapshot(out)
    rows = csv_rows(out / "predictions.csv")[1:]
    assert len({r[0] for r in rows}) == 4, "every image should have detections"
    assert len(rows) > 20 and len(files) == 4 * 3 + 3
    return files


# (file renamed at the kill, which one, before or after the rename, images skipped on rerun)
PREDICT_KILLS = {
    "image 2 half written": ("*.geojson", 2, "before", 1),
    "image 2 just written": ("*.geojson", 2, "after", 2),
    "overlay of image 2": ("*.png", 2, "before", 1),
    "writing predictions.csv": ("predictions.csv", 1, "before", 4),
}


@pytest.mark.parametrize("point", list(PREDICT_KILLS))
def test_predict_killed_then_rerun_equals_an_uninterrupted_run(
    point, killer, detector, images, predicted, tmp_path
):
    at, nth, when, skipped = PREDICT_KILLS[point]
    out = tmp_path / "out"
    res = run_killed(killer, predict_args(detector, images, out), at, nth, when)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    left = snapshot(out)
    assert "predictions.csv" not in left
    if when == "before":
        assert temp_files(out), "the kill should land between writing and renaming"
    for name, content in left.items():  # nothing half-written under a final name
        if not Path(name).name.startswith("."):
            assert content == predicted[name], name

    res = runner.invoke(app, predict_args(detector, images, out))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["images"]["skipped"] == skipped
    assert temp_files(out) == []
    assert snapshot(out) == predicted
    rows = csv_rows(out / "predictions.csv")
    assert len(rows) == len(set(rows)), "no row twice"


# ---------------------------------------------------------------- 4. SIGKILL in review export


@dataclass
class ExportWorld:
    data: Path
    pred: Path
    db: Path
    reference: dict[str, bytes]  # an uninterrupted export

    def args(self, out: Path) -> list[str]:
        return ["review", "export", "--db", str(self.db), "--out", str(out),
                "--predictions", str(self.pred), "--data", str(self.data)]  # fmt: skip


@pytest.fixture(scope="module")
def export_world(tmp_path_factory) -> ExportWorld:
    """Eight images, ~80 decisions by two reviewers (one NP image relabelled), exported."""
    root = tmp_path_factory.mktemp("export")
    data, pred, db = root / "data", root / "pred", root / "r.sqlite"
    write_synthetic_dataset(data, positive=4, negative=4, size=256, seed=1, images_per_slide=1)
    pred.mkdir()
    store = ReviewStore(db)
    run = run_id(pred)
    rng = np.random.default_rng(11)
    records = load_records(data)
    relabel = next(r.name for r in records if r.attribute == "NP")
    for rec in records:
        for k in range(10):
            x, y = (float(v) for v in np.round(rng.uniform(0, 220, 2), 1))
            action = str(rng.choice(ACTIONS)) if rec.attribute == "AP" else "reject"
            if rec.name == relabel and k == 0:
                action = "accept"
            score = None if action == "add" else float(np.round(rng.uniform(0.05, 1), 3))
            store.decide(run, rec.name, action, (x, y, x + 30, y + 30),
                         ("alice", "bob")[k % 2], score)  # fmt: skip
    ref = root / "ref"
    report = export_reviews(store, run, load_cases(data, pred), ref)
    assert report["images"] == 8 and report["relabelled"] == [relabel]
    assert report["hard_negatives"] > 30 and report["added_boxes"] > 5
    return ExportWorld(data, pred, db, snapshot(ref))


EXPORT_KILLS = {
    "third XML half written": ("*.xml", 3, "before"),
    "fifth image linked, not renamed": ("*.jpeg", 5, "before"),
    "hard negatives half written": ("hard_negatives.csv", 1, "before"),
    "before export.json": ("export.json", 1, "before"),
}


@pytest.mark.parametrize("point", list(EXPORT_KILLS))
def test_review_export_killed_then_rerun_equals_an_uninterrupted_export(
    point, killer, export_world, tmp_path
):
    at, nth, when = EXPORT_KILLS[point]
    out = tmp_path / "out"
    res = run_killed(killer, export_world.args(out), at, nth, when)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert temp_files(out), "the kill should land between writing and renaming"
    left = snapshot(out)
    assert "export.json" not in left, "export.json marks a finished export"
    for name, content in left.items():  # nothing half-written under a final name
        if not Path(name).name.startswith("."):
            assert content == export_world.reference[name], name

    res = runner.invoke(app, export_world.args(out))
    assert res.exit_code == 0, res.output
    assert temp_files(out) == []
    assert snapshot(out) == export_world.reference
    hard = csv_rows(out / "hard_negatives.csv")
    assert len(hard) == len(set(hard)), "no hard negative twice"
    names = [r.name for r in load_records(out)]
    assert len(names) == len(set(names)) == 8


# ---------------------------------------------------------------- 5. SIGKILL in the store

WRITER = """
import sys
from pathodet.review.store import ACTIONS, ReviewStore

store = ReviewStore(sys.argv[1])
for i in range(100000):
    rid = store.decide("run", f"case{i % 7}.jpeg", ACTIONS[i % 3], (i, i, i + 10.0, i + 10.0),
                       "alice", 0.5)
    print(rid, i, flush=True)
"""


def check_database(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_every_returned_decision_survives_a_sigkill_mid_stream(tmp_path):
    db = tmp_path / "r.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], env=CHILD_ENV,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    returned: dict[int, int] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # kill while it writes, after 150 confirmed decisions
            rid, i = map(int, line.split())
            returned[rid] = i
            if len(returned) == 150:
                proc.send_signal(signal.SIGKILL)
                break
        for line in proc.stdout:  # printed before the kill: returned too
            rid, i = map(int, line.split())
            returned[rid] = i
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    check_database(db)
    store = ReviewStore(db)
    rows = {d.id: d for d in store.decisions("run")}
    for rid, i in returned.items():
        d = rows[rid]
        assert (d.case_name, d.action, d.box) == (f"case{i % 7}.jpeg", ACTIONS[i % 3],
                                                  (i, i, i + 10.0, i + 10.0))  # fmt: skip
    # at most the one decision in flight at the kill went in without being reported
    assert len(returned) <= store.count_rows() <= len(returned) + 1
    assert sorted(rows) == list(range(1, store.count_rows() + 1))
    assert store.decide("run", "after.jpeg", "add", (1, 1, 5, 5), "bob") == store.count_rows()


IN_TRANSACTION = """
import os, signal, sys
from pathodet.review.store import ReviewStore

store = ReviewStore(sys.argv[1])
for i in range(3):
    store.decide("run", "a.jpeg", "accept", (i, i, i + 10.0, i + 10.0), "alice")
with store._write() as con:  # the fourth insert, killed before its COMMIT
    con.execute("INSERT INTO decisions (run, case_name, cell, action, x1, y1, x2, y2, "
                "reviewer, created_at) VALUES ('run', 'a.jpeg', 'x', 'add', 0, 0, 1, 1, "
                "'alice', 'now')")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_inside_its_transaction_leaves_no_row_and_no_lock(tmp_path):
    db = tmp_path / "r.sqlite"
    res = subprocess.run([sys.executable, "-c", IN_TRANSACTION, str(db)], env=CHILD_ENV,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    check_database(db)
    t0 = time.monotonic()
    store = ReviewStore(db)
    assert [d.box for d in store.decisions("run")] == [(i, i, i + 10.0, i + 10.0)
                                                      for i in range(3)]  # fmt: skip
    assert store.decide("run", "a.jpeg", "reject", (50, 50, 60, 60), "bob") == 4
    assert time.monotonic() - t0 < 5, "no lock is left behind (the busy timeout is 30 s)"
