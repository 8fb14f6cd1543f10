"""Raster reading shared by inference, clustering, pixel outputs, quicklooks and training.

One definition of a *valid pixel* is used everywhere: every requested band's GDAL mask is non-zero (the nodata value,
an internal mask or an alpha band says the pixel holds data) and, for floating-point rasters, every value is finite.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from ..errors import InputRasterError

__all__ = ("gdal_cache_bytes", "open_raster", "pixel_size_m", "read_valid", "refuse_complex")


def open_raster(source: Union[str, Path]) -> Any:
    """Open a raster with rasterio.

    Raises:
        InputRasterError: The file is missing, truncated or not a GDAL raster, or it holds complex values (the
            message names it and the fix, :func:`refuse_complex`).
    """
    try:
        dataset = rasterio.open(source)
    except RasterioIOError as exc:
        raise InputRasterError(f"cannot read raster {source}: {exc}. Is it a valid GeoTIFF/GDAL raster?") from exc
    try:
        refuse_complex(dataset)
        _refuse_missing_sources(dataset)
    except InputRasterError:
        dataset.close()
        raise
    return dataset


def _refuse_missing_sources(dataset: Any) -> None:
    """Name the missing source files of a VRT (GDAL opens it anyway; reading would fail, or yield nodata, later)."""
    if dataset.driver != "VRT":
        return
    missing = [f for f in dataset.files[1:] if not f.startswith("/vsi") and not Path(f).exists()]
    if missing:
        raise InputRasterError(
            f"the VRT {dataset.name} refers to {len(missing)} missing source file(s): {', '.join(missing[:3])}"
            f"{' …' if len(missing) > 3 else ''}; restore them, or rebuild the VRT (gdalbuildvrt, or Raster ▸ "
            "Miscellaneous ▸ Build Virtual Raster in QGIS)"
        )


def refuse_complex(dataset: Any, indexes: Optional[Sequence[int]] = None) -> None:
    """Refuse a raster of complex values (SAR SLC: ``complex64``, ``complex_int16``…): the models take real values.

    Reading it as real would keep the real part and silently drop the imaginary part (and the phase with it).

    Args:
        dataset: Open rasterio dataset.
        indexes: 1-based bands to check (None: every band).

    Raises:
        InputRasterError: A checked band is complex; the message names the dtype and how to convert it.
    """
    dtypes = list(dataset.dtypes) if indexes is None else [dataset.dtypes[i - 1] for i in indexes]
    found = sorted({str(d) for d in dtypes if "complex" in str(d).lower()})
    if found:
        raise InputRasterError(
            f"{dataset.name} holds complex values ({', '.join(found)}, e.g. a SAR SLC product): the model takes real "
            "values, and reading them would silently drop the imaginary part. Convert the raster to amplitude or "
            "to intensity in dB first, e.g. gdal_calc.py -A input.tif --outfile input_db.tif --type=Float32 "
            '--calc="10*log10(abs(A)**2)" (or the QGIS Raster calculator / SNAP), and use that raster.'
        )


def read_valid(
    dataset: Any,
    indexes: Sequence[int],
    window: Optional[Window] = None,
    out_shape: Optional[tuple[int, int]] = None,
    resampling: Resampling = Resampling.nearest,
) -> tuple[np.ndarray, np.ndarray]:
    """Read bands and their joint validity.

    Args:
        dataset: Open rasterio dataset (or ``WarpedVRT``).
        indexes: 1-based band indexes.
        window: Window to read (None = whole raster).
        out_shape: ``(height, width)`` to resample to (None = native size of the window).
        resampling: Resampling of the values when ``out_shape`` differs; masks always use nearest.

    Returns:
        ``(values [C, H, W] in the raster's dtype, valid [H, W] bool)``.

    Raises:
        InputRasterError: GDAL cannot read the window (e.g. a truncated file).
    """
    indexes = list(indexes)
    shape = None if out_shape is None else (len(indexes), *out_shape)
    try:
        values = dataset.read(indexes, window=window, out_shape=shape, resampling=resampling)
        masks = dataset.read_masks(indexes, window=window, out_shape=shape, resampling=Resampling.nearest)
    except RasterioIOError as exc:
        where = f"{window} of " if window is not None else ""
        raise InputRasterError(f"cannot read {where}{dataset.name}: {exc}. Is the file complete?") from exc
    valid = (masks > 0).all(axis=0)
    if values.dtype.kind == "f":
        valid &= np.isfinite(values).all(axis=0)
    return values, valid


def pixel_size_m(dataset: Any) -> Optional[float]:
    """Native pixel size (GSD) of an open raster in metres: the mean of its x and y sizes; None without a CRS.

    For a geographic CRS a degree is 111 320 m of latitude and 111 320 · cos(latitude) m of longitude at the raster's
    centre.
    """
    if dataset.crs is None:
        return None
    rx, ry = abs(dataset.transform.a), abs(dataset.transform.e)
    if dataset.crs.is_geographic:
        lat = math.radians((dataset.bounds.top + dataset.bounds.bottom) / 2)
        return float((rx * math.cos(lat) + ry) / 2 * 111_320.0)
    factor = dataset.crs.linear_units_factor[1] if dataset.crs.linear_units_factor else 1.0
    return float((rx + ry) / 2 * factor)


def gdal_cache_bytes(dataset: Any) -> int:
    """GDAL block-cache size for reading ``dataset`` tile row by tile row: three block rows, at least 32 MB.

    GDAL's default (5 % of RAM) keeps every block read so far, so memory would grow with the raster's height; tiles
    are read row band by row band, so a few block rows suffice. (Passed to GDAL in bytes: rasterio hands small
    ``GDAL_CACHEMAX`` values over as bytes, not MB.)
    """
    block_h = dataset.block_shapes[0][0] if dataset.block_shapes else 1
    itemsize = max(np.dtype(d).itemsize for d in dataset.dtypes)
    block_row = dataset.width * max(block_h, 1) * dataset.count * itemsize
    return int(max(32 * 1024 * 1024, 3 * block_row))
