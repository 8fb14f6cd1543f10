"""Class maps: the conventions every class raster of the engine follows, and their colours.

A class map is a uint8 GeoTIFF with classes ``0..k−1`` in band 1, :data:`NODATA_CLASS` (255) for nodata, a GDAL
colour table and a QGIS paletted style (``.qml``) beside it, so the classes show with the same colours and names in
QGIS, GDAL and any viewer. Used by k-means maps (:func:`engine.maps.cluster_raster`), segmentation
(:func:`engine.segmentation.segment_raster`) and the class tables of training labels.
"""

from __future__ import annotations

import colorsys
import re
from pathlib import Path
from typing import Optional, Sequence

from ..atomic import atomic_output
from ..errors import DependencyError

__all__ = ("NODATA_CLASS", "class_colors", "colors_for_names", "polygonize")

#: Value of nodata (and of unlabelled pixels in training labels) in uint8 class maps; classes are 0..254.
NODATA_CLASS = 255

# Colour-blind-friendly qualitative palette (Okabe–Ito + Tableau-like), extended by HSV steps beyond 16 classes.
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
]


def class_colors(k: int) -> list[tuple[int, int, int, int]]:
    """``k`` distinct RGBA colours ``(r, g, b, a)``, 0..255 (the palette first, then golden-ratio spaced hues)."""
    colors = []
    for i in range(k):
        if i < len(_PALETTE):
            h = _PALETTE[i].lstrip("#")
            colors.append((int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 255))
        else:
            r, g, b = colorsys.hsv_to_rgb(((i - len(_PALETTE)) * 0.618034) % 1.0, 0.65, 0.9)
            colors.append((int(r * 255), int(g * 255), int(b * 255), 255))
    return colors


#: Conventional colours of common land-cover words, matched as whole words of a class name (case-insensitive; the
#: first entry that matches wins). After the legends of ESA WorldCover and Dynamic World: water blue, trees dark
#: green, grass and other vegetation light green, crops yellow, built-up red, bare ground tan, snow and ice white.
LAND_COVER_COLORS = (
    (("water", "river", "rivers", "lake", "lakes", "sea", "ocean", "flood", "flooded", "reservoir"), "#1f78b4"),
    (("wetland", "wetlands", "marsh", "swamp", "mangrove", "mangroves", "bog"), "#2bb3a3"),
    (("forest", "forests", "tree", "trees", "wood", "woods", "woodland"), "#1b7837"),
    (("shrub", "shrubs", "shrubland", "scrub", "bush"), "#a6a33b"),
    (("grass", "grassland", "meadow", "pasture", "vegetation", "vegetated", "green", "park"), "#7fc97f"),
    (("crop", "crops", "cropland", "agriculture", "agricultural", "field", "fields", "farmland"), "#f0d24a"),
    (("built", "urban", "building", "buildings", "settlement", "settlements", "city", "impervious", "road", "roads",
      "paved", "artificial"), "#d62728"),
    (("bare", "soil", "sand", "desert", "rock", "rocks", "barren", "quarry"), "#b5926b"),
    (("snow", "ice", "glacier"), "#e8f4fa"),
    (("cloud", "clouds"), "#cccccc"),
    (("shadow", "shadows"), "#3a3a3a"),
)


def colors_for_names(names: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """RGBA colours for classes named ``names``: land-cover words first, then a qualitative palette.

    A name with a land-cover word gets its conventional colour (:data:`LAND_COVER_COLORS`: water blue, forest green,
    built-up red…); the other classes get the palette of :func:`class_colors`, skipping colours close to those given.

    Args:
        names: Class names, index order.

    Returns:
        One ``(r, g, b, 255)`` per name.
    """
    def rgb(hex_color: str) -> tuple[int, int, int, int]:
        h = hex_color.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 255

    chosen: list = [None] * len(names)
    for i, name in enumerate(names):
        words = set(re.findall(r"[a-z]+", str(name).lower()))
        for keys, color in LAND_COVER_COLORS:
            if words & set(keys):
                chosen[i] = rgb(color)
                break
    taken = [c for c in chosen if c is not None]
    spare = iter(c for c in class_colors(len(names) + len(_PALETTE))
                 if all(sum((a - b) ** 2 for a, b in zip(c[:3], t[:3])) > 90 ** 2 for t in taken))
    return [c if c is not None else next(spare) for c in chosen]


def polygonize(classes: Path, output: Path, names: tuple[str, ...], keep: Optional[set[int]] = None) -> Path:
    """Polygons of a class GeoTIFF into a GeoPackage layer ``classes``, written atomically.

    GDAL ``Polygonize``, 8-connected, nodata excluded; fields ``class`` (index) and ``name``; with ``keep``, only the
    polygons of those classes (a change mask keeps its changed class).

    Raises:
        DependencyError: GDAL's Python bindings are missing.
    """
    try:
        from osgeo import gdal, ogr
    except ImportError as exc:  # pragma: no cover - present with QGIS and python3-gdal
        raise DependencyError("polygon output needs GDAL's Python bindings (osgeo): install python3-gdal") from exc
    gdal.UseExceptions()
    with atomic_output(output, sidecars=()) as tmp:
        src = gdal.Open(str(classes))
        band = src.GetRasterBand(1)
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp))
        layer = ds.CreateLayer("classes", srs=src.GetSpatialRef(), geom_type=ogr.wkbPolygon)
        layer.CreateField(ogr.FieldDefn("class", ogr.OFTInteger))
        layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
        gdal.Polygonize(band, band.GetMaskBand(), layer, 0, ["8CONNECTED=8"])
        layer.StartTransaction()
        for feature in list(layer):
            if keep is not None and feature.GetField("class") not in keep:
                layer.DeleteFeature(feature.GetFID())
                continue
            feature.SetField("name", names[feature.GetField("class")])
            layer.SetFeature(feature)
        layer.CommitTransaction()
        ds = layer = band = src = None  # close (GDAL flushes on release)
    return output
