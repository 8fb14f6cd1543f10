"""Sensor presets: band names, SMARTIES range keys, wavelengths and normalisation statistics of common sensors.

A preset (shipped as ``data/sensors.json``) tells the band resolver (:mod:`engine.spectral.bands`) what each band of a
known sensor is: its usual names, the SMARTIES range key that embeds it (docs/smarties.md §2), its central wavelength
and bandwidth in nm (public band tables of each sensor) and, where SMARTIES was pretrained on the sensor, the
normalisation statistics of docs/smarties.md §3 (``p1``/``p99`` in raw file units, ``mean``/``std`` in the clipped
[0, 1] domain). ``stats=None`` means "no pretraining statistics: estimate them from the raster at run time".

Band keys in the JSON are either a range key, ``null`` (the band lies in no range and gets an interpolated
projection, e.g. Landsat B8 pan, Landsat B11 TIRS-2, a generic panchromatic band), or ``"auto"``: the key is chosen
from ``wavelength_nm`` with :func:`engine.spectral.match_wavelength` when the presets are loaded (WorldView,
PlanetScope), so those presets always agree with the spectral registry. A key naming the disabled range
(``short_wave_infrared_2``: Sentinel-2 B10 and Landsat B9 cirrus) means the resolver drops the band with a notice.

``default_scale`` is the resampling factor the tiler applies to the raster before cutting 224-px model inputs.
SMARTIES never saw 10 m satellite imagery at its native pixel size: BigEarthNet patches (120 px at 10 m) and EuroSAT
patches (64 px at 10 m) were both resized to 224 px (docs/smarties.md §4 step 4), i.e. up-sampled about 2× (1.87× and
3.5×), so a 16-px token covered ≈ 80 m of ground. Satellite sensors at 10–30 m (Sentinel-2, Sentinel-1, Landsat)
therefore use 2.0, which puts tokens at the pretraining scale. Very-high-resolution and aerial imagery (RGB, NAIP,
WorldView, PlanetScope, panchromatic) is already much finer than anything the model saw; up-sampling it would only make
tokens cover less ground, so those use 1.0.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from ..errors import BandResolutionError
from .normalize import BandStats
from .ranges import get_range, match_wavelength

__all__ = ("Sensor", "SensorBand", "get_sensor", "list_sensors", "normalize_band_name")

logger = logging.getLogger(__name__)

#: Prefixes of product band names that carry no spectral meaning (Landsat C2 ``SR_B4``/``ST_B10``, ``TOA_B2``…).
_PREFIX = re.compile(r"^(?:sr|st|toa|boa|refl|rho)(?=b\d)")
#: ``b4``, ``b04``, ``band4``, ``band_04``, ``b8a`` → ``b<number>[a]`` without zero padding.
_NUMBERED = re.compile(r"^(?:band|b)0*(\d+)(a?)$")


def normalize_band_name(text: str | None) -> str:
    """Canonical spelling of a band name, for case/padding/separator-insensitive comparisons.

    Lower-cases, removes every character that is not a letter or digit, strips product prefixes (``SR_``, ``ST_``,
    ``TOA_``…) in front of a band number, and writes band numbers without zero padding: ``"B04"``, ``"band 4"``,
    ``"SR_B4"`` → ``"b4"``; ``"B8A"`` → ``"b8a"``; ``"Red Edge 1"`` → ``"rededge1"``; ``"VV"`` → ``"vv"``.

    Args:
        text: A band description, alias or name; ``None`` gives ``""``.

    Returns:
        The canonical form (possibly empty).
    """
    if not text:
        return ""
    name = re.sub(r"[^0-9a-z]", "", text.lower())
    name = _PREFIX.sub("", name)
    match = _NUMBERED.match(name)
    if match:
        return f"b{int(match.group(1))}{match.group(2)}"
    return name


@dataclass(frozen=True)
class SensorBand:
    """One band of a sensor preset.

    Attributes:
        name: Usual band name (``"B04"``, ``"VV"``, ``"NIR1"``).
        aliases: Other spellings accepted in band descriptions, canonical form (see :func:`normalize_band_name`).
        key: SMARTIES range key, or ``None`` when the band lies in no range and its projection is interpolated
            from ``wavelength_nm``.
        wavelength_nm: Central wavelength, nm (``None`` only if unknown).
        bandwidth_nm: Bandwidth (FWHM or nominal band edges), nm; ``None`` if not documented.
        stats: SMARTIES pretraining normalisation statistics, or ``None`` to estimate them from the raster.
    """

    name: str
    aliases: tuple[str, ...]
    key: str | None
    wavelength_nm: float | None
    bandwidth_nm: float | None
    stats: BandStats | None

    def matches(self, description: str | None) -> bool:
        """True when ``description`` names this band (its name or an alias, in any usual spelling)."""
        wanted = normalize_band_name(description)
        return bool(wanted) and (wanted == normalize_band_name(self.name) or wanted in self.aliases)


@dataclass(frozen=True)
class Sensor:
    """A sensor preset.

    Attributes:
        id: Stable lower-case identifier (``"sentinel2_l2a"``), used by ``--sensor``.
        name: Human-readable name.
        bands: The bands in the sensor's usual file order.
        gsd_m: Nominal ground sampling distance, m (``None`` for generic presets).
        default_scale: Resampling factor applied before the 224-px model input (see the module docstring).
        value_unit: Units of the raw pixel values the statistics refer to.
        description: One paragraph: what the preset covers and where its statistics come from.
    """

    id: str
    name: str
    bands: tuple[SensorBand, ...]
    gsd_m: float | None
    default_scale: float
    value_unit: str
    description: str

    def find_band(self, description: str | None) -> SensorBand | None:
        """Return the band named by ``description`` (name or alias, any usual spelling), or ``None``."""
        for band in self.bands:
            if band.matches(description):
                return band
        return None


def _load_band(sensor_id: str, raw: dict[str, Any]) -> SensorBand:
    wavelength_nm = None if raw.get("wavelength_nm") is None else float(raw["wavelength_nm"])
    key = raw.get("key")
    if key == "auto":
        if wavelength_nm is None:
            raise BandResolutionError(f"preset {sensor_id!r} band {raw['name']!r}: key 'auto' needs wavelength_nm")
        rng, _ = match_wavelength(wavelength_nm)
        key = None if rng is None else rng.key
    elif key is not None:
        get_range(key)  # validates the key (raises with close matches)
    stats = raw.get("stats")
    return SensorBand(
        name=raw["name"],
        aliases=tuple(normalize_band_name(a) for a in raw.get("aliases", ())),
        key=key,
        wavelength_nm=wavelength_nm,
        bandwidth_nm=None if raw.get("bandwidth_nm") is None else float(raw["bandwidth_nm"]),
        stats=None if stats is None else BandStats(
            float(stats["p1"]), float(stats["p99"]), float(stats["mean"]), float(stats["std"]), f"preset:{sensor_id}"
        ),
    )


@lru_cache(maxsize=1)
def _sensors() -> dict[str, Sensor]:
    text = resources.files(__package__).joinpath("data/sensors.json").read_text(encoding="utf-8")
    out: dict[str, Sensor] = {}
    for raw in json.loads(text)["sensors"]:
        sensor_id = raw["id"]
        out[sensor_id] = Sensor(
            id=sensor_id,
            name=raw["name"],
            bands=tuple(_load_band(sensor_id, b) for b in raw["bands"]),
            gsd_m=None if raw.get("gsd_m") is None else float(raw["gsd_m"]),
            default_scale=float(raw["default_scale"]),
            value_unit=raw["value_unit"],
            description=raw["description"],
        )
    logger.debug("loaded %d sensor presets", len(out))
    return out


def list_sensors() -> tuple[Sensor, ...]:
    """Return every sensor preset, in the order of ``data/sensors.json``."""
    return tuple(_sensors().values())


def get_sensor(sensor_id: str) -> Sensor:
    """Return the preset with this id (case-insensitive; ``-`` and spaces read as ``_``).

    Args:
        sensor_id: A preset id such as ``"sentinel2_l2a"`` or ``"naip_rgbn"``.

    Raises:
        BandResolutionError: Unknown id; the message lists the closest ids and every valid one.
    """
    wanted = re.sub(r"[\s-]+", "_", str(sensor_id).strip().lower())
    try:
        return _sensors()[wanted]
    except KeyError:
        close = difflib.get_close_matches(wanted, list(_sensors()), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise BandResolutionError(
            f"unknown sensor preset {sensor_id!r}.{hint} Use one of: {', '.join(_sensors())} "
            "(or leave the sensor out to resolve bands from descriptions and wavelength tags)."
        ) from None
