"""Normalisation statistics of a raster's bands: the sensor preset's where known, else estimated from a sample.

A sample is up to 16 windows of 256 px spread over the raster (reading a few windows decodes only their blocks,
unlike a decimated read of the whole file); when none of them holds data, a decimated read of the whole raster
settles whether the raster is empty. Estimation itself is :func:`engine.spectral.estimate_stats`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from rasterio.windows import Window

from ..errors import InputRasterError
from ..spectral import BandMapping, BandStats, estimate_stats
from .readers import read_valid

__all__ = ("band_statistics",)

#: Pixels read (at most) to estimate statistics of bands without preset statistics.
_STATS_SAMPLE_PX = 1_000_000


def _sample_windows(dataset: Any, budget_px: int = _STATS_SAMPLE_PX, size_px: int = 256) -> list[Window]:
    """A 4 × 4 grid of ``size_px`` windows spread over the raster (the whole raster when it is small).

    Reading a few windows decodes only their blocks, unlike a decimated read of the whole file.
    """
    if dataset.width * dataset.height <= budget_px:
        return [Window(0, 0, dataset.width, dataset.height)]
    n = max(1, min(4, int(math.sqrt(budget_px / size_px**2))))
    windows = []
    for i in range(n):
        for j in range(n):
            row = int((i + 0.5) * dataset.height / n - size_px / 2)
            col = int((j + 0.5) * dataset.width / n - size_px / 2)
            row, col = max(0, row), max(0, col)
            windows.append(Window(col, row, min(size_px, dataset.width - col), min(size_px, dataset.height - row)))
    return windows


def _read_sample(dataset: Any, indexes: list[int], windows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    values, valid = [], []
    for window in windows:
        if isinstance(window, Window):
            v, ok = read_valid(dataset, indexes, window)
        else:  # an out_shape for a decimated read of the whole raster
            v, ok = read_valid(dataset, indexes, out_shape=window)
        values.append(v.reshape(len(indexes), -1))
        valid.append(ok.reshape(-1))
    return np.concatenate(values, axis=1)[:, :, None], np.concatenate(valid)[:, None]


def band_statistics(dataset: Any, mapping: BandMapping) -> list[BandStats]:
    """Statistics for every mapped band: the preset's where known, else estimated from a sample of the raster.

    The sample is up to 16 windows of 256 px spread over the raster (:func:`_sample_windows`); when none of them holds
    data, a decimated read of the whole raster settles whether the raster is empty.

    Raises:
        InputRasterError: The raster holds no valid pixel.
    """
    indexes = list(mapping.indexes)
    values, valid = _read_sample(dataset, indexes, _sample_windows(dataset))
    if not valid.any():
        factor = max(1.0, math.sqrt(dataset.width * dataset.height / _STATS_SAMPLE_PX))
        shape = (max(1, int(dataset.height / factor)), max(1, int(dataset.width / factor)))
        values, valid = _read_sample(dataset, indexes, [shape])
    if not valid.any():
        raise InputRasterError(
            f"{dataset.name}: every pixel is nodata (or NaN) in the selected bands; nothing to embed. "
            "Check the nodata value (gdalinfo) or choose other bands."
        )
    missing = [i for i, b in enumerate(mapping.bands) if b.stats is None]
    estimated = estimate_stats(values[missing], valid) if missing else []
    return [
        band.stats if band.stats is not None else estimated[missing.index(i)] for i, band in enumerate(mapping.bands)
    ]
