"""Segmentation: heads on encoder block grids, their card, training labels, head fitting and per-pixel class maps.

- :mod:`~engine.segmentation.card` — the head's model card (classes, encoder, bands, statistics) and which encoders
  may run it;
- :mod:`~engine.segmentation.heads` — the linear, UPerNet and pixel heads and the head file (torch);
- :mod:`~engine.segmentation.labels` — polygons or a label raster burnt onto the image grid;
- :mod:`~engine.segmentation.validation` — the split of labels into training and validation by polygon, and the
  scores (torch-free);
- :mod:`~engine.segmentation.fitting` — :func:`fit_head`, training a head from a dozen polygons (torch);
- :mod:`~engine.segmentation.segment` — :func:`segment_raster`, tiled, blended class probabilities → class map;
- :mod:`~engine.segmentation.forest` — :func:`classify_raster`, a random forest on bands ⊕ embeddings, fit + map;
- :mod:`~engine.segmentation.onnx_segmenter` — an encoder + head exported as one graph, run by ONNX Runtime.

Names whose modules import torch are imported on first access: segmenting with an exported ``.onnx`` segmenter never
imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr
from .card import (
    HEAD_FORMAT,
    ClassInfo,
    HeadCard,
    HeadType,
    card_path,
    card_projections,
    check_encoder,
    encoder_source,
    require_block_grids,
)
from .forest import ClassifyResult, ForestSettings, classify_raster
from .labels import IGNORE, LabelGrid, LabelRaster, PolygonLabels, class_table, label_grid, read_polygons
from .onnx_segmenter import OnnxSegmenter
from .segment import SegmentationResult, segment_raster
from .validation import segmentation_scores, split_groups

if TYPE_CHECKING:
    from .fitting import FitResult, HeadFitSettings, fit_head
    from .heads import LinearHead, PixelHead, SegmentationHead, UPerNetHead, build_head, load_head, save_head

#: Names that need torch, imported on first access.
_TORCH_NAMES = {
    **dict.fromkeys(("FitResult", "HeadFitSettings", "fit_head"), ".fitting"),
    **dict.fromkeys(("LinearHead", "PixelHead", "SegmentationHead", "UPerNetHead", "build_head", "load_head",
                     "save_head"),
                    ".heads"),
}
__getattr__ = lazy_getattr(__name__, _TORCH_NAMES)

__all__ = (
    "ClassInfo",
    "ClassifyResult",
    "FitResult",
    "ForestSettings",
    "HEAD_FORMAT",
    "HeadCard",
    "HeadFitSettings",
    "HeadType",
    "IGNORE",
    "LabelGrid",
    "LabelRaster",
    "LinearHead",
    "OnnxSegmenter",
    "PixelHead",
    "PolygonLabels",
    "SegmentationHead",
    "SegmentationResult",
    "UPerNetHead",
    "build_head",
    "card_path",
    "card_projections",
    "check_encoder",
    "class_table",
    "classify_raster",
    "encoder_source",
    "fit_head",
    "label_grid",
    "load_head",
    "read_polygons",
    "require_block_grids",
    "save_head",
    "segment_raster",
    "segmentation_scores",
    "split_groups",
)
