"""Processing regions: a bounding box and/or polygons, in the raster's CRS.

A :class:`Region` restricts embedding, clustering and similarity maps to part of a raster:

- ``bounds`` ``(left, bottom, right, top)`` and the union of the polygons' bounds are intersected with the raster;
  the result, rounded outward to whole native pixels, is the window that is read (:meth:`Region.window`);
- pixels whose centre lies outside every polygon count as nodata (:meth:`Region.pixel_mask`), and tiles with no
  pixel inside a polygon are not encoded at all.

Geometries are GeoJSON-like mappings (``{"type": "Polygon", "coordinates": [...]}``, e.g. ``json.loads`` of QGIS'
``QgsGeometry.asJson()``), or objects with ``__geo_interface__``; GeoJSON Features are unwrapped. Coordinates are in
the raster's CRS: reprojecting is the caller's job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np
from affine import Affine
from rasterio.features import bounds as geometry_bounds
from rasterio.features import geometry_mask
from rasterio.windows import Window

from ..errors import InputRasterError

__all__ = ("Region", "as_geometry")

Bounds = tuple[float, float, float, float]

#: Pixel-coordinate tolerance when rounding outward (bounds on a pixel edge must not pull in a neighbouring pixel).
_EDGE_TOLERANCE_PX = 1e-6
#: Largest MSFM_REGION tag written with full geometries; larger regions record their bounds and geometry count only.
_MAX_TAG_CHARS = 65536

_EXAMPLE = '{"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y0]]]}'


def _depth_ok(coords: Any, depth: int) -> bool:
    """True when ``coords`` is a non-empty nesting of ``depth`` lists ending in positions of ≥ 2 finite numbers."""
    if depth == 0:
        return (
            isinstance(coords, (list, tuple))
            and len(coords) >= 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in coords[:2])
        )
    return isinstance(coords, (list, tuple)) and len(coords) > 0 and all(_depth_ok(c, depth - 1) for c in coords)


#: GeoJSON geometry type → nesting depth of its coordinates.
_DEPTH = {"Point": 0, "MultiPoint": 1, "Polygon": 2, "MultiPolygon": 3}


def as_geometry(obj: Any, allowed: Iterable[str], what: str = "geometry") -> dict[str, Any]:
    """Validate one GeoJSON-like geometry and return it as a plain ``{"type", "coordinates"}`` dict.

    Args:
        obj: A mapping with ``type`` and ``coordinates``, a GeoJSON Feature (its ``geometry`` is used), or an object
            with ``__geo_interface__``.
        allowed: Accepted geometry types among ``Point``, ``MultiPoint``, ``Polygon``, ``MultiPolygon``.
        what: How the caller names the geometry in error messages (``"geometry 3"``).

    Returns:
        ``{"type": str, "coordinates": nested lists}`` (a new dict; the input is not modified).

    Raises:
        InputRasterError: Not a mapping, a type outside ``allowed``, or malformed / non-finite coordinates.
    """
    allowed = tuple(allowed)
    if hasattr(obj, "__geo_interface__"):
        obj = obj.__geo_interface__
    if isinstance(obj, Mapping) and obj.get("type") == "Feature":
        obj = obj.get("geometry")
    if not isinstance(obj, Mapping) or "type" not in obj:
        raise InputRasterError(
            f"{what} must be a GeoJSON-like mapping with 'type' and 'coordinates' (e.g. {_EXAMPLE}), got {obj!r:.120}"
        )
    kind = obj["type"]
    if kind not in allowed:
        raise InputRasterError(
            f"{what} is a {kind}; only {', '.join(allowed)} geometries are accepted here (e.g. {_EXAMPLE})"
        )
    coords = obj.get("coordinates")
    if not _depth_ok(coords, _DEPTH[kind]):
        raise InputRasterError(
            f"{what} ({kind}) has empty, malformed or non-finite coordinates: {coords!r:.120}; expected e.g. {_EXAMPLE}"
        )
    return {"type": kind, "coordinates": coords}


def _fmt(b: Bounds) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in b) + ")"


@dataclass(frozen=True)
class Region:
    """Part of a raster to process: a bounding box and/or polygons, both in the raster's CRS.

    Attributes:
        bounds: ``(left, bottom, right, top)`` in CRS units, or None for no box.
        geometries: GeoJSON-like ``Polygon``/``MultiPolygon`` mappings (normalised to plain dicts on creation).
            Pixels whose centre lies outside all of them are nodata; their union bounds also limit the window.

    An empty ``Region()`` restricts nothing and is falsy.

    Raises:
        InputRasterError: (on creation) bounds that are not four finite numbers with left < right and
            bottom < top, or geometries that are not valid Polygon/MultiPolygon mappings.
    """

    bounds: Optional[Bounds] = None
    geometries: tuple[Mapping, ...] = ()

    def __post_init__(self) -> None:
        if self.bounds is not None:
            try:
                b = tuple(float(v) for v in self.bounds)
            except (TypeError, ValueError):
                raise InputRasterError(
                    f"region bounds must be four numbers (left, bottom, right, top), got {self.bounds!r}"
                ) from None
            if len(b) != 4 or not all(math.isfinite(v) for v in b):
                raise InputRasterError(
                    f"region bounds must be four finite numbers (left, bottom, right, top), got {self.bounds!r}"
                )
            if not (b[0] < b[2] and b[1] < b[3]):
                raise InputRasterError(
                    f"region bounds {_fmt(b)} are not ordered (left, bottom, right, top) with left < right and "
                    "bottom < top; e.g. --bounds 500000 4100000 505000 4105000"
                )
            object.__setattr__(self, "bounds", b)
        if isinstance(self.geometries, Mapping) or hasattr(self.geometries, "__geo_interface__"):
            raise InputRasterError("region geometries must be a sequence of geometries; wrap a single one in a tuple")
        geoms = tuple(
            as_geometry(g, ("Polygon", "MultiPolygon"), f"region geometry {i + 1}")
            for i, g in enumerate(self.geometries)
        )
        object.__setattr__(self, "geometries", geoms)

    def __bool__(self) -> bool:
        return not self.is_empty

    def __hash__(self) -> int:
        return hash(json.dumps({"bounds": self.bounds, "geometries": list(self.geometries)}, sort_keys=True))

    @property
    def is_empty(self) -> bool:
        """True when the region has neither bounds nor geometries (it then restricts nothing)."""
        return self.bounds is None and not self.geometries

    def extent(self) -> Optional[Bounds]:
        """``bounds`` ∩ union bounds of the geometries (CRS units), or None when the region restricts nothing.

        Raises:
            InputRasterError: The box and the geometries do not overlap.
        """
        boxes = [self.bounds] if self.bounds is not None else []
        if self.geometries:
            each = [geometry_bounds(g) for g in self.geometries]
            boxes.append((min(b[0] for b in each), min(b[1] for b in each),
                          max(b[2] for b in each), max(b[3] for b in each)))
        if not boxes:
            return None
        out = (max(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), min(b[3] for b in boxes))
        if not (out[0] < out[2] and out[1] < out[3]):
            raise InputRasterError(
                f"the region's bounds {_fmt(boxes[0])} and its geometries (extent {_fmt(boxes[-1])}) do not overlap"
            )
        return out

    def window(self, dataset: Any) -> Window:
        """Native-pixel window of ``bounds`` ∩ geometries' union bounds ∩ raster, rounded outward to whole pixels.

        Args:
            dataset: Open rasterio dataset (anything with ``transform``, ``width``, ``height``, ``bounds``, ``name``).

        Returns:
            An integer :class:`rasterio.windows.Window` inside the raster (the whole raster for an empty region).

        Raises:
            InputRasterError: The region does not overlap the raster (the message gives both extents), or the raster
                is rotated/sheared.
        """
        t: Affine = dataset.transform
        if abs(t.b) > 1e-12 or abs(t.d) > 1e-12:
            raise InputRasterError(f"{dataset.name} has a rotated or sheared transform; regions need a north-up raster")
        extent = self.extent()
        if extent is None:
            return Window(0, 0, dataset.width, dataset.height)
        left, bottom, right, top = extent
        cols, rows = zip(*(~t * xy for xy in ((left, bottom), (left, top), (right, bottom), (right, top))))
        c0 = max(0, math.floor(min(cols) + _EDGE_TOLERANCE_PX))
        r0 = max(0, math.floor(min(rows) + _EDGE_TOLERANCE_PX))
        c1 = min(dataset.width, math.ceil(max(cols) - _EDGE_TOLERANCE_PX))
        r1 = min(dataset.height, math.ceil(max(rows) - _EDGE_TOLERANCE_PX))
        if c1 <= c0 or r1 <= r0:
            raster = tuple(dataset.bounds)
            raise InputRasterError(
                f"the region {_fmt(extent)} does not overlap the raster {dataset.name} {_fmt(raster)} "
                "(left, bottom, right, top in the raster's CRS); give bounds/geometries in the raster's CRS that "
                "overlap it"
            )
        return Window(c0, r0, c1 - c0, r1 - r0)

    def pixel_mask(self, transform: Affine, shape: tuple[int, int], all_touched: bool = False) -> Optional[np.ndarray]:
        """Which pixels of a grid lie inside the geometries.

        Args:
            transform: Affine transform of the grid (same CRS as the geometries).
            shape: ``(height, width)`` of the grid in pixels.
            all_touched: Count every pixel a geometry touches, not only those whose centre is inside.

        Returns:
            ``bool [height, width]``, True where the pixel centre is inside a geometry; None when the region has no
            geometries (every pixel is inside).
        """
        if not self.geometries:
            return None
        return geometry_mask(self.geometries, out_shape=shape, transform=transform, all_touched=all_touched,
                             invert=True)

    def record(self) -> dict[str, Any]:
        """JSON-ready record of the region (for the ``MSFM_REGION`` tag); very large geometries are summarised."""
        record: dict[str, Any] = {"bounds": self.bounds, "geometries": list(self.geometries)}
        if len(json.dumps(record)) > _MAX_TAG_CHARS:
            record = {"bounds": self.bounds, "geometries": len(self.geometries), "geometries_extent": self.extent()}
        return record
