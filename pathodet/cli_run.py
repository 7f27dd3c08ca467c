"""The model commands: ``train``, ``predict``, ``evaluate`` (registered in :mod:`pathodet.cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pathodet.cli_util import fail, progress_bar, user_errors
from pathodet.config import load_config

RESUMABLE_KEYS = {"train.epochs", "train.num_workers", "train.threads", "train.device",
                  "train.checkpoint_every", "train.log_every"}  # fmt: skip


def train_cmd(
    config: Annotated[
        Path | None, typer.Argument(help="Config YAML, e.g. configs/dghm.yaml.")
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override, key=value.")] = [],  # noqa: B006
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/CONFIG-NAME).")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this folder from its last.pt."),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train a detector (RetinaNet, ResNet-18 FPN) on DigestPath tiles.

    Also works under torchrun: ``torchrun --nproc_per_node 2 -m pathodet train ...``.
    """
    from pathodet.config import parse_overrides
    from pathodet.engine.checkpoint import CheckpointError
    from pathodet.engine.dist import env_dist_info
    from pathodet.engine.train import CONFIG_FILE, RunExists, TrainingDiverged, train
    from pathodet.eval.validation import tile_metrics

    with user_errors():
        if resume is not None:
            if config is not None or out is not None:
                fail("--resume DIR continues the run in DIR with its own config: "
                      "give neither CONFIG nor --out")  # fmt: skip
            bad = [k for k, _ in parse_overrides(set_) if k not in RESUMABLE_KEYS]
            if bad:
                fail(f"--resume: {', '.join(bad)} cannot change in a resumed run "
                      f"(allowed: {', '.join(sorted(RESUMABLE_KEYS))})")  # fmt: skip
            if not (resume / "last.pt").is_file():
                fail(f"{resume}: no last.pt to resume from")
            cfg = load_config(resume / CONFIG_FILE, set_)
            run_dir = resume
        else:
            if config is None:
                fail("missing CONFIG, e.g. pathodet train configs/dghm.yaml")
            cfg = load_config(config, set_)
            run_dir = out or Path("runs") / config.stem
        try:
            summary = train(
                cfg, run_dir, resume=resume is not None, progress=not quiet,
                log=lambda m: typer.echo(m, err=True), val_metrics=tile_metrics,
            )  # fmt: skip
        except (RunExists, CheckpointError) as exc:
            fail(str(exc))
        except TrainingDiverged as exc:
            fail(str(exc), code=3)
    if env_dist_info().is_main:
        typer.echo(json.dumps(summary))


def predict_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint from pathodet train.")],
    inputs: Annotated[list[Path], typer.Argument(help="Images, folders or a DigestPath root.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("predictions"),
    tile: Annotated[int, typer.Option(help="Window side, pixels (multiple of 32).")] = 1024,
    overlap: Annotated[int, typer.Option(help="Window overlap, pixels (>= cell size).")] = 128,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 4,
    score_threshold: Annotated[float, typer.Option(help="Keep detections above.")] = 0.05,
    precision: Annotated[str, typer.Option(help="fp32 or bf16 (autocast).")] = "fp32",
    workers: Annotated[int, typer.Option(help="Image-decoding worker processes.")] = 1,
    overlays: Annotated[bool, typer.Option(help="Also write overlay PNGs.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Detect SRCs in whole images (overlapping tiles merged without seam duplicates)."""
    from pathodet.engine.checkpoint import CheckpointError
    from pathodet.engine.predict import PredictSettings
    from pathodet.engine.predict_run import run_predict

    if precision not in ("fp32", "bf16"):
        fail(f"--precision must be fp32 or bf16, got {precision!r}")
    with user_errors():
        settings = PredictSettings(tile, overlap, batch_size, precision, score_threshold)  # type: ignore[arg-type]
        try:
            with progress_bar("predict") as update:
                summary = run_predict(checkpoint, inputs, out, settings, overlays, workers,
                                      device, update)  # fmt: skip
        except CheckpointError as exc:
            fail(str(exc))
    typer.echo(json.dumps(summary))


def evaluate_cmd(
    data: Annotated[Path | None, typer.Option(help="DigestPath-layout root.")] = None,
    predictions: Annotated[Path | None, typer.Option(help="predictions.csv to score.")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Predict with this checkpoint first.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("evaluation"),
    removed: Annotated[
        Path | None, typer.Option(help="removed-annotations/ of pathodet data drop (R-recall).")
    ] = None,
    full_annotations: Annotated[
        Path | None, typer.Option(help="full-annotations/ of pathodet synth (true recall).")
    ] = None,
    iou: Annotated[float, typer.Option(help="IoU to match a prediction to a box.")] = 0.3,
    cv: Annotated[
        list[Path] | None, typer.Option(help="Fold evaluation folders to aggregate.")
    ] = None,
    precision: Annotated[str, typer.Option(help="With --checkpoint: fp32 or bf16.")] = "fp32",
) -> None:
    """Challenge metrics (recall, NFP, FROC) plus T/R-recall and true recall/precision."""
    from pathodet.data.io import atomic_write_text
    from pathodet.eval.report import cross_validation, cv_md
    from pathodet.eval.run import run_evaluate

    with user_errors():
        if cv:
            summary = cross_validation(cv)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "cv.json", json.dumps(summary, indent=2))
            atomic_write_text(out / "cv.md", cv_md(summary))
            typer.echo(json.dumps(summary))
            return
        if data is None or (predictions is None) == (checkpoint is None):
            fail("give --data and one of --predictions CSV or --checkpoint CKPT (or --cv RUNS)")
        if checkpoint is not None:
            from pathodet.engine.predict import PredictSettings
            from pathodet.engine.predict_run import run_predict

            with progress_bar("predict") as update:
                run_predict(checkpoint, [data], out / "predictions",
                            PredictSettings(precision=precision), progress=update)  # type: ignore[arg-type]  # fmt: skip
            predictions = out / "predictions" / "predictions.csv"
        metrics = run_evaluate(data, predictions, out, removed, full_annotations, iou)
    typer.echo(json.dumps({k: v for k, v in metrics.items() if k != "problems"}))
