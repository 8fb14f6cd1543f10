"""PNG quicklooks of inputs and outputs (decimated to at most ``max_size_px`` on the long side).

- :func:`class_quicklook`: a class raster coloured with its colour table;
- :func:`rgb_quicklook`: three bands of an input raster with a 2–98 % percentile stretch;
- :func:`embedding_quicklook`: the first three principal components of an embedding raster as RGB.

PNG files are written through rasterio's PNG driver, atomically.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from .errors import InputRasterError
from .readers import read_valid

__all__ = ("class_quicklook", "embedding_quicklook", "rgb_quicklook")

PathLike = Union[str, Path]


def _shape(ds: rasterio.io.DatasetReader, max_size_px: int) -> tuple[int, int]:
    f = max(1.0, max(ds.width, ds.height) / max_size_px)
    return max(1, round(ds.height / f)), max(1, round(ds.width / f))


def _write_png(path: PathLike, rgb: np.ndarray) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part-{os.getpid()}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a quicklook is a picture, not a map
        with rasterio.open(tmp, "w", driver="PNG", width=rgb.shape[2], height=rgb.shape[1], count=3,
                           dtype="uint8") as dst:
            dst.write(rgb)
    os.replace(tmp, path)
    aux = tmp.with_name(tmp.name + ".aux.xml")
    if aux.exists():
        aux.unlink()
    return path


def _stretch(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.zeros(a.shape, np.uint8)
    for i in range(a.shape[0]):
        v = a[i][valid]
        if v.size == 0:
            continue
        lo, hi = np.percentile(v, [2, 98])
        out[i] = np.clip((a[i] - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
    out[:, ~valid] = 0
    return out


def class_quicklook(classes: PathLike, png: PathLike, max_size_px: int = 1024) -> Path:
    """Colour a class GeoTIFF with its colour table (nodata black) and save it as PNG."""
    with rasterio.open(classes) as ds:
        labels = ds.read(1, out_shape=_shape(ds, max_size_px), resampling=Resampling.nearest)
        cmap = ds.colormap(1)
    lut = np.zeros((256, 3), np.uint8)
    for value, color in cmap.items():
        lut[value] = color[:3]
    lut[255] = 0
    return _write_png(png, lut[labels].transpose(2, 0, 1))


def rgb_quicklook(source: PathLike, png: PathLike, bands: Sequence[int], max_size_px: int = 1024) -> Path:
    """Stretch three bands (1-based indexes, red/green/blue order) of a raster and save them as PNG."""
    with rasterio.open(source) as ds:
        data, valid = read_valid(ds, bands, out_shape=_shape(ds, max_size_px), resampling=Resampling.average)
    return _write_png(png, _stretch(data.astype(np.float32), valid))


def embedding_quicklook(embeddings: PathLike, png: PathLike, max_size_px: int = 1024) -> Path:
    """Project an embedding raster on its first three principal components and save them as an RGB PNG.

    The components are :func:`engine.pca.principal_components` (fitted on a spread sample of the full-resolution
    cells); a raster with fewer than 2 valid cells gives a black picture.
    """
    from .pca import principal_components, project

    with rasterio.open(embeddings) as ds:
        data = ds.read(out_shape=(ds.count, *_shape(ds, max_size_px)), resampling=Resampling.nearest)
        try:
            mean, components = principal_components(ds, min(3, ds.count))
        except InputRasterError:
            components = None
    rgb = np.zeros((3, *data.shape[1:]), np.float32)
    if components is not None:
        rgb[: len(components)] = project(data, mean, components)
    return _write_png(png, _stretch(np.nan_to_num(rgb), np.isfinite(data).all(axis=0)))
