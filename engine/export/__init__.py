"""Export to ONNX for ONNX Runtime (and Deepness).

An encoder, or an encoder with its segmentation head, at float32, int8 (CPU) or float16 (CUDA):

- :func:`export` — the one entry point (``msfm export-onnx``, QGIS *Export model to ONNX*);
- :func:`export_segmenter` — encoder + head as one graph, image → class probabilities;
- :func:`engine.models.export_encoder` — an encoder alone, spectral projection in the graph (it lives with the models
  because :func:`engine.models.load_model` converts a checkpoint for ``backend="onnx"``; re-exported here);
- :func:`quantize` / :func:`to_float16` — smaller copies of either export (no torch needed).

The ONNX runners are :class:`engine.models.OnnxEncoder` and :class:`engine.segmentation.OnnxSegmenter`;
docs/onnx.md has the measured speed and agreement of each precision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr
from ..models.onnx_quantize import quantize, to_float16

if TYPE_CHECKING:
    from ..models.onnx_graph import export_encoder
    from .onnx import PRECISIONS, SegmenterGraph, export, export_segmenter

#: Names that need torch, imported on first access.
__getattr__ = lazy_getattr(__name__, {
    **dict.fromkeys(("PRECISIONS", "SegmenterGraph", "export", "export_segmenter"), ".onnx"),
    "export_encoder": "..models.onnx_graph",
})

__all__ = ("PRECISIONS", "SegmenterGraph", "export", "export_encoder", "export_segmenter", "quantize", "to_float16")
