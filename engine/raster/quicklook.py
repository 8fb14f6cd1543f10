"""PNG quicklooks of inputs and outputs (decimated to at most ``max_size_px`` on the long side).

- :func:`class_quicklook`: a class raster coloured with its colour table;
- :func:`rgb_quicklook`: three bands of an input raster with a 2–98 % percentile stretch;
- :func:`write_png` / :func:`stretch`: the PNG writer and the stretch they share (the embedding quicklook,
  :func:`engine.maps.embedding_quicklook`, projects on principal components first).

PNG files are written through rasterio's PNG driver, atomically (:func:`engine.atomic.atomic_output`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from ..atomic import atomic_output
from ..outputs import check_outputs
from .class_maps import NODATA_CLASS
from .readers import read_valid

__all__ = ("check_png", "class_quicklook", "decimated_shape", "rgb_quicklook", "stretch", "write_png")

PathLike = Union[str, Path]


def decimated_shape(ds: rasterio.io.DatasetReader, max_size_px: int) -> tuple[int, int]:
    """``(height, width)`` of ``ds`` shrunk so that its long side is at most ``max_size_px`` (never enlarged)."""
    f = max(1.0, max(ds.width, ds.height) / max_size_px)
    return max(1, round(ds.height / f)), max(1, round(ds.width / f))


def write_png(path: PathLike, rgb: np.ndarray) -> Path:
    """Write ``rgb`` (``uint8 [3, H, W]``) as a PNG picture, atomically; returns ``path``."""
    path = Path(path)
    with warnings.catch_warnings(), atomic_output(path) as tmp:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a quicklook is a picture, not a map
        with rasterio.open(tmp, "w", driver="PNG", width=rgb.shape[2], height=rgb.shape[1], count=3,
                           dtype="uint8") as dst:
            dst.write(rgb)
    path.with_name(path.name + ".aux.xml").unlink(missing_ok=True)  # a picture needs no GDAL sidecar
    return path


def stretch(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2–98 % percentile stretch of each band of ``a`` (``[C, H, W]``) over ``valid`` pixels to uint8; invalid = 0."""
    out = np.zeros(a.shape, np.uint8)
    for i in range(a.shape[0]):
        v = a[i][valid]
        if v.size == 0:
            continue
        lo, hi = np.percentile(v, [2, 98])
        out[i] = np.clip((a[i] - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
    out[:, ~valid] = 0
    return out


def check_png(png: PathLike, inputs: Mapping[str, PathLike], overwrite: bool) -> None:
    """:func:`engine.outputs.check_outputs` for a quicklook ``png`` made from ``inputs`` (role → path).

    Raises:
        engine.errors.OutputError: As :func:`engine.outputs.check_outputs`.
    """
    check_outputs({"quicklook": png}, inputs, overwrite=overwrite, suffixes={"quicklook": (".png",)})


def class_quicklook(classes: PathLike, png: PathLike, max_size_px: int = 1024, *, overwrite: bool = False) -> Path:
    """Colour a class GeoTIFF with its colour table (nodata black) and save it as PNG.

    Raises:
        engine.errors.OutputError: As :func:`engine.outputs.check_outputs` (``png`` exists without ``overwrite``…).
    """
    check_png(png, {"class raster": classes}, overwrite)
    with rasterio.open(classes) as ds:
        labels = ds.read(1, out_shape=decimated_shape(ds, max_size_px), resampling=Resampling.nearest)
        cmap = ds.colormap(1)
    lut = np.zeros((256, 3), np.uint8)
    for value, color in cmap.items():
        lut[value] = color[:3]
    lut[NODATA_CLASS] = 0
    return write_png(png, lut[labels].transpose(2, 0, 1))


def rgb_quicklook(source: PathLike, png: PathLike, bands: Sequence[int], max_size_px: int = 1024, *,
                  overwrite: bool = False) -> Path:
    """Stretch three bands (1-based indexes, red/green/blue order) of a raster and save them as PNG.

    Raises:
        engine.errors.OutputError: As :func:`engine.outputs.check_outputs` (``png`` exists without ``overwrite``…).
    """
    check_png(png, {"input raster": source}, overwrite)
    with rasterio.open(source) as ds:
        data, valid = read_valid(ds, bands, out_shape=decimated_shape(ds, max_size_px), resampling=Resampling.average)
    return write_png(png, stretch(data.astype(np.float32), valid))
