"""Helpers shared by the command modules: one-line errors (progress bars: core.progress)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from pathodet.training.config import ConfigError


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``pathodet: error: message`` on stderr and exit with ``code``."""
    typer.echo(f"pathodet: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Report the library's user-facing errors as one line, exit code 2."""
    from pathodet.data.digestpath import DatasetError

    try:
        yield
    except (DatasetError, ConfigError, FileNotFoundError, ValueError) as exc:  # incl. CSV/ckpt
        fail(str(exc))


def echo_err(message: str) -> None:
    """A note for the user, on stderr (stdout carries the JSON summary)."""
    typer.echo(message, err=True)
