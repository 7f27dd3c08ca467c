"""The ``pathodet`` command line: one typer app, one subcommand group per stage.

Every command turns library errors (bad dataset, bad config) into one clear line on
stderr and exit code 2, instead of a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pathodet import __version__
from pathodet.cli.bench import bench_app
from pathodet.cli.commands import cv_cmd, evaluate_cmd, predict_cmd, purify_cmd, train_cmd
from pathodet.cli.data import data_app, synth, synth_slide
from pathodet.cli.export import export_cmd
from pathodet.cli.review import review_app
from pathodet.cli.util import user_errors

app = typer.Typer(
    help="pathodet: signet ring cell detection in H&E images with partial annotation.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(review_app, name="review")
app.command("synth")(synth)
app.command("synth-slide")(synth_slide)
app.command("train")(train_cmd)
app.command("predict")(predict_cmd)
app.command("purify")(purify_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("cv")(cv_cmd)
app.command("export")(export_cmd)


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


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="pathodet")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
