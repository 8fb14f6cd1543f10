"""Per-band normalisation of raw raster values (docs/smarties.md §3–§4).

SMARTIES normalises each band in two steps: ``x ← clip((x − p1) / (p99 − p1), 0, 1)`` then
``x ← (x − mean) / std``, where p1/p99 are in raw file units (reflectance ×10⁴, 0–255, dB…) and mean/std are in the
clipped [0, 1] domain. Sensor presets carry the pretraining statistics; for other sensors the statistics are
estimated from the raster itself (:func:`estimate_stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputRasterError

__all__ = ("BandStats", "ChannelNorm", "estimate_stats", "normalize")


@dataclass(frozen=True)
class BandStats:
    """Normalisation statistics of one band.

    Attributes:
        p1: 1st percentile, raw file units.
        p99: 99th percentile, raw file units (> p1).
        mean: Mean of the clipped, [0, 1]-scaled values.
        std: Standard deviation of the clipped, [0, 1]-scaled values (> 0).
        source: Where they come from: ``"preset:<sensor id>"`` or ``"raster"``.
    """

    p1: float
    p99: float
    mean: float
    std: float
    source: str = "preset"

    def __post_init__(self) -> None:
        if not self.p99 > self.p1:
            raise ValueError(f"p99 ({self.p99}) must be greater than p1 ({self.p1})")
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")


def normalize(x: np.ndarray, stats: Sequence[BandStats]) -> np.ndarray:
    """Normalise raw values band by band (docs/smarties.md §4 step 3).

    Args:
        x: ``[C, H, W]`` or ``[B, C, H, W]`` raw values (any numeric dtype).
        stats: C :class:`BandStats`, in channel order.

    Returns:
        float32 array of the same shape.

    Raises:
        ValueError: The number of statistics differs from the channel count.
    """
    axis = x.ndim - 3
    if len(stats) != x.shape[axis]:
        raise ValueError(f"got {x.shape[axis]} bands but {len(stats)} band statistics")
    shape = [1] * x.ndim
    shape[axis] = len(stats)
    p1 = np.array([s.p1 for s in stats], np.float32).reshape(shape)
    p99 = np.array([s.p99 for s in stats], np.float32).reshape(shape)
    mean = np.array([s.mean for s in stats], np.float32).reshape(shape)
    std = np.array([s.std for s in stats], np.float32).reshape(shape)
    out = x.astype(np.float32)  # a new array: the steps below work in place (one copy instead of five)
    out -= p1
    out /= p99 - p1
    np.clip(out, 0.0, 1.0, out=out)
    out -= mean
    out /= std
    return out


def estimate_stats(values: np.ndarray, valid: np.ndarray) -> list[BandStats]:
    """Estimate :class:`BandStats` from a sample of a raster.

    Args:
        values: ``[C, H, W]`` raw values (typically a decimated read of the whole raster).
        valid: ``[H, W]`` bool, True where the pixel holds data (not nodata/NaN).

    Returns:
        C statistics with ``source="raster"``.

    Raises:
        InputRasterError: No valid pixel, or a band is constant over the valid pixels.
    """
    if not valid.any():
        raise InputRasterError("the raster has no valid pixel (everything is nodata/NaN); nothing to embed")
    stats = []
    for c in range(values.shape[0]):
        band = values[c][valid].astype(np.float64)
        band = band[np.isfinite(band)]
        p1, p99 = np.percentile(band, [1.0, 99.0])
        if not p99 > p1:
            lo, hi = float(band.min()), float(band.max())
            if not hi > lo:
                # A constant band carries no information; scale it to the middle of the range.
                p1, p99 = lo - 1.0, lo + 1.0
            else:
                p1, p99 = lo, hi
        scaled = np.clip((band - p1) / (p99 - p1), 0.0, 1.0)
        std = float(scaled.std())
        stats.append(BandStats(float(p1), float(p99), float(scaled.mean()), std if std > 1e-6 else 1.0, "raster"))
    return stats


@dataclass(frozen=True)
class ChannelNorm:
    """Per-channel normalisation a fixed-stem model expects after its inputs are scaled to [0, 1]: ``(x − mean) / std``.

    The engine's first step, ``clip((x − p1) / (p99 − p1), 0, 1)``, puts every band on [0, 1]; a model trained on
    images already on [0, 1] with fixed per-channel statistics (X-STARS: 8-bit PNGs divided by 255, then its
    ``mean``/``std``, docs/xstars.md §2, §5) declares them as its ``input_norm``, and they replace the bands' own
    mean/std (:func:`engine.models.model_statistics`).

    Attributes:
        mean: One mean per channel (red, green, blue), in [0, 1] units.
        std: One standard deviation per channel, > 0.
        source: Where the values come from (``"checkpoint args"``, ``"preset sentinel_landsat"``).

    Raises:
        ValueError: (on creation) different lengths, an empty list, or a non-finite or non-positive value.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need one value per channel, got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(float(s)) and float(s) > 0 for s in self.std):
            raise ValueError(f"std values must be finite and positive, got {list(self.std)}")
        if not all(math.isfinite(float(m)) for m in self.mean):
            raise ValueError(f"mean values must be finite, got {list(self.mean)}")
