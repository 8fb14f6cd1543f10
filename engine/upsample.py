"""Embeddings at pixel resolution: bilinear interpolation of the patch-grid raster onto the input's pixel grid.

The patch-grid raster (:func:`engine.inference.embed_raster`) holds one embedding per cell (``patch / scale`` native
pixels). A native pixel's embedding is interpolated bilinearly from the four nearest cell centres, located through
the two rasters' georeferencing. NaN (nodata) cells are excluded by normalised interpolation
(``Σ w·v·m / Σ w·m`` with m the validity mask), so nodata never bleeds into valid pixels; pixels with no valid
neighbouring cell, or nodata in the input itself, come out as NaN.

Work proceeds in windows of the *input* grid, so memory is ``D × window pixels`` whatever the raster size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from .writers import GeoTiffWriter, gtiff_profile

__all__ = ("GridInterpolator", "iter_windows", "write_pixel_embeddings")


def iter_windows(height: int, width: int, rows: int, cols: int) -> Iterator[Window]:
    """Windows of at most ``rows × cols`` pixels covering a raster, row-major (rows of windows top to bottom)."""
    for r in range(0, height, rows):
        for c in range(0, width, cols):
            yield Window(c, r, min(cols, width - c), min(rows, height - r))


def _axis_weights(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    coords = np.clip(coords, 0.0, size - 1.0)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    return lo, hi, (coords - lo).astype(np.float32)


class GridInterpolator:
    """Samples a patch-grid embedding raster at the pixel centres of a target grid.

    Args:
        grid: Open rasterio dataset of the embedding raster (NaN = nodata).
        target_transform: Affine transform of the target pixel grid (same CRS, north-up).

    Raises:
        ValueError: Rotated/sheared transforms (not supported).
    """

    def __init__(self, grid: Any, target_transform: Affine) -> None:
        self.grid = grid
        m = ~grid.transform * target_transform  # target pixel (col, row) → grid (col, row)
        if abs(m.b) > 1e-9 or abs(m.d) > 1e-9:
            raise ValueError("rotated or sheared rasters are not supported for pixel-resolution output")
        self.m = m

    def sample(self, window: Window) -> np.ndarray:
        """Embeddings at the pixel centres of ``window`` of the target grid.

        Returns:
            ``[D, window.height, window.width]`` float32, NaN where no valid cell is near.
        """
        m = self.m
        cols = (np.arange(window.col_off, window.col_off + window.width) + 0.5) * m.a + m.c - 0.5
        rows = (np.arange(window.row_off, window.row_off + window.height) + 0.5) * m.e + m.f - 0.5
        r0 = max(0, int(math.floor(rows.min())))
        r1 = min(self.grid.height, int(math.floor(rows.max())) + 2)
        c0 = max(0, int(math.floor(cols.min())))
        c1 = min(self.grid.width, int(math.floor(cols.max())) + 2)
        if r0 >= r1 or c0 >= c1:
            return np.full((self.grid.count, int(window.height), int(window.width)), np.nan, np.float32)
        cells = self.grid.read(window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32)
        valid = np.isfinite(cells).all(axis=0).astype(np.float32)
        cells = np.where(valid[None] > 0, cells, 0.0)
        rlo, rhi, rt = _axis_weights(rows - r0, r1 - r0)
        clo, chi, ct = _axis_weights(cols - c0, c1 - c0)

        def interp(a: np.ndarray) -> np.ndarray:
            a = a[..., rlo, :] * (1 - rt)[:, None] + a[..., rhi, :] * rt[:, None]
            return a[..., clo] * (1 - ct) + a[..., chi] * ct

        weight = interp(valid)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = interp(cells) / weight
        out[:, weight < 1e-6] = np.nan
        return out.astype(np.float32, copy=False)


def write_pixel_embeddings(
    source: Union[str, Path], embeddings: Union[str, Path], output: Union[str, Path], output_dtype: str = "float32"
) -> Path:
    """Write embeddings at the input's pixel resolution (same grid, CRS and size as ``source``).

    Args:
        source: The raster the embeddings were computed from (its grid and nodata masks are used).
        embeddings: Patch-grid embedding raster of ``source``.
        output: Destination GeoTIFF (D bands; ``D × height × width`` values — can be large).
        output_dtype: ``"float32"`` or ``"float16"``.

    Returns:
        ``output``.
    """
    import json

    with rasterio.open(source) as src, rasterio.open(embeddings) as grid:
        interp = GridInterpolator(grid, src.transform)
        recorded = grid.tags().get("MSFM_BAND_INDEXES")
        indexes = json.loads(recorded) if recorded else list(range(1, src.count + 1))
        profile = gtiff_profile(
            width=src.width, height=src.height, count=grid.count, dtype=output_dtype,
            crs=src.crs, transform=src.transform, nodata=float("nan"),
        )
        tags = dict(grid.tags(), MSFM_KIND="embeddings-pixel")
        cols = max(256, (1 << 24) // (grid.count * 16) // 256 * 256)
        with GeoTiffWriter(Path(output), profile, list(grid.descriptions), tags) as writer:
            for row in range(0, src.height, 16):
                h = min(16, src.height - row)
                out = np.empty((grid.count, h, src.width), np.float32)
                for w in iter_windows(h, src.width, h, cols):
                    win = Window(w.col_off, row, w.width, h)
                    block = interp.sample(win)
                    block[:, ~(src.read_masks(indexes, window=win) > 0).all(axis=0)] = np.nan
                    out[:, :, int(w.col_off) : int(w.col_off + w.width)] = block
                writer.write_rows(out)
    return Path(output)
