"""The review app in a real browser: Debian's headless Chromium driven by Playwright.

Starts ``pathodet review`` on a free port, opens the viewer, signs in a reviewer, moves the
threshold slider, accepts a detection, and checks the row in the SQLite database. Skips,
with the reason, only where Chromium or Playwright cannot be had.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser import CHROMIUM_ARGS, ensure_chromium, free_port, review_fixture, running_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chromium() -> Path:
    pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    path, why = ensure_chromium()
    if path is None:
        pytest.skip(why)
    return path


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "SELECT case_name, action, reviewer, x1, y1, x2, y2, score FROM decisions"
        ).fetchall()


def _metric(page, label: str) -> str:  # noqa: ANN001
    box = page.locator('[data-testid="stMetric"]', has_text=label)
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def test_accept_in_a_real_browser(chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    data, preds = review_fixture(tmp_path)
    db = tmp_path / "reviews.sqlite"
    with running_app(data, preds, db, free_port()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_text("Cases", exact=True).first.wait_for(timeout=60_000)
        page.get_by_text("Viewer", exact=True).first.click()
        page.get_by_text("SRC detected").first.wait_for(timeout=30_000)
        before = int(_metric(page, "SRC detected"))

        # the threshold slider, by keyboard: 0.50 -> 0.30 lets the false positives in
        slider = page.get_by_role("slider").first
        slider.focus()
        for _ in range(20):
            page.keyboard.press("ArrowLeft")
        deadline = time.time() + 30
        while int(_metric(page, "SRC detected")) == before and time.time() < deadline:
            page.wait_for_timeout(300)
        after = int(_metric(page, "SRC detected"))
        assert after > before, "lowering the threshold shows more detections"

        reviewer = page.get_by_label("Reviewer")
        reviewer.fill("Dr Browser")
        reviewer.press("Enter")
        page.wait_for_timeout(1000)
        page.get_by_role("button", name="SRC ✓").click()
        deadline = time.time() + 30
        while not _rows(db) and time.time() < deadline:
            time.sleep(0.3)
        rows = _rows(db)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
        browser.close()
    assert len(rows) == 1, rows
    case, action, who, *box, score = rows[0]
    assert (action, who) == ("accept", "Dr Browser")
    names = sorted(p.name for p in (data / "sig-train-pos").glob("*.jp*g")) + sorted(
        p.name for p in (data / "sig-train-neg").glob("*.jp*g")
    )
    assert case in names
    assert box[2] > box[0] and box[3] > box[1] and score >= 0.3
    assert (tmp_path / "viewer.png").stat().st_size > 10_000
