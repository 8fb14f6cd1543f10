"""Input sanity checks (issue 14, defect 8): rasters that cannot be what their sensor preset or statistics say.

Every variant is a real raster (the committed Sentinel-2 crop, or ../shared/data) copied into ``tmp_path`` and
transformed with rasterio: rescaled to 8 bits, divided to reflectance 0–1, converted to linear backscatter, made
complex, made constant. The checks run where a pass of a model settles its bands and statistics
(:func:`engine.raster.band_statistics`, through :func:`engine.models.open_reader`), and the band-count check in
:func:`engine.spectral.resolve_bands`; the last test runs them over every real raster with its usual sensor.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pytest
import rasterio

from engine.errors import BandResolutionError, InputRasterError
from engine.models import open_reader
from engine.raster import band_statistics, open_raster
from engine.settings import InferenceSettings
from engine.spectral import BandStats, get_sensor, resolve_bands
from tests.conftest import BEN_S1, BEN_S2, DATA, REPO, TINY_S2, shared_file

#: 1-based indexes of B01, B04, B08, B11, B12 in the 13-band Sentinel-2 L1C crop.
B01, B04, B08, B11, B12 = 1, 4, 8, 12, 13


def _write(dst: Path, data: np.ndarray, descriptions: Sequence[str], src: Path = TINY_S2,
           nodata: Optional[float] = None) -> Path:
    """``data`` [C, H, W] as a GeoTIFF on the grid of ``src`` (a window of it when smaller), with band descriptions."""
    with rasterio.open(src) as ds:
        profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
                   "dtype": data.dtype, "crs": ds.crs, "transform": ds.transform, "nodata": nodata}
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        for i, text in enumerate(descriptions, start=1):
            out.set_band_description(i, text)
    return dst


def _read(src: Path, indexes: Sequence[int]) -> np.ndarray:
    with rasterio.open(src) as ds:
        return ds.read(list(indexes))


def _stretch_to_8bit(data: np.ndarray) -> np.ndarray:
    """Each band's 1–99 % range linearly to 0–255, as an 8-bit export of a Sentinel-2 scene does."""
    out = np.empty(data.shape, np.float32)
    for i, band in enumerate(data.astype(np.float32)):
        lo, hi = np.percentile(band[band > 0], [1, 99])
        out[i] = np.clip((band - lo) / (hi - lo) * 255, 0, 255)
    return out


def _open_reader(path: Path, model: Any, **kwargs: Any) -> None:
    with rasterio.open(path) as ds:
        reader, _ = open_reader(ds, model, InferenceSettings(device="cpu"), **kwargs)
        reader.close()


# ---------------------------------------------------------------------------------------------------- dtype and units
def test_8bit_raster_described_as_sentinel2_is_refused(tmp_path: Path, random_encoder: Any) -> None:
    data = np.round(_stretch_to_8bit(_read(TINY_S2, [B11, B12, B01]))).astype(np.uint8)
    path = _write(tmp_path / "s2_8bit.tif", data, ["B11", "B12", "B01"])
    assert resolve_bands(path).sensor == "sentinel2_l2a"  # the names alone say Sentinel-2: its statistics would apply
    with pytest.raises(InputRasterError) as err:
        _open_reader(path, random_encoder)
    message = str(err.value)
    assert "s2_8bit.tif" in message and "uint8" in message and "0 to 255" in message  # what was found
    assert "sentinel2_l2a" in message and "reflectance x10000" in message  # against what
    assert "pretrained" in message  # why it matters
    assert "--sensor" in message and "Sensor preset in QGIS" in message and "rescale or convert" in message  # fix
    assert "\n" not in message


def test_8bit_values_in_a_float_raster_only_warn(tmp_path: Path, random_encoder: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    # The same 0–255 values as float32: about 1/14 of the preset's p99, borderline (a scene of water alone has SWIR
    # bands that low), so a warning, not an error.
    data = _stretch_to_8bit(_read(TINY_S2, [B11, B12, B01]))
    path = _write(tmp_path / "s2_0_255.tif", data, ["B11", "B12", "B01"])
    with caplog.at_level(logging.WARNING, logger="engine.raster"):
        _open_reader(path, random_encoder)
    warned = [r.getMessage() for r in caplog.records if r.name == "engine.raster.statistics"]
    assert len(warned) == 1 and "sentinel2_l2a" in warned[0] and "check that the raster is in" in warned[0]


def test_reflectance_0_1_described_as_sentinel2_is_refused(tmp_path: Path, random_encoder: Any) -> None:
    data = (_read(TINY_S2, range(1, 14)) / 10000.0).astype(np.float32)
    with rasterio.open(TINY_S2) as ds:
        names = list(ds.descriptions)
    path = _write(tmp_path / "s2_reflectance.tif", data, names, nodata=0.0)
    with pytest.raises(InputRasterError, match="below 1/20 in every band") as err:
        _open_reader(path, random_encoder, sensor="sentinel2_l1c")
    assert "TOA reflectance x10000" in str(err.value) and "convert the raster" in str(err.value)


def test_head_card_statistics_are_checked_too(tmp_path: Path, random_encoder: Any) -> None:
    # Segmentation passes the statistics of the head's card: an 8-bit raster is refused against them as well.
    data = np.round(_stretch_to_8bit(_read(TINY_S2, [B04, B08]))).astype(np.uint8)
    path = _write(tmp_path / "s2_8bit_b4_b8.tif", data, ["B04", "B08"])
    preset = {b.name: b.stats for b in get_sensor("sentinel2_l1c").bands}
    card = [BandStats(s.p1, s.p99, s.mean, s.std, "head card") for s in (preset["B04"], preset["B08"])]
    with rasterio.open(path) as ds:
        mapping = resolve_bands(ds, sensor="sentinel2_l1c")
        with pytest.raises(InputRasterError, match=r"uint8 .*statistics it is normalised with \(head card\)"):
            open_reader(ds, random_encoder, InferenceSettings(device="cpu"), mapping=mapping, stats=card)


def test_linear_backscatter_described_as_db_is_refused(tmp_path: Path) -> None:
    src = shared_file(*BEN_S1)
    db = _read(src, [1, 2])
    path = _write(tmp_path / "s1_linear.tif", (10.0 ** (db / 10.0)).astype(np.float32), ["VV", "VH"], src=src)
    with rasterio.open(path) as ds:
        mapping = resolve_bands(ds)
        assert mapping.sensor == "sentinel1_grd_db"
        with pytest.raises(InputRasterError, match="sentinel1_grd_db.*sigma0 backscatter in dB"):
            band_statistics(ds, mapping)


# ---------------------------------------------------------------------------------------------------- band count
def test_preset_with_fewer_bands_than_the_raster_is_refused() -> None:
    with pytest.raises(InputRasterError) as err:
        resolve_bands(TINY_S2, sensor="naip_rgbn")
    message = str(err.value)
    assert "naip_rgbn" in message and "4 band(s)" in message and "12 bands to embed" in message  # both counts
    assert "--sensor sentinel2_l1c" in message and "--band N=drop" in message and "Band overrides" in message


def test_band_count_accepts_what_real_workflows_need(tmp_path: Path) -> None:
    # Extra bands mapped or dropped by overrides do not count.
    extra = {i: "drop" for i in range(5, 14)}
    assert len(resolve_bands(TINY_S2, sensor="naip_rgbn", overrides=extra).bands) == 4
    # A subset of a preset's bands, named: fine.
    subset = _write(tmp_path / "s2_subset.tif", _read(TINY_S2, [B04, B08]), ["B04", "B08"])
    assert [b.stats is not None for b in resolve_bands(subset, sensor="sentinel2_l2a").bands] == [True, True]
    # The 13-band L1C with the 12-band L2A preset: B10 is dropped, so 12 bands remain.
    assert len(resolve_bands(TINY_S2, sensor="sentinel2_l2a").bands) == 12


def test_stack_of_two_sensors_keeps_its_preset(tmp_path: Path) -> None:
    # BigEarthNet S2 (12 bands) + S1 (VV, VH) of the same place: more bands than the preset, but the raster looks
    # like it; VV and VH are mapped by name with statistics from the raster.
    s2, s1 = shared_file(*BEN_S2), shared_file(*BEN_S1)
    with rasterio.open(s2) as ds:
        names = list(ds.descriptions)
    data = np.concatenate([_read(s2, range(1, 13)).astype(np.float32), _read(s1, [1, 2])])
    path = _write(tmp_path / "s2_s1_stack.tif", data, [*names, "VV", "VH"], src=s2)
    with rasterio.open(path) as ds:
        mapping = resolve_bands(ds, sensor="sentinel2_l2a")
        stats = band_statistics(ds, mapping)
    assert len(mapping.bands) == 14 and [s.source for s in stats[-2:]] == ["raster", "raster"]


# ---------------------------------------------------------------------------------------------------- complex, constant
def test_complex_raster_is_refused(tmp_path: Path, random_encoder: Any) -> None:
    data = _read(TINY_S2, [B04, B08]).astype(np.float32)
    path = _write(tmp_path / "slc.tif", (data[:1] + 1j * data[1:]).astype(np.complex64), ["B04"])
    with pytest.raises(InputRasterError) as err:
        open_raster(path)
    message = str(err.value)
    assert "complex64" in message and "imaginary" in message and "gdal_calc.py" in message and "dB" in message
    with pytest.raises(InputRasterError, match="complex64"):  # a dataset the caller opened: at the statistics
        _open_reader(path, random_encoder, sensor="sentinel2_l1c")


def test_constant_raster_is_refused(tmp_path: Path, random_encoder: Any) -> None:
    data = _read(TINY_S2, [B04, B08])
    path = _write(tmp_path / "constant.tif", np.full_like(data, 1234), ["B04", "B08"])
    with pytest.raises(InputRasterError, match=r"every band of .*constant.tif is constant \(value 1234\).*nothing to "
                                               r"map"):
        _open_reader(path, random_encoder)
    # One constant band among others is not refused (its statistics are the usual fallback).
    varied = _write(tmp_path / "one_constant.tif", np.stack([data[0], np.full_like(data[1], 7)]), ["B04", "B08"])
    _open_reader(varied, random_encoder)


def test_constant_raster_is_refused_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.cli import main

    data = _read(TINY_S2, [B04, B08])
    path = _write(tmp_path / "constant.tif", np.stack([np.full_like(data[0], 3), np.full_like(data[1], 5)]),
                  ["B04", "B08"])
    assert main(["bands", str(path)]) == 2
    assert "constant (values 3, 5)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- real rasters
#: Rasters of ../shared/data that are labels, not images: no sensor maps them (they are used as labels).
_LABELS = ("road_mask", "water_label")


def _real_rasters() -> list[Path]:
    files = [*sorted((REPO / "demo").glob("*.tif")), TINY_S2]
    if DATA.is_dir():
        files += [p for p in sorted(DATA.rglob("*.tif")) if not any(label in p.name for label in _LABELS)]
    return files


@pytest.mark.parametrize("path", _real_rasters(), ids=lambda p: p.name)
def test_every_real_raster_passes_with_its_usual_sensor(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sensor = "naip_rgbn" if path.name.startswith("naip_") else None  # NAIP has no band descriptions (SOURCES.md)
    with caplog.at_level(logging.WARNING, logger="engine.raster"), rasterio.open(path) as ds:
        try:
            mapping = resolve_bands(ds, sensor=sensor)
        except BandResolutionError as err:  # pragma: no cover - a new file of ../shared without metadata
            pytest.fail(f"{path.name} does not resolve: {err}")
        stats = band_statistics(ds, mapping)
    assert len(stats) == len(mapping.bands)
    assert not [r.getMessage() for r in caplog.records if r.name == "engine.raster.statistics"]
