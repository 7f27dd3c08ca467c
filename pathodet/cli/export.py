"""``pathodet export``: a checkpoint as an ONNX file for ONNX Runtime (and its int8 copy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pathodet.cli.util import echo_err, fail, user_errors


def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint from pathodet train.")],
    out: Annotated[Path, typer.Option(help="The .onnx file to write.")] = Path("model.onnx"),
    format: Annotated[str, typer.Option("--format", help="Only onnx for now.")] = "onnx",  # noqa: A002
    int8: Annotated[
        Path | None,
        typer.Option(
            help="Also write an int8 copy (OUT with .int8.onnx), statically quantized with "
            "ONNX Runtime and calibrated on windows of the images in this folder or "
            "DigestPath root (real tiles, as prediction cuts them)."
        ),
    ] = None,
    calibration_windows: Annotated[
        int, typer.Option(help="Windows for the int8 calibration.")
    ] = 64,
) -> None:
    """Write the detector (backbone, FPN, head; fp32) as ONNX with its µm/px, normalisation
    and training config in the metadata. Decoding and NMS stay in pathodet: run it with
    ``pathodet predict OUT.onnx ...`` (ONNX Runtime on the CPU)."""
    from pathodet.model.onnx import export_onnx
    from pathodet.predict.images import list_images
    from pathodet.predict.onnx_engine import quantize_int8
    from pathodet.training.checkpoint import CheckpointError, load_detector

    if format != "onnx":
        fail(f"--format must be onnx, got {format!r}")
    with user_errors():
        try:
            model, cfg = load_detector(checkpoint)
        except CheckpointError as exc:
            fail(str(exc))
        export_onnx(model, out, cfg.model_dump(mode="json"), tile=cfg.data.tiling.tile_size)
        summary = {"onnx": str(out), "bytes": out.stat().st_size}
        echo_err(f"wrote {out}")
        if int8 is not None:
            images = list_images([int8])
            q = out.with_suffix(".int8.onnx")
            quantize_int8(out, q, images, calibration_windows)
            summary.update(int8=str(q), int8_bytes=q.stat().st_size)
            echo_err(
                f"wrote {q} (calibrated on {calibration_windows} windows of {len(images)} images)"
            )
    typer.echo(json.dumps(summary))
