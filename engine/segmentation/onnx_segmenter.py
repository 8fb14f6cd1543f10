"""An encoder and its segmentation head exported as one ONNX graph, run with ONNX Runtime — no torch needed.

The graph is written by :func:`engine.export.export_segmenter`.

The graph takes normalised tiles of the head's bands in the head's order (the band mix is a constant of the graph) and
gives per-pixel class probabilities; the head's card (:class:`engine.segmentation.HeadCard`: classes, bands, statistics,
scale) is stored in the file's metadata, so :func:`engine.segmentation.segment_raster` needs nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union, cast

import numpy as np

from ..models import SEGMENTER_FORMAT, Provenance, open_session, run_session
from ..spectral import Averaging, ChannelNorm
from .card import HeadCard

__all__ = ("OnnxSegmenter",)


class OnnxSegmenter:
    """An exported encoder + segmentation head in an ONNX Runtime session (``backend = "onnx"``).

    It implements :class:`engine.models.InputSpec`: it reads tiles as its SMARTIES encoder does (any bands, their own
    statistics), the head's bands in the card's order.

    Args:
        path: The ``.onnx`` file written by :func:`engine.export.export_segmenter`.
        device: ``"cpu"``, ``"cuda"``/``"cuda:N"`` or ``"auto"`` (:func:`engine.models.onnx_encoder.open_session`).
        threads: Intra-op threads (None: onnxruntime's default).

    Attributes:
        card: The head's :class:`HeadCard`.
        tile_size_px, patch_size: Tile side fixed in the graph and the encoder's patch size (px).

    Raises:
        engine.errors.CheckpointError: Not an exported segmenter, or a malformed card.
    """

    backend = "onnx"
    band_families: Optional[tuple[str, ...]] = None
    input_norm: Optional[ChannelNorm] = None

    def __init__(self, path: Union[str, Path], device: str = "auto", threads: Optional[int] = None) -> None:
        self.session, self.metadata, self.device = open_session(path, SEGMENTER_FORMAT, device, threads)
        self.provenance = Provenance(Path(path), self.metadata.get("msfm_encoder"), "onnx")
        card = self.metadata["msfm_head_card"]
        self.card = HeadCard.from_dict(json.loads(card) if isinstance(card, str) else card, str(path))
        self.tile_size_px = int(self.metadata["msfm_tile_size_px"])
        self.patch_size = int(self.metadata["msfm_patch_size"])
        self.averaging: Averaging = self.metadata.get("msfm_averaging", "linear")

    def probabilities(self, x: Any) -> np.ndarray:
        """Class probabilities of normalised tiles.

        Args:
            x: ``[B, C, H, W]`` float32, the head's C bands in the card's order, H = W = the exported tile size.

        Returns:
            ``[B, K, H, W]`` float32, softmax over the K classes.

        Raises:
            ValueError: Wrong shape.
        """
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        size, c = self.tile_size_px, len(self.card.bands)
        if x.ndim != 4 or x.shape[1:] != (c, size, size):
            raise ValueError(f"x must be [B, {c}, {size}, {size}] (the head's bands, the exported tile size), "
                             f"got {x.shape}")
        return run_session(self.session, {"image": x})[0]

    def __repr__(self) -> str:
        path = cast(Path, self.provenance.weights_path)  # always the .onnx file for an exported segmenter
        return (f"OnnxSegmenter({path.name}, {self.card.head_type}, "
                f"{self.card.num_classes} classes, tile {self.tile_size_px} px, {self.device})")
