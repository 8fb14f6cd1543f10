"""Raster layer: reading, tiling, blending, regions, writing and styling rasters; nothing here knows a model.

- :mod:`~engine.raster.readers` — opening rasters and reading bands with their validity (one definition of a valid
  pixel), GDAL's block cache;
- :mod:`~engine.raster.statistics` — normalisation statistics of a raster's bands (preset or estimated);
- :mod:`~engine.raster.tile_reader` — :class:`RasterReader`, normalised tiles through a scaled/windowed view, and the
  prefetching batch loop that skips tiles without a valid pixel;
- :mod:`~engine.raster.tiling` — the tile grid on the patch grid, the pre-flight estimate and tile limit, and
  windows covering a raster;
- :mod:`~engine.raster.blending` — seam-free blending of overlapping tiles, streamed row band by row band;
- :mod:`~engine.raster.region` — processing regions (bounds and/or polygons);
- :mod:`~engine.raster.writers` — the atomic, row-ordered GeoTIFF writer and the output profile;
- :mod:`~engine.raster.class_maps` — class-map conventions (nodata 255, colours, QGIS ``.qml``);
- :mod:`~engine.raster.quicklook` — PNG quicklooks.
"""

from __future__ import annotations

from .blending import RowBlender, window_weights
from .class_maps import NODATA_CLASS, class_colors, colors_for_names, polygonize
from .qml import read_qml_labels, write_qml, write_ramp_qml
from .quicklook import check_png, class_quicklook, decimated_shape, rgb_quicklook, stretch, write_png
from .readers import gdal_cache_bytes, open_raster, pixel_size_m, read_valid
from .region import Region, as_geometry
from .resample import RowAreaResampler
from .statistics import band_statistics
from .tile_reader import RasterReader, TileBatches, batched, has_valid_pixel, prefetched
from .tiling import TileGrid, iter_windows, preflight, tile_grid
from .writers import GeoTiffWriter, gtiff_profile

__all__ = (
    "GeoTiffWriter",
    "NODATA_CLASS",
    "RasterReader",
    "Region",
    "RowAreaResampler",
    "RowBlender",
    "TileBatches",
    "TileGrid",
    "as_geometry",
    "band_statistics",
    "batched",
    "check_png",
    "class_colors",
    "class_quicklook",
    "colors_for_names",
    "decimated_shape",
    "gdal_cache_bytes",
    "gtiff_profile",
    "has_valid_pixel",
    "iter_windows",
    "open_raster",
    "pixel_size_m",
    "polygonize",
    "prefetched",
    "preflight",
    "read_qml_labels",
    "read_valid",
    "rgb_quicklook",
    "stretch",
    "tile_grid",
    "window_weights",
    "write_png",
    "write_qml",
    "write_ramp_qml",
)
