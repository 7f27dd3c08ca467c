"""``pathodet demo``: the whole pipeline on synthetic data, no download needed.

For now the demo covers the data stage (synthesis, summary, folds, label dropping,
tiling); training, evaluation, slides and review join it as those stages land.
Re-running into the same folder asks nothing and overwrites only the demo's own files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pathodet.data.digestpath import FULL_DIR, load_records, write_manifest
from pathodet.data.drop import drop_annotations
from pathodet.data.folds import assign_folds, fold_summary
from pathodet.data.io import atomic_write_image, atomic_write_text
from pathodet.data.overlay import draw_boxes
from pathodet.data.samples import load_samples, read_image, summarize
from pathodet.data.synth import write_synthetic_dataset
from pathodet.data.tiling import TileDataset
from pathodet.data.voc import read_voc

GREEN, YELLOW = (40, 200, 40), (255, 210, 0)


def run_demo(
    out: str | Path,
    seed: int = 0,
    positive: int = 6,
    negative: int = 12,
    size: int = 1200,
    echo: Callable[[str], None] = print,
) -> dict:
    """Synthesize a small dataset and run the data stage on it; returns the summary dict."""
    out = Path(out)
    data = out / "data"
    echo(f"[1/4] synthesizing {positive} AP + {negative} NP images ({size} px) into {data}")
    write_synthetic_dataset(
        data,
        positive=positive,
        negative=negative,
        size=size,
        seed=seed,
        annotate_rate=0.5,
        images_per_slide=2,
    )
    records = load_records(data)
    samples, problems = load_samples(records)
    summary = summarize(samples, problems)
    echo(
        f"      {json.dumps({k: summary[k] for k in ('positive_images', 'negative_images', 'boxes')})}"
    )

    echo("[2/4] 3 folds grouped by slide")
    records = assign_folds(records, k=3, seed=seed)
    write_manifest(out / "folds.csv", records)
    folds = fold_summary(records)

    echo("[3/4] dropping 50% of the annotations")
    dropped = drop_annotations(data, out / "data-drop50", rate=0.5, seed=seed)

    echo("[4/4] tiling 800x800 / stride 300 and drawing an overlay")
    tiles = TileDataset(samples)
    ap = next(s for s in samples if s.attribute == "AP")
    full = read_voc(data / FULL_DIR / f"{ap.record.image.stem}.xml").boxes
    rgb = read_image(ap.record.image)
    overlay = draw_boxes(draw_boxes(rgb, full, YELLOW, 3), ap.boxes, GREEN, 3)
    atomic_write_image(out / "overlay-ap.png", overlay)

    result = {
        "summary": {k: v for k, v in summary.items() if k != "problems"},
        "problems": len(summary["problems"]),
        "folds": folds,
        "drop": {k: dropped[k] for k in ("rate", "kept_boxes", "removed_boxes", "realised_rate")},
        "tiles": len(tiles),
    }
    atomic_write_text(out / "demo.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(
        out / "report.md",
        "# pathodet demo (data stage)\n\n"
        f"- images: {summary['positive_images']} AP, {summary['negative_images']} NP; "
        f"{summary['boxes']} annotated SRC boxes; {len(tiles)} tiles of 800 px\n"
        "- folds (grouped by slide): "
        + ", ".join(f"fold {f['fold']}: {f['AP']} AP / {f['NP']} NP" for f in folds)
        + "\n"
        f"- 50% drop: kept {dropped['kept_boxes']}, removed {dropped['removed_boxes']}\n\n"
        "![AP image: yellow = every SRC drawn, green = annotated](overlay-ap.png)\n",
    )
    echo(f"done: {out / 'report.md'}")
    return result
