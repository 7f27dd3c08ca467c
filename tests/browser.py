"""Helpers to drive the review app in a real browser (tests and docs/make_screenshots.py).

Chromium is Debian's (``/usr/bin/chromium``), installed with apt when missing and
possible; Playwright (the Python package) drives it through ``executable_path``, so no
browser download is needed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip


def ensure_chromium() -> tuple[Path | None, str]:
    """The Chromium binary, installing it with apt when missing; else None and why."""
    if CHROMIUM.is_file():
        return CHROMIUM, ""
    if shutil.which("apt-get") is None:
        return None, "no /usr/bin/chromium and no apt-get to install it"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return None, "no /usr/bin/chromium and not root to apt-get install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=900)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if CHROMIUM.is_file():
        return CHROMIUM, ""
    return None, f"apt-get install chromium failed: {res.stderr.strip()[-300:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_app(data: Path | None, predictions: Path, db: Path, port: int,
                timeout: float = 90.0) -> Iterator[str]:  # fmt: skip
    """``pathodet review`` in a subprocess; yields its URL once it answers its health check."""
    cmd = [sys.executable, "-m", "pathodet", "review", "--predictions", str(predictions),
           "--db", str(db), "--port", str(port)]  # fmt: skip
    if data is not None:
        cmd += ["--data", str(data)]
    log = open(db.with_suffix(".server.log"), "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"review app did not start: {db.with_suffix('.server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def review_fixture(base: Path, seed: int = 5) -> tuple[Path, Path]:
    """A small synthetic DigestPath root and hand-made predictions for it (no model):
    every true SRC detected with a high score, plus low-scoring false positives."""
    from pathodet.data.predictions import ImagePredictions, write_predictions
    from pathodet.data.synth import write_synthetic_dataset
    from pathodet.eval.annotations import load_annotations

    data, preds = base / "data", base / "preds"
    write_synthetic_dataset(data, positive=2, negative=2, size=1000, seed=seed,
                            images_per_slide=1)  # fmt: skip
    truth = load_annotations(data)
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in truth.annotated.items():
        full = truth.full_truth[name].boxes if truth.full_truth else t.boxes
        n = 12
        xy = rng.uniform(50, 900, (n, 2))
        fp = np.column_stack([xy, xy + rng.uniform(30, 70, (n, 2))])
        boxes = np.concatenate([full, fp])
        scores = np.concatenate([rng.uniform(0.6, 0.99, len(full)), rng.uniform(0.05, 0.55, n)])
        out[name] = ImagePredictions(boxes, scores)
    write_predictions(preds / "predictions.csv", out)
    return data, preds
