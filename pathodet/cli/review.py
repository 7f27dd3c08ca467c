"""``pathodet review``: start the review app; ``pathodet review export``: reviews -> training data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from pathodet.cli.util import fail, user_errors

review_app = typer.Typer(help="The pathologists' review app and the export of its decisions.")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
APP_FILE = Path(__file__).resolve().parents[1] / "review" / "app.py"  # inside the package


def review_env(data: Path | None, predictions: Path, db: Path) -> dict[str, str]:
    """The environment that tells the review app what to serve (absolute paths)."""
    env = {"PATHODET_REVIEW_PREDICTIONS": str(predictions.resolve()),
           "PATHODET_REVIEW_DB": str(db.resolve())}  # fmt: skip
    if data is not None:
        env["PATHODET_REVIEW_DATA"] = str(data.resolve())
    return env


def serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run the Streamlit server as a child until it exits; returns its exit code.

    SIGTERM and SIGINT sent to ``pathodet review`` are passed on to the server, so that
    stopping the command (a service manager, a test) never leaves the server running.
    """
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    before = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def streamlit_command(port: int, host: str) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP_FILE),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]  # fmt: skip


@review_app.callback(invoke_without_command=True)
def review(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="DigestPath-layout root of the images.")] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="Folder written by pathodet predict (images or slides).")
    ] = None,
    db: Annotated[Path, typer.Option(help="SQLite file of the decisions.")] = Path(
        "reviews.sqlite"
    ),
    port: Annotated[int, typer.Option(help="Port.")] = 8501,
    host: Annotated[
        str, typer.Option(help="Address to bind; other than localhost needs a password.")
    ] = "127.0.0.1",
) -> None:
    """Start the review app (Streamlit) on http://HOST:PORT.

    It reads only files under --data and --predictions. Binding to anything but localhost
    requires an access password in PATHODET_REVIEW_PASSWORD (or Streamlit secrets).
    """
    if ctx.invoked_subcommand is not None:
        return
    if predictions is None:
        fail("give --predictions DIR (and --data ROOT for images)")
    if not predictions.is_dir():
        fail(f"{predictions}: no such predictions folder")
    if data is not None and not data.is_dir():
        fail(f"{data}: no such data folder")
    if not APP_FILE.is_file():
        fail(f"{APP_FILE}: the review app is missing from this installation of pathodet")
    env = {**os.environ, **review_env(data, predictions, db)}
    if host not in LOCAL_HOSTS and not env.get("PATHODET_REVIEW_PASSWORD"):
        secrets = Path(".streamlit/secrets.toml")
        if not (secrets.is_file() and "password" in secrets.read_text()):
            fail(f"--host {host} exposes the app beyond this machine: set an access password "
                 "in PATHODET_REVIEW_PASSWORD (or password in .streamlit/secrets.toml)")  # fmt: skip
    typer.echo(f"pathodet review on http://{host}:{port} (Ctrl+C stops)", err=True)
    raise typer.Exit(serve(streamlit_command(port, host), env))


@review_app.command("export")
def review_export(
    db: Annotated[Path, typer.Option(help="SQLite file of the decisions.")],
    out: Annotated[Path, typer.Option(help="New DigestPath-layout root to write.")],
    predictions: Annotated[Path, typer.Option(help="The predictions folder that was reviewed.")],
    data: Annotated[Path | None, typer.Option(help="The data root that was reviewed.")] = None,
) -> None:
    """Write a DigestPath-layout copy where accepted and added cells are annotations.

    Rejected detections go to OUT/hard_negatives.csv; slide decisions to OUT/slides/*.geojson.
    """
    from pathodet.review.cases import load_cases, run_id
    from pathodet.review.export import export_reviews
    from pathodet.review.store import ReviewStore, StoreError

    with user_errors():
        if not db.is_file():
            fail(f"{db}: no such review database")
        if data is not None and out.resolve() == data.resolve():
            fail("--out must be a new folder, not the data root")
        try:
            store = ReviewStore(db)
        except StoreError as exc:
            fail(str(exc))
        cases = load_cases(data, predictions)
        report = export_reviews(store, run_id(predictions), cases, out)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "relabelled"}
                          | {"relabelled": len(report["relabelled"])}))  # fmt: skip
