"""Which sensor preset a raster comes from, when the caller does not say.

Clues, in order of trust (:func:`choose_sensor`): unambiguous band descriptions (``B8A`` → Sentinel-2, ``VV``/``VH``
→ Sentinel-1), the dataset's ``sensor``/``level``/``platform`` tags, the band numbering (Sentinel-2 pads ``B02``
and has ``B12``; Landsat 8 names ``B1``…``B11``) checked against wavelength tags, and 8-bit red/green/blue(/NIR)
bands (→ ``rgb`` / ``naip_rgbn``). The reason is kept and shown by ``msfm bands``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .band_info import BandInfo
from .sensors import Sensor, SensorBand, get_sensor, normalize_band_name

__all__ = ("choose_sensor", "wavelengths_agree")

logger = logging.getLogger(__name__)

#: Dataset tags that may name the sensor or the processing level.
_SENSOR_TAGS = frozenset(
    {"sensor", "platform", "satellite", "spacecraft", "spacecraft_id", "mission", "instrument", "level",
     "processing_level", "product_type", "product", "sensor_name", "constellation"}
)
#: Substrings of the (canonical) sensor tags → preset family.
_FAMILY_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("sentinel2", "msil1c", "msil2a"), "sentinel2"),
    (("sentinel1", "csar"), "sentinel1"),
    (("landsat8", "landsat9", "olitirs"), "landsat8"),
    (("worldview2", "wv02"), "worldview2"),
    (("worldview3", "wv03"), "worldview3"),
    (("planetscope", "superdove"), "planetscope"),
    (("naip",), "naip"),
)
_NUMBERED = re.compile(r"^b\d+a?$")
_PADDED = re.compile(r"(?i)^\s*(?:[a-z]{2,4}_)?b(?:and)?[\s_-]*0\d")


def choose_sensor(ds: Any, infos: list[BandInfo], sensor: str | None) -> tuple[Sensor | None, str]:
    """The caller's preset (with a warning when the raster looks like another one), or the guessed one.

    Args:
        ds: Open rasterio dataset.
        infos: Its bands (:func:`engine.spectral.band_info.read_band_info`).
        sensor: The caller's preset id, or None to guess.

    Returns:
        ``(preset or None, reason in words)``.

    Raises:
        BandResolutionError: Unknown preset id.
    """
    guessed, why = _guess_sensor(ds, infos)
    if sensor is not None:
        chosen = get_sensor(sensor)
        reason = "given by the caller"
        if guessed is not None and guessed != chosen.id:
            reason += f"; note: the raster looks like {guessed} ({why})"
            logger.warning("sensor %s was given but the raster looks like %s (%s)", chosen.id, guessed, why)
        return chosen, reason
    if guessed is None:
        return None, f"{why}; statistics are estimated from the raster (set a sensor preset to use its statistics)"
    logger.info("sensor guessed: %s (%s)", guessed, why)
    return get_sensor(guessed), f"guessed: {why}"


def _metadata_text(ds: Any) -> str:
    values = [str(v) for k, v in ds.tags().items() if k.lower() in _SENSOR_TAGS]
    return re.sub(r"[^0-9a-z]", "", " ".join(values).lower())


def _sentinel2_level(meta: str, names: list[str]) -> tuple[str, str]:
    if "l2a" in meta:
        return "sentinel2_l2a", "the level/product tag says L2A"
    if "l1c" in meta:
        return "sentinel2_l1c", "the level/product tag says L1C"
    if "b10" in names:
        return "sentinel2_l1c", "B10 (cirrus) is present, as in 13-band L1C products"
    return "sentinel2_l2a", "no B10 (cirrus), as in 12-band L2A products"


def _guess_sensor(ds: Any, infos: list[BandInfo]) -> tuple[str | None, str]:
    """Guess a preset id from descriptions, metadata and dtype; returns ``(id or None, reason)``."""
    bands = [b for b in infos if not b.alpha_reason]
    names = [normalize_band_name(b.name) for b in bands]
    meta = _metadata_text(ds)
    count = len(bands)
    # 1. Unambiguous descriptions.
    if "b8a" in names:
        sensor_id, level = _sentinel2_level(meta, names)
        return sensor_id, f"the band descriptions contain B8A (Sentinel-2); {level}"
    s1 = get_sensor("sentinel1_grd_db")
    if names and all(s1.find_band(b.name) for b in bands):
        return s1.id, "every band description is a Sentinel-1 polarisation (VV/VH); values must be in dB"
    # 2. Dataset metadata.
    for patterns, family in _FAMILY_PATTERNS:
        if any(p in meta for p in patterns):
            preset_id = _family_preset(family, meta, names, count)
            if preset_id is not None:
                return preset_id, f"the dataset's sensor/level tags name {family} ({preset_id})"
    # 3. Band numbers: Sentinel-2 zero-pads them (B02) and has B12; Landsat 8 has B1..B11 unpadded.
    numbered = {n for n in names if _NUMBERED.match(n)}
    if len(numbered) >= 2:
        by_wavelength = _family_from_wavelengths(bands)
        if by_wavelength is not None:
            sensor_id, why = by_wavelength
            return sensor_id, why
        padded = any(_PADDED.match(b.description) for b in bands)
        if padded or "b12" in numbered:
            sensor_id, level = _sentinel2_level(meta, names)
            clue = "are zero-padded (B02)" if padded else "include B12"
            return sensor_id, f"the band numbers {clue}, as Sentinel-2 names them; {level}"
        landsat = {f"b{i}" for i in range(1, 12)}
        if numbered <= landsat and not numbered <= {"b2", "b3", "b4", "b8"}:
            return "landsat8_oli_tirs", "the band numbers are unpadded B1..B11 without B8A/B12, as Landsat 8 names them"
    # 4. 8-bit colour bands.
    if bands and all(b.dtype == "uint8" for b in bands):
        if count == 3 and set(names) == {"red", "green", "blue"}:
            return "rgb", f"three 8-bit bands named red, green, blue (by {bands[0].name_source})"
        if count == 4 and set(names) == {"red", "green", "blue", "nir"}:
            return "naip_rgbn", "four 8-bit bands named red, green, blue, NIR"
    if count == 1 and names[0] in ("pan", "panchromatic"):
        return "panchromatic", f"a single band described {bands[0].name!r}"
    return None, "no sensor given and none recognised from the band descriptions or the dataset tags"


def _family_preset(family: str, meta: str, names: list[str], count: int) -> str | None:
    if family == "sentinel2":
        return _sentinel2_level(meta, names)[0]
    if family in ("worldview2", "worldview3"):
        if count == 1 or "panchromatic" in meta:
            return "panchromatic"
        if family == "worldview2" and count == 4:
            return "worldview2_bgrn"
        return f"{family}_ms"
    if family == "planetscope":
        return "planetscope_8b" if count == 8 else "planetscope_4b"
    return {"sentinel1": "sentinel1_grd_db", "landsat8": "landsat8_oli_tirs", "naip": "naip_rgbn"}.get(family)


def _family_from_wavelengths(bands: list[BandInfo]) -> tuple[str, str] | None:
    """Pick Sentinel-2 or Landsat 8 when numbered descriptions carry wavelength tags that agree with only one."""
    tagged = [b for b in bands if b.wavelength_nm is not None and _NUMBERED.match(normalize_band_name(b.name))]
    if not tagged:
        return None
    agreeing = []
    for sensor_id in ("sentinel2_l1c", "landsat8_oli_tirs"):
        preset = get_sensor(sensor_id)
        if all(wavelengths_agree(b, preset.find_band(b.name)) for b in tagged):
            agreeing.append(sensor_id)
    if len(agreeing) != 1:
        return None
    if agreeing[0] == "landsat8_oli_tirs":
        return agreeing[0], "the band numbers and wavelength tags agree with Landsat 8 (not Sentinel-2)"
    names = [normalize_band_name(b.name) for b in bands]
    sensor_id, level = _sentinel2_level("", names)
    return sensor_id, f"the band numbers and wavelength tags agree with Sentinel-2 (not Landsat 8); {level}"


def wavelengths_agree(info: BandInfo, preset_band: SensorBand | None) -> bool:
    """True when the band's wavelength metadata lies within half the preset band's bandwidth (at least 25 nm)."""
    if preset_band is None or preset_band.wavelength_nm is None or info.wavelength_nm is None:
        return False
    tolerance = max((preset_band.bandwidth_nm or 0.0) / 2.0, 25.0)
    return abs(info.wavelength_nm - preset_band.wavelength_nm) <= tolerance
