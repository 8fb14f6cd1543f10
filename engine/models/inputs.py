"""From a raster to a model's input: the bands a model takes, the statistics it normalises with, the scale.

:func:`open_reader` is the first step of every pass of a model over a raster (embeddings, head fitting,
segmentation): it resolves the bands (:func:`engine.spectral.resolve_bands`), reduces them to a fixed-stem model's
families (:func:`engine.spectral.select_band_families`), takes the statistics (the preset's or the raster's,
:func:`engine.raster.band_statistics`, with the model's own mean/std where it declares them, :func:`model_statistics`)
and the scale, and returns the normalising tile reader (:class:`engine.raster.RasterReader`). The raster is checked
against the statistics it will be normalised with, given ones included (:func:`engine.raster.band_statistics`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Optional, Sequence

from ..errors import ModelMismatchError
from ..raster import RasterReader, Region, band_statistics
from ..settings import InferenceSettings
from ..spectral import BandMapping, BandStats, Overrides, resolve_bands, select_band_families
from .protocol import InputSpec

__all__ = ("model_statistics", "open_reader")

log = logging.getLogger(__name__)


def model_statistics(model: InputSpec, stats: Sequence[BandStats]) -> list[BandStats]:
    """The statistics a model normalises with: the bands' own, or their p1/p99 with the model's mean/std.

    The engine's first step, ``clip((x − p1) / (p99 − p1), 0, 1)``, puts every band on [0, 1] from the preset's or the
    raster's percentiles. A model trained on images already on [0, 1] with fixed per-channel statistics (X-STARS: 8-bit
    PNGs divided by 255, then its mean/std, docs/xstars.md §2, §5) declares them as ``model.input_norm``
    (:class:`engine.spectral.ChannelNorm`); the percentile stretch stands in for the PNG rendering, and the model's
    mean/std replace the bands'.

    Args:
        model: A loaded model (an encoder, or an exported segmenter).
        stats: One :class:`BandStats` per selected band, in channel order.

    Returns:
        ``stats`` unchanged, or with ``mean``/``std`` from ``model.input_norm`` and ``source`` extended.

    Raises:
        ModelMismatchError: The model's normalisation has another channel count than the selected bands.
    """
    norm = model.input_norm
    if norm is None:
        return list(stats)
    if len(norm.mean) != len(stats):
        raise ModelMismatchError(
            f"the model normalises {len(norm.mean)} channels but {len(stats)} bands are selected; select "
            f"{len(norm.mean)} bands (model.band_families)"
        )
    return [
        replace(s, mean=float(m), std=float(d), source=f"{s.source} p1/p99; mean/std {norm.source}")
        for s, m, d in zip(stats, norm.mean, norm.std)
    ]


def open_reader(
    dataset: Any,
    model: InputSpec,
    settings: InferenceSettings,
    *,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    mapping: Optional[BandMapping] = None,
    stats: Optional[Sequence[BandStats]] = None,
    region: Optional[Region] = None,
) -> tuple[RasterReader, BandMapping]:
    """The normalising tile reader of ``dataset`` for ``model``.

    Args:
        dataset: Open rasterio dataset (stays the caller's).
        model: The model that will read the tiles (an encoder, or an exported segmenter).
        settings: ``scale`` (None: the sensor preset's) and ``resampling`` are used.
        sensor: Sensor preset id for :func:`engine.spectral.resolve_bands`; guessed when None.
        overrides: Band overrides for :func:`engine.spectral.resolve_bands`.
        mapping: A band mapping to use instead of resolving one.
        stats: Statistics to use instead of the preset's/raster's (e.g. those recorded in a head card); the raster is
            still checked against them.
        region: Read only this region.

    Returns:
        ``(reader, mapping)``; close the reader when done (it is a context manager).

    Raises:
        engine.errors.BandResolutionError: A band cannot be mapped, or the model's band families are missing.
        engine.errors.InputRasterError: No valid pixel, a region outside the raster, complex values, only constant
            bands, or values that cannot be in the units of the statistics (:func:`engine.raster.band_statistics`).
        ModelMismatchError: The model's normalisation does not fit the selected bands.
    """
    if dataset.crs is None:
        log.warning("%s has no CRS: the output will not be georeferenced either", dataset.name)
    mapping = mapping or resolve_bands(dataset, sensor=sensor, overrides=overrides, averaging=model.averaging)
    if model.band_families:
        mapping = select_band_families(mapping, model.band_families)
    if stats is None:
        stats = model_statistics(model, band_statistics(dataset, mapping))
    else:
        stats = band_statistics(dataset, mapping, stats)  # the given ones, once the raster is checked against them
    scale = settings.scale if settings.scale is not None else mapping.default_scale
    return RasterReader(dataset, mapping, stats, scale, settings.resampling, region), mapping
