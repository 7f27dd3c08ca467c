"""``pathodet bench``: the benchmarks and figures (long; not part of ``make test``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pathodet.cli.util import fail, user_errors

bench_app = typer.Typer(help="Benchmarks and figures (long; not part of make test).")


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
    data: Annotated[
        Path | None, typer.Option(help="Real mode: a DigestPath root (e.g. ../shared/digestpath).")
    ] = None,
    folds: Annotated[
        str | None, typer.Option(help="Real mode: comma-separated held-out folds (of 5).")
    ] = None,
    curve_every: Annotated[
        int | None, typer.Option(help="Real mode: held-out FROC every N steps at 0% dropped.")
    ] = None,
    restore: Annotated[
        Path | None,
        typer.Option(
            help="Real mode: first put back into --out the runs this losses-real.json "
            "recorded (same settings and recipe), e.g. after --out was lost."
        ),
    ] = None,
) -> None:
    """The DGHM paper's loss comparison under controlled missing labels (Tables 3-4): on
    synthetic data, or with --data on real DigestPath (case-grouped folds, real boxes
    dropped from the training folds); resumable: rerun the same command to continue."""
    if data is not None:
        if quick or keep_checkpoints:
            fail("--quick and --keep-checkpoints are for the synthetic benchmark, not --data")
        _bench_losses_real(data, out, docs, rates, methods, steps, overrides, folds, seeds,
                           curve_every, report_only, restore)  # fmt: skip
        return
    if folds is not None or curve_every is not None or restore is not None:
        fail("--folds, --curve-every and --restore are for real mode (--data)")

    from pathodet.bench.losses import LossBenchSettings, run_losses
    from pathodet.bench.losses_methods import quick_settings
    from pathodet.bench.losses_report import report

    base = quick_settings() if quick else LossBenchSettings()
    changes = _run_changes(methods, steps, overrides)
    if seeds is not None:
        changes["seeds"] = _comma_list("--seeds", seeds, int)
    if rates is not None:
        changes["drop_rates"] = _comma_list("--rates", rates, float)
    try:
        settings = LossBenchSettings(**{**base.model_dump(), **changes})
    except ValueError as exc:
        fail(str(exc))
    given = [("--out", out if out != Path("bench-output/losses") else None), ("--docs", docs),
             ("--seeds", seeds), ("--rates", rates), ("--methods", methods), ("--steps", steps),
             *[("--set", o) for o in overrides or []]]  # fmt: skip
    command = _command_line(["--quick"] if quick else [], given)
    docs = docs or (out / "report" if quick else Path("docs/benchmarks"))
    with user_errors():
        if not report_only:
            run_losses(out, settings, log=lambda m: typer.echo(m, err=True),
                       keep_checkpoints=keep_checkpoints)  # fmt: skip
        report(out, settings, docs, command)
    typer.echo(f"report: {docs / 'losses.md'}")


def _bench_losses_real(data: Path, out: Path, docs: Path | None, rates: str | None,
                       methods: str | None, steps: int | None, overrides: list[str] | None,
                       folds: str | None, seeds: str | None, curve_every: int | None,
                       report_only: bool, restore_from: Path | None) -> None:  # fmt: skip
    """``bench losses --data``: :mod:`pathodet.bench.losses_real`."""
    from pathodet.bench.losses_real import RealLossBenchSettings, run_real_losses
    from pathodet.bench.losses_real_report import write_real_report
    from pathodet.bench.losses_real_results import add_figures, collect, restore

    changes = _run_changes(methods, steps, overrides)
    if rates is not None:
        changes["drop_rates"] = _comma_list("--rates", rates, float)
    if folds is not None:
        changes["run_folds"] = _comma_list("--folds", folds, int)
    if seeds is not None:
        one_seed = _comma_list("--seeds", seeds, int)
        if len(one_seed) != 1:
            fail(f"--seeds {seeds}: one seed in real mode (the folds are the runs)")
        changes["seed"] = one_seed[0]
    if curve_every is not None:
        changes["curve_every"] = curve_every
    try:
        settings = RealLossBenchSettings(**changes)
    except ValueError as exc:
        fail(str(exc))
    out = Path("bench-output/losses-real") if out == Path("bench-output/losses") else out
    given = [("--data", data), ("--out", out), ("--rates", rates), ("--folds", folds),
             ("--methods", methods), ("--steps", steps), ("--seeds", seeds),
             ("--curve-every", curve_every),
             *[("--set", o) for o in overrides or []]]  # fmt: skip
    command = _command_line([], given)
    with user_errors():
        if not data.is_dir():
            raise FileNotFoundError(f"--data {data}: no such folder")
        if restore_from is not None:
            n = restore(restore_from, data, out, settings, log=lambda m: typer.echo(m, err=True))
            typer.echo(f"restored {n} run(s) from {restore_from} into {out}", err=True)
        if not report_only:
            run_real_losses(data, out, settings, log=lambda m: typer.echo(m, err=True))
        add_figures(out, log=lambda m: typer.echo(m, err=True))  # runs made before it existed
        md = write_real_report(collect(out, settings), settings.steps, settings.methods,
                               settings.drop_rates, docs or Path("docs/benchmarks"), command)  # fmt: skip
    typer.echo(f"report: {md}")


def _comma_list(option: str, text: str, kind: type) -> list:
    """A comma-separated option's values as ``kind``; a bad value exits naming the option."""
    try:
        return [kind(x.strip()) for x in text.split(",")]
    except ValueError as exc:
        fail(f"{option} {text}: {exc}")


def _run_changes(methods: str | None, steps: int | None, overrides: list[str] | None) -> dict:
    """The settings both ``bench losses`` modes take alike: methods, budget, config overrides."""
    changes: dict = {}
    if methods is not None:
        changes["methods"] = [m.strip() for m in methods.split(",")]
    if steps is not None:
        changes["steps"] = steps
    if overrides:
        changes["overrides"] = list(overrides)
    return changes


def _command_line(flags: list[str], given: list[tuple[str, object]]) -> str:
    """The ``bench losses`` command that reproduces a report (options left at default omitted)."""
    import shlex

    return " ".join(["pathodet bench losses", *flags,
                     *(f"{k} {shlex.quote(str(v))}" for k, v in given if v is not None)])  # fmt: skip


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
        str, typer.Option(help="Synthetic slides WxH:tissue-fraction, comma-separated; '' none.")
    ] = "10000x10000:0.4,40000x30000:0.15",
    slides: Annotated[
        list[Path] | None, typer.Option("--slides", help="Real slides to measure too (repeat).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Detector (default: random init, same cost; torch only).")
    ] = None,
    engines: Annotated[
        str,
        typer.Option(
            help="Comma-separated, of torch-fp32, torch-bf16, onnxruntime-fp32, onnxruntime-int8."
        ),
    ] = "torch-fp32,torch-bf16,onnxruntime-fp32,onnxruntime-int8",
    calibration: Annotated[
        list[Path] | None,
        typer.Option("--calibration", help="Real images (or folders) calibrating int8 (repeat)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 4,
    workers: Annotated[int, typer.Option(help="Tile-reading processes.")] = 1,
) -> None:
    """Slide throughput per engine and precision (minutes per cm² of tissue, Mpx/s), time
    outside the forward, peak memory."""
    from pathodet.bench.slide_speed import run_bench
    from pathodet.predict.images import list_images

    parsed = []
    for item in filter(None, sizes.split(",")):
        try:
            dims, frac = item.split(":")
            w, h = dims.lower().split("x")
            parsed.append((int(w), int(h), float(frac)))
        except ValueError:
            fail(f"--sizes: {item!r} is not WIDTHxHEIGHT:FRACTION")
    for s in slides or []:
        if not s.is_file():
            fail(f"--slides: {s}: no such file")
    with user_errors():
        images = list_images(calibration) if calibration else []
        run_bench(out, parsed, checkpoint, batch_size, workers, slides or [],
                  [e.strip() for e in engines.split(",") if e.strip()], images,
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
