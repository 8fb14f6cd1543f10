"""Exporting models to ONNX for ONNX Runtime: an encoder, or an encoder with its segmentation head, at a precision.

:func:`export` is the one entry point (the ``msfm export-onnx`` command and the QGIS *Export model to ONNX* algorithm
use it): an encoder alone (:func:`engine.models.export_encoder`: spectral projection in the graph, any bands) or, with
a head, one graph from image to class probabilities (:func:`export_segmenter`, :class:`SegmenterGraph`): ``image``
``[B, C, H, W]`` (the head's bands, its band mix a constant) → ``probabilities`` ``[B, K, H, W]``; the head's card goes
into the metadata (``msfm_head_card``) with Deepness's ``model_type`` = ``Segmentor`` and ``class_names``.
:func:`engine.export.quantize` (int8, CPU) and :func:`engine.export.to_float16` (fp16, CUDA) derive smaller copies of
either export.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..atomic import scratch_folder
from ..errors import SettingsError
from ..models import SEGMENTER_FORMAT, Encoder, SmartiesEncoder, export_encoder
from ..models.onnx_graph import OPSET, ExportPatchEmbed, check_exportable, export_copy, model_metadata, write_graph
from ..models.onnx_quantize import quantize, to_float16
from ..outputs import check_outputs
from ..segmentation import HeadCard, SegmentationHead, card_projections, check_encoder
from ..spectral import Projection, band_mix

__all__ = ("PRECISIONS", "SegmenterGraph", "export", "export_segmenter")

#: Precisions of :func:`export`: float32 as exported, int8 (:func:`quantize`, CPU), float16 (:func:`to_float16`, CUDA).
PRECISIONS = ("float32", "int8", "float16")


class SegmenterGraph(nn.Module):
    """Encoder + segmentation head as one module: ``image [B, C, H, W]`` → class ``probabilities [B, K, H, W]``.

    The encoder's block grids for the head's fixed bands (:meth:`SmartiesEncoder.encode_blocks`), the head's pixel
    logits, softmax over classes.

    Args:
        encoder: The SMARTIES encoder the head was trained on.
        head: The head's network (``[B, D, h, w]`` block grids → ``[B, K, H, W]`` logits).
        projections: The head's bands, in channel order; their band mix ``[C, 17]`` becomes a constant buffer.
        tile_size_px: Tile side fixed in the graph (model-input pixels).
    """

    def __init__(self, encoder: SmartiesEncoder, head: SegmentationHead, projections: list[Projection],
                 tile_size_px: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.register_buffer("mix", torch.from_numpy(band_mix(projections)))
        self.tile_size_px = tile_size_px
        self.cells = tile_size_px // encoder.patch_size
        self.embed = ExportPatchEmbed(encoder, self.cells)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image [B, C, H, W]`` normalised tiles of the head's bands → ``probabilities [B, K, H, W]`` float32."""
        # static token-grid sizes (not read from the image's traced shape), so the head's pooling exports
        grids = self.encoder.token_grids(self.embed(image, self.mix), self.cells, self.cells, self.head.blocks)
        return torch.softmax(self.head.pixel_logits(grids, (self.tile_size_px, self.tile_size_px), image), dim=1)


def _segmenter_metadata(model: SmartiesEncoder, card: HeadCard, tile_size_px: int) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(c.index): c.name for c in card.classes},
        "msfm_format": SEGMENTER_FORMAT,
        **model_metadata(model, tile_size_px),
        "msfm_head_card": json.loads(card.to_json()),
        "msfm_inputs": {"image": "[B, C, H, W] float32, the card's bands in order, normalised with the card's stats"},
        "msfm_outputs": {"probabilities": "[B, K, H, W] float32, softmax over the card's classes"},
    }
    if card.gsd_m:
        meta["resolution"] = round(card.gsd_m * 100 / card.scale, 3)
    if card.stats:
        meta["standardization_mean"] = [s[2] for s in card.stats]
        meta["standardization_std"] = [s[3] for s in card.stats]
    return meta


def export_segmenter(head: SegmentationHead, model: Encoder, path: Union[str, Path], *,
                     tile_size_px: Optional[int] = None,
                     opset: int = OPSET) -> Path:
    """Export an encoder and its segmentation head as one ONNX graph (:class:`SegmenterGraph`), card in the metadata.

    The head's bands are fixed (their band mix is a constant of the graph), so the graph has one input, ``image``
    ``[B, C, T, T]`` (normalised with the card's statistics, C = the card's bands in order), and one output,
    ``probabilities`` ``[B, K, T, T]``; batch is dynamic. :class:`engine.segmentation.OnnxSegmenter` runs it
    and :func:`engine.segmentation.segment_raster` takes the file in place of a head.

    Args:
        head: A :class:`engine.segmentation.SegmentationHead` (:func:`engine.segmentation.load_head`).
        model: The encoder it was trained on (its fine-tuned copy, if any: :func:`engine.segmentation.encoder_source`).
        path: Destination ``.onnx`` (temporary name, renamed when complete).
        tile_size_px: Tile side fixed in the graph (default: the card's training chip size).
        opset: ONNX opset.

    Returns:
        ``path``.

    Raises:
        ValueError: Not a SMARTIES encoder, or a bad tile size.
        engine.errors.ModelMismatchError: ``model`` is not the encoder the card names (width, depth).
        engine.errors.CheckpointError: A card whose band projections cannot be rebuilt.
    """
    card = head.card
    tile_size_px = tile_size_px or card.tile_size_px
    encoder = check_exportable(model, tile_size_px)
    check_encoder(head.card, model)
    projections = card_projections(card, model.averaging)
    graph = SegmenterGraph(export_copy(encoder), copy.deepcopy(head).float().cpu().eval(), projections, tile_size_px)
    inputs = (torch.zeros(2, len(projections), tile_size_px, tile_size_px),)
    return write_graph(graph, inputs, Path(path), _segmenter_metadata(encoder, card, tile_size_px), opset, ["image"],
                   ["probabilities"], {"image": {0: "batch"}, "probabilities": {0: "batch"}})


def export(model: Encoder, path: Union[str, Path], *, head: Optional[SegmentationHead] = None,
           precision: str = "float32", tile_size_px: Optional[int] = None, sensor: Optional[str] = None,
           overwrite: bool = False) -> Path:
    """Export an encoder, or an encoder and its segmentation head, at a precision of :data:`PRECISIONS`.

    Without ``head`` this is :func:`export_encoder`, with it :func:`export_segmenter`. An int8/float16 copy is derived
    from a float32 export in a scratch folder beside ``path`` (:func:`engine.atomic.scratch_folder`), removed
    afterwards; nothing is left at ``path`` unless the whole export succeeds.

    Args:
        model: The SMARTIES encoder (for a head: the one it was trained on, :func:`engine.segmentation.encoder_source`).
        path: Destination ``.onnx``.
        head: A :class:`engine.segmentation.SegmentationHead`, or None for the encoder alone.
        precision: ``"float32"``, ``"int8"`` or ``"float16"``.
        tile_size_px: Tile side fixed in the graph (default 224, or the head's training chip size).
        sensor: Sensor preset recorded in an encoder's metadata (ignored with a head: its card has the bands).
        overwrite: Replace ``path`` when it exists.

    Raises:
        SettingsError: Unknown precision.
        engine.errors.OutputError: ``path`` is the model's weights file, exists (without ``overwrite``), is not
            ``.onnx`` or cannot be written (:func:`engine.outputs.check_outputs`).
        ValueError: As the export functions.
    """
    if precision not in PRECISIONS:
        raise SettingsError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    check_outputs({"ONNX file": path}, {"model": model.provenance.weights_path}, overwrite=overwrite,
                  suffixes={"ONNX file": (".onnx",)})
    path = Path(path)
    with scratch_folder(path) as scratch:
        raw = path if precision == "float32" else scratch / "float32.onnx"
        if head is not None:
            export_segmenter(head, model, raw, tile_size_px=tile_size_px)
        else:
            export_encoder(model, raw, tile_size_px=tile_size_px or 224, sensor=sensor)
        if precision != "float32":
            (quantize if precision == "int8" else to_float16)(raw, path)
    return path
