"""The provenance an embedding raster carries: one object owns its ``MSFM_*`` GDAL tags, written and read back.

Every embedding raster (:func:`engine.maps.embed_raster`) records which model made it from which raster, which bands
with which statistics, at what scale and with which settings, so that derived products can be computed from it later
(pixel-resolution class maps need the bands and statistics to read the input again) and so that a GIS user can see,
in QGIS's layer properties or ``gdalinfo``, what the bands mean. Derived products (class maps, similarity maps,
principal components, pixel-resolution embeddings) copy these tags and add their own (:func:`product_tags`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..spectral import BandStats
from .quantized import QUANTIZATION_TAG

__all__ = ("EmbeddingTags", "product_tags", "read_tag", "recorded_bands")

_PREFIX = "MSFM_"


def _key(name: str) -> str:
    return _PREFIX + name.upper()


@dataclass(frozen=True)
class EmbeddingTags:
    """What an embedding raster records about itself.

    Attributes:
        model: The model's registry name or weights path.
        source: The input raster.
        output: What the bands hold (``"grid: last-block patch tokens before the final norm"``).
        band_indexes: 1-based indexes of the input bands that were embedded, in channel order.
        bands: Each embedded band's projection label (range key or interpolation).
        sensor: The sensor preset used, or None.
        scale: Model-input pixels per native pixel.
        patch_size_px: Model patch side in model-input pixels; one cell covers ``patch_size_px / scale`` native
            pixels.
        settings: The inference settings, as a plain mapping.
        stats: The normalisation statistics of each embedded band.
        region: The region's record (bounds, geometries, native-pixel window), or None for the whole raster.
        kind: ``"embeddings"`` (patch grid) or ``"embeddings-pixel"`` (interpolated to the input's pixels).
    """

    model: str
    source: str
    output: str
    band_indexes: tuple[int, ...]
    bands: tuple[str, ...]
    sensor: Optional[str]
    scale: float
    patch_size_px: int
    settings: Mapping[str, Any]
    stats: tuple[BandStats, ...]
    region: Optional[Mapping[str, Any]] = None
    kind: str = "embeddings"

    def to_tags(self) -> dict[str, str]:
        """The GDAL dataset tags (``MSFM_KIND``, ``MSFM_MODEL``, … ``MSFM_STATS``, ``MSFM_REGION``)."""
        tags = {
            _key("kind"): self.kind,
            _key("model"): self.model,
            _key("source"): self.source,
            _key("output"): self.output,
            _key("band_indexes"): json.dumps(list(self.band_indexes)),
            _key("bands"): json.dumps(list(self.bands)),
            _key("sensor"): str(self.sensor),
            _key("scale"): repr(self.scale),
            _key("patch_size_px"): str(self.patch_size_px),
            _key("settings"): json.dumps(dict(self.settings)),
            _key("stats"): json.dumps([[s.p1, s.p99, s.mean, s.std] for s in self.stats]),
        }
        if self.region is not None:
            tags[_key("region")] = json.dumps(dict(self.region))
        return tags


def recorded_bands(tags: Mapping[str, str]) -> tuple[Optional[list[int]], Optional[list[BandStats]]]:
    """The embedded band indexes and statistics recorded in an embedding raster's tags.

    Args:
        tags: The raster's dataset tags (``dataset.tags()``).

    Returns:
        ``(1-based band indexes or None, statistics or None)``; None where the raster does not record them (an
        embedding raster made by another tool).
    """
    indexes = json.loads(tags[_key("band_indexes")]) if _key("band_indexes") in tags else None
    stats = None
    if _key("stats") in tags:
        # each row is [p1, p99, mean, std] (JSON: the length is not in the type)
        stats = [BandStats(*row, source="recorded") for row in json.loads(tags[_key("stats")])]  # type: ignore[misc]
    return indexes, stats


def product_tags(embedding_tags: Mapping[str, str], kind: str, **fields: Any) -> dict[str, str]:
    """Tags of a product derived from an embedding raster: the embeddings' tags, its kind, its own fields.

    Args:
        embedding_tags: The embedding raster's dataset tags (copied: the product records the embeddings' provenance).
        kind: ``MSFM_KIND`` of the product (``"classes"``, ``"similarity"``, ``"pca"``, ``"embeddings-pixel"``).
        fields: More tags, named without the prefix (``query_cells=12`` → ``MSFM_QUERY_CELLS``); strings are kept,
            other values JSON-encoded.

    Returns:
        The product's dataset tags.
    """
    tags = {k: v for k, v in embedding_tags.items() if k != QUANTIZATION_TAG}  # how the embeddings were stored
    tags[_key("kind")] = kind
    for name, value in fields.items():
        tags[_key(name)] = value if isinstance(value, str) else json.dumps(value)
    return tags


def read_tag(tags: Mapping[str, str], name: str) -> Any:
    """The value of one ``MSFM_`` tag (``name`` without the prefix), JSON-decoded where it is JSON; None if absent."""
    value = tags.get(_key(name))
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value
