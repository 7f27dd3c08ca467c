"""The ``pathodet`` command line: one typer app, one subcommand group per stage.

Every command turns library errors (bad dataset, bad config) into one clear line on
stderr and exit code 2, instead of a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pathodet import __version__
from pathodet.config import ConfigError, load_config

app = typer.Typer(
    help="pathodet: signet ring cell detection in H&E images with partial annotation.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect, split and transform DigestPath-layout datasets.")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Benchmarks and figures (long; not part of make test).")
app.add_typer(bench_app, name="bench")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"pathodet: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Report the library's user-facing errors as one line, exit code 2."""
    from pathodet.data.digestpath import DatasetError

    try:
        yield
    except (DatasetError, ConfigError, FileNotFoundError, ValueError) as exc:  # incl. CSV/ckpt
        _fail(str(exc))


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr with ETA; yields ``update(done, total)``."""
    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    from rich.console import Console

    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@data_app.command("summary")
def data_summary(
    root: Annotated[Path, typer.Argument(help="DigestPath root or manifest CSV.")],
) -> None:
    """Print one JSON object describing the dataset; exit 0 while it is usable.

    Every unreadable image, malformed XML or bad box is listed under "problems" with its
    file; boxes partly outside their image are clipped and counted.
    """
    from pathodet.data.digestpath import load_records
    from pathodet.data.samples import load_samples, summarize

    with _user_errors():
        records = load_records(root)
        samples, problems = load_samples(records)
        summary = summarize(samples, problems)
    typer.echo(json.dumps(summary, indent=2))
    if not summary["usable"]:
        typer.echo("pathodet: dataset is not usable: no readable AP image with a box", err=True)
        raise typer.Exit(1)


@data_app.command("folds")
def data_folds(
    root: Annotated[Path, typer.Argument(help="DigestPath root or manifest CSV.")],
    k: Annotated[int, typer.Option("--k", help="Number of folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Shuffling seed.")] = 0,
    out: Annotated[
        Path,
        typer.Option(help="Manifest CSV to write (image, attribute, annotation, slide_id, fold)."),
    ] = Path("folds.csv"),
) -> None:
    """Split images into K folds grouped by slide (a slide never spans two folds)."""
    from pathodet.data.digestpath import load_records, write_manifest
    from pathodet.data.folds import assign_folds, fold_summary

    with _user_errors():
        records = assign_folds(load_records(root), k=k, seed=seed)
        write_manifest(out, records)
    typer.echo(
        json.dumps(
            {"manifest": str(out), "k": k, "seed": seed, "folds": fold_summary(records)}, indent=2
        )
    )


@data_app.command("drop")
def data_drop(
    root: Annotated[Path, typer.Argument(help="DigestPath root to read.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the dropped copy into.")],
    rate: Annotated[float, typer.Option(help="Fraction of each AP image's boxes to remove.")],
    seed: Annotated[int, typer.Option(help="Seed; same seed, same removed boxes.")] = 0,
) -> None:
    """Write a copy with a fraction of annotations removed (images hard-linked)."""
    from pathodet.data.drop import drop_annotations

    with _user_errors():
        report = drop_annotations(root, out, rate=rate, seed=seed)
    report.pop("images")
    typer.echo(json.dumps(report, indent=2))


@data_app.command("tiles")
def data_tiles(
    root: Annotated[Path, typer.Argument(help="DigestPath root or manifest CSV.")],
    config: Annotated[Path | None, typer.Option(help="Config YAML (data.tiling).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override, key=value.")] = [],  # noqa: B006
    save: Annotated[int, typer.Option(help="Save this many tiles with boxes drawn.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for saved tiles.")] = Path("tiles"),
) -> None:
    """Count the sliding-window tiles of a dataset (and save a few to look at)."""
    from pathodet.data.digestpath import load_records
    from pathodet.data.samples import load_samples
    from pathodet.data.tiling import TileDataset

    with _user_errors():
        cfg = load_config(config, set_).data.tiling
        samples, problems = load_samples(load_records(root), verify_image=False)
        tiles = TileDataset(samples, cfg.tile_size, cfg.stride, cfg.min_visible)
        attrs = tiles.attributes()
        n_boxes = 0
        if save:
            from pathodet.data.io import atomic_write_image
            from pathodet.data.overlay import draw_boxes

            step = max(1, len(tiles) // save)
            for k in range(0, len(tiles), step)[:save]:
                item = tiles[k]
                n_boxes += len(item["boxes"])
                x1, y1 = item["window"][:2]
                name = f"{Path(item['name']).stem}-x{x1}-y{y1}-{item['attribute']}.png"
                atomic_write_image(
                    out / name, draw_boxes(item["image"], item["boxes"], (0, 200, 0))
                )
    typer.echo(
        json.dumps(
            {
                "images": len(samples),
                "tiles": len(tiles),
                "AP_tiles": attrs.count("AP"),
                "NP_tiles": attrs.count("NP"),
                "tiling": cfg.model_dump(),
                "saved": min(save, len(tiles)),
                "problems": [p.as_dict() for p in problems],
            },
            indent=2,
        )
    )


@app.command("synth")
def synth(
    out: Annotated[
        Path, typer.Argument(help="Folder to write the DigestPath-layout dataset into.")
    ],
    positive: Annotated[int, typer.Option(help="Number of AP images.")] = 20,
    negative: Annotated[int, typer.Option(help="Number of NP images.")] = 60,
    size: Annotated[
        int, typer.Option(help="Image side in pixels (about; real data ~2000).")
    ] = 2000,
    seed: Annotated[int, typer.Option(help="Seed; same seed, same files.")] = 0,
    annotate_rate: Annotated[
        float, typer.Option(help="Fraction of SRCs the simulated pathologist boxes.")
    ] = 0.5,
    images_per_slide: Annotated[
        int, typer.Option(help="Images cut from each synthetic slide.")
    ] = 3,
) -> None:
    """Write a synthetic DigestPath-like dataset with known full truth (full-annotations/)."""
    from pathodet.data.synth import write_synthetic_dataset

    if positive < 0 or negative < 0 or size < 64:
        _fail("--positive and --negative must be >= 0 and --size >= 64")
    with _user_errors(), _progress("synth") as update:
        report = write_synthetic_dataset(
            out,
            positive=positive,
            negative=negative,
            size=size,
            seed=seed,
            annotate_rate=annotate_rate,
            images_per_slide=images_per_slide,
            progress=update,
        )
    totals = report.get("totals", {})
    typer.echo(json.dumps({"out": str(out), **totals}, indent=2))


@app.command("demo")
def demo(
    out: Annotated[
        Path, typer.Option(help="Output folder (only its own files are overwritten).")
    ] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Run the pipeline end to end on synthetic data (data stage for now)."""
    from pathodet.demo import run_demo

    with _user_errors():
        run_demo(out, seed=seed, echo=typer.echo)


RESUMABLE_KEYS = {"train.epochs", "train.num_workers", "train.threads", "train.device",
                  "train.checkpoint_every", "train.log_every"}  # fmt: skip


@app.command("train")
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

    with _user_errors():
        if resume is not None:
            if config is not None or out is not None:
                _fail("--resume DIR continues the run in DIR with its own config: "
                      "give neither CONFIG nor --out")  # fmt: skip
            bad = [k for k, _ in parse_overrides(set_) if k not in RESUMABLE_KEYS]
            if bad:
                _fail(f"--resume: {', '.join(bad)} cannot change in a resumed run "
                      f"(allowed: {', '.join(sorted(RESUMABLE_KEYS))})")  # fmt: skip
            if not (resume / "last.pt").is_file():
                _fail(f"{resume}: no last.pt to resume from")
            cfg = load_config(resume / CONFIG_FILE, set_)
            run_dir = resume
        else:
            if config is None:
                _fail("missing CONFIG, e.g. pathodet train configs/dghm.yaml")
            cfg = load_config(config, set_)
            run_dir = out or Path("runs") / config.stem
        try:
            summary = train(cfg, run_dir, resume=resume is not None, progress=not quiet,
                            log=lambda m: typer.echo(m, err=True))  # fmt: skip
        except (RunExists, CheckpointError) as exc:
            _fail(str(exc))
        except TrainingDiverged as exc:
            _fail(str(exc), code=3)
    if env_dist_info().is_main:
        typer.echo(json.dumps(summary))


@app.command("predict")
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
        _fail(f"--precision must be fp32 or bf16, got {precision!r}")
    with _user_errors():
        settings = PredictSettings(tile, overlap, batch_size, precision, score_threshold)  # type: ignore[arg-type]
        try:
            with _progress("predict") as update:
                summary = run_predict(checkpoint, inputs, out, settings, overlays, workers,
                                      device, update)  # fmt: skip
        except CheckpointError as exc:
            _fail(str(exc))
    typer.echo(json.dumps(summary))


@app.command("evaluate")
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

    with _user_errors():
        if cv:
            summary = cross_validation(cv)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "cv.json", json.dumps(summary, indent=2))
            atomic_write_text(out / "cv.md", cv_md(summary))
            typer.echo(json.dumps(summary))
            return
        if data is None or (predictions is None) == (checkpoint is None):
            _fail("give --data and one of --predictions CSV or --checkpoint CKPT (or --cv RUNS)")
        if checkpoint is not None:
            from pathodet.engine.predict import PredictSettings
            from pathodet.engine.predict_run import run_predict

            with _progress("predict") as update:
                run_predict(checkpoint, [data], out / "predictions",
                            PredictSettings(precision=precision), progress=update)  # type: ignore[arg-type]  # fmt: skip
            predictions = out / "predictions" / "predictions.csv"
        metrics = run_evaluate(data, predictions, out, removed, full_annotations, iou)
    typer.echo(json.dumps({k: v for k, v in metrics.items() if k != "problems"}))


@bench_app.command("loss-overhead")
def bench_loss_overhead(
    out: Annotated[Path, typer.Option(help="Folder for loss-overhead.json.")] = Path(
        "docs/benchmarks"
    ),
    batch: Annotated[int, typer.Option(help="Tiles per step.")] = 8,
    size: Annotated[int, typer.Option(help="Tile side, pixels.")] = 600,
    repeats: Annotated[int, typer.Option(help="Timed steps per loss.")] = 5,
    precision: Annotated[str, typer.Option(help="fp32 or bf16.")] = "bf16",
    losses: Annotated[
        str, typer.Option(help="Comma-separated losses to compare with focal.")
    ] = "ce,ghm,sce,dghm,dghm_star,oss,cleanliness",
) -> None:
    """Time a training step with each loss against focal loss on the same batch."""
    from pathodet.bench.loss_overhead import measure
    from pathodet.data.io import atomic_write_text

    if precision not in ("fp32", "bf16"):
        _fail(f"--precision must be fp32 or bf16, got {precision!r}")
    result = measure(
        [n.strip() for n in losses.split(",") if n.strip()],
        batch=batch,
        size=size,
        repeats=repeats,
        precision=precision,  # type: ignore[arg-type]
    )
    text = json.dumps(result, indent=2)
    atomic_write_text(out / "loss-overhead.json", text + "\n")
    typer.echo(text)


@bench_app.command("grad-hist")
def bench_grad_hist(
    out: Annotated[Path, typer.Option(help="Folder for grad-hist.png/json.")] = Path(
        "docs/benchmarks/grad-hist"
    ),
    steps: Annotated[int, typer.Option(help="Training steps before measuring.")] = 150,
    loss: Annotated[str, typer.Option(help="Loss to train with (the paper uses ce).")] = "ce",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    tile: Annotated[int, typer.Option(help="Training tile side, pixels.")] = 384,
) -> None:
    """Train briefly on synthetic data and plot g histograms for AP_P / AP_N / NP_N."""
    from pathodet.bench.grad_hist import gradient_histograms

    with _user_errors():
        result = gradient_histograms(
            out, steps=steps, loss=loss, seed=seed, lr=lr, tile=tile, log=typer.echo
        )
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "bin_edges"}))


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="pathodet")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
