"""The model card of a segmentation head: classes, encoder, bands, normalisation, GSD and metrics (no torch).

The card travels with the head's weights: as ``NAME.json`` beside ``NAME.safetensors`` and in its metadata
(:mod:`engine.segmentation.heads`), and as the ``msfm_head_card`` metadata of an exported ONNX segmenter
(:mod:`engine.export`), which ONNX Runtime runs without torch (:class:`engine.segmentation.OnnxSegmenter`). What a
card says about its encoder also decides which encoders may run the head (:func:`check_encoder`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union, cast

from ..errors import CheckpointError, ModelMismatchError
from ..models import BlockEncoder, Encoder
from ..spectral import Averaging, Projection, interpolated_projection, projection_for

__all__ = (
    "ClassInfo",
    "HEAD_FORMAT",
    "HeadCard",
    "HeadType",
    "card_path",
    "card_projections",
    "check_encoder",
    "encoder_source",
    "require_block_grids",
)

HeadType = Literal["linear", "upernet", "pixel"]
#: ``format`` field of our head cards.
HEAD_FORMAT = "msfm-segmentation-head/1"


@dataclass(frozen=True)
class ClassInfo:
    """One output class: its index in the class map, the label value it came from, its name and RGBA colour."""

    index: int
    name: str
    color: tuple[int, int, int, int]
    value: Union[int, float, str, None] = None


@dataclass
class HeadCard:
    """The model card of a segmentation head (the JSON file beside the weights).

    Attributes:
        head_type: ``"linear"``, ``"upernet"`` or ``"pixel"``.
        blocks: 0-based encoder blocks the head reads.
        classes: The output classes, in index order.
        encoder: ``{"name": registry name or file, "sha256": of the weights file, "embed_dim", "depth",
            "patch_size", "file": fine-tuned encoder weights beside the head (optional)}``.
        bands: Per input channel: ``{"index": 1-based band of the training raster, "key": range key,
            "description": band description}``.
        sensor: Sensor preset id of the training raster (or None).
        stats: Per channel ``[p1, p99, mean, std]`` used to normalise (docs/smarties.md §3–§4).
        scale: Model-input pixels per native pixel used in training.
        gsd_m: Native pixel size of the training raster in metres (None when unknown).
        tile_size_px: Chip side used in training (model pixels).
        channels: UPerNet or pixel-head width (None for the linear head).
        metrics: Validation metrics (:func:`engine.segmentation.segmentation_scores`).
        training: How it was trained (raster, labels, steps, learning rate, seconds, ...).
        format: :data:`HEAD_FORMAT`.
    """

    head_type: HeadType
    blocks: list[int]
    classes: list[ClassInfo]
    encoder: dict[str, Any]
    bands: list[dict[str, Any]] = field(default_factory=list)
    sensor: Optional[str] = None
    stats: list[list[float]] = field(default_factory=list)
    scale: float = 1.0
    gsd_m: Optional[float] = None
    tile_size_px: int = 224
    channels: Optional[int] = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    format: str = HEAD_FORMAT

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.classes)

    def to_json(self) -> str:
        """The card as indented JSON (the ``.json`` file written beside a head)."""
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "card") -> "HeadCard":
        """Parse a card; raises :class:`CheckpointError` naming a missing or unknown field."""
        if data.get("format") != HEAD_FORMAT:
            raise CheckpointError(f"{source} is not an msfm segmentation head card (format {data.get('format')!r}, "
                                  f"expected {HEAD_FORMAT!r})")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{source} has unknown card fields {unknown}; was it written by a newer msfm?")
        try:
            # colours are RGBA (written by to_json); the JSON list's length is not in the type
            classes = [ClassInfo(int(c["index"]), str(c["name"]),
                                 cast("tuple[int, int, int, int]", tuple(int(v) for v in c["color"])), c.get("value"))
                       for c in data["classes"]]
            return cls(**{**data, "classes": classes})
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed head card ({exc})") from exc


def card_path(path: Union[str, Path]) -> Path:
    """The JSON card beside a head file: ``NAME.safetensors`` → ``NAME.json``."""
    return Path(path).with_suffix(".json")


def card_projections(card: HeadCard, averaging: Averaging = "linear") -> list[Projection]:
    """The :class:`engine.spectral.Projection` of each input channel the head was trained on.

    Rebuilt from the card's bands (range key, or central wavelength for an interpolated band) and checked against the
    recorded label.

    Args:
        card: The head's card.
        averaging: Weights of the averaged ranges 17/18 (the encoder's ``averaging``).

    Returns:
        One projection per card band, in channel order.

    Raises:
        CheckpointError: A card without bands, or a band whose projection cannot be rebuilt as recorded.
    """
    if not card.bands:
        raise CheckpointError("the head's card lists no bands; it cannot be exported with its band mix")
    out = []
    for band in card.bands:
        key = band.get("key")
        projection = projection_for(key, averaging) if key else interpolated_projection(float(band["wavelength_nm"]))
        if band.get("projection") not in (None, projection.label):
            raise CheckpointError(f"band {band.get('index')} of the card was embedded as {band['projection']!r}, but "
                                  f"it rebuilds as {projection.label!r}; train the head again with this msfm")
        out.append(projection)
    return out


def encoder_source(card: HeadCard, head_path: Optional[Union[str, Path]] = None) -> str:
    """Where a head's encoder comes from: its fine-tuned encoder file beside the head, else the card's model name.

    Args:
        card: The head's card.
        head_path: The head file (its folder holds a fine-tuned encoder, if any).

    Raises:
        ModelMismatchError: The card names no encoder.
    """
    enc = card.encoder
    if enc.get("file") and head_path is not None:
        return str(Path(head_path).with_name(enc["file"]))
    if not enc.get("name") or enc["name"] == "unknown":
        raise ModelMismatchError("the head's card names no encoder; pass the encoder it was trained on")
    return str(enc["name"])


def require_block_grids(model: Encoder) -> BlockEncoder:
    """``model`` as a :class:`engine.models.BlockEncoder`, the grids of several blocks that heads read.

    Raises:
        ModelMismatchError: The model gives no block grids (the ONNX encoder exports the last block only).
    """
    if not isinstance(model, BlockEncoder):
        raise ModelMismatchError(f"segmentation heads read encoder blocks that {type(model).__name__} does not give; "
                                 "use the torch backend, or export the encoder with its head (`msfm export-onnx "
                                 "OUT.onnx --head HEAD.safetensors`) and segment with the .onnx file")
    return model


def check_encoder(card: HeadCard, model: Encoder) -> BlockEncoder:
    """``model`` if it is the encoder the head was trained on: same width and depth, and block grids.

    Raises:
        ModelMismatchError: Another width or depth, or no block grids (the ONNX encoder exports the last block only).
    """
    encoder = require_block_grids(model)
    enc = card.encoder
    if encoder.embed_dim != int(enc["embed_dim"]) or encoder.depth != int(enc["depth"]):
        raise ModelMismatchError(
            f"the encoder {encoder.provenance.label} (D={encoder.embed_dim}, depth {encoder.depth}) is not the one "
            f"the head was trained on ({enc.get('name')}: D={enc['embed_dim']}, depth {enc['depth']}); pass that "
            "encoder"
        )
    return encoder
