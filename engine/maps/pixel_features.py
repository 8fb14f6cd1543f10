"""Per-pixel clustering features: the embedding interpolated at the pixel ⊕ the pixel's own weighted spectra.

Embedding k-means at pixel resolution classifies cell embeddings (80 m for Sentinel-2 at scale 2), so a class
boundary can only be as sharp as the upsampling makes it and a target that one spectral threshold defines (open
water) is often found as well by k-means on the raw bands. :class:`PixelFeatures` gives every input pixel the vector

``f = [ e / ‖e‖ ,  w · z / √C ]``  (D + C values)

where e is the embedding interpolated bilinearly at the pixel centre (:class:`~engine.maps.upsample.GridInterpolator`),
z the pixel's C bands normalised with the statistics recorded in the embedding raster (the bands the embeddings were
computed from, :func:`~engine.maps.upsample.source_bands`, through :func:`engine.spectral.normalize`, as the guided
upsampler does) and w the spectral weight. The embedding part has unit length; z holds C values of about unit
variance (z-scores of the pretraining statistics), so ``‖z / √C‖² ≈ 1`` and w = 1 gives the spectra the same total
weight as the embedding in the squared Euclidean distance k-means minimises; w = 0.5 a quarter, w = 2 four times.

:meth:`PixelFeatures.sample` draws the spatially spread sample of *pixels* (a regular grid with a random offset, as
:func:`~engine.maps.clustering.sample_embeddings` does for cells) that k-means is fitted on;
:meth:`PixelFeatures.features` computes the features of any window of the input for prediction in streaming windows.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from ..callbacks import CancelFn, check_canceled
from ..errors import InputRasterError, SettingsError
from ..raster import Region, iter_windows, read_valid
from ..spectral import normalize
from .upsample import GridInterpolator, interpolation_cols, source_bands

__all__ = ("PixelFeatures",)


class PixelFeatures:
    """Features ``[l2-normalised embedding, w · z / √C]`` of the pixels of an input raster (module docstring).

    Args:
        grid: Open patch-grid embedding raster of ``source`` (D float bands, NaN = nodata; it must record the
            normalisation statistics, tag ``MSFM_STATS``, as every embedding raster written by
            :func:`engine.maps.embed_raster` does).
        source: Open input raster (same CRS, north-up): its pixel grid is the features' grid.
        spectral_weight: w ≥ 0, the weight of the spectra (0 gives the embedding part and zeros).

    Attributes:
        dim: Feature length D + C.
        spectral_weight: w.
        indexes: 1-based bands of ``source`` that make up z (those the embeddings were computed from).

    Raises:
        SettingsError: ``spectral_weight`` negative or not finite.
        InputRasterError: The embedding raster records no normalisation statistics (recompute it with
            ``msfm embed``), or its CRS differs from the source's.
    """

    def __init__(self, grid: Any, source: Any, spectral_weight: float) -> None:
        if not (math.isfinite(spectral_weight) and spectral_weight >= 0):
            raise SettingsError(f"spectral_weight must be a finite number ≥ 0, got {spectral_weight}")
        if grid.crs != source.crs:
            raise InputRasterError(
                f"the embeddings {grid.name} (CRS {grid.crs}) and the raster {source.name} (CRS {source.crs}) "
                "differ in CRS; use the embeddings computed from this raster"
            )
        indexes, stats = source_bands(grid, source)
        if stats is None:
            raise InputRasterError(
                f"{grid.name} records no normalisation statistics (tag MSFM_STATS), which clustering with spectra "
                "needs; recompute the embeddings with `msfm embed`, or use spectral_weight 0"
            )
        self.grid, self.source, self.indexes, self.stats = grid, source, indexes, stats
        self.interp = GridInterpolator(grid, source.transform)
        self.dim = grid.count + len(indexes)
        self.spectral_weight = float(spectral_weight)
        self._scale = np.float32(spectral_weight / math.sqrt(len(indexes)))

    def features(self, window: Window) -> np.ndarray:
        """Features of the pixels of ``window`` of the source grid.

        Args:
            window: Integer window of the source.

        Returns:
            ``[D + C, window.height, window.width]`` float32; NaN for pixels that are nodata in the input (any of
            :attr:`indexes`) or have no valid embedding cell nearby.
        """
        emb = self.interp.sample(window)  # [D, h, w], NaN where no valid cell is near
        raw, valid = read_valid(self.source, self.indexes, window)
        spectra = normalize(raw, self.stats) * self._scale
        norm = np.sqrt((emb * emb).sum(axis=0, keepdims=True))
        with np.errstate(invalid="ignore", divide="ignore"):
            emb = emb / np.maximum(norm, 1e-12)
        out = np.concatenate([emb, spectra.astype(np.float32, copy=False)])
        out[:, ~(valid & np.isfinite(out).all(axis=0))] = np.nan
        return out

    def window_cols(self) -> int:
        """Columns per 16-row window that keep one :meth:`features` call near 64 MB."""
        return interpolation_cols(self.dim)

    def sample(
        self,
        target: Window,
        max_samples: int,
        seed: int,
        region: Optional[Region] = None,
        is_canceled: Optional[CancelFn] = None,
    ) -> np.ndarray:
        """Spatially spread sample of valid pixel features inside ``target``.

        Every s-th pixel of every s-th row, with ``s = ⌈√(pixels / max_samples)⌉`` and a random offset in
        ``0..s−1`` along both axes, so every part of the window is represented and at most about ``max_samples``
        pixels are drawn (fewer where pixels are nodata or outside the region's polygons).

        Args:
            target: Window of the source to sample (:func:`~engine.maps.upsample.pixel_window`).
            max_samples: Upper bound of the grid's size.
            seed: Seed of the offset.
            region: Optional region; pixels whose centre lies outside its polygons are not sampled.
            is_canceled: Polled once per sampled row.

        Returns:
            ``[N, D + C]`` float32 features (no NaN).

        Raises:
            engine.errors.InferenceCancelled: ``is_canceled`` returned True.
        """
        height, width = int(target.height), int(target.width)
        step = max(1, math.ceil(math.sqrt(height * width / max(1, max_samples))))
        r_off, c_off = (int(v) for v in np.random.default_rng(seed).integers(0, step, size=2))
        r_off, c_off = min(r_off, height - 1), min(c_off, width - 1)
        out = []
        for row in range(int(target.row_off) + r_off, int(target.row_off) + height, step):
            check_canceled(is_canceled, "while sampling pixels for k-means")
            for part in iter_windows(1, width, 1, 16 * self.window_cols()):
                win = Window(int(target.col_off + part.col_off), row, int(part.width), 1)
                feats = self.features(win)[:, 0, :]
                keep = (np.arange(int(part.col_off), int(part.col_off + part.width)) - c_off) % step == 0
                inside = region.pixel_mask(window_transform(win, self.source.transform), (1, int(win.width))) \
                    if region else None
                if inside is not None:
                    keep &= inside[0]
                vec = feats[:, keep].T
                out.append(vec[np.isfinite(vec).all(axis=1)])
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
