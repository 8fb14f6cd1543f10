"""What a raster says about each of its bands: description, colour interpretation, wavelength metadata, alpha.

:func:`read_band_info` is the only place that reads band metadata; the resolver (:mod:`engine.spectral.bands`), the
sensor guess (:mod:`engine.spectral.sensor_guess`) and the overrides (:mod:`engine.spectral.overrides`) all work on
its :class:`BandInfo` records. Wavelength metadata is read from, in order: the tags ``central_wavelength_nm`` (+
``bandwidth_nm`` or ``fwhm_nm``), GDAL's ``IMAGERY`` domain ``CENTRAL_WAVELENGTH_UM``/``FWHM_UM``, ENVI's
``wavelength`` + ``wavelength_units``.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from os import PathLike
from typing import Any, Iterator

from ..errors import InputRasterError
from .sensors import normalize_band_name

__all__ = ("BandInfo", "open_bands", "parse_number", "read_band_info")


@dataclass(frozen=True)
class BandInfo:
    """What the raster says about one band.

    Attributes:
        index: 1-based band index.
        description: The band description (``""`` if none).
        name: The description, or the colour interpretation (``"red"``) when there is none.
        name_source: ``"description"`` or ``"colour interpretation"``.
        dtype: numpy dtype name of the band.
        wavelength_nm: Central wavelength from the band's metadata, nm, or None.
        bandwidth_nm: Bandwidth from the metadata, nm, or None.
        wavelength_source: Which metadata item gave the wavelength (``"tag central_wavelength_nm"``), or ``""``.
        alpha_reason: Why the band is an alpha band, or ``""``.
    """

    index: int
    description: str
    name: str  # the description, or the colour interpretation when there is none
    name_source: str  # "description" or "colour interpretation"
    dtype: str
    wavelength_nm: float | None
    bandwidth_nm: float | None
    wavelength_source: str
    alpha_reason: str

    @property
    def label(self) -> str:
        """``band 3 ('B04')``: how messages name the band."""
        what = repr(self.description) if self.description else "no description"
        return f"band {self.index} ({what})"



@contextlib.contextmanager
def open_bands(source: Any) -> Iterator[Any]:
    """The dataset of a raster path (opened and closed here) or an open rasterio dataset (left open).

    Raises:
        InputRasterError: The path cannot be opened as a raster, or ``source`` is neither.
    """
    if isinstance(source, (str, PathLike)):
        import rasterio  # only when a path is read: the ranges and presets load without rasterio

        try:
            ds = rasterio.open(source)
        except Exception as err:  # rasterio raises RasterioIOError, a subclass of OSError, plus a few others
            raise InputRasterError(
                f"cannot open {str(source)!r} as a raster ({err}); check the path and that GDAL can read the format"
            ) from err
        with ds:
            yield ds
    elif hasattr(source, "descriptions") and hasattr(source, "count"):
        yield source
    else:
        raise InputRasterError(f"source must be a raster path or an open rasterio dataset, got {type(source).__name__}")


def read_band_info(ds: Any) -> list[BandInfo]:
    """One :class:`BandInfo` per band of an open rasterio dataset, in band order."""
    from rasterio.enums import ColorInterp  # see open_bands: the registry loads without rasterio

    colour_names = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}
    descriptions = list(ds.descriptions or ())
    colorinterp = list(ds.colorinterp or ())
    out = []
    for index in range(1, ds.count + 1):
        description = (descriptions[index - 1] if index <= len(descriptions) else None) or ""
        description = description.strip()
        interp = colorinterp[index - 1] if index <= len(colorinterp) else None
        name, name_source = description, "description"
        if not description and interp in colour_names:
            name, name_source = colour_names[interp], "colour interpretation"
        alpha_reason = ""
        if interp == ColorInterp.alpha:
            alpha_reason = "alpha band (colour interpretation 'alpha'): transparency, not a spectral band"
        elif normalize_band_name(description) == "alpha":
            alpha_reason = "alpha band (description 'alpha'): transparency, not a spectral band"
        wavelength_nm, bandwidth_nm, wavelength_source = _read_wavelength(ds, index)
        out.append(BandInfo(index, description, name, name_source, ds.dtypes[index - 1], wavelength_nm, bandwidth_nm,
                         wavelength_source, alpha_reason))
    return out


def parse_number(text: Any) -> float | None:
    """A number in a metadata value, optionally followed by ``nm`` (``"842"``, ``" 842.5 nm"``, ``"8.4e2"``).

    Args:
        text: A metadata value (any type; it is read as ``str(text)``), or None.

    Returns:
        The number as a float (no unit conversion), or None when ``text`` is None or not a plain number.
    """
    if text is None:
        return None
    match = re.fullmatch(r"\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*(nm)?\s*", str(text))
    return float(match.group(1)) if match else None


def _read_wavelength(ds: Any, index: int) -> tuple[float | None, float | None, str]:
    """Central wavelength and bandwidth in nm from the band's metadata, and which item they came from."""
    tags = {k.lower(): v for k, v in ds.tags(index).items()}
    for item in ("central_wavelength_nm", "center_wavelength_nm", "centre_wavelength_nm", "wavelength_nm"):
        value = parse_number(tags.get(item))
        if value is not None:
            bandwidth = parse_number(tags.get("bandwidth_nm", tags.get("fwhm_nm")))
            return value, bandwidth, f"tag {item}"
    try:
        imagery = {k.upper(): v for k, v in ds.tags(index, ns="IMAGERY").items()}
    except Exception:  # a driver without the domain
        imagery = {}
    value = parse_number(imagery.get("CENTRAL_WAVELENGTH_UM"))
    if value is not None:
        fwhm = parse_number(imagery.get("FWHM_UM"))
        return value * 1000.0, None if fwhm is None else fwhm * 1000.0, "IMAGERY CENTRAL_WAVELENGTH_UM"
    value = parse_number(tags.get("wavelength"))
    if value is not None:
        units = (tags.get("wavelength_units") or ds.tags().get("wavelength_units") or "").strip().lower()
        if units.startswith(("micro", "um", "µm", "μm")) or (not units.startswith("nano") and units != "nm"
                                                              and value < 100):
            return value * 1000.0, None, f"ENVI wavelength {value:g} {units or '(no units, read as µm)'}"
        return value, None, "ENVI wavelength"
    return None, None, ""
