"""Smaller copies of an ONNX export: int8 weights for the CPU, float16 for CUDA (onnx + onnxruntime, no torch).

Both keep the source's metadata and add ``msfm_quantization`` (how the copy was made); both write atomically.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Union

from ..atomic import atomic_output
from .onnx_session import read_metadata, set_metadata

__all__ = ("quantize", "to_float16")


def quantize(source: Union[str, Path], path: Union[str, Path], *, per_channel: bool = True) -> Path:
    """Write an int8 copy of an export (encoder or segmenter) for the CPU; ``path`` may be ``source``.

    ONNX Runtime dynamic quantization: the weights of every MatMul/Gemm with a constant weight — the patch embedding
    (:class:`ExportPatchEmbed`), q/k/v, the attention output and both MLP layers — become int8 per output channel;
    activations are quantized on the fly per batch, so no calibration set is needed. Attention's activation ×
    activation products, softmax, LayerNorm, GELU and the heads' convolutions stay float32. The metadata are kept and
    ``msfm_quantization`` is added. Speed and agreement against float32: ``bench/onnx_speed.py``.

    Measured alternatives, slower on an AVX-512 VNNI CPU (docs/onnx.md): ONNX Runtime's transformer fusions
    (``Attention``/``QAttention``, ``SkipLayerNormalization``, ``BiasGelu``) before quantizing, and static
    quantization (QDQ or QOperator, every MatMul, calibrated activation ranges).

    Args:
        source: A float32 export (:func:`export_encoder`, :func:`export_segmenter`).
        path: Destination ``.onnx`` (temporary name, renamed when complete).
        per_channel: Per-output-channel weight scales (more accurate; default) instead of one per tensor.

    Returns:
        ``path``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def convert(tmp: Path) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)  # onnxruntime logs a pre-processing hint on the root logger
            try:
                quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel,
                                 op_types_to_quantize=["MatMul", "Gemm"])
            finally:
                logging.disable(logging.NOTSET)
        return {"method": "onnxruntime dynamic", "weights": "int8", "per_channel": per_channel,
                "ops": ["MatMul", "Gemm"]}

    return _derive(source, path, convert)


def to_float16(source: Union[str, Path], path: Union[str, Path]) -> Path:
    """Write a float16 copy of an export for the CUDA execution provider (half the size; tensor cores).

    Weights, activations, inputs and outputs become float16 (``onnxruntime.transformers.float16``); the engine's ONNX
    models feed each input in the dtype the graph declares and return float32. ONNX Runtime's CPU provider lacks float16
    kernels for much of the graph and runs it slowly or not at all: use :func:`quantize` for the CPU.
    ``msfm_quantization`` says so.

    Args:
        source: A float32 export.
        path: Destination ``.onnx`` (temporary name, renamed when complete); may be ``source``.

    Returns:
        ``path``.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    def convert(tmp: Path) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # float16 inputs/outputs: keep_io_types=True leaves its input casts out of topological order (invalid)
            half = convert_float_to_float16(onnx.load(str(source)), keep_io_types=False)
        onnx.save(half, str(tmp))
        return {"method": "onnxruntime.transformers.float16", "weights": "float16", "activations": "float16"}

    return _derive(source, path, convert)


def _derive(source: Union[str, Path], path: Union[str, Path], convert: Callable[[Path], dict[str, Any]]) -> Path:
    """Write ``convert(tmp)``'s model to ``path`` (atomically) with ``source``'s metadata plus ``msfm_quantization``."""
    import onnx

    with atomic_output(path, sidecars=()) as tmp:
        how = convert(tmp)
        proto = onnx.load(str(tmp))
        set_metadata(proto, {**read_metadata(source), "msfm_quantization": how})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return Path(path)
