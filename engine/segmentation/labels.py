"""Training labels for segmentation heads: polygons with a class field, or a label raster, on the image's grid.

Two sources:

- :class:`PolygonLabels` — polygons (GeoJSON mappings) with one class value each and the CRS of their coordinates,
  read from a vector file by :func:`read_polygons` (GDAL/OGR: GeoPackage, shapefile, GeoJSON, ...) or built from a
  QGIS layer by the plugin. They are reprojected to the raster's CRS (:func:`rasterio.warp.transform_geom`) and burnt
  onto the raster's grid (a pixel is labelled when its centre is inside a polygon; where polygons overlap, the later
  one wins). Each polygon is a *group*: the train/validation split takes whole polygons.
- :class:`LabelRaster` — a raster of class values (any CRS/grid: resampled with nearest neighbour onto the image's
  grid). Groups are square blocks of ``block_px`` pixels, so the split takes whole blocks.

:func:`label_grid` returns a :class:`LabelGrid`: class indices (``IGNORE`` = unlabelled) and group ids over the labelled
window of the image grid, with the class table (:class:`engine.segmentation.ClassInfo`). Everything that would make a
useless head fails early with a message naming the problem and the fix: a missing or empty class field, polygons without
a CRS or that do not overlap the raster (usually a wrong layer CRS), a class that covers no pixel.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import bounds as geometry_bounds
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_geom
from rasterio.windows import Window

from ..errors import DependencyError, LabelError
from ..raster import NODATA_CLASS, colors_for_names
from .card import ClassInfo

__all__ = ("IGNORE", "LabelGrid", "LabelRaster", "PolygonLabels", "class_table", "label_grid", "read_polygons")

#: Label value of unlabelled pixels (the loss ignores them); the nodata value of class maps.
IGNORE = NODATA_CLASS
_CRS_HINT = "check that the polygon layer's CRS is the one its coordinates are in"
#: Largest label window read into memory (pixels); larger label rasters must be cropped first.
_MAX_LABEL_PX = 400_000_000


@dataclass(frozen=True)
class PolygonLabels:
    """Polygons with a class value each.

    Attributes:
        geometries: GeoJSON mappings (``Polygon`` / ``MultiPolygon``) in ``crs``.
        values: One class value per geometry (int, float or str; None/"" = empty, which is an error).
        crs: CRS of the coordinates (WKT, ``"EPSG:4326"``…), or None when the layer has none.
        field: Name of the class field (for messages and the card).
        source: Where they came from (file path or layer name).
        names: Optional ``{value: class name}`` (default: the value as text).
        ids: Optional feature ids, one per geometry, named in error messages (default: positions 0…n−1; the QGIS
            plugin passes the layer's feature ids).
    """

    geometries: Sequence[Mapping[str, Any]]
    values: Sequence[Any]
    crs: Optional[str]
    field: str = "class"
    source: str = "polygons"
    names: Optional[Mapping[Any, str]] = None
    ids: Optional[Sequence[Any]] = None


@dataclass(frozen=True)
class LabelRaster:
    """A raster of class values.

    Attributes:
        path: The label raster (any CRS and resolution; resampled with nearest neighbour).
        band: 1-based band holding the values.
        ignore_values: Values that mean "unlabelled" besides the band's nodata.
        names: Optional ``{value: class name}``.
        block_px: Side of the square blocks (image pixels) that form the validation groups.
    """

    path: Union[str, Path]
    band: int = 1
    ignore_values: Sequence[float] = ()
    names: Optional[Mapping[Any, str]] = None
    block_px: int = 224


@dataclass
class LabelGrid:
    """Labels on a window of the image grid.

    Attributes:
        labels: ``uint8 [h, w]`` class indices, :data:`IGNORE` where unlabelled.
        groups: ``int32 [h, w]`` group id (polygon or block) of each labelled pixel, −1 elsewhere.
        window: The window of the image grid covered (row/col offsets in image pixels).
        classes: The class table (index order).
        group_class: ``{group id: class index}`` for polygon groups (the split is stratified by class), empty for
            raster blocks.
        source: Description of the labels.
    """

    labels: np.ndarray
    groups: np.ndarray
    window: Window
    classes: list[Any]
    group_class: dict[int, int] = field(default_factory=dict)
    source: str = ""

    def pixel_counts(self) -> np.ndarray:
        """Labelled pixels per class, ``int64 [K]``."""
        lab = self.labels[self.labels != IGNORE]
        return np.bincount(lab.ravel(), minlength=len(self.classes))[: len(self.classes)]


def _sort_values(values: Sequence[Any]) -> list[Any]:
    try:
        return sorted(set(values))
    except TypeError:  # mixed numbers and text
        return sorted(set(values), key=str)


def class_table(values: Sequence[Any], names: Optional[Mapping[Any, str]] = None) -> list[Any]:
    """Classes for the distinct ``values`` (sorted): index, name (``names[value]`` or the value as text), colour.

    Returns:
        A list of :class:`engine.segmentation.ClassInfo`.

    Raises:
        LabelError: More than 254 classes (uint8 maps keep 255 for nodata).
    """
    distinct = _sort_values(values)
    if len(distinct) > 254:
        raise LabelError(f"{len(distinct)} distinct class values; at most 254 classes fit a uint8 class map. "
                               "Is the class field a continuous attribute?")
    names = {str(k): v for k, v in (names or {}).items()}
    labels = [names.get(str(_plain(v)), str(_plain(v))) for v in distinct]
    colors = colors_for_names(labels)  # water blue, forest green… whatever their order
    return [ClassInfo(i, label, colors[i], _plain(v)) for i, (label, v) in enumerate(zip(labels, distinct))]


def read_polygons(path: Union[str, Path], class_field: str, layer: Optional[str] = None,
                  names: Optional[Mapping[Any, str]] = None) -> PolygonLabels:
    """Read polygons and their class values from a vector file with GDAL/OGR.

    Args:
        path: Any OGR-readable vector file (GeoPackage, shapefile, GeoJSON, ...).
        class_field: Attribute holding the class (text or number).
        layer: Layer name for multi-layer files (default: the first layer).
        names: Optional ``{value: class name}``.

    Raises:
        LabelError: Unreadable file, unknown layer or field (the available ones are listed), no feature.
    """
    try:
        from osgeo import ogr, osr
    except ImportError as exc:  # pragma: no cover - GDAL's Python bindings come with QGIS and python3-gdal
        raise DependencyError("reading vector labels needs GDAL's Python bindings (osgeo): install python3-gdal "
                               "(apt) or run inside QGIS") from exc
    ogr.UseExceptions()
    try:
        ds = ogr.Open(str(path))
    except RuntimeError as exc:
        raise LabelError(f"cannot open the polygon file {path}: {exc}") from exc
    if ds is None:
        raise LabelError(f"cannot open the polygon file {path}")
    lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
    if lyr is None:
        raise LabelError(f"{path} has no layer {layer!r}; layers: "
                               f"{[ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())]}")
    defn = lyr.GetLayerDefn()
    fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    if class_field not in fields:
        raise LabelError(f"{path} has no field {class_field!r}; its fields are {fields}. Pick the field that "
                               "holds the class of each polygon")
    srs = lyr.GetSpatialRef()
    if srs is not None and hasattr(srs, "SetAxisMappingStrategy"):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    geometries, values = [], []
    for feat in lyr:
        geom = feat.GetGeometryRef()
        if geom is None or geom.IsEmpty():
            continue
        geometries.append(json.loads(geom.ExportToJson()))
        values.append(feat.GetField(class_field) if feat.IsFieldSetAndNotNull(class_field) else None)
    return PolygonLabels(geometries, values, srs.ExportToWkt() if srs is not None else None, class_field, str(path),
                         names)


def _polygon_grid(labels: PolygonLabels, crs: Any, transform: Affine, shape: tuple[int, int]) -> LabelGrid:
    where = f"{labels.source} (field {labels.field!r})"
    if not labels.geometries:
        raise LabelError(f"{where} holds no polygon; draw at least one polygon per class")
    ids = list(labels.ids) if labels.ids is not None else list(range(len(labels.values)))
    empty = [i for i, v in zip(ids, labels.values) if v is None or (isinstance(v, str) and not v.strip())]
    if empty:
        f = labels.field
        raise LabelError(
            f"{len(empty)} of {len(labels.values)} polygons of {where} have an empty class value. Feature ids with "
            f"an empty {f!r}: {empty[:20]}{'…' if len(empty) > 20 else ''} (select them with the expression "
            f"\"{f}\" IS NULL OR trim(\"{f}\") = ''); fill the field or delete those polygons")
    # a geometry without "type" (not GeoJSON) gives None: sorted as text beside the other kinds
    kinds = sorted({g.get("type") for g in labels.geometries} - {"Polygon", "MultiPolygon"}, key=str)
    if kinds:
        raise LabelError(f"{where} holds {kinds} geometries; training labels must be polygons")
    if labels.crs is None and crs is not None:
        raise LabelError(f"the polygons of {labels.source} have no CRS; assign the layer the CRS its "
                               "coordinates are in (e.g. the raster's) and run again")
    geoms = list(labels.geometries)
    if labels.crs is not None and crs is not None and CRS.from_user_input(labels.crs) != CRS.from_user_input(crs):
        try:
            geoms = [transform_geom(CRS.from_user_input(labels.crs), crs, g) for g in geoms]
        except Exception as exc:  # PROJ refuses coordinates outside the CRS's domain
            raise LabelError(
                f"the polygons of {labels.source} cannot be reprojected from {_crs_name(labels.crs)} to the raster's "
                f"{_crs_name(crs)} ({exc}); {_CRS_HINT}") from exc
    height, width = shape
    lefts, bottoms, rights, tops = zip(*(geometry_bounds(g) for g in geoms))
    inv = ~transform
    cols, rows = zip(*(inv * (x, y) for x in (min(lefts), max(rights)) for y in (min(bottoms), max(tops))))
    c0, r0 = max(0, math.floor(min(cols))), max(0, math.floor(min(rows)))
    c1, r1 = min(width, math.ceil(max(cols))), min(height, math.ceil(max(rows)))
    if c1 <= c0 or r1 <= r0:
        bounds = rasterio.transform.array_bounds(height, width, transform)
        raise LabelError(
            f"none of the {len(geoms)} polygons of {labels.source} overlaps the raster (polygons in "
            f"{_crs_name(labels.crs)}, raster in {_crs_name(crs)}, raster bounds {tuple(round(b, 6) for b in bounds)})"
            f"; {_CRS_HINT}")
    win = Window(c0, r0, c1 - c0, r1 - r0)
    if win.width * win.height > _MAX_LABEL_PX:
        raise LabelError(f"the polygons span {win.width}×{win.height} pixels; crop the raster to the labelled "
                               "area (at most 400 Mpx)")
    wt = rasterio.windows.transform(win, transform)
    groups = rasterize(((g, i) for i, g in enumerate(geoms)), out_shape=(win.height, win.width), transform=wt,
                       fill=-1, dtype="int32")
    classes = class_table(labels.values, labels.names)
    index = {c.value: c.index for c in classes}
    group_class = {i: index[_plain(v)] for i, v in enumerate(labels.values)}
    lut = np.array([group_class[i] for i in range(len(geoms))] + [IGNORE], np.uint8)
    grid = LabelGrid(lut[groups], groups, win, classes, group_class, where)
    counts = grid.pixel_counts()
    if not counts.any():
        raise LabelError(f"the polygons of {where} cover no pixel centre of the raster; draw larger polygons "
                               "(at least a few pixels each)")
    _check_classes(grid, counts, "polygons")
    return grid


def _plain(v: Any) -> Any:
    """A class value as plain JSON-able Python (numpy scalars unwrapped, integral floats as int)."""
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _crs_name(crs: Any) -> str:
    if crs is None:
        return "no CRS"
    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else (c.to_string()[:60] or "an unnamed CRS")


def _check_classes(grid: LabelGrid, counts: np.ndarray, what: str) -> None:
    empty = [c.name for c in grid.classes if counts[c.index] == 0]
    if empty:
        raise LabelError(
            f"class(es) {empty} of {grid.source} cover no pixel centre inside the raster (their {what} are outside "
            f"it or smaller than a pixel); enlarge them or remove the class")
    if len(grid.classes) < 2:
        raise LabelError(f"{grid.source} holds a single class ({grid.classes[0].name!r}); a head needs at "
                               "least two (e.g. add polygons of the background)")


def _raster_grid(labels: LabelRaster, crs: Any, transform: Affine, shape: tuple[int, int]) -> LabelGrid:
    height, width = shape
    if height * width > _MAX_LABEL_PX:
        raise LabelError(f"the image grid is {width}×{height} pixels; crop it to the labelled area (at most "
                               "400 Mpx)")
    with rasterio.open(labels.path) as src:
        if not 1 <= labels.band <= src.count:
            raise LabelError(f"{labels.path} has {src.count} band(s); band {labels.band} does not exist")
        if src.crs is None and crs is not None:
            raise LabelError(f"the label raster {labels.path} has no CRS; assign it one (gdal_edit.py -a_srs)")
        nodata = src.nodatavals[labels.band - 1]
        with WarpedVRT(src, crs=crs or src.crs, transform=transform, width=width, height=height,
                       resampling=Resampling.nearest, nodata=nodata) as vrt:
            values = vrt.read(labels.band, masked=True)
    ignore = np.ma.getmaskarray(values) | np.isin(values.data, list(labels.ignore_values))
    if nodata is not None:
        ignore |= values.data == nodata
    present = np.unique(values.data[~ignore])
    if present.size == 0:
        raise LabelError(f"{labels.path} holds no labelled pixel over the image (check that both cover the "
                               "same area and the nodata/ignore values)")
    classes = class_table(list(present), labels.names)  # sorted as np.unique: class i is present[i]
    out = np.where(ignore, IGNORE, np.searchsorted(present, values.data)).astype(np.uint8)  # one pass, any K
    b = max(16, int(labels.block_px))
    groups = ((np.arange(height, dtype=np.int32) // b)[:, None] * ((width + b - 1) // b)
              + (np.arange(width, dtype=np.int32) // b)[None, :])
    groups[out == IGNORE] = -1
    grid = LabelGrid(out, groups, Window(0, 0, width, height), classes, {}, str(labels.path))
    _check_classes(grid, grid.pixel_counts(), "pixels")
    return grid


def label_grid(labels: Union[PolygonLabels, LabelRaster], crs: Any, transform: Affine,
               shape: tuple[int, int]) -> LabelGrid:
    """Burn or resample ``labels`` onto an image grid.

    Args:
        labels: :class:`PolygonLabels` or :class:`LabelRaster`.
        crs: The image grid's CRS (rasterio CRS, WKT or ``"EPSG:…"``).
        transform: The image grid's affine transform.
        shape: ``(height, width)`` of the image grid in pixels.

    Returns:
        :class:`LabelGrid` (polygons: the window covering them; raster: the whole grid).

    Raises:
        LabelError: Empty class values, no CRS, no overlap, a class without pixels, a single class, too
            many classes (each message names the fix).
    """
    if isinstance(labels, PolygonLabels):
        return _polygon_grid(labels, crs, transform, shape)
    if isinstance(labels, LabelRaster):
        return _raster_grid(labels, crs, transform, shape)
    raise TypeError(f"labels must be PolygonLabels or LabelRaster, got {type(labels).__name__}")
