"""Write the tiny test raster of tests/data from the bundled demo scene (``.venv/bin/python tests/data/make_data.py``).

``s2_l1c_virginia_13band_10m_96x128.tif`` is the pixel window rows 176…271 × columns 512…639 (96 rows × 128 columns)
of ``demo/s2_l1c_virginia_13band_10m.tif``: all 13 bands with their descriptions (``B01`` … ``B12``), their band tags
(``central_wavelength_nm``, ``native_gsd_m``), the dataset tags and nodata 0, on the demo's grid (EPSG:32618, 10 m;
the transform is the demo's shifted to the window's corner). Pixel values are copied unchanged (uint16, TOA
reflectance × 10000). Compression: deflate level 9 with horizontal differencing (predictor 2), band interleaved, one
128 × 96 block per band; about 100 KB.

Why this window: it is a shore of the lagoon behind the barrier island with a clean boundary: about 42 % of its pixels
are open water by NDWI = (B03 − B08) / (B03 + B08) > 0 (McFeeters 1996), the rest farmland and forest, and few pixels
are ambiguous (|NDWI| < 0.1). It was picked among 32-px-aligned windows of the scene with 35–60 % water as the one with
the fewest ambiguous pixels; the checks below keep any re-cut honest. It is not square, so a swapped width and height
shows; at the sensor's default scale 2 it spans 2 tiles of 224 px.

The cut involves no randomness (nothing to seed): the same demo file gives the same pixels, tags and georeferencing.
The file's bytes can differ with the GDAL version (tests compare pixels and metadata, not bytes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "demo" / "s2_l1c_virginia_13band_10m.tif"
TARGET = Path(__file__).resolve().parent / "s2_l1c_virginia_13band_10m_96x128.tif"
#: The cut: (column, row) offset and (width, height) in pixels of the demo scene.
WINDOW = Window(col_off=512, row_off=176, width=128, height=96)
CREATION = dict(driver="GTiff", compress="deflate", zlevel=9, predictor=2, interleave="band", tiled=True,
                blockxsize=128, blockysize=96)


def ndwi_water(green: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """Open water: NDWI = (green − NIR) / (green + NIR) > 0 (McFeeters 1996); pixels with green + NIR = 0 are not."""
    green, nir = green.astype(np.float64), nir.astype(np.float64)
    return (green - nir) / np.maximum(green + nir, 1) > 0


def cut(source: Path = SOURCE, target: Path = TARGET) -> Path:
    """Copy ``WINDOW`` of ``source`` into ``target`` (bands, descriptions, tags, nodata, CRS, shifted transform)."""
    with rasterio.open(source) as src:
        data = src.read(window=WINDOW)
        profile = dict(CREATION, width=WINDOW.width, height=WINDOW.height, count=src.count, dtype=src.dtypes[0],
                       nodata=src.nodata, crs=src.crs, transform=window_transform(WINDOW, src.transform))
        tags = src.tags()
        tags["source"] = (f"{tags.get('source', '')}; rows {WINDOW.row_off}-{WINDOW.row_off + WINDOW.height - 1}, "
                          f"columns {WINDOW.col_off}-{WINDOW.col_off + WINDOW.width - 1} of demo/{source.name}")
        tmp = target.with_name(f".{target.name}.part")
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = src.descriptions
            dst.update_tags(**tags)
            for i in range(1, src.count + 1):
                dst.update_tags(i, **src.tags(i))
        tmp.replace(target)
        bands = list(src.descriptions)
    water = ndwi_water(data[bands.index("B03")], data[bands.index("B08")])
    assert 0.3 < water.mean() < 0.6, f"the window must hold water and land (water {water.mean():.0%})"
    # No nodata pixel in the bands a model reads (tests add their own nodata). B10 (cirrus, 1375 nm) is 0 on a few
    # dozen water pixels here as in the whole demo scene; the band resolver drops it for L1C anyway.
    kept = [i for i, name in enumerate(bands) if name != "B10"]
    assert (data[kept] != src.nodata).all(), "the window holds nodata"
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help=f"the demo scene (default {SOURCE})")
    parser.add_argument("--out", type=Path, default=TARGET, help=f"the file to write (default {TARGET})")
    args = parser.parse_args()
    path = cut(args.source, args.out)
    print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
