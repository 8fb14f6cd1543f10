"""Spectral layer: which SMARTIES projection embeds each band of a raster, and how its values are normalised.

The first stage of every pass over a raster (docs/architecture.md):

- :mod:`~engine.spectral.ranges` — the 20 SMARTIES wavelength ranges and the :class:`Projection` of a band
  (docs/smarties.md §1.2, §2);
- :mod:`~engine.spectral.sensors` — sensor presets: band names, range keys, wavelengths, pretraining statistics;
- :mod:`~engine.spectral.normalize` — the two-step normalisation (docs/smarties.md §3–§4), :class:`ChannelNorm`;
- :mod:`~engine.spectral.bands` — :func:`resolve_bands`, the band resolver (overrides, descriptions, wavelength
  metadata, preset order), built on :mod:`~engine.spectral.band_info` (what the raster says),
  :mod:`~engine.spectral.sensor_guess` (which preset) and :mod:`~engine.spectral.overrides` (the caller's mapping).

Needs numpy (and rasterio to read a raster's bands); never torch.
"""

from __future__ import annotations

from .bands import BandMapping, DroppedBand, ResolvedBand, describe_mapping, resolve_bands, select_band_families
from .normalize import BandStats, ChannelNorm, estimate_stats, normalize
from .overrides import Overrides, parse_overrides
from .ranges import (
    MICROWAVE_MIN_NM,
    NUM_BASE_PROJECTIONS,
    PROJECTION_SCALER,
    Averaging,
    BandSpec,
    Projection,
    SpectralRange,
    band_mix,
    get_range,
    interpolated_projection,
    match_wavelength,
    projection_for,
    spectral_ranges,
)
from .sensors import Sensor, SensorBand, get_sensor, list_sensors, normalize_band_name

__all__ = (
    "Averaging",
    "BandMapping",
    "BandSpec",
    "BandStats",
    "ChannelNorm",
    "DroppedBand",
    "MICROWAVE_MIN_NM",
    "NUM_BASE_PROJECTIONS",
    "Overrides",
    "PROJECTION_SCALER",
    "Projection",
    "ResolvedBand",
    "Sensor",
    "SensorBand",
    "SpectralRange",
    "band_mix",
    "describe_mapping",
    "estimate_stats",
    "get_range",
    "get_sensor",
    "interpolated_projection",
    "list_sensors",
    "match_wavelength",
    "normalize",
    "normalize_band_name",
    "parse_overrides",
    "projection_for",
    "resolve_bands",
    "select_band_families",
    "spectral_ranges",
)
