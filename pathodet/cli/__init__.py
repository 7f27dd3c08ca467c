"""The ``pathodet`` command line: one typer app, one subcommand group per stage.

Every command turns library errors (bad dataset, bad config) into one clear line on
stderr and exit code 2, instead of a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pathodet import __version__
from pathodet.cli.commands import cv_cmd, evaluate_cmd, predict_cmd, purify_cmd, train_cmd
from pathodet.cli.review import review_app
from pathodet.cli.util import fail, user_errors
from pathodet.core.progress import progress_bars
from pathodet.training.config import load_config

app = typer.Typer(
    help="pathodet: signet ring cell detection in H&E images with partial annotation.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect, split and transform DigestPath-layout datasets.")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Benchmarks and figures (long; not part of make test).")
app.add_typer(bench_app, name="bench")


app.add_typer(review_app, name="review")
app.command("train")(train_cmd)
app.command("predict")(predict_cmd)
app.command("purify")(purify_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("cv")(cv_cmd)


@app.callback(invoke_without_command=True)
def _main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="Torch CPU threads (default: the cores this process may use, shared among "
            "the local ranks under torchrun). Give each of two jobs on one machine half.",
        ),
    ] = None,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is not None:
        from pathodet.core.machine import configure_threads

        configure_threads(threads)


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

    with user_errors():
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
    group: Annotated[
        str, typer.Option(help="Keep each 'case' (default) or only each 'slide' in one fold.")
    ] = "case",
    out: Annotated[
        Path,
        typer.Option(
            help="Manifest CSV to write (image, attribute, annotation, slide_id, fold, case_id)."
        ),
    ] = Path("folds.csv"),
) -> None:
    """Split images into K folds grouped by case (a case, and so a slide, never spans two)."""
    from pathodet.data.digestpath import load_records, write_manifest
    from pathodet.data.folds import assign_folds, fold_summary

    with user_errors():
        if group not in ("case", "slide"):
            fail(f"--group must be 'case' or 'slide', got {group!r}")
        records = assign_folds(load_records(root), k=k, seed=seed, group=group)  # type: ignore[arg-type]
        write_manifest(out, records)
    typer.echo(
        json.dumps(
            {
                "manifest": str(out),
                "k": k,
                "seed": seed,
                "group": group,
                "folds": fold_summary(records),
            },
            indent=2,
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

    with user_errors():
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

    with user_errors():
        data_cfg = load_config(config, set_).data
        cfg = data_cfg.tiling
        samples, problems = load_samples(load_records(root), verify_image=False)
        tiles = TileDataset(samples, cfg.tile_size, cfg.stride, cfg.min_visible,
                            scale=data_cfg.scale)  # fmt: skip
        attrs = tiles.attributes()
        n_boxes = 0
        if save:
            from pathodet.core.io import atomic_write_image
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
                "scale": data_cfg.scale,
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
        fail("--positive and --negative must be >= 0 and --size >= 64")
    with user_errors(), progress_bars() as bars:
        report = write_synthetic_dataset(
            out,
            positive=positive,
            negative=negative,
            size=size,
            seed=seed,
            annotate_rate=annotate_rate,
            images_per_slide=images_per_slide,
            progress=lambda done, total: bars("synth", done, total),
        )
    totals = report.get("totals", {})
    typer.echo(json.dumps({"out": str(out), **totals}, indent=2))


@app.command("synth-slide")
def synth_slide(
    out: Annotated[Path, typer.Argument(help="The pyramidal TIFF to write, e.g. slide.tiff.")],
    width: Annotated[int, typer.Option(help="Level-0 width, pixels.")] = 12000,
    height: Annotated[int, typer.Option(help="Level-0 height, pixels.")] = 8000,
    seed: Annotated[int, typer.Option(help="Seed; same seed, same slide.")] = 0,
    mpp: Annotated[float, typer.Option(help="Microns per level-0 pixel (0.25 = 40x).")] = 0.25,
    tissue: Annotated[float, typer.Option(help="Fraction of the slide that is tissue.")] = 0.4,
    src: Annotated[float, typer.Option(help="Fraction of the tissue in SRC regions.")] = 0.3,
) -> None:
    """Write a synthetic whole slide (pyramidal tiled TIFF, JPEG tiles, MPP) that OpenSlide opens.

    The boxes of every SRC on it go to OUT's stem + .truth.csv (level-0 pixels).
    """
    from pathodet.data.synth.slide import truth_path, write_synthetic_slide

    with user_errors():
        out.parent.mkdir(parents=True, exist_ok=True)
        made = write_synthetic_slide(out, width, height, seed=seed, mpp=mpp,
                                     tissue_fraction=tissue, src_fraction=src)  # fmt: skip
    typer.echo(json.dumps({"out": str(out), "truth": str(truth_path(out)),
                           "levels": made.levels, "mpp": mpp,
                           "src_cells": int(len(made.src_boxes))}))  # fmt: skip


@app.command("demo")
def demo(
    out: Annotated[
        Path, typer.Option(help="Output folder (only the demo's own files are overwritten).")
    ] = Path("demo-output"),
    budget_minutes: Annotated[
        float,
        typer.Option(
            help="Wall-clock budget; the training steps follow from this machine's measured speed."
        ),
    ] = 20.0,
    seed: Annotated[int, typer.Option(help="Seed of data, folds and training.")] = 0,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where native, else fp32), fp32 or bf16.")
    ] = "auto",
    steps: Annotated[
        int | None, typer.Option(help="Training steps per model (skips the speed measurement).")
    ] = None,
    recipe: Annotated[
        str,
        typer.Option(
            help="auto (light when the budget fits < 600 full steps here), full "
            "(128-channel FPN and head) or light (64)."
        ),
    ] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            help="A real DigestPath root: case-grouped folds, DGHM-C and focal with the "
            "real recipe (configs/digestpath.yaml) on the held-out fold(s), report."
        ),
    ] = None,
    folds: Annotated[int, typer.Option(help="With --data: number of folds.")] = 5,
    all_folds: Annotated[
        bool, typer.Option(help="With --data: hold out every fold in turn (cross-validation).")
    ] = False,
) -> None:
    """The whole mission on synthetic data: synthesize, train DGHM-C and focal, evaluate,
    run a whole slide, write OUT/report.md, print the review command. With --data, the
    same on a real DigestPath root (no slide)."""
    from pathodet.demo import DemoSettings, run_demo

    if data is not None:
        from pathodet.demo.real import run_real_demo

        with user_errors():
            run_real_demo(data, out, folds, all_folds, seed, echo=typer.echo,
                          progress=not quiet)  # fmt: skip
        typer.echo(f"report: {out / 'report.md'}")
        return
    with user_errors():
        settings = DemoSettings(
            seed=seed,
            budget_minutes=budget_minutes,
            precision=precision,
            steps=steps,
            recipe=recipe,
        )
        run_demo(out, settings, echo=typer.echo, progress=not quiet)


@bench_app.command("share")
def bench_share(
    out: Annotated[Path, typer.Option(help="Folder for share.json/.md.")] = Path("docs/benchmarks"),
    steps: Annotated[int, typer.Option(min=1, help="Training steps each process runs.")] = 20,
) -> None:
    """Two pathodet processes started together: each one's slowdown over running alone,
    with pathodet's thread settings and with torch's spinning default."""
    from pathodet.bench.share import run_share

    with user_errors():
        run_share(out, steps, log=lambda m: typer.echo(m, err=True))


@bench_app.command("speed")
def bench_speed(
    out: Annotated[Path, typer.Option(help="Folder for speed.json/.md.")] = Path("docs/benchmarks"),
    checkpoint: Annotated[
        Path | None, typer.Option(help="Detector (default: the demo's DGHM-C, if present).")
    ] = Path("demo-output/runs/dghm/last.pt"),
    test_root: Annotated[
        Path | None, typer.Option(help="Held-out split for fp32 vs bf16 FROC.")
    ] = Path("demo-output/data/test"),
) -> None:
    """Step time per loss, inference Mpx/s fp32/bf16 at two window sizes, time outside the
    forward, GFLOP/s against the matmul peak, and bf16's FROC cost."""
    from pathodet.bench.speed import run_speed

    if checkpoint is not None and not checkpoint.is_file():
        typer.echo(f"{checkpoint}: not found; timing random weights, no FROC check", err=True)
        checkpoint = None
    if test_root is not None and not test_root.is_dir():
        test_root = None
    with user_errors():
        run_speed(out, checkpoint, test_root, log=lambda m: typer.echo(m, err=True))


@bench_app.command("losses")
def bench_losses(
    out: Annotated[Path, typer.Option(help="Working folder: data, runs, results.")] = Path(
        "bench-output/losses"
    ),
    docs: Annotated[
        Path | None,
        typer.Option(
            help="Folder for losses.md/.json/.png (default: docs/benchmarks; "
            "with --quick, OUT/report)."
        ),
    ] = None,
    quick: Annotated[bool, typer.Option(help="Smoke run: 3 methods, 2 rates, 6 steps.")] = False,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated training seeds.")] = None,
    rates: Annotated[str | None, typer.Option(help="Comma-separated drop rates.")] = None,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods (default: all).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps per run.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Config override for every run.")
    ] = None,
    keep_checkpoints: Annotated[bool, typer.Option(help="Keep every run's last.pt.")] = False,
    report_only: Annotated[
        bool, typer.Option(help="Only write the report from the runs already finished.")
    ] = False,
) -> None:
    """The DGHM paper's loss comparison under controlled missing labels (Tables 3-4), on
    synthetic data; resumable: rerun the same command to continue."""
    import shlex

    from pathodet.bench.losses import LossBenchSettings, run_losses
    from pathodet.bench.losses_methods import quick_settings
    from pathodet.bench.losses_report import report

    base = quick_settings() if quick else LossBenchSettings()
    changes: dict = {}
    try:
        if seeds is not None:
            changes["seeds"] = [int(x) for x in seeds.split(",")]
        if rates is not None:
            changes["drop_rates"] = [float(x) for x in rates.split(",")]
    except ValueError as exc:
        fail(f"--seeds/--rates: {exc}")
    if methods is not None:
        changes["methods"] = [m.strip() for m in methods.split(",")]
    if steps is not None:
        changes["steps"] = steps
    if overrides:
        changes["overrides"] = list(overrides)
    try:
        settings = LossBenchSettings(**{**base.model_dump(), **changes})
    except ValueError as exc:
        fail(str(exc))
    given = [("--out", out if out != Path("bench-output/losses") else None), ("--docs", docs),
             ("--seeds", seeds), ("--rates", rates), ("--methods", methods), ("--steps", steps),
             *[("--set", o) for o in overrides or []]]  # fmt: skip
    command = " ".join(["pathodet bench losses", *(["--quick"] if quick else []),
                        *(f"{k} {shlex.quote(str(v))}" for k, v in given if v is not None)])  # fmt: skip
    docs = docs or (out / "report" if quick else Path("docs/benchmarks"))
    with user_errors():
        if not report_only:
            run_losses(out, settings, log=lambda m: typer.echo(m, err=True),
                       keep_checkpoints=keep_checkpoints)  # fmt: skip
        report(out, settings, docs, command)
    typer.echo(f"report: {docs / 'losses.md'}")


@bench_app.command("grad-share")
def bench_grad_share(
    checkpoint: Annotated[Path, typer.Argument(help="Trained detector (last.pt).")],
    kept: Annotated[Path, typer.Option(help="Training root with the kept annotations.")],
    full: Annotated[Path, typer.Option(help="The same images, every SRC annotated.")],
    out: Annotated[Path, typer.Option(help="Output JSON (a .md table goes beside it).")],
    tiles: Annotated[int, typer.Option(help="AP tiles and NP tiles drawn (each).")] = 24,
) -> None:
    """Share of each loss's classification gradient on annotated SRCs, missed SRCs, other AP
    negatives and NP negatives, on one detector's logits."""
    import json

    from pathodet.bench.grad_share import gradient_shares, shares_md
    from pathodet.bench.losses import METHODS
    from pathodet.core.io import atomic_write_text

    with user_errors():
        result = gradient_shares(checkpoint, kept, full, n_ap=tiles, n_np=tiles)
    atomic_write_text(out, json.dumps(result, indent=1))
    md = "\n".join(shares_md(result, {m: v.label for m, v in METHODS.items()})) + "\n"
    atomic_write_text(out.with_suffix(".md"), md)
    typer.echo(md)


@bench_app.command("slide")
def bench_slide(
    out: Annotated[Path, typer.Option(help="Folder for slide-speed.json/.md.")] = Path(
        "docs/benchmarks"
    ),
    sizes: Annotated[
        str, typer.Option(help="Slides WxH:tissue-fraction, comma-separated.")
    ] = "10000x10000:0.4,40000x30000:0.15",
    checkpoint: Annotated[
        Path | None, typer.Option(help="Detector (default: random init, same cost).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 4,
    workers: Annotated[int, typer.Option(help="Tile-reading processes.")] = 1,
) -> None:
    """Slide throughput (tissue Mpx/s), fp32 vs bf16, time outside the forward, peak memory."""
    from pathodet.bench.slide_speed import run_bench

    parsed = []
    for item in sizes.split(","):
        try:
            dims, frac = item.split(":")
            w, h = dims.lower().split("x")
            parsed.append((int(w), int(h), float(frac)))
        except ValueError:
            fail(f"--sizes: {item!r} is not WIDTHxHEIGHT:FRACTION")
    with user_errors():
        run_bench(out, parsed, checkpoint, batch_size, workers,
                  log=lambda m: typer.echo(m, err=True))  # fmt: skip


@bench_app.command("loss-overhead")
def bench_loss_overhead(
    out: Annotated[Path, typer.Option(help="Folder for loss-overhead.json.")] = Path(
        "docs/benchmarks"
    ),
    batch: Annotated[int, typer.Option(help="Tiles per step.")] = 8,
    size: Annotated[int, typer.Option(help="Tile side, pixels.")] = 600,
    repeats: Annotated[int, typer.Option(help="Timed steps per loss.")] = 5,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where native, else fp32), fp32 or bf16.")
    ] = "auto",
    losses: Annotated[
        str, typer.Option(help="Comma-separated losses to compare with focal.")
    ] = "ce,ghm,sce,dghm,dghm_star,oss,cleanliness",
) -> None:
    """Time a training step with each loss against focal loss on the same batch."""
    from pathodet.bench.loss_overhead import measure
    from pathodet.core.io import atomic_write_text
    from pathodet.core.machine import machine_record, resolve_precision

    if precision not in ("auto", "fp32", "bf16"):
        fail(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    precision = resolve_precision(precision)
    result = measure(
        [n.strip() for n in losses.split(",") if n.strip()],
        batch=batch,
        size=size,
        repeats=repeats,
        precision=precision,  # type: ignore[arg-type]
    )
    result["machine"] = machine_record(precision)
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

    with user_errors():
        result = gradient_histograms(
            out, steps=steps, loss=loss, seed=seed, lr=lr, tile=tile, log=typer.echo
        )
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "bin_edges"}))


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="pathodet")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
