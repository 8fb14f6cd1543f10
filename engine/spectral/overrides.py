"""Band overrides: the caller's explicit band → range mapping, the rule that wins over every other.

In Python an override is a sequence with one value per band, or a mapping ``{1-based index or band description:
value}``; on the command line and in QGIS it is text, ``"4=red_2; 5=842.5; B8=near_infrared_1; 1=drop"``
(:func:`parse_overrides`). A value is a range key, a central wavelength in nm, or ``"drop"``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence, Union

from ..errors import BandResolutionError
from .band_info import BandInfo, parse_number
from .ranges import get_range
from .sensors import normalize_band_name

__all__ = ("Overrides", "override_map", "parse_overrides")

#: What :func:`engine.spectral.resolve_bands` accepts as ``overrides``.
Overrides = Union[Mapping[Union[int, str], Union[str, float]], Sequence[str]]

#: Values that drop a band in an override.
_DROP = frozenset({"drop", "skip", "none", "ignore", "-"})


def override_map(overrides: Overrides | None, infos: list[BandInfo]) -> dict[int, str | float]:
    """Normalise overrides to ``{1-based index: key, wavelength (float) or 'drop'}``.

    Raises:
        BandResolutionError: A string instead of a mapping or list, a list of the wrong length, an index outside the
            raster, a description no band (or several bands) has, or an unknown range key.
    """
    if overrides is None:
        return {}
    if isinstance(overrides, (str, bytes)):
        raise BandResolutionError(
            f"overrides must be a list with one range key per band or a mapping {{band: key}}, got the string "
            f"{overrides!r}; e.g. overrides=['red_1', 'green_1', 'blue_3'] or overrides={{3: 'red_2'}}"
        )
    out: dict[int, str | float] = {}
    if isinstance(overrides, Mapping):
        for band, value in overrides.items():
            for index in _override_indexes(band, infos):
                out[index] = _override_value(band, value)
        return out
    values = list(overrides)
    usable = [b for b in infos if not b.alpha_reason]
    if len(values) == len(infos):
        targets = infos
    elif len(values) == len(usable):
        targets = usable
    else:
        raise BandResolutionError(
            f"overrides lists {len(values)} value(s) but the raster has {len(infos)} band(s) "
            f"({len(usable)} without alpha); give one range key (or wavelength, or 'drop') per band, or a mapping "
            "{band index: key} for only some bands"
        )
    for info, value in zip(targets, values):
        out[info.index] = _override_value(info.index, value)
    return out


_OVERRIDE_EXAMPLE = "4=red_2; 5=842.5; B8=near_infrared_1; 1=drop"
_OVERRIDE_SEPARATORS = re.compile(r"[;,\n]")


def parse_overrides(text: str) -> dict[int | str, str | float]:
    """Parse band overrides written as text into the mapping :func:`resolve_bands` accepts.

    Items ``BAND=VALUE`` are separated by ``;``, ``,`` or newlines (whitespace anywhere is ignored). ``BAND`` is a
    1-based band index or a band description; ``VALUE`` a range key, a central wavelength in nm (``842.5``,
    ``842nm``) or ``drop``. Example: ``"4=red_2; 5=842.5, B8=near_infrared_1 ; 1=drop"`` →
    ``{4: "red_2", 5: 842.5, "B8": "near_infrared_1", 1: "drop"}``.

    Args:
        text: The overrides; empty or blank → ``{}``.

    Returns:
        ``{int index or str description: str range key | float wavelength nm | "drop"}``.

    Raises:
        BandResolutionError: An item without ``=``, with an empty side, naming a band twice, or with an unknown range
            key (the message names the item and shows an example).
    """
    out: dict[int | str, str | float] = {}
    for item in _OVERRIDE_SEPARATORS.split(text or ""):
        item = item.strip()
        if not item:
            continue
        band, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not band or not value:
            raise BandResolutionError(
                f"band override {item!r} is not BAND=VALUE (band index or description = range key, wavelength in nm "
                f"or drop); e.g. {_OVERRIDE_EXAMPLE!r}"
            )
        key: int | str = int(band) if band.isdigit() else band
        if key in out:
            raise BandResolutionError(f"band override {item!r}: band {band} is given twice; e.g. {_OVERRIDE_EXAMPLE!r}")
        try:
            out[key] = _override_value(key, value)
        except BandResolutionError as exc:
            raise BandResolutionError(
                f"band override {item!r}: {str(exc).rstrip('.')}; e.g. {_OVERRIDE_EXAMPLE!r}"
            ) from None
    return out


def _override_indexes(band: int | str, infos: list[BandInfo]) -> list[int]:
    if isinstance(band, bool):
        raise BandResolutionError(f"override band {band!r} is neither a 1-based band index nor a band description")
    if isinstance(band, int) or (isinstance(band, str) and band.strip().isdigit()):
        index = int(band)
        if not 1 <= index <= len(infos):
            raise BandResolutionError(
                f"override for band {index}: the raster has bands 1..{len(infos)}; use a 1-based band index"
            )
        return [index]
    wanted = normalize_band_name(str(band))
    matches = [b.index for b in infos if wanted and normalize_band_name(b.description) == wanted]
    if not matches:
        names = ", ".join(f"{b.index}={b.description!r}" for b in infos if b.description) or "none"
        raise BandResolutionError(
            f"override names band {band!r} but no band has that description (descriptions: {names}); "
            "use the 1-based band index instead, e.g. --band 3=red_2 / overrides={3: 'red_2'}"
        )
    if len(matches) > 1:
        raise BandResolutionError(
            f"override names band {band!r} but bands {matches} share that description; use the 1-based band index"
        )
    return matches


def _override_value(band: int | str, value: Any) -> str | float:
    if isinstance(value, bool) or value is None:
        raise BandResolutionError(f"override for band {band!r}: expected a range key, a wavelength in nm or 'drop', "
                                  f"got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if text.lower() in _DROP:
        return "drop"
    number = parse_number(text)
    if number is not None:
        return number
    get_range(text)  # raises with close matches and the list of keys
    return text
