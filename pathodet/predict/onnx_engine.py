"""ONNX Runtime as the inference engine: the detector of a ``pathodet export`` file on the CPU.

:class:`OnnxDetector` has the interface of
:class:`~pathodet.model.retinanet.FrozenDetector`: ``__call__`` gives the head outputs and
``detect`` the boxes, through the same anchors and
:func:`~pathodet.model.retinanet.postprocess` as torch, so windows, merging and outputs
are those of the torch engine. The graph (:mod:`pathodet.model.onnx`) may be fp32 or
int8-quantized (:func:`quantize_int8`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pathodet.model.anchors import make_anchors
from pathodet.model.config import InferenceConfig
from pathodet.model.onnx import FORMAT, feature_sizes
from pathodet.model.retinanet import STRIDES, HeadOutputs, postprocess
from pathodet.training.config import Config


class OnnxError(ValueError):
    """An ONNX file pathodet cannot run; the message names the file."""


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (parses the whole file: for export and
    quantization; :class:`OnnxDetector` reads them from its session instead).

    Raises:
        OnnxError: not an ONNX file.
    """
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError
        raise OnnxError(f"{path}: not an ONNX file ({exc})") from exc
    return {p.key: p.value for p in proto.metadata_props}


class OnnxDetector:
    """The detector in an ONNX file, run by ONNX Runtime's CPU provider.

    Args:
        path: a file written by :func:`~pathodet.model.onnx.export_onnx` (or its int8 copy).
        inference: how :meth:`detect` turns outputs into boxes (default the training
            config's ``model.inference``).
        threads: ONNX Runtime's intra-op threads (default: torch's, which ``pathodet
            --threads`` and the core sharing of :mod:`pathodet.core.machine` set).

    Raises:
        OnnxError: not a pathodet ONNX file, or its config does not validate.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        inference: InferenceConfig | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])  # fmt: skip
        except Exception as exc:  # onnxruntime's Fail / InvalidProtobuf
            raise OnnxError(f"{path}: not an ONNX model ONNX Runtime can load ({exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != FORMAT:
            raise OnnxError(f"{path}: not written by pathodet export (format "
                            f"{meta.get('format')!r}, expected {FORMAT!r})")  # fmt: skip
        try:
            self.config = Config.model_validate(json.loads(meta["pathodet_config"]))
        except Exception as exc:  # ValidationError, JSONDecodeError
            raise OnnxError(f"{path}: its config does not validate: {exc}") from exc
        self.inference = inference or self.config.model.inference
        self._anchors: dict[tuple[int, int], tuple[Tensor, list[int]]] = {}

    def _anchors_for(self, h: int, w: int) -> tuple[Tensor, list[int]]:
        if (h, w) not in self._anchors:
            sizes = feature_sizes(h, w)
            k = self.config.model.anchors.per_location
            self._anchors[(h, w)] = (make_anchors(sizes, STRIDES, self.config.model.anchors),
                                     [a * b * k for a, b in sizes])  # fmt: skip
        return self._anchors[(h, w)]

    def __call__(self, images: Tensor) -> HeadOutputs:
        """Head outputs of ``(B, 3, H, W)`` float images in ``[0, 1]``."""
        h, w = images.shape[-2:]
        logits, deltas = self.session.run(
            None, {"images": np.ascontiguousarray(images.float().cpu().numpy())}
        )
        anchors, level_sizes = self._anchors_for(h, w)
        if logits.shape[1] != len(anchors):
            raise OnnxError(f"{self.path}: {logits.shape[1]} outputs for {len(anchors)} anchors "
                            f"at {h}x{w}; was it exported with another anchor config?")  # fmt: skip
        return HeadOutputs(torch.from_numpy(logits), torch.from_numpy(deltas), anchors, (h, w),
                           level_sizes)  # fmt: skip

    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": (K, 4), "scores": (K,)}`` in input pixels."""
        return postprocess(self(images), self.inference)


class _Calibration:
    """ONNX Runtime's ``CalibrationDataReader``: windows of real images, one at a time."""

    def __init__(self, windows: Iterator[np.ndarray]) -> None:
        self.windows = windows

    def get_next(self) -> dict[str, np.ndarray] | None:
        rgb = next(self.windows, None)
        if rgb is None:
            return None
        return {"images": (rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)}


def calibration_windows(
    images: Sequence[Path], scale: float, tile: int, count: int
) -> Iterator[np.ndarray]:
    """``count`` ``(tile, tile, 3)`` uint8 windows of ``images``, cut as prediction cuts them
    (resized by ``scale``, padded): ``ceil(count / len(images))`` from each image in turn,
    spread over its windows; one image is decoded at a time."""
    from pathodet.predict.loader import image_input_from_file

    per_image = -(-count // max(1, len(images)))
    given = 0
    for p in images:
        inp = image_input_from_file(p, scale, tile, 0, "reflect")
        src = inp.open()
        n = len(inp.plan.windows)
        for i in np.linspace(0, n - 1, min(n, per_image)).round().astype(int):
            if given == count:
                return
            yield np.asarray(src.window(int(i)))
            given += 1


def quantize_int8(
    model: str | os.PathLike[str], out: str | os.PathLike[str], images: Sequence[Path],
    windows: int = 64,
) -> Path:  # fmt: skip
    """Static int8 quantization (ONNX Runtime's ``quantize_static``, QDQ format, per-channel
    int8 weights, uint8 activations), calibrated on ``windows`` windows of real ``images``
    at the model's scale and tile. The metadata is kept.

    Raises:
        OnnxError: ``model`` is no pathodet ONNX file. ValueError: no readable image.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from pathodet.core.io import atomic_write_bytes

    meta = read_metadata(model)
    cfg = Config.model_validate(json.loads(meta["pathodet_config"]))
    out = Path(out)
    prepared = out.with_name(f".{out.name}.pre.onnx")
    raw = out.with_name(f".{out.name}.int8.onnx")
    try:
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
        reader = _Calibration(calibration_windows(images, cfg.data.scale,
                                                  cfg.data.tiling.tile_size, windows))  # fmt: skip
        quantize_static(str(prepared), str(raw), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
        proto = onnx.load(str(raw))
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        proto.metadata_props.add(key="quantization", value=f"int8 static, {windows} windows")
        atomic_write_bytes(out, proto.SerializeToString())
    finally:
        for f in (prepared, raw):
            f.unlink(missing_ok=True)
    return out
