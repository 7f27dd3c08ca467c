"""``pathodet data``, ``synth`` and ``synth-slide``: datasets in, datasets out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pathodet.cli.util import fail, user_errors
from pathodet.core.progress import progress_bars
from pathodet.data.config import DataConfig
from pathodet.data.voc import AnnotationRules
from pathodet.training.config import load_config

data_app = typer.Typer(help="Inspect, split and transform DigestPath-layout datasets.")

SrcNameOption = Annotated[
    list[str] | None,
    typer.Option(
        "--src-name",
        help="Class name of SRC objects in the annotations (repeatable; default "
        "data.src_names: ring_cell_cancer). Objects of other classes are skipped and counted.",
    ),
]


def annotation_rules(data_cfg: DataConfig, src_name: list[str] | None) -> AnnotationRules:
    """The :class:`~pathodet.data.voc.AnnotationRules` of a config's ``data`` section, with
    ``--src-name`` (when given) in place of ``data.src_names``."""
    if src_name:
        data_cfg = data_cfg.model_copy(update={"src_names": tuple(src_name)})
    return data_cfg.annotation_rules()


@data_app.command("summary")
def data_summary(
    root: Annotated[Path, typer.Argument(help="DigestPath root or manifest CSV.")],
    src_name: SrcNameOption = None,
    config: Annotated[
        Path | None, typer.Option(help="Config YAML (data.src_names, point_box_um, mpp).")
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override, key=value.")] = [],  # noqa: B006
) -> None:
    """Print one JSON object describing the dataset; exit 0 while it is usable.

    Annotations are VOC XML or QuPath GeoJSON (<stem>.geojson when there is no <stem>.xml).
    Every unreadable image, malformed XML or bad box is listed under "problems" with its
    file; boxes overhanging their image a little are clipped and counted
    ("clipped_boxes"), objects of other classes are skipped and counted by name
    ("other_class_objects").
    """
    from pathodet.data.digestpath import load_records
    from pathodet.data.samples import load_samples, summarize

    with user_errors():
        rules = annotation_rules(load_config(config, set_).data, src_name)
        records = load_records(root)
        samples, problems = load_samples(records, rules=rules)
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
    src_name: SrcNameOption = None,
) -> None:
    """Count the sliding-window tiles of a dataset (and save a few to look at)."""
    from pathodet.data.digestpath import load_records
    from pathodet.data.samples import load_samples
    from pathodet.data.tiling import TileDataset, save_tiles

    with user_errors():
        data_cfg = load_config(config, set_).data
        cfg = data_cfg.tiling
        rules = annotation_rules(data_cfg, src_name)
        samples, problems = load_samples(load_records(root), verify_image=False, rules=rules)
        tiles = TileDataset(samples, cfg.tile_size, cfg.stride, cfg.min_visible,
                            scale=data_cfg.scale)  # fmt: skip
        attrs = tiles.attributes()
        if save:
            save_tiles(tiles, out, save)
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
