"""Band resolver: which SMARTIES projection embeds each band of a raster, and with which statistics.

:func:`resolve_bands` maps every band of a raster to a :class:`engine.spectral.Projection` with four rules, in this
order of trust (a band takes the first rule that resolves it):

1. ``override`` — the caller's explicit mapping (``--band 3=red_2`` on the CLI, ``overrides={3: "red_2"}`` in
   Python): a range key, a central wavelength in nm, or ``"drop"``.
2. ``description`` — the band description (``B04``, ``B8A``, ``VV``, ``Red``, ``NIR1``, ``SR_B4``… in any usual
   spelling; for bands without one, a red/green/blue colour interpretation), read in the context of the sensor: ``B5``
   is red edge on Sentinel-2 and NIR on Landsat 8. Without a sensor only context-free names resolve (colour words,
   ``NIR``, ``SWIR1``, ``VV``/``VH``, ``Pan``, range keys).
3. ``wavelength`` — per-band wavelength metadata: the tags ``central_wavelength_nm`` (+ ``bandwidth_nm`` or
   ``fwhm_nm``), GDAL's ``IMAGERY`` domain ``CENTRAL_WAVELENGTH_UM``/``FWHM_UM``, or ENVI's ``wavelength`` +
   ``wavelength_units``; matched with :func:`engine.spectral.match_wavelength`, interpolated when in no range.
4. ``preset`` — the band order of the sensor preset, when the raster has exactly as many (non-alpha) bands.

The sensor is the caller's, or guessed from the band descriptions (``B8A`` → Sentinel-2, ``VV``/``VH`` →
Sentinel-1, unpadded ``B1``…``B11`` → Landsat 8), the dataset's ``sensor``/``level``/``platform`` tags, or 8-bit
red/green/blue bands (→ ``rgb``); :attr:`BandMapping.sensor_reason` says which. Alpha bands and bands of the disabled
range (Sentinel-2 B10 and Landsat B9 cirrus) are dropped with a notice. Statistics are the sensor preset's for the
matched preset band; ``None`` tells the caller to estimate them from the raster.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

from ..errors import BandResolutionError, InputRasterError
from .band_info import BandInfo, open_bands, read_band_info
from .normalize import BandStats
from .overrides import Overrides, override_map
from .ranges import (
    MICROWAVE_MIN_NM,
    Averaging,
    Projection,
    get_range,
    interpolated_projection,
    match_wavelength,
    projection_for,
    spectral_ranges,
)
from .sensor_guess import choose_sensor, wavelengths_agree
from .sensors import Sensor, SensorBand, get_sensor, list_sensors, normalize_band_name

__all__ = (
    "BandMapping",
    "DroppedBand",
    "ResolvedBand",
    "describe_mapping",
    "resolve_bands",
    "select_band_families",
)

logger = logging.getLogger(__name__)

#: Central wavelength used for a panchromatic band named only "pan" (450–800 nm VNIR pan).
_PAN_NM = 625.0
#: A band at least this much wider than the matched range (fraction of the band inside it below this) is interpolated.
_MIN_OVERLAP = 0.5
#: Context-free band names (canonical spelling) → (range key or None for interpolation, wavelength nm).
_GENERIC_NAMES: dict[str, tuple[str | None, float | None]] = {
    "red": ("red_1", None),
    "green": ("green_1", None),
    "blue": ("blue_3", None),
    "nir": ("near_infrared_1", None),
    "nearinfrared": ("near_infrared_1", None),
    "coastal": ("aerosol", None),
    "coastalaerosol": ("aerosol", None),
    "swir1": ("short_wave_infrared_3", None),
    "swir2": ("short_wave_infrared_4", None),
    "cirrus": ("short_wave_infrared_2", None),
    "vv": ("microwave_1", None),
    "vh": ("microwave_2", None),
    "pan": (None, _PAN_NM),
    "panchromatic": (None, _PAN_NM),
}


@dataclass(frozen=True)
class ResolvedBand:
    """One raster band that will be embedded.

    Attributes:
        index: 1-based raster band index.
        description: Raster band description (``""`` if none).
        wavelength_nm: Central wavelength, nm: the band's wavelength metadata, else the preset's; ``None`` if unknown.
        key: SMARTIES range key, or ``None`` when the projection is interpolated by wavelength.
        projection: How the band is embedded (base projection indices and weights).
        rule: ``"override"``, ``"description"``, ``"wavelength"`` or ``"preset"``.
        reason: Which rule matched and why, in one sentence.
        stats: Normalisation statistics from the sensor preset, or ``None`` (the caller estimates them).
    """

    index: int
    description: str
    wavelength_nm: float | None
    key: str | None
    projection: Projection
    rule: str
    reason: str
    stats: BandStats | None


@dataclass(frozen=True)
class DroppedBand:
    """A raster band that is not embedded (alpha, disabled range, or dropped by an override).

    Attributes:
        index: 1-based raster band index.
        description: Raster band description (``""`` if none).
        reason: Why it is dropped.
    """

    index: int
    description: str
    reason: str


@dataclass(frozen=True)
class BandMapping:
    """The result of :func:`resolve_bands`.

    Attributes:
        bands: The bands to embed, in raster order.
        dropped: The bands left out, with reasons.
        sensor: Sensor preset id used for context and statistics, or ``None``.
        sensor_reason: Why this sensor (given by the caller, guessed from what) or why none.
    """

    bands: tuple[ResolvedBand, ...]
    dropped: tuple[DroppedBand, ...]
    sensor: str | None
    sensor_reason: str

    @property
    def indexes(self) -> list[int]:
        """1-based raster indexes of the embedded bands, in order (for ``dataset.read(indexes)``)."""
        return [b.index for b in self.bands]

    @property
    def projections(self) -> list[Projection]:
        """The projection of each embedded band, aligned with :attr:`indexes`."""
        return [b.projection for b in self.bands]

    @property
    def keys(self) -> list[str | None]:
        """The range key of each embedded band (``None`` for interpolated ones), aligned with :attr:`indexes`."""
        return [b.key for b in self.bands]

    @property
    def default_scale(self) -> float:
        """The sensor preset's resampling factor (model-input pixels per native pixel), 1.0 without a preset."""
        return 1.0 if self.sensor is None else float(get_sensor(self.sensor).default_scale)

    def with_stats(self, stats: Sequence[BandStats]) -> BandMapping:
        """A copy whose bands carry ``stats`` (one per band, e.g. :func:`engine.raster.band_statistics`)."""
        if len(stats) != len(self.bands):
            raise ValueError(f"expected {len(self.bands)} statistics (one per band), got {len(stats)}")
        bands = tuple(dataclasses.replace(b, stats=s) for b, s in zip(self.bands, stats))
        return dataclasses.replace(self, bands=bands)


def resolve_bands(
    source: Any,
    sensor: str | None = None,
    overrides: Overrides | None = None,
    averaging: Averaging = "linear",
) -> BandMapping:
    """Map every band of a raster to a SMARTIES projection (see the module docstring for the rules).

    Args:
        source: A raster path (``str``/``Path``) or an open rasterio dataset (left open).
        sensor: Sensor preset id (``"sentinel2_l2a"``, ``"naip_rgbn"``…, see :func:`engine.spectral.list_sensors`);
            guessed from descriptions and metadata when ``None``.
        overrides: Explicit mappings that win over every other rule. Either a sequence with one entry per raster
            band (or per non-alpha band), or a mapping ``{1-based index or band description: value}``. A value is a
            range key (``"red_2"``), a central wavelength in nm (``665.0``, ``"665"``, ``"665nm"``), or ``"drop"``.
        averaging: Weights of the averaged ranges (``"linear"`` or ``"reference"``, see :mod:`engine.spectral.ranges`).

    Returns:
        The :class:`BandMapping`: embedded bands in raster order, dropped bands, sensor and why.

    Raises:
        InputRasterError: The path cannot be opened as a raster.
        BandResolutionError: Unknown sensor id or override key, an override that names no band, a wavelength tag in
            µm, a band no rule resolves (the message names the band and the override that fixes it), or no band
            left to embed.
        InputRasterError: The caller's sensor preset has fewer bands than the raster has to embed, and the raster
            looks like another sensor (bands mapped by overrides do not count).
    """
    if averaging not in ("linear", "reference"):
        raise BandResolutionError(f"averaging must be 'linear' or 'reference', got {averaging!r}")
    with open_bands(source) as ds:
        infos = read_band_info(ds)
        chosen, sensor_reason = choose_sensor(ds, infos, sensor)
        where = str(getattr(ds, "name", source))
        # The caller's preset has fewer bands than the raster: what the raster looks like decides (_check_band_count).
        usable = sum(not b.alpha_reason for b in infos)
        surplus = sensor is not None and chosen is not None and usable > len(chosen.bands)
        looks_like = choose_sensor(ds, infos, None) if surplus else None
    overridden = override_map(overrides, infos)

    candidates = [b for b in infos if not b.alpha_reason or b.index in overridden]
    positional = chosen is not None and len(candidates) == len(chosen.bands)
    resolved: list[ResolvedBand] = []
    dropped: list[DroppedBand] = []
    unresolved: list[BandInfo] = []
    for info in infos:
        if info.alpha_reason and info.index not in overridden:
            dropped.append(DroppedBand(info.index, info.description, info.alpha_reason))
            logger.info("%s dropped: %s", info.label, info.alpha_reason)
            continue
        position = candidates.index(info)
        outcome: ResolvedBand | DroppedBand | None
        if info.index in overridden:
            outcome = _from_override(info, overridden[info.index], chosen, averaging)
        else:
            outcome = _from_description(info, chosen, averaging)
            preset_band = chosen.bands[position] if positional and chosen is not None else None
            if outcome is None and info.wavelength_nm is not None:
                outcome = _from_wavelength(info, chosen, preset_band, averaging)
            if outcome is None and preset_band is not None and chosen is not None:
                reason = (
                    f"position {position + 1} of {len(candidates)} in the {chosen.id} band order "
                    f"({', '.join(b.name for b in chosen.bands)}) is {preset_band.name}"
                )
                outcome = _outcome(info, preset_band.key, _wavelength(info, preset_band), "preset", reason,
                                   preset_band, chosen, averaging)
        if outcome is None:
            unresolved.append(info)
        elif isinstance(outcome, DroppedBand):
            dropped.append(outcome)
        else:
            resolved.append(outcome)
            logger.debug("%s → %s (%s: %s)", info.label, outcome.projection.label, outcome.rule, outcome.reason)

    if unresolved:
        raise BandResolutionError(_unresolved_message(where, unresolved, candidates, chosen),
                                  unmapped=tuple(info.index for info in unresolved),
                                  presets=tuple(_fitting_presets(len(candidates))))
    if not resolved:
        reasons = "; ".join(f"band {d.index}: {d.reason}" for d in dropped)
        raise BandResolutionError(
            f"{where}: no band left to embed ({reasons}). Keep a band by mapping it explicitly, e.g. "
            f"--band 1=red_1 on the command line or overrides={{1: 'red_1'}} in Python."
        )
    if looks_like is not None and chosen is not None:
        _check_band_count(where, chosen, looks_like, [b for b in resolved if b.rule != "override"])
    return BandMapping(tuple(resolved), tuple(dropped), chosen.id if chosen else None, sensor_reason)


def _check_band_count(
    where: str, chosen: Sensor, looks_like: tuple[Sensor | None, str], embedded: list[ResolvedBand]
) -> None:
    """Refuse the caller's preset when the raster has more bands to embed than it and looks like another sensor.

    A raster of a sensor cannot have more bands than the sensor; bands mapped by an override do not count, and a raster
    that looks like the preset itself keeps its extra bands (a stack of another sensor's bands, named as such).

    Raises:
        InputRasterError: The counts disagree; the message names both and the fix.
    """
    guessed, why = looks_like
    if len(embedded) <= len(chosen.bands) or (guessed is not None and guessed.id == chosen.id):
        return
    if guessed is not None:
        match = f"--sensor {guessed.id}: the raster looks like it ({why.removeprefix('guessed: ')})"
    else:
        match = "leave the sensor out ('auto' in QGIS) to map the bands by their descriptions and wavelengths"
    raise InputRasterError(
        f"{where}: the sensor preset {chosen.id} (--sensor / sensor= in Python / Sensor preset in QGIS) has "
        f"{len(chosen.bands)} band(s) ({', '.join(b.name for b in chosen.bands)}) but the raster has {len(embedded)} "
        "bands to embed: it cannot be a raster of that sensor, and the preset's band names and statistics would be "
        f"applied to bands of another. Fix: choose the preset that matches the raster ({match}), or map or drop "
        "the extra bands explicitly (--band N=range_key or --band N=drop; 'Band overrides' in QGIS, overrides= in "
        "Python)."
    )


def _family_of(key: str | None) -> str | None:
    """``"red"`` for ``red_1``/``red_2`` (not ``red_edge_1``), ``"green"``, ``"blue"``…: the key without its number."""
    match = re.fullmatch(r"([a-z_]+?)_(\d+)", key or "")
    return match.group(1) if match else None


def _family_center_nm(family: str) -> float:
    """Centre of the union of a family's ranges (red 650, green 543, blue 492.5 nm), for choosing among candidates."""
    ranges = [r for r in spectral_ranges() if _family_of(r.key) == family]
    return (min(r.min_nm for r in ranges) + max(r.max_nm for r in ranges)) / 2.0


def select_band_families(mapping: BandMapping, families: Sequence[str]) -> BandMapping:
    """Reduce a mapping to one band per range family, in the order given (for models with a fixed input stem).

    A band belongs to a family when its range key is ``<family>_<n>`` (``red_1``, ``red_2`` are ``red``;
    ``red_edge_1`` is not); interpolated bands (no key) belong to none. Where several bands qualify (WorldView's
    Yellow and Red are both in ``red_1``), the one whose wavelength (else its range's centre) is nearest the centre of
    the family's ranges wins, then the first in raster order. The other bands are moved to ``dropped`` with the
    reason. Applying it twice gives the same mapping.

    Args:
        mapping: From :func:`resolve_bands`.
        families: Range families in channel order, e.g. ``("red", "green", "blue")`` for X-STARS models
            (``model.band_families``).

    Returns:
        A mapping whose ``bands`` are exactly one band per family, in ``families`` order.

    Raises:
        BandResolutionError: A family has no band; the message lists the resolved bands and the override that fixes
            it.
    """
    wanted = tuple(families)
    chosen: list[ResolvedBand] = []
    missing = []
    for family in wanted:
        candidates = [b for b in mapping.bands if _family_of(b.key) == family]
        if not candidates:
            missing.append(family)
            continue
        center = _family_center_nm(family)

        def distance(band: ResolvedBand, center: float = center) -> float:
            nm = band.wavelength_nm if band.wavelength_nm is not None else get_range(band.key or "").center_nm
            return abs(nm - center)

        chosen.append(min(candidates, key=distance))  # min keeps the first of equals: raster order
    if missing:
        bands = ", ".join(f"{b.index} ({b.description or 'no description'}) → {b.key or b.projection.label}"
                          for b in mapping.bands) or "none"
        keys = {"red": "red_2", "green": "green_2", "blue": "blue_1"}
        example = keys.get(missing[0], f"{missing[0]}_1")
        raise BandResolutionError(
            f"this model takes {', '.join(wanted)} bands in that order (range keys "
            f"{', '.join(f'{f}_*' for f in wanted)}), but the raster has no {' and no '.join(missing)} band; its "
            f"bands map to: {bands}. If a band is {missing[0]}, map it explicitly, e.g. --band N={example} / "
            f"overrides={{N: '{example}'}}; otherwise use a raster with {', '.join(wanted)} bands."
        )
    names = ", ".join(wanted)
    dropped = list(mapping.dropped)
    for band in mapping.bands:
        if band not in chosen:
            band_family = _family_of(band.key)
            why = (f"the model takes one {band_family} band and band {chosen[wanted.index(band_family)].index} is used"
                   if band_family in wanted else f"the model takes only {names} bands")
            dropped.append(DroppedBand(band.index, band.description, f"not used: {why}"))
    dropped.sort(key=lambda d: d.index)
    return dataclasses.replace(mapping, bands=tuple(chosen), dropped=tuple(dropped))


def describe_mapping(mapping: BandMapping) -> str:
    """Render a :class:`BandMapping` as the text table printed by ``msfm bands INPUT``.

    A sensor line (which preset and why) and a count line, then one row per embedded band (index, description,
    wavelength, range key or interpolation label, projection terms ``w·P<base index>``, rule, statistics
    ``p1 / p99 / mean / std`` or ``from raster``) each followed by an indented ``why:`` line, then the dropped bands
    with their reasons.

    Args:
        mapping: The mapping to describe.

    Returns:
        Multi-line text without a trailing newline.
    """
    header = ("band", "description", "wavelength", "range", "projection", "rule", "stats p1 / p99 / mean / std")
    rows = []
    for band in mapping.bands:
        stats = band.stats
        stats_text = (
            "from raster" if stats is None
            else f"{stats.p1:.4g} / {stats.p99:.4g} / {stats.mean:.3f} / {stats.std:.3f} ({stats.source})"
        )
        rows.append((
            str(band.index),
            band.description or "-",
            "-" if band.wavelength_nm is None else f"{band.wavelength_nm:g} nm",
            band.key if band.key is not None else band.projection.label,
            " + ".join(f"P{i}" if w == 1.0 else f"{w:.4g}·P{i}" for i, w in band.projection.terms),
            band.rule,
            stats_text,
        ))
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    sensor = mapping.sensor or "none"
    out = [f"sensor: {sensor} ({mapping.sensor_reason})",
           f"{len(mapping.bands)} band(s) embedded, {len(mapping.dropped)} dropped", "", line(header)]
    for band, row in zip(mapping.bands, rows):
        out.append(line(row))
        out.append(f"{'':{widths[0]}}  why: {band.reason}")
    if mapping.dropped:
        out += ["", "dropped:"]
        out += [f"  band {d.index} ({d.description or 'no description'}): {d.reason}" for d in mapping.dropped]
    return "\n".join(out)



def _wavelength(info: BandInfo, preset_band: SensorBand | None) -> float | None:
    if info.wavelength_nm is not None:
        return info.wavelength_nm
    return None if preset_band is None else preset_band.wavelength_nm


def _preset_band_for_key(sensor: Sensor | None, key: str | None) -> SensorBand | None:
    if sensor is None or key is None:
        return None
    found = [b for b in sensor.bands if b.key == key]
    return found[0] if len(found) == 1 else None


def _outcome(
    info: BandInfo,
    key: str | None,
    wavelength_nm: float | None,
    rule: str,
    reason: str,
    preset_band: SensorBand | None,
    sensor: Sensor | None,
    averaging: Averaging,
) -> ResolvedBand | DroppedBand:
    """Build the resolved (or dropped) band for a decision ``key`` (``None`` = interpolate at ``wavelength_nm``)."""
    if key is not None:
        rng = get_range(key)
        if rng.is_disabled:
            why = (f"{reason}; range {rng.key} ({rng.name}) has no SMARTIES projection (index -1), so the band is "
                   "dropped")
            logger.info("%s dropped: %s", info.label, why)
            return DroppedBand(info.index, info.description, why)
        projection = projection_for(key, averaging)
    else:
        if wavelength_nm is None:
            raise BandResolutionError(
                f"{info.label}: {reason}, but it lies in no SMARTIES range and has no wavelength to interpolate at; "
                f"map it explicitly, e.g. --band {info.index}=red_1 / overrides={{{info.index}: 'red_1'}}"
            )
        try:
            projection = interpolated_projection(wavelength_nm)
        except BandResolutionError as err:
            raise BandResolutionError(f"{info.label}: {err}") from None
        reason = f"{reason}; in no SMARTIES range, so interpolated ({projection.label})"
    if preset_band is None:
        preset_band = _preset_band_for_key(sensor, key)
    stats = None if preset_band is None else preset_band.stats
    return ResolvedBand(info.index, info.description, wavelength_nm, key, projection, rule, reason, stats)


def _from_override(
    info: BandInfo, value: str | float, sensor: Sensor | None, averaging: Averaging
) -> ResolvedBand | DroppedBand:
    if value == "drop":
        logger.info("%s dropped by override", info.label)
        return DroppedBand(info.index, info.description, "dropped by override")
    if isinstance(value, float):
        outcome = _match(info, value, None, "override", f"override: central wavelength {value:g} nm", sensor,
                         averaging)
        if outcome is None:
            raise BandResolutionError(
                f"override for {info.label}: {value:g} nm is a microwave wavelength, which cannot tell VV from VH; "
                f"use --band {info.index}=microwave_1 (VV) or microwave_2 (VH)"
            )
        return outcome
    return _outcome(info, value, info.wavelength_nm, "override", f"override: range {value}", None, sensor, averaging)


def _from_description(info: BandInfo, sensor: Sensor | None, averaging: Averaging) -> ResolvedBand | DroppedBand | None:
    if not info.name:
        return None
    what = f"{info.name_source} {info.name!r}"
    if sensor is not None:
        preset_band = sensor.find_band(info.name)
        if preset_band is not None:
            reason = f"{what} is {sensor.id} band {preset_band.name}"
            disagree = not wavelengths_agree(info, preset_band)
            if disagree and info.wavelength_nm is not None and preset_band.wavelength_nm:
                note = (f"its {info.wavelength_source} ({info.wavelength_nm:g} nm) disagrees with {preset_band.name} "
                        f"({preset_band.wavelength_nm:g} nm): check the sensor, or override the band")
                logger.warning("%s: %s", info.label, note)
                reason = f"{reason} (warning: {note})"
            key = preset_band.key
            return _outcome(info, key, _wavelength(info, preset_band), "description", reason, preset_band, sensor,
                            averaging)
    canonical = normalize_band_name(info.name)
    generic = _generic_names().get(canonical)
    if generic is None:
        return None
    key, default_nm = generic
    wavelength_nm = info.wavelength_nm if info.wavelength_nm is not None else default_nm
    reason = f"{what} names range {key}" if key else f"{what} names a panchromatic band"
    return _outcome(info, key, wavelength_nm, "description", reason, None, sensor, averaging)


def _from_wavelength(
    info: BandInfo, sensor: Sensor | None, preset_band: SensorBand | None, averaging: Averaging
) -> ResolvedBand | DroppedBand | None:
    """Resolve by the band's wavelength metadata.

    ``preset_band`` is the sensor preset's band at this position (when the band counts match); when its wavelength
    agrees with the metadata it supplies the bandwidth (if the metadata has none) and the statistics.
    """
    if info.wavelength_nm is None:
        return None
    hint = preset_band if wavelengths_agree(info, preset_band) else None
    bandwidth_nm = info.bandwidth_nm
    what = f"{info.wavelength_source} = {info.wavelength_nm:g} nm"
    if bandwidth_nm is None and hint is not None and hint.bandwidth_nm is not None:
        bandwidth_nm = hint.bandwidth_nm
        what = f"{what} (bandwidth {bandwidth_nm:g} nm from {sensor.id if sensor else 'the preset'} {hint.name})"
    return _match(info, info.wavelength_nm, bandwidth_nm, "wavelength", what, sensor, averaging, hint)


def _match(
    info: BandInfo,
    wavelength_nm: float,
    bandwidth_nm: float | None,
    rule: str,
    what: str,
    sensor: Sensor | None,
    averaging: Averaging,
    preset_band: SensorBand | None = None,
) -> ResolvedBand | DroppedBand | None:
    """Resolve by wavelength; ``None`` for microwave wavelengths (the polarisation must be named)."""
    if wavelength_nm >= MICROWAVE_MIN_NM:
        return None
    try:
        rng, why = match_wavelength(wavelength_nm)
    except BandResolutionError as err:
        raise BandResolutionError(
            f"{info.label}: {what}: {err}. Fix the metadata, or override the band, e.g. "
            f"--band {info.index}={wavelength_nm * 1000:g} / overrides={{{info.index}: {wavelength_nm * 1000:g}}}"
        ) from None
    if rng is not None and bandwidth_nm:
        low, high = wavelength_nm - bandwidth_nm / 2.0, wavelength_nm + bandwidth_nm / 2.0
        inside = max(0.0, min(high, rng.max_nm) - max(low, rng.min_nm)) / bandwidth_nm
        if inside < _MIN_OVERLAP:
            why = (f"{why}, but only {inside:.0%} of the {bandwidth_nm:g} nm wide band lies inside it, so the band "
                   "is treated as outside every range")
            rng = None
    key = None if rng is None else rng.key
    return _outcome(info, key, wavelength_nm, rule, f"{what}: {why}", preset_band, sensor, averaging)


@lru_cache(maxsize=1)
def _generic_names() -> dict[str, tuple[str | None, float | None]]:
    names: dict[str, tuple[str | None, float | None]] = {
        normalize_band_name(r.key): (r.key, None) for r in spectral_ranges()
    }
    names.update(_GENERIC_NAMES)
    return names


def _fitting_presets(count: int) -> list[str]:
    """Ids of the sensor presets with ``count`` bands."""
    return [s.id for s in list_sensors() if len(s.bands) == count]


def _unresolved_message(
    where: str, unresolved: list[BandInfo], candidates: list[BandInfo], sensor: Sensor | None
) -> str:
    lines = [f"{where}: {len(unresolved)} band(s) could not be mapped to a SMARTIES spectral range:"]
    for info in unresolved:
        clues = []
        if info.name:
            context = f"not a band name of {sensor.id}" if sensor else "not a name known without a sensor"
            clues.append(f"{info.name_source} {info.name!r} is {context}")
        else:
            clues.append("no description")
        if info.wavelength_nm is None:
            clues.append("no wavelength metadata")
        else:
            clues.append(f"its {info.wavelength_source} ({info.wavelength_nm:g} nm) is microwave: name VV or VH")
        lines.append(f"  - {info.label}: " + ", ".join(clues))
    first = unresolved[0].index
    count = len(candidates)
    fits = _fitting_presets(count)
    if sensor is not None:
        lines.append(
            f"The sensor preset {sensor.id} has {len(sensor.bands)} bands "
            f"({', '.join(b.name for b in sensor.bands)}) but the raster has {count} usable band(s), so the preset "
            "order cannot be used."
        )
    fix_sensor = (
        f" or name the sensor: --sensor {fits[0]} on the command line / sensor='{fits[0]}' in Python "
        f"(presets with {count} band(s): {', '.join(fits)})"
        if fits else ""
    )
    lines.append(
        f"Fix: map each band explicitly, e.g. --band {first}=red_2 on the command line / "
        f"overrides={{{first}: 'red_2'}} in Python (a range key, a central wavelength in nm such as "
        f"--band {first}=665, or 'drop'){fix_sensor}."
    )
    lines.append(f"Valid range keys: {', '.join(r.key for r in spectral_ranges() if not r.is_disabled)}.")
    return "\n".join(lines)
