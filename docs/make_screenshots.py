"""Screenshots of the review app for the README: case list, viewer, metrics.

    .venv/bin/python docs/make_screenshots.py [--checkpoint runs/report-dghm/best.pt]
    .venv/bin/python docs/make_screenshots.py --real-data ../shared/digestpath \
        --real-predictions runs/real/cv/dghm/fold-0/predictions --case NAME --threshold 0.4

The first form uses a small synthetic dataset; with ``--checkpoint`` the detections are that model's
(``pathodet predict``), otherwise hand-made ones (every true SRC plus low-score false
positives). An evaluation is written inside the predictions folder for the metrics page.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from browser import CHROMIUM_ARGS, ensure_chromium, free_port, review_fixture, running_app  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--real-data", type=Path, default=None, help="a real DigestPath root")
    ap.add_argument("--real-predictions", type=Path, default=None)
    ap.add_argument("--case", default=None, help="image to open in the viewer")
    ap.add_argument("--threshold", type=float, default=0.5, help="score threshold to show")
    args = ap.parse_args()
    chromium, why = ensure_chromium()
    if chromium is None:
        sys.exit(why)
    from playwright.sync_api import sync_playwright

    if args.real_data is not None:
        real_screenshot(args, chromium)
        return

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data, preds = review_fixture(base)
        if args.checkpoint:
            preds = base / "model-preds"
            subprocess.run([sys.executable, "-m", "pathodet", "predict", str(args.checkpoint),
                            str(data), "--out", str(preds), "--precision", "bf16"], check=True)  # fmt: skip
        subprocess.run([sys.executable, "-m", "pathodet", "evaluate", "--data", str(data),
                        "--predictions", str(preds / "predictions.csv"), "--out",
                        str(preds / "evaluation")], check=True, capture_output=True)  # fmt: skip
        db = base / "reviews.sqlite"
        with running_app(data, preds, db, free_port()) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(url)
            page.get_by_text("Cases", exact=True).first.wait_for(timeout=60_000)
            page.wait_for_timeout(2500)
            page.screenshot(path=str(args.out / "review-cases.png"))
            page.get_by_text("Viewer", exact=True).first.click()
            page.get_by_text("SRC detected").first.wait_for(timeout=30_000)
            reviewer = page.get_by_label("Reviewer")
            reviewer.fill("Dr Example")
            reviewer.press("Enter")
            page.wait_for_timeout(1500)
            for name in ("SRC ✓", "SRC ✓", "Not SRC ✗"):
                page.get_by_role("button", name=name).click()
                page.wait_for_timeout(1500)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / "review-viewer.png"))
            page.get_by_text("Metrics", exact=True).first.click()
            page.get_by_text("FROC").first.wait_for(timeout=30_000)
            page.wait_for_timeout(2500)
            page.screenshot(path=str(args.out / "review-metrics.png"), full_page=True)
            browser.close()
    print("wrote", *(args.out / f"review-{k}.png" for k in ("cases", "viewer", "metrics")))


def real_screenshot(args, chromium: Path) -> None:
    """The viewer on one real image of a held-out fold, at ``--threshold`` -> review-real.png."""
    from urllib.parse import quote

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "reviews.sqlite"
        with running_app(args.real_data, args.real_predictions, db, free_port()) as url, \
                sync_playwright() as p:  # fmt: skip
            browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1250})
            page.goto(f"{url}/?case={quote(args.case)}" if args.case else url)
            page.get_by_text("Cases", exact=True).first.wait_for(timeout=120_000)
            slider = page.get_by_role("slider").first
            slider.focus()
            for _ in range(round((0.5 - args.threshold) / 0.01)):  # the slider starts at 0.5
                slider.press("ArrowLeft")
            page.wait_for_timeout(1500)
            page.get_by_text("Viewer", exact=True).first.click()
            page.get_by_text("SRC detected").first.wait_for(timeout=60_000)
            page.wait_for_timeout(4000)
            page.screenshot(path=str(args.out / "review-real.png"))
            browser.close()
    print("wrote", args.out / "review-real.png")


if __name__ == "__main__":
    main()
