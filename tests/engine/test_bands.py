"""Sensor presets (engine.sensors) and the band resolver (engine.bands) on the real rasters in ../shared/data.

Variants with other metadata (no descriptions, other tags) are small windows of the real rasters rewritten into
``tmp_path`` with rasterio, pixel values unchanged.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest
import rasterio
from rasterio.windows import Window

from engine.errors import BandResolutionError, InputRasterError
from engine.spectral import (
    BandMapping,
    BandStats,
    DroppedBand,
    ResolvedBand,
    describe_mapping,
    get_range,
    get_sensor,
    interpolated_projection,
    list_sensors,
    normalize_band_name,
    parse_overrides,
    projection_for,
    resolve_bands,
)
from tests.conftest import (
    DRONE,
    L8,
    L8_PAN,
    LANDSAT7,
    NAIP,
    S2_L1C,
    VEGAS_PAN,
    VEGAS_ROADS,
    WV2_BGRN,
    WV2_PAN,
    shared_file,
)

# Spec §3: the band keys of the pretraining sensors, in file order.
S2_L1C_KEYS = [
    "aerosol", "blue_1", "green_2", "red_2", "red_edge_1", "red_edge_2", "near_infrared_2", "near_infrared_1",
    "near_infrared_3", "short_wave_infrared_1", "short_wave_infrared_2", "short_wave_infrared_3",
    "short_wave_infrared_4",
]
S2_L2A_KEYS = [k for k in S2_L1C_KEYS if k != "short_wave_infrared_2"]
S2_NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _bigearthnet(suffix: str) -> list[Path]:
    folder = shared_file("data", "bigearthnet_mm")
    files = sorted(folder.glob(f"*_{suffix}.tif"))
    assert len(files) == 6, files
    return files


def _spec_stats(sensor_title: str) -> dict[str, tuple[float, float, float, float]]:
    """Parse a statistics table of the SMARTIES spec in ../shared (docs/smarties.md §3 has the same numbers)."""
    text = shared_file("spec", "smarties.md").read_text(encoding="utf-8")
    section = text.split(f"**{sensor_title}**", 1)[1].split("\n\n**", 1)[0]
    out = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].isdigit():
            key = cells[1]
            mean, std, p1, p99 = (float(c) for c in cells[4:8])
            out[key] = (p1, p99, mean, std)
    assert out, f"no table for {sensor_title}"
    return out


def _copy(
    src: Path,
    dst: Path,
    *,
    bands: Optional[Sequence[int]] = None,
    descriptions: Optional[Sequence[Optional[str]]] = None,
    tags: Optional[dict[str, str]] = None,
    band_tags: Optional[Sequence[dict[str, str]]] = None,
    imagery: Optional[Sequence[dict[str, str]]] = None,
    size: int = 32,
) -> Path:
    """Rewrite a window of a real raster with chosen descriptions and tags (nothing else is carried over)."""
    with rasterio.open(src) as ds:
        indexes = list(bands or range(1, ds.count + 1))
        data = ds.read(indexes, window=Window(0, 0, size, size))
        profile = {
            "driver": "GTiff", "width": size, "height": size, "count": len(indexes), "dtype": data.dtype,
            "crs": ds.crs, "transform": ds.window_transform(Window(0, 0, size, size)),
        }
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        for i in range(1, len(indexes) + 1):
            if descriptions is not None and descriptions[i - 1]:
                out.set_band_description(i, descriptions[i - 1])
            if band_tags is not None and band_tags[i - 1]:
                out.update_tags(i, **band_tags[i - 1])
            if imagery is not None and imagery[i - 1]:
                out.update_tags(i, ns="IMAGERY", **imagery[i - 1])
        if tags:
            out.update_tags(**tags)
    return dst


def _by_index(mapping: BandMapping) -> dict[int, ResolvedBand]:
    return {b.index: b for b in mapping.bands}


# ----------------------------------------------------------------------------------------------------------------------
# Presets


def test_preset_ids_and_scales() -> None:
    ids = [s.id for s in list_sensors()]
    assert sorted(ids) == sorted([
        "sentinel2_l1c", "sentinel2_l2a", "sentinel1_grd_db", "rgb", "landsat8_oli_tirs", "naip_rgbn",
        "worldview2_ms", "worldview3_ms", "worldview2_bgrn", "planetscope_4b", "planetscope_8b", "panchromatic",
    ])
    for sensor in list_sensors():
        assert sensor.id == sensor.id.lower()
        expected = 2.0 if sensor.id.startswith(("sentinel", "landsat")) else 1.0
        assert sensor.default_scale == expected, sensor.id
    assert [b.name for b in get_sensor("sentinel2_l1c").bands] == S2_NAMES
    assert [b.name for b in get_sensor("sentinel2_l2a").bands] == [n for n in S2_NAMES if n != "B10"]


@pytest.mark.parametrize(
    ("sensor_id", "title", "keys"),
    [
        ("sentinel2_l1c", "SENTINEL2-L1C", S2_L1C_KEYS),
        ("sentinel2_l2a", "SENTINEL2-L2A", S2_L2A_KEYS),
        ("sentinel1_grd_db", "SENTINEL1-GRD", ["microwave_1", "microwave_2"]),
        ("rgb", "RGB", ["red_1", "green_1", "blue_3"]),
    ],
)
def test_pretraining_presets_carry_the_spec_statistics(sensor_id: str, title: str, keys: list[str]) -> None:
    spec = _spec_stats(title)
    sensor = get_sensor(sensor_id)
    assert [b.key for b in sensor.bands] == keys
    for band in sensor.bands:
        assert band.stats is not None, band.name
        assert (band.stats.p1, band.stats.p99, band.stats.mean, band.stats.std) == spec[band.key], band.name
        assert band.stats.source == f"preset:{sensor_id}"


def test_other_presets() -> None:
    landsat = get_sensor("landsat8_oli_tirs")
    assert [(b.name, b.key) for b in landsat.bands] == [
        ("B1", "aerosol"), ("B2", "blue_2"), ("B3", "green_2"), ("B4", "red_2"), ("B5", "near_infrared_3"),
        ("B6", "short_wave_infrared_3"), ("B7", "short_wave_infrared_4"), ("B8", None),
        ("B9", "short_wave_infrared_2"), ("B10", "thermal_infrared_1"), ("B11", None),
    ]
    assert all(b.stats is None for b in landsat.bands)
    assert landsat.bands[7].wavelength_nm == 590.0 and landsat.bands[7].bandwidth_nm == 180.0
    naip = get_sensor("naip_rgbn")
    assert [b.key for b in naip.bands] == ["red_1", "green_1", "blue_3", "near_infrared_1"]
    rgb = get_sensor("rgb")
    assert [b.stats for b in naip.bands[:3]] == [
        BandStats(b.stats.p1, b.stats.p99, b.stats.mean, b.stats.std, "preset:naip_rgbn") for b in rgb.bands if b.stats
    ]
    assert naip.bands[3].stats is None
    # WorldView / PlanetScope keys are chosen by wavelength (key "auto" in the JSON).
    wv2 = [b.key for b in get_sensor("worldview2_ms").bands]
    assert wv2 == ["aerosol", "blue_3", "green_1", "red_1", "red_2", None, "near_infrared_1", "short_wave_infrared_1"]
    assert [b.key for b in get_sensor("worldview3_ms").bands] == wv2
    assert [b.key for b in get_sensor("worldview2_bgrn").bands] == ["blue_3", "green_1", "red_2", "near_infrared_1"]
    assert [b.key for b in get_sensor("planetscope_4b").bands] == ["blue_3", "green_2", "red_2", "near_infrared_3"]
    assert [b.key for b in get_sensor("planetscope_8b").bands] == [
        "aerosol", "blue_3", "green_1", "green_2", "red_1", "red_2", "red_edge_1", "near_infrared_3",
    ]
    pan = get_sensor("panchromatic")
    assert [(b.key, b.wavelength_nm) for b in pan.bands] == [(None, 625.0)]


def test_get_sensor_spellings_and_unknown_ids() -> None:
    assert get_sensor("Sentinel2-L2A").id == "sentinel2_l2a"
    with pytest.raises(BandResolutionError, match="Did you mean sentinel2_l2a") as err:
        get_sensor("sentinel2_l2")
    assert "naip_rgbn" in str(err.value)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("B04", "b4"), ("b4", "b4"), ("Band_04", "b4"), ("SR_B4", "b4"), ("ST_B10", "b10"), ("B8A", "b8a"),
     ("Red Edge 1", "rededge1"), ("VV", "vv"), ("NIR1", "nir1"), (None, ""), ("B10", "b10")],
)
def test_normalize_band_name(text: Optional[str], canonical: str) -> None:
    assert normalize_band_name(text) == canonical


# ----------------------------------------------------------------------------------------------------------------------
# The shared rasters


def test_sentinel2_l1c_drops_b10() -> None:
    mapping = resolve_bands(shared_file(*S2_L1C))
    assert mapping.sensor == "sentinel2_l1c"
    assert "B8A" in mapping.sensor_reason and "L1C" in mapping.sensor_reason
    assert len(mapping.bands) == 12
    assert mapping.indexes == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13]
    assert mapping.keys == [k for k in S2_L1C_KEYS if k != "short_wave_infrared_2"]
    assert [b.description for b in mapping.bands] == [n for n in S2_NAMES if n != "B10"]
    assert [p.terms for p in mapping.projections] == [((get_range(k).projection_idx, 1.0),) for k in mapping.keys]
    assert {b.rule for b in mapping.bands} == {"description"}
    assert mapping.dropped == (mapping.dropped[0],) and mapping.dropped[0].index == 11
    assert mapping.dropped[0].description == "B10"
    assert "short_wave_infrared_2" in mapping.dropped[0].reason
    spec = _spec_stats("SENTINEL2-L1C")
    for band in mapping.bands:
        assert band.stats is not None
        assert (band.stats.p1, band.stats.p99, band.stats.mean, band.stats.std) == spec[band.key]
    assert _by_index(mapping)[9].wavelength_nm == pytest.approx(864.7)  # B8A, from the band's tag


def test_sentinel2_l1c_without_descriptions_resolves_by_wavelength(tmp_path: Path) -> None:
    src = shared_file(*S2_L1C)
    with rasterio.open(src) as ds:
        band_tags = [{"central_wavelength_nm": ds.tags(i)["central_wavelength_nm"]} for i in range(1, 14)]
    path = _copy(src, tmp_path / "s2.tif", band_tags=band_tags)
    mapping = resolve_bands(path)
    assert mapping.sensor is None
    assert {b.rule for b in mapping.bands} == {"wavelength"}
    assert mapping.keys == [k for k in S2_L1C_KEYS if k != "short_wave_infrared_2"]
    assert [d.index for d in mapping.dropped] == [11]
    assert all(b.stats is None for b in mapping.bands)
    # With the sensor named, the wavelength-matched bands get the preset statistics.
    named = resolve_bands(path, sensor="sentinel2_l1c")
    assert {b.rule for b in named.bands} == {"wavelength"}
    assert [b.stats for b in named.bands] == [b.stats for b in get_sensor("sentinel2_l1c").bands if b.name != "B10"]


def test_sentinel2_l2a_bigearthnet() -> None:
    spec = _spec_stats("SENTINEL2-L2A")
    for path in _bigearthnet("s2_12band"):
        mapping = resolve_bands(path)
        assert mapping.sensor == "sentinel2_l2a", path.name
        assert mapping.keys == S2_L2A_KEYS
        assert mapping.indexes == list(range(1, 13))
        assert mapping.dropped == ()
        assert [(b.stats.p1, b.stats.p99, b.stats.mean, b.stats.std) for b in mapping.bands if b.stats] == [
            spec[k] for k in S2_L2A_KEYS
        ]


def test_sentinel1_vv_vh_bigearthnet() -> None:
    for path in _bigearthnet("s1_vv_vh"):
        mapping = resolve_bands(path)
        assert mapping.sensor == "sentinel1_grd_db"
        assert mapping.keys == ["microwave_1", "microwave_2"]
        assert [p.terms for p in mapping.projections] == [((15, 1.0),), ((16, 1.0),)]
        vv, vh = mapping.bands
        assert vv.stats is not None and vv.stats.p1 == pytest.approx(-29.519697483502714)
        assert vh.stats is not None and vh.stats.p99 == pytest.approx(-9.905399040164635)
        assert "dB" in mapping.sensor_reason


def test_landsat8_drops_cirrus_and_maps_thermal() -> None:
    mapping = resolve_bands(shared_file(*L8))
    assert mapping.sensor == "landsat8_oli_tirs"
    assert mapping.indexes == [1, 2, 3, 4, 5, 6, 7, 9, 10]
    assert mapping.keys == [
        "aerosol", "blue_2", "green_2", "red_2", "near_infrared_3", "short_wave_infrared_3",
        "short_wave_infrared_4", "thermal_infrared_1", None,
    ]
    assert [(d.index, d.description) for d in mapping.dropped] == [(8, "B9")]
    assert "no SMARTIES projection" in mapping.dropped[0].reason
    bands = _by_index(mapping)
    assert bands[9].projection.terms == projection_for("thermal_infrared_1").terms
    assert [i for i, _ in bands[9].projection.terms] == [14, 15]
    assert bands[10].projection.terms == interpolated_projection(12005.0).terms  # B11 TIRS-2: no range
    assert bands[2].projection.terms == projection_for("blue_2", "linear").terms
    assert all(b.stats is None for b in mapping.bands)
    reference = resolve_bands(shared_file(*L8), averaging="reference")
    assert _by_index(reference)[2].projection.terms == projection_for("blue_2", "reference").terms


def test_landsat8_guessed_from_unpadded_band_numbers(tmp_path: Path) -> None:
    src = shared_file(*L8)
    with rasterio.open(src) as ds:
        names = list(ds.descriptions)
    path = _copy(src, tmp_path / "l8.tif", descriptions=names)  # no dataset tags, no wavelength tags
    mapping = resolve_bands(path)
    assert mapping.sensor == "landsat8_oli_tirs"
    assert "unpadded" in mapping.sensor_reason
    assert mapping.keys[1] == "blue_2" and mapping.keys[3] == "red_2"
    assert [d.index for d in mapping.dropped] == [8]


def test_ambiguous_band_numbers_need_a_sensor(tmp_path: Path) -> None:
    # Google-Earth-Engine style Sentinel-2 names: B2, B3, B4, B8 are also Landsat band names.
    src = shared_file(*S2_L1C)
    path = _copy(src, tmp_path / "gee.tif", bands=[2, 3, 4, 8], descriptions=["B2", "B3", "B4", "B8"])
    with pytest.raises(BandResolutionError) as err:
        resolve_bands(path)
    message = str(err.value)
    assert "band 1 ('B2')" in message and "--band 1=" in message and "--sensor" in message
    mapping = resolve_bands(path, sensor="sentinel2_l2a")
    assert mapping.keys == ["blue_1", "green_2", "red_2", "near_infrared_1"]
    # Wavelength tags settle it without a sensor.
    tagged = _copy(src, tmp_path / "gee_tagged.tif", bands=[2, 3, 4, 8], descriptions=["B2", "B3", "B4", "B8"],
                   band_tags=[{"central_wavelength_nm": w} for w in ("492.4", "559.8", "664.6", "832.8")])
    mapping = resolve_bands(tagged)
    assert mapping.sensor == "sentinel2_l2a"
    assert "wavelength tags agree with Sentinel-2" in mapping.sensor_reason
    assert mapping.keys == ["blue_1", "green_2", "red_2", "near_infrared_1"]


def test_naip_needs_a_sensor() -> None:
    path = shared_file(*NAIP)
    with pytest.raises(BandResolutionError) as err:
        resolve_bands(path)
    message = str(err.value)
    for band in (1, 2, 3, 4):
        assert f"band {band} (no description)" in message
    assert "--band 1=red_2" in message and "overrides={1: 'red_2'}" in message
    assert "--sensor naip_rgbn" in message and "sensor='naip_rgbn'" in message
    assert "near_infrared_1" in message  # the valid keys are listed
    mapping = resolve_bands(path, sensor="naip_rgbn")
    assert mapping.sensor == "naip_rgbn" and mapping.sensor_reason.startswith("given by the caller")
    assert mapping.keys == ["red_1", "green_1", "blue_3", "near_infrared_1"]
    assert {b.rule for b in mapping.bands} == {"preset"}
    rgb = get_sensor("rgb")
    assert [(b.stats.p1, b.stats.p99) for b in mapping.bands[:3] if b.stats] == [
        (b.stats.p1, b.stats.p99) for b in rgb.bands if b.stats
    ]
    assert mapping.bands[3].stats is None


def test_naip_with_a_list_of_keys() -> None:
    mapping = resolve_bands(shared_file(*NAIP), overrides=["red_2", "green_2", "blue_1", "near_infrared_3"])
    assert mapping.keys == ["red_2", "green_2", "blue_1", "near_infrared_3"]
    assert {b.rule for b in mapping.bands} == {"override"}
    assert mapping.sensor is None and all(b.stats is None for b in mapping.bands)


def test_worldview2_bgrn() -> None:
    mapping = resolve_bands(shared_file(*WV2_BGRN))
    assert mapping.sensor == "worldview2_bgrn"
    assert mapping.keys == ["blue_3", "green_1", "red_2", "near_infrared_1"]
    assert [b.wavelength_nm for b in mapping.bands] == [480.0, 545.0, 660.0, 835.0]  # the file's tags
    assert all(b.stats is None for b in mapping.bands)


def test_worldview2_bgrn_by_wavelength_tags_alone(tmp_path: Path) -> None:
    src = shared_file(*WV2_BGRN)
    with rasterio.open(src) as ds:
        band_tags = [ds.tags(i) for i in range(1, 5)]
    assert [t["central_wavelength_nm"] for t in band_tags] == ["480", "545", "660", "835"]
    path = _copy(src, tmp_path / "wv2.tif", band_tags=band_tags)
    mapping = resolve_bands(path)
    assert mapping.sensor is None
    assert {b.rule for b in mapping.bands} == {"wavelength"}
    assert mapping.keys == ["blue_3", "green_1", "red_2", "near_infrared_1"]
    assert "480 nm lies in base range blue_3" in mapping.bands[0].reason


def test_wavelength_from_gdal_imagery_domain_and_envi_tags(tmp_path: Path) -> None:
    src = shared_file(*WV2_BGRN)
    imagery = [{"CENTRAL_WAVELENGTH_UM": w, "FWHM_UM": "0.06"} for w in ("0.480", "0.545", "0.660", "0.835")]
    mapping = resolve_bands(_copy(src, tmp_path / "imagery.tif", imagery=imagery))
    assert mapping.keys == ["blue_3", "green_1", "red_2", "near_infrared_1"]
    assert mapping.bands[2].wavelength_nm == pytest.approx(660.0)
    assert "CENTRAL_WAVELENGTH_UM" in mapping.bands[2].reason
    envi = [{"wavelength": w, "wavelength_units": "Micrometers"} for w in ("0.480", "0.545", "0.660", "0.835")]
    mapping = resolve_bands(_copy(src, tmp_path / "envi.tif", band_tags=envi))
    assert mapping.keys == ["blue_3", "green_1", "red_2", "near_infrared_1"]
    envi_nm = [{"wavelength": w, "wavelength_units": "Nanometers"} for w in ("480", "545", "660", "835")]
    assert resolve_bands(_copy(src, tmp_path / "envi_nm.tif", band_tags=envi_nm)).keys == mapping.keys


def test_micrometre_tag_is_reported_with_the_band(tmp_path: Path) -> None:
    src = shared_file(*WV2_BGRN)
    path = _copy(src, tmp_path / "um.tif", bands=[3], band_tags=[{"central_wavelength_nm": "0.66"}])
    with pytest.raises(BandResolutionError, match=r"band 1 .*micrometres.*--band 1=660"):
        resolve_bands(path)


def test_drone_rgba_drops_alpha() -> None:
    path = shared_file(*DRONE)
    with rasterio.open(path) as ds:
        assert ds.descriptions == ("red", "green", "blue", None)
        assert ds.colorinterp[3].name == "alpha"
    mapping = resolve_bands(path)
    assert mapping.sensor == "rgb"
    assert mapping.indexes == [1, 2, 3]
    assert mapping.keys == ["red_1", "green_1", "blue_3"]
    assert [b.stats for b in mapping.bands] == [b.stats for b in get_sensor("rgb").bands]
    assert mapping.dropped == (DroppedBand(4, "", mapping.dropped[0].reason),)
    assert "alpha" in mapping.dropped[0].reason
    # An override keeps the alpha band (every rule is overridable).
    kept = resolve_bands(path, overrides={4: "near_infrared_1"})
    assert kept.indexes == [1, 2, 3, 4] and kept.bands[3].rule == "override" and kept.dropped == ()


def test_landsat7_rgb_by_colour_interpretation() -> None:
    path = shared_file(*LANDSAT7)
    with rasterio.open(path) as ds:
        assert ds.descriptions == (None, None, None)
    mapping = resolve_bands(path)
    assert mapping.sensor == "rgb"
    assert mapping.keys == ["red_1", "green_1", "blue_3"]
    assert [b.description for b in mapping.bands] == ["", "", ""]
    assert "colour interpretation 'red'" in mapping.bands[0].reason
    assert mapping.bands[0].stats == get_sensor("rgb").bands[0].stats


@pytest.mark.parametrize("parts", [VEGAS_PAN, WV2_PAN])
def test_worldview_pan_is_interpolated(parts: tuple[str, ...]) -> None:
    mapping = resolve_bands(shared_file(*parts))
    assert mapping.sensor == "panchromatic"
    (band,) = mapping.bands
    assert band.description == "PAN"
    assert band.key is None and band.wavelength_nm == 625.0
    assert band.projection.terms == interpolated_projection(625.0).terms
    assert [i for i, _ in band.projection.terms] == [4, 5]  # green_2 and red_1 bracket 625 nm
    assert band.stats is None


def test_landsat_pan_b8() -> None:
    path = shared_file(*L8_PAN)
    mapping = resolve_bands(path)
    assert mapping.sensor == "landsat8_oli_tirs"
    (band,) = mapping.bands
    assert (band.description, band.key, band.wavelength_nm, band.rule) == ("B8", None, 590.0, "description")
    assert band.projection.terms == interpolated_projection(590.0).terms
    # Named as generic panchromatic, the 590 nm tag is matched with the preset's 350 nm bandwidth: interpolated too.
    as_pan = resolve_bands(path, sensor="panchromatic")
    assert as_pan.bands[0].key is None and as_pan.bands[0].rule == "wavelength"
    assert as_pan.bands[0].projection.terms == interpolated_projection(590.0).terms
    assert "looks like landsat8_oli_tirs" in as_pan.sensor_reason


def test_bandwidth_tag_decides_between_range_and_interpolation(tmp_path: Path) -> None:
    src = shared_file(*L8_PAN)
    narrow = resolve_bands(_copy(src, tmp_path / "narrow.tif", band_tags=[{"central_wavelength_nm": "590"}]))
    assert narrow.keys == ["green_2"]  # no bandwidth: the containing range with the nearest centre
    wide = resolve_bands(
        _copy(src, tmp_path / "wide.tif", band_tags=[{"central_wavelength_nm": "590", "bandwidth_nm": "180"}])
    )
    assert wide.keys == [None]
    assert "wide band" in wide.bands[0].reason


# ----------------------------------------------------------------------------------------------------------------------
# Overrides and errors


def test_overrides_win() -> None:
    path = shared_file(*S2_L1C)
    mapping = resolve_bands(path, overrides={4: "red_1", "B08": 842.0, "b12": "drop", 11: "short_wave_infrared_3"})
    bands = _by_index(mapping)
    assert (bands[4].key, bands[4].rule) == ("red_1", "override")
    assert bands[4].stats is None  # the S2 preset has no red_1 band
    assert (bands[8].key, bands[8].rule, bands[8].wavelength_nm) == ("near_infrared_1", "override", 842.0)
    assert bands[8].stats == get_sensor("sentinel2_l1c").bands[7].stats  # preset band with that key: B08
    assert 13 not in bands and [d.index for d in mapping.dropped] == [13]
    assert bands[11].key == "short_wave_infrared_3"  # B10 kept because the caller asked for it
    assert bands[1].rule == "description"


def test_override_strings_from_the_command_line() -> None:
    mapping = resolve_bands(shared_file(*NAIP), overrides={"1": "665nm", "2": "green_1", "3": "blue_3", "4": "drop"})
    assert mapping.keys == ["red_2", "green_1", "blue_3"]
    assert mapping.bands[0].wavelength_nm == 665.0


def test_parse_overrides_text_form() -> None:
    text = "4=red_2; 5=842.5, B8=near_infrared_1 ; 1=drop"
    assert parse_overrides(text) == {4: "red_2", 5: 842.5, "B8": "near_infrared_1", 1: "drop"}
    assert parse_overrides("") == {} and parse_overrides(" \n ; ,") == {}
    lines = "1 = 665nm\n2=green_1\n3=blue_3,\n4=DROP\n"
    assert parse_overrides(lines) == {1: 665.0, 2: "green_1", 3: "blue_3", 4: "drop"}
    # The text form feeds the resolver directly.
    mapping = resolve_bands(shared_file(*NAIP), overrides=parse_overrides("1=red_2; 2=green_2; 3=blue_1; 4=842"))
    assert mapping.keys == ["red_2", "green_2", "blue_1", "near_infrared_1"]
    for bad, pattern in [("4=red_2; 5", r"'5' is not BAND=VALUE"), ("=red_2", r"'=red_2' is not BAND=VALUE"),
                         ("3=", r"'3=' is not"), ("3=red2", r"'3=red2'.*Did you mean red_2"),
                         ("3=red_2; 3=red_1", r"band 3 is given twice")]:
        with pytest.raises(BandResolutionError, match=pattern) as err:
            parse_overrides(bad)
        assert "e.g. '4=red_2; 5=842.5; B8=near_infrared_1; 1=drop'" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({1: "red2"}, r"Did you mean red_2"),
        ({5: "red_1"}, r"bands 1\.\.4"),
        ({"B04": "red_1"}, r"no band has that description"),
        (["red_1", "green_1"], r"2 value\(s\) but the raster has 4"),
        ({1: 5.55e7}, r"microwave_1 \(VV\)"),
        ("red_1", r"one range key per band"),
    ],
)
def test_bad_overrides(overrides: Any, pattern: str) -> None:
    with pytest.raises(BandResolutionError, match=pattern):
        resolve_bands(shared_file(*NAIP), overrides=overrides)


def test_unresolvable_band_names_band_and_override() -> None:
    with pytest.raises(BandResolutionError) as err:
        resolve_bands(shared_file(*VEGAS_ROADS))
    message = str(err.value)
    assert "band 1 ('road (255) / background (0)')" in message
    assert "--band 1=red_2" in message and "overrides={1: 'red_2'}" in message


def test_no_band_left() -> None:
    with pytest.raises(BandResolutionError, match="no band left"):
        resolve_bands(shared_file(*L8_PAN), overrides={1: "drop"})


def test_sensor_disagreeing_with_the_data_is_flagged(caplog: pytest.LogCaptureFixture) -> None:
    # 13 Sentinel-2 bands cannot be Landsat 8 (11 bands): refused (issue 14), unless the extra bands are overridden.
    with pytest.raises(InputRasterError, match=r"landsat8_oli_tirs .* has 11 band\(s\) .* 12 bands to embed"):
        resolve_bands(shared_file(*S2_L1C), sensor="landsat8_oli_tirs")
    with caplog.at_level(logging.WARNING, logger="engine.spectral"):
        mapping = resolve_bands(shared_file(*S2_L1C), sensor="landsat8_oli_tirs", overrides={12: "drop", 13: "drop"})
    assert "looks like sentinel2_l1c" in mapping.sensor_reason
    b10 = _by_index(mapping)[11]  # S2 B10 (1373.5 nm) read as Landsat B10 (thermal): flagged
    assert b10.key == "thermal_infrared_1" and "disagrees" in b10.reason
    assert any("disagrees" in r.getMessage() for r in caplog.records)


def test_unknown_sensor_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BandResolutionError, match="Did you mean naip_rgbn"):
        resolve_bands(shared_file(*NAIP), sensor="naip")
    with pytest.raises(InputRasterError, match="check the path"):
        resolve_bands(tmp_path / "missing.tif")


def test_open_dataset_is_accepted_and_left_open() -> None:
    with rasterio.open(shared_file(*WV2_BGRN)) as ds:
        mapping = resolve_bands(ds)
        assert not ds.closed
    assert mapping.keys == ["blue_3", "green_1", "red_2", "near_infrared_1"]


def test_drops_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="engine.spectral"):
        resolve_bands(shared_file(*S2_L1C))
    assert any("band 11 ('B10') dropped" in r.getMessage() for r in caplog.records)


def test_describe_mapping() -> None:
    text = describe_mapping(resolve_bands(shared_file(*S2_L1C)))
    lines = text.splitlines()
    assert lines[0].startswith("sensor: sentinel2_l1c (guessed:")
    assert lines[1] == "12 band(s) embedded, 1 dropped"
    row = next(line for line in lines if line.startswith("9 "))
    pattern = r"^9\s+B8A\s+864\.7 nm\s+near_infrared_3\s+P11\s+description\s+20\.56 / 4885 / 0\.456 / 0\.246"
    assert re.search(pattern, row)
    assert "dropped:" in lines
    assert any(line.startswith("  band 11 (B10): ") for line in lines)
    landsat = describe_mapping(resolve_bands(shared_file(*L8)))
    assert "from raster" in landsat
    assert "0.21·P0 + 0.79·P1" in landsat  # Landsat B2 = blue_2, linear weights
    assert "interp 12005nm" in landsat
