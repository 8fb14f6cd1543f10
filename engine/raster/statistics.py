"""Normalisation statistics of a raster's bands: the sensor preset's where known, else estimated from a sample.

A sample is up to 16 windows of 256 px spread over the raster (reading a few windows decodes only their blocks,
unlike a decimated read of the whole file); when none of them holds data, a decimated read of the whole raster
settles whether the raster is empty. Estimation itself is :func:`engine.spectral.estimate_stats`.

The same sample checks that the raster can be what its statistics say (:func:`band_statistics` is where every pass of
a model settles its bands and statistics, so embeddings, clustering, similarity, head fitting and segmentation all
get these checks). Refused, with :class:`engine.errors.InputRasterError`:

- complex values (SAR SLC; :func:`engine.raster.readers.refuse_complex`);
- a raster whose every band is constant over its valid pixels: there is nothing to map;
- values that cannot be in the units of the statistics they would be normalised with (a sensor preset's pretraining
  p1/p99 in raw file units, or statistics given by the caller such as a head card's). Only what is clearly wrong is
  refused, judged over the bands that carry such statistics:

  * an integer dtype that holds less than half of the p1–p99 range of every band (an 8-bit raster described as
    Sentinel-2 reflectance ×10000; unsigned integers for dB);
  * a raster whose sampled magnitude ``max(|p1|, |p99|)`` is below 1/20 (:data:`_FAR`) or above 20 times the
    statistics' in every band (reflectance 0–1 for reflectance ×10000, linear backscatter for dB), or on the other
    side of zero in every band (p1 ≥ 0 for statistics that are all negative, such as dB, and the reverse). Real
    rasters range from 0.05 (Sentinel-2 L2A B01 of a dark BigEarthNet patch) to 3.5 (a snow patch) per band, so one
    band far off is not enough: a scene of water alone has SWIR at a few hundredths of the preset's.

  A median ratio outside [1/8, 8] (:data:`_NEAR`) is logged as a warning.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import numpy as np
from rasterio.windows import Window

from ..errors import InputRasterError
from ..spectral import BandMapping, BandStats, estimate_stats, get_sensor
from .readers import read_valid, refuse_complex

__all__ = ("band_statistics",)

log = logging.getLogger(__name__)

#: Pixels read (at most) to estimate statistics of bands without preset statistics.
_STATS_SAMPLE_PX = 1_000_000
#: Refused: the raster's magnitude is below 1/_FAR or above _FAR times the statistics' in every band.
_FAR = 20.0
#: Warned: the median ratio of the magnitudes is below 1/_NEAR or above _NEAR.
_NEAR = 8.0
#: Refused: an integer dtype holds less than this fraction of every band's p1–p99 range.
_MIN_HELD = 0.5
#: How the statistics' own option is named in messages (the command line, QGIS).
_SENSOR_OPTION = "--sensor / Sensor preset in QGIS"


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


def _decimated_shape(dataset: Any) -> tuple[int, int]:
    factor = max(1.0, math.sqrt(dataset.width * dataset.height / _STATS_SAMPLE_PX))
    return max(1, int(dataset.height / factor)), max(1, int(dataset.width / factor))


def band_statistics(
    dataset: Any, mapping: BandMapping, stats: Optional[Sequence[BandStats]] = None
) -> list[BandStats]:
    """Statistics for every mapped band: the preset's where known, else estimated from a sample of the raster.

    The sample is up to 16 windows of 256 px spread over the raster (:func:`_sample_windows`); when none of them holds
    data, a decimated read of the whole raster settles whether the raster is empty. The sample is also checked against
    the statistics (see the module docstring).

    Args:
        dataset: Open rasterio dataset.
        mapping: Its bands (:func:`engine.spectral.resolve_bands`).
        stats: Statistics fixed by the caller (e.g. a head card's), one per mapped band: returned as they are, after
            the raster is checked against them.

    Raises:
        InputRasterError: The raster holds complex values, no valid pixel, only constant bands, or values that
            cannot be in the units of the statistics (the message says what was found, why it matters and the fix).
    """
    indexes = list(mapping.indexes)
    refuse_complex(dataset, indexes)
    values, valid = _read_sample(dataset, indexes, _sample_windows(dataset))
    whole = dataset.width * dataset.height <= _STATS_SAMPLE_PX  # the sample is the whole raster
    if not valid.any():
        values, valid = _read_sample(dataset, indexes, [_decimated_shape(dataset)])
        whole = True
    if not valid.any():
        raise InputRasterError(
            f"{dataset.name}: every pixel is nodata (or NaN) in the selected bands; nothing to embed. "
            "Check the nodata value (gdalinfo) or choose other bands."
        )
    constant = _constant_values(values, valid)
    if constant is not None and not whole:
        # The windows may have missed the data: settle it on the whole raster.
        constant = _constant_values(*_read_sample(dataset, indexes, [_decimated_shape(dataset)]))
    if constant is not None:
        shown = ", ".join(f"{v:g}" for v in constant[:6]) + (", …" if len(constant) > 6 else "")
        what = f"value {constant[0]:g}" if len(set(constant)) == 1 else f"values {shown}"
        raise InputRasterError(
            f"every band of {dataset.name} is constant ({what}) over its valid pixels: there is nothing to map. "
            "Check the nodata value (gdalinfo) and the band selection, or use another raster."
        )
    if stats is not None:
        if len(stats) == len(mapping.bands):
            _check_units(dataset, mapping, values, valid, list(stats))
        return list(stats)
    missing = [i for i, b in enumerate(mapping.bands) if b.stats is None]
    estimated = estimate_stats(values[missing], valid) if missing else []
    _check_units(dataset, mapping, values, valid, [b.stats for b in mapping.bands])
    return [
        band.stats if band.stats is not None else estimated[missing.index(i)] for i, band in enumerate(mapping.bands)
    ]


def _constant_values(values: np.ndarray, valid: np.ndarray) -> list[float] | None:
    """The value of each band when every band is constant over the valid pixels of the sample, else None."""
    mask = valid[:, 0]
    out = []
    for band in values[:, :, 0]:
        finite = band[mask].astype(np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0 or finite.min() != finite.max():
            return None
        out.append(float(finite[0]))
    return out


def _reference(stats: BandStats) -> tuple[str, str, str]:
    """``(what, unit, fix)`` of statistics in messages: a sensor preset's, or the caller's (a head card's)."""
    if stats.source.startswith("preset:"):
        sensor = get_sensor(stats.source.split(":", 1)[1])
        return (
            f"the sensor preset {sensor.id} ({_SENSOR_OPTION}): {sensor.value_unit}",
            sensor.value_unit,
            f"Choose the sensor preset that matches the raster, or rescale or convert the raster to "
            f"{sensor.value_unit} first",
        )
    return (
        f"the statistics it is normalised with ({stats.source})",
        "the units of those statistics",
        "Use a raster in the units of the data those statistics come from (for a head: its training raster)",
    )


def _check_units(
    dataset: Any, mapping: BandMapping, values: np.ndarray, valid: np.ndarray, stats: list[Optional[BandStats]]
) -> None:
    """Refuse values that cannot be in the units of ``stats`` (None: estimated here, not checked); warn when far."""
    mask = valid[:, 0]
    rows = []  # (raster band index, raster p1, raster p99, statistics)
    for i, (band, ref) in enumerate(zip(mapping.bands, stats)):
        if ref is None or ref.source == "raster":
            continue
        sample = values[i, :, 0][mask].astype(np.float64)
        sample = sample[np.isfinite(sample)]
        if sample.size:
            r1, r99 = np.percentile(sample, [1.0, 99.0])
            rows.append((band.index, float(r1), float(r99), ref))
    if not rows:
        return
    what, unit, fix = _reference(rows[0][3])
    ratios = [max(abs(r1), abs(r99)) / max(abs(s.p1), abs(s.p99)) for _, r1, r99, s in rows]
    found = f"{min(r[1] for r in rows):.4g} to {max(r[2] for r in rows):.4g}"
    expected = f"p1 to p99: {min(r[3].p1 for r in rows):.4g} to {max(r[3].p99 for r in rows):.4g}"
    why = "The model would see values far outside those it was pretrained on"
    dtypes = [np.dtype(dataset.dtypes[index - 1]) for index, *_ in rows]
    held = []
    for dt, (_, _, _, s) in zip(dtypes, rows):
        if dt.kind in "iu":
            info = np.iinfo(dt)
            held.append(max(0.0, min(float(info.max), s.p99) - max(float(info.min), s.p1)) / (s.p99 - s.p1))
    if len(held) == len(rows) and all(h < _MIN_HELD for h in held):
        info = np.iinfo(dtypes[0])
        raise InputRasterError(
            f"{dataset.name}: its bands are {', '.join(sorted({str(d) for d in dtypes}))} ({info.min} to {info.max}; "
            f"sampled p1 to p99: {found}), which cannot hold the values of {what}, {expected}. {why}. {fix}."
        )
    opposite = [(s.p99 < 0 <= r1) or (r99 < 0 <= s.p1) for _, r1, r99, s in rows]
    low, high = min(ratios), max(ratios)
    if high < 1 / _FAR or low > _FAR or all(opposite):
        if high < 1 / _FAR or low > _FAR:
            bound = f"below 1/{_FAR:g}" if high < 1 else f"above {_FAR:g}"
            how = f"{low:.2g}–{high:.2g} times the size ({bound} in every band) of those of"
        else:
            how = "on the other side of zero, in every band, from those of"
        raise InputRasterError(
            f"{dataset.name}: its sampled values (p1 to p99: {found}) are {how} {what}, {expected}. {why}. {fix}."
        )
    median = float(np.median(ratios))
    if median < 1 / _NEAR or median > _NEAR:
        log.warning(
            "%s: its sampled values (p1 to p99: %s) are %.2g times the size of those of %s, %s (median over %d "
            "band(s)); check that the raster is in %s", dataset.name, found, median, what, expected, len(rows), unit,
        )
