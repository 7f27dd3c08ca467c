"""The pathologists' decisions, in SQLite: one row per click, never overwritten.

A decision says what a reviewer did to one cell of one case, for one model run:

* ``accept``: the detection is an SRC;
* ``reject``: the detection is not an SRC (a confirmed hard negative);
* ``add``: an SRC the detector missed, boxed by the reviewer.

Rows are only ever inserted; *undo* marks the reviewer's latest live row of the case as
undone. The effective decision on a cell is its latest live row. A cell is identified by
its box (image or level-0 pixels, rounded to 0.1 px), which is stable across restarts and
independent of the order detections are listed in.

The database runs in WAL mode; every write is its own ``BEGIN IMMEDIATE`` transaction on
a fresh connection with a busy timeout, so two browser sessions (threads of one Streamlit
server) or two servers on one file never lose a row.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ACTIONS = ("accept", "reject", "add")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    case_name TEXT NOT NULL,
    cell TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('accept', 'reject', 'add')),
    x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
    score REAL,
    reviewer TEXT NOT NULL,
    created_at TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS decisions_case ON decisions (run, case_name);
CREATE TABLE IF NOT EXISTS case_status (
    run TEXT NOT NULL,
    case_name TEXT NOT NULL,
    status TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (run, case_name)
);
"""


class StoreError(Exception):
    """A database that cannot be used (not SQLite, newer schema); names the file."""


@dataclass(frozen=True)
class Decision:
    """One live decision: the cell's box (pixels), what was decided, by whom, when."""

    id: int
    case_name: str
    cell: str
    action: str
    box: tuple[float, float, float, float]
    score: float | None
    reviewer: str
    created_at: str


def cell_key(box: tuple[float, float, float, float] | list[float]) -> str:
    """The identity of a cell: its box rounded to 0.1 pixel."""
    return ",".join(f"{float(v):.1f}" for v in box)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ReviewStore:
    """Decisions of one review database file (created on first use)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._enable_wal()
            with self._read() as con:  # executescript runs its own transactions
                con.executescript(_SCHEMA)
            with self._write() as con:
                con.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a review database ({exc})") from exc
        if int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {row[0]} is newer than this pathodet")

    def _enable_wal(self, timeout: float = 30.0) -> None:
        """Switch the file to WAL (persistent). SQLite answers "locked" at once, ignoring the
        busy timeout, when another connection writes meanwhile: retry until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            con = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            try:
                if con.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal":
                    return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            finally:
                con.close()
            time.sleep(0.05)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.execute("PRAGMA busy_timeout=30000")
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    # -- writing ----------------------------------------------------------------------------
    def decide(
        self, run: str, case_name: str, action: str, box: tuple[float, float, float, float],
        reviewer: str, score: float | None = None,
    ) -> int:  # fmt: skip
        """Record one decision; returns its row id.

        Raises:
            ValueError: unknown action, empty reviewer name, or a box with x2 <= x1 or y2 <= y1.
        """
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
        if not reviewer.strip():
            raise ValueError("a decision needs the reviewer's name")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"box {box} is empty (x2 <= x1 or y2 <= y1)")
        with self._write() as con:
            cur = con.execute(
                "INSERT INTO decisions (run, case_name, cell, action, x1, y1, x2, y2, score, "
                "reviewer, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run,
                    case_name,
                    cell_key(box),
                    action,
                    x1,
                    y1,
                    x2,
                    y2,
                    score,
                    reviewer.strip(),
                    _now(),
                ),
            )
            return int(cur.lastrowid)

    def undo(self, run: str, case_name: str, reviewer: str) -> int | None:
        """Mark ``reviewer``'s latest live decision on the case undone; its id, or None."""
        with self._write() as con:
            row = con.execute(
                "SELECT id FROM decisions WHERE run = ? AND case_name = ? AND reviewer = ? "
                "AND undone = 0 ORDER BY id DESC LIMIT 1",
                (run, case_name, reviewer.strip()),
            ).fetchone()
            if row is None:
                return None
            con.execute("UPDATE decisions SET undone = 1 WHERE id = ?", (row[0],))
            return int(row[0])

    def set_status(self, run: str, case_name: str, status: str, reviewer: str) -> None:
        """``reviewed`` or ``in progress`` for the case list."""
        with self._write() as con:
            con.execute(
                "INSERT INTO case_status VALUES (?, ?, ?, ?, ?) ON CONFLICT (run, case_name) "
                "DO UPDATE SET status = excluded.status, reviewer = excluded.reviewer, "
                "updated_at = excluded.updated_at",
                (run, case_name, status, reviewer.strip(), _now()),
            )

    # -- reading ----------------------------------------------------------------------------
    def decisions(self, run: str, case_name: str | None = None) -> list[Decision]:
        """The effective decisions (latest live row per cell), per case or for the whole run."""
        q = (
            "SELECT id, case_name, cell, action, x1, y1, x2, y2, score, reviewer, created_at "
            "FROM decisions d WHERE run = ? AND undone = 0 {case} AND id = ("
            "SELECT MAX(id) FROM decisions e WHERE e.run = d.run AND e.case_name = d.case_name "
            "AND e.cell = d.cell AND e.undone = 0) ORDER BY case_name, id"
        )
        args: tuple = (run,)
        if case_name is not None:
            q = q.format(case="AND case_name = ?")
            args = (run, case_name)
        else:
            q = q.format(case="")
        with self._read() as con:
            rows = con.execute(q, args).fetchall()
        return [Decision(r[0], r[1], r[2], r[3], (r[4], r[5], r[6], r[7]), r[8], r[9], r[10])
                for r in rows]  # fmt: skip

    def statuses(self, run: str) -> dict[str, str]:
        with self._read() as con:
            rows = con.execute(
                "SELECT case_name, status FROM case_status WHERE run = ?", (run,)
            ).fetchall()
        return dict(rows)

    def count_rows(self) -> int:
        """All rows ever written (undone included)."""
        with self._read() as con:
            return int(con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
