"""``msfm bands`` (how a raster's bands map onto SMARTIES ranges, and why) and ``msfm sensors`` (the presets)."""

from __future__ import annotations

import argparse
from typing import Any

from ..raster import band_statistics, open_raster
from ..spectral import describe_mapping, list_sensors, resolve_bands
from .options import add_band_options, band_overrides

__all__ = ("register",)


def cmd_bands(args: argparse.Namespace) -> int:
    """Print the band mapping table, with the statistics inference will use."""
    with open_raster(args.input) as ds:
        mapping = resolve_bands(ds, sensor=args.sensor, overrides=band_overrides(args.band))
        # Show the statistics inference will use, including those estimated from the raster.
        mapping = mapping.with_stats(band_statistics(ds, mapping))
    print(describe_mapping(mapping))
    return 0


def cmd_sensors(args: argparse.Namespace) -> int:
    """Print one line per sensor preset."""
    for s in list_sensors():
        bands = ", ".join(b.name for b in s.bands)
        print(f"{s.id:<20} {s.name} — scale {s.default_scale:g} — bands: {bands}")
    return 0


def register(sub: Any) -> None:
    """Add ``bands`` and ``sensors`` to the ``msfm`` sub-parsers."""
    p = sub.add_parser("bands", help="show how a raster's bands map onto SMARTIES spectral ranges")
    p.add_argument("input", help="input raster")
    add_band_options(p)
    p.set_defaults(func=cmd_bands)

    p = sub.add_parser("sensors", help="list the sensor presets")
    p.set_defaults(func=cmd_sensors)
