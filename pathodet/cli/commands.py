"""The model commands: ``train``, ``predict``, ``evaluate`` (registered in :mod:`pathodet.cli`)."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Annotated

import typer

from pathodet.cli.util import echo_err, fail, user_errors
from pathodet.core.progress import progress_bars
from pathodet.training.config import load_config


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
    from pathodet.core.dist import env_dist_info
    from pathodet.eval.validation import tile_metrics
    from pathodet.training.checkpoint import CheckpointError
    from pathodet.training.run_dir import resume_config
    from pathodet.training.train import RunExists, TrainingDiverged, train

    with user_errors():
        if resume is not None:
            if config is not None or out is not None:
                fail("--resume DIR continues the run in DIR with its own config: "
                      "give neither CONFIG nor --out")  # fmt: skip
            cfg = resume_config(resume, set_)
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
        except OSError as exc:  # a full disk: the last checkpoint written is intact
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            fail(f"{exc}\nfree some space, then continue with: pathodet train --resume {run_dir}")
    if env_dist_info().is_main:
        typer.echo(json.dumps(summary))


def predict_cmd(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="A checkpoint from pathodet train, or a .onnx from pathodet export."),
    ],
    inputs: Annotated[
        list[Path], typer.Argument(help="Images, whole slides, folders or a DigestPath root.")
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("predictions"),
    tile: Annotated[
        int | None,
        typer.Option(help="Window side, pixels (multiple of 32); default: the checkpoint's tile."),
    ] = None,
    overlap: Annotated[int, typer.Option(help="Window overlap, pixels (>= cell size).")] = 128,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 4,
    score_threshold: Annotated[float, typer.Option(help="Keep detections above.")] = 0.05,
    nms_iou: Annotated[
        float, typer.Option(help="Suppress a detection overlapping a better one this much.")
    ] = 0.5,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where native, else fp32), fp32 or bf16 (autocast).")
    ] = "auto",
    workers: Annotated[int, typer.Option(help="Image-decoding / tile-reading processes.")] = 1,
    overlays: Annotated[bool, typer.Option(help="Also write overlay PNGs (images).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    engine: Annotated[
        str,
        typer.Option(
            help="torch, or onnxruntime (CPU; a .onnx file from pathodet export, or the "
            "checkpoint exported on the fly); auto: onnxruntime for a .onnx file."
        ),
    ] = "auto",
    slides: Annotated[
        bool, typer.Option("--slides", help="Treat every input file as a slide (any image).")
    ] = False,
    target_mpp: Annotated[
        float | None,
        typer.Option(
            help="Slides: µm/px to detect at (default: the checkpoint's; 0.25 / data.scale "
            "when its data.mpp is unknown)."
        ),
    ] = None,
    mpp: Annotated[
        float | None,
        typer.Option(
            help="µm/px of the inputs' level 0: overrides what slides say; plain images are "
            "resized from it to the detector's µm/px (default: slides' own, images at the "
            "training images' µm/px)."
        ),
    ] = None,
    assumed_mpp: Annotated[
        float,
        typer.Option(
            help="Slides: µm/px of level 0 when the slide gives neither a plausible pixel "
            "size nor an objective power."
        ),
    ] = 0.25,
    count_threshold: Annotated[
        float, typer.Option(help="Slides: score counted as an SRC in counts and density.")
    ] = 0.5,
    density_um: Annotated[float, typer.Option(help="Slides: heatmap cell side, µm.")] = 250.0,
    split: Annotated[
        str, typer.Option(help="Under torchrun: share 'slides' or each slide's 'tiles'.")
    ] = "slides",
) -> None:
    """Detect SRCs in images and whole slides (overlapping windows merged without duplicates).

    Whole slides (SVS, NDPI, MRXS, SCN, BIF, pyramidal TIFF...) are read through OpenSlide,
    on their tissue only, at the level closest to --target-mpp; their results go to
    OUT/slides/<name>/ (CSV, GeoJSON in level 0, density heatmap, summary) and OUT/slides.json.
    Under ``torchrun --nproc_per_node N -m pathodet predict ...`` the slides, or with
    --split tiles the windows of each slide, are shared among the processes.
    """
    from pathodet.core.dist import env_dist_info
    from pathodet.predict.config import PredictConfig, SlideConfig
    from pathodet.predict.pipeline import predict
    from pathodet.training.checkpoint import CheckpointError

    if precision not in ("auto", "fp32", "bf16"):
        fail(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    if split not in ("slides", "tiles"):
        fail(f"--split must be slides or tiles, got {split!r}")
    with user_errors():
        config = PredictConfig(
            tile=tile, overlap=overlap, batch_size=batch_size, precision=precision,
            score_threshold=score_threshold, nms_iou=nms_iou, num_workers=workers,
            overlays=overlays, device=device, mpp=mpp, engine=engine,
            slides=SlideConfig(target_mpp=target_mpp, assumed_mpp=assumed_mpp,
                               count_threshold=count_threshold, density_um=density_um,
                               split=split),
        )  # fmt: skip
        main = env_dist_info().is_main
        with progress_bars(enabled=main) as update:
            try:
                summary = predict(config, checkpoint, inputs, out, all_slides=slides,
                                  progress=update, log=echo_err if main else None)  # fmt: skip
            except CheckpointError as exc:
                fail(str(exc))
    if main:
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
    precision: Annotated[
        str, typer.Option(help="With --checkpoint: auto (bf16 where native), fp32 or bf16.")
    ] = "auto",
    src_name: Annotated[
        list[str] | None,
        typer.Option(
            "--src-name",
            help="Class name of SRC objects in the annotations (repeatable; default "
            "ring_cell_cancer); objects of other classes are skipped and counted.",
        ),
    ] = None,
    max_side: Annotated[
        float | None,
        typer.Option(
            help="Leave out predictions whose longer side exceeds this many pixels (of the "
            "image), e.g. the largest SRC box of the training annotations; counted in "
            "metrics.json's oversized_predictions."
        ),
    ] = None,
) -> None:
    """Challenge metrics (recall, NFP, FROC) plus T/R-recall and true recall/precision.

    Boxes overhanging their image a little (annotations or predictions) are clipped and
    counted; a prediction outside its image is left out and listed in metrics.json's
    problems with its line.
    """
    from pathodet.data.voc import AnnotationRules
    from pathodet.eval.evaluate import run_evaluate
    from pathodet.eval.report import write_cross_validation

    if precision not in ("auto", "fp32", "bf16"):
        fail(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    with user_errors():
        if cv:
            if max_side is not None:
                fail("--max-side applies when scoring predictions, not to --cv aggregation")
            typer.echo(json.dumps(write_cross_validation(cv, out)))
            return
        if data is None or (predictions is None) == (checkpoint is None):
            fail("give --data and one of --predictions CSV or --checkpoint CKPT (or --cv RUNS)")
        if checkpoint is not None:
            from pathodet.predict.config import PredictConfig
            from pathodet.predict.pipeline import predict

            with progress_bars() as update:
                predict(PredictConfig(precision=precision), checkpoint, [data],  # type: ignore[arg-type]
                        out / "predictions", progress=update)  # fmt: skip
            predictions = out / "predictions" / "predictions.csv"
        rules = AnnotationRules(src_names=tuple(src_name)) if src_name else None
        metrics = run_evaluate(data, predictions, out, removed, full_annotations, iou,
                               rules=rules, max_side=max_side)  # fmt: skip
    if metrics["problems"]:
        typer.echo(f"pathodet evaluate: {len(metrics['problems'])} problem(s), each with its "
                   f"file in {out / 'metrics.json'}", err=True)  # fmt: skip
    typer.echo(json.dumps({k: v for k, v in metrics.items() if k != "problems"}))


def purify_cmd(
    labeled: Annotated[Path, typer.Option(help="Labeled DigestPath root (or manifest CSV).")],
    unlabeled: Annotated[
        Path,
        typer.Option(
            help="Unlabeled pool: a DigestPath root, a folder of images or slides, or one slide."
        ),  # fmt: skip
    ],
    out: Annotated[Path, typer.Option(help="Output folder (selected tiles, ranking, summary).")],
    teacher: Annotated[
        Path | None,
        typer.Option(
            help="Detector checkpoint (RUN/last.pt) that pseudo-labels the selected "
            "tiles and initialises the classifier."
        ),  # fmt: skip
    ] = None,
    prior: Annotated[
        float | None, typer.Option(help="Class prior pi_p of the pool (default: estimated).")
    ] = None,
    select: Annotated[
        int | None, typer.Option(help="Tiles to select (default: pi_p x pool tiles).")
    ] = None,
    selection: Annotated[str, typer.Option(help="pu, or random (the paper's U^R control).")] = "pu",
    tile: Annotated[int, typer.Option(help="Tile side, pixels (the detector's).")] = 800,
    stride: Annotated[int, typer.Option(help="Stride of the labeled tiles, pixels.")] = 300,
    steps: Annotated[int, typer.Option(help="PU training steps.")] = 300,
    tau: Annotated[float, typer.Option(help="Teacher score threshold of pseudo boxes.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    truth: Annotated[
        Path | None,
        typer.Option(
            help="Folder of <image>.xml with every SRC (synthetic data): report the "
            "purification precision."
        ),  # fmt: skip
    ] = None,
) -> None:
    """PU data purification: rank pool tiles with a positive-unlabeled classifier, write the
    selected ones and (with --teacher) their pseudo-labels, for configs/pudet.yaml."""
    from pathodet.purify.classifier import PUConfig
    from pathodet.purify.pipeline import run_purify

    with user_errors():
        cfg = PUConfig(tile=tile, stride=stride, steps=steps, prior=prior, select=select,
                       selection=selection, tau=tau, seed=seed)  # fmt: skip
        summary = run_purify(labeled, unlabeled, out, cfg, teacher, truth,
                             log=lambda m: typer.echo(m, err=True))  # fmt: skip
    summary.pop("problems")
    typer.echo(json.dumps(summary, indent=1))


def cv_cmd(
    config: Annotated[Path, typer.Argument(help="Training config, e.g. configs/digestpath.yaml.")],
    data: Annotated[Path, typer.Option(help="DigestPath root (or manifest CSV).")],
    folds: Annotated[int, typer.Option(help="Number of folds (K).")] = 5,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default runs/cv-CONFIG).")
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override, key=value.")] = [],  # noqa: B006
    seed: Annotated[int, typer.Option(help="Fold-shuffling seed.")] = 0,
    group: Annotated[
        str, typer.Option(help="Keep each 'case' (default) or only each 'slide' in one fold.")
    ] = "case",
    fold: Annotated[
        list[int] | None, typer.Option(help="Run only this fold (repeatable); default all.")
    ] = None,
    tile: Annotated[
        int | None, typer.Option(help="Prediction window side, pixels; default: the config's tile.")
    ] = None,
    nms_iou: Annotated[
        float, typer.Option(help="Prediction NMS: suppress a detection overlapping a better one.")
    ] = 0.3,
    quiet: Annotated[bool, typer.Option(help="No training progress bar.")] = False,
) -> None:
    """Cross-validate: one model per case-grouped fold, each fold's held-out images predicted
    and evaluated; per-fold metrics, mean ± std and every fold's FROC curve.

    Resumable: run the same command again after an interruption.
    """
    from pathodet.eval.cv import run_cv
    from pathodet.predict.config import PredictConfig

    if group not in ("case", "slide"):
        fail(f"--group must be 'case' or 'slide', got {group!r}")
    with user_errors():
        cfg = load_config(config, set_)
        target = out or Path("runs") / f"cv-{config.stem}"
        summary = run_cv(cfg, data, target, folds, seed, group,  # type: ignore[arg-type]
                         PredictConfig(tile=tile, nms_iou=nms_iou), fold, lambda m: typer.echo(m, err=True),
                         progress=not quiet)  # fmt: skip
    typer.echo((target / "cv.md").read_text())
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "folds"}))
