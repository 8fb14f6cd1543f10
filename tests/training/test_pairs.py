"""Tests of training/data/pairs.py on real rasters: pair constructors, ground-aligned paired crops across GSDs."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from engine.errors import BandResolutionError, InputRasterError
from tests.conftest import shared_file
from training.data.pairs import (
    BEN19_CLASSES,
    BEN43_CLASSES,
    BEN43_TO_19,
    PairedCropSampler,
    PairImages,
    bigearthnet_pairs,
    folder_sources,
    pairs_from_csv,
    pairs_from_folder,
    pan_ms_pairs,
)
from training.data.rasters import PretrainSampler

L8_MS = ("data", "l8_l1_10band_30m_gulfcoast.tif")
L8_PAN = ("data", "l8_l1_pan_b8_15m_gulfcoast.tif")
BEN = ("data", "bigearthnet_mm")


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.numpy().ravel(), b.numpy().ravel())[0, 1])


def _visible_mean(image: torch.Tensor, bands: list) -> torch.Tensor:
    """Mean of the Landsat-8 blue, green, red bands (B2–B4) of a crop."""
    return image[[bands.index(k) for k in ("blue_2", "green_2", "red_2")]].mean(0)


@pytest.fixture(scope="module")
def l8_sampler() -> PairedCropSampler:
    pairs = pan_ms_pairs(shared_file(*L8_MS), shared_file(*L8_PAN))
    return PairedCropSampler(pairs, size_px=96, seed=3)


@pytest.fixture(scope="module")
def ben_pairs() -> list:
    return bigearthnet_pairs(shared_file(*BEN))


# ---------------------------------------------------------------------------------------------------- alignment
def test_landsat_pan_ms_crops_are_ground_aligned(l8_sampler: PairedCropSampler) -> None:
    """Same 3 km window at 30 m and 15 m: pan ≈ mean(visible) (r > 0.8); 300 m shifted (10 MS px): r drops."""
    left, bottom, right, top = l8_sampler.footprint(0)
    ms_bands = l8_sampler.band_specs(0, "ms")
    for fx, fy in ((0.5, 0.5), (0.8, 0.2)):
        x0, y0 = left + fx * (right - left - 3000), bottom + fy * (top - bottom - 3000)
        window = (x0, y0, x0 + 3000, y0 + 3000)
        ms, ms_ok, _ = l8_sampler.read(0, "ms", window)
        pan, pan_ok, pan_bands = l8_sampler.read(0, "pan", window)
        shifted, _, _ = l8_sampler.read(0, "pan", (x0 + 300, y0 + 300, x0 + 3300, y0 + 3300))
        assert ms.shape == (9, 96, 96) and pan.shape == (1, 96, 96) and ms.dtype == torch.float32
        assert bool(ms_ok.all()) and bool(pan_ok.all())
        assert pan_bands[0].label.startswith("interp")  # pan: interpolated projection, usable by encode
        aligned = _pearson(_visible_mean(ms, ms_bands), pan[0])
        moved = _pearson(_visible_mean(ms, ms_bands), shifted[0])
        assert aligned > 0.8, (window, aligned)
        assert moved < aligned - 0.3, (window, aligned, moved)


def test_random_paired_crops_stay_aligned_under_flips(l8_sampler: PairedCropSampler) -> None:
    ms_bands = l8_sampler.band_specs(0, "ms")
    left, bottom, right, top = l8_sampler.footprint(0)
    area = (right - left) * (top - bottom)
    flips = set()
    for _ in range(4):
        crop = l8_sampler.sample()
        x0, y0, x1, y1 = crop.bounds
        assert x1 - x0 == pytest.approx(y1 - y0)  # square
        assert 0.25 - 1e-9 <= (x1 - x0) * (y1 - y0) / area <= 1.0 + 1e-9
        assert left <= x0 and x1 <= right and bottom <= y0 and y1 <= top
        assert _pearson(_visible_mean(crop.images["ms"], ms_bands), crop.images["pan"][0]) > 0.8
        flips.add(crop.flips)
    assert len(flips) > 1


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_unreferenced_tiles_share_their_footprint(tmp_path, l8_sampler: PairedCropSampler) -> None:
    """Rasters without a CRS (like MSC-France's PNG tiles) are paired on image fractions."""
    with rasterio.open(shared_file(*L8_MS)) as ms, rasterio.open(shared_file(*L8_PAN)) as pan:
        # The same ground: 120 MS px (30 m) at MS (200, 250) = pan px (400.5, 500.5); pan is offset 7.5 m.
        arrays = {"ms": (ms, ms.read([2, 3, 4], window=Window(200, 250, 120, 120)), ["B2", "B3", "B4"]),
                  "pan": (pan, pan.read([1], window=Window(400, 500, 240, 240)), ["B8"])}
        for name, (src, data, descriptions) in arrays.items():
            with rasterio.open(tmp_path / f"{name}.tif", "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                               count=data.shape[0], dtype=data.dtype) as dst:
                dst.write(data)
                for i, d in enumerate(descriptions, start=1):
                    dst.set_band_description(i, d)
    pairs = pan_ms_pairs(tmp_path / "ms.tif", tmp_path / "pan.tif", "landsat8_oli_tirs", "landsat8_oli_tirs")
    sampler = PairedCropSampler(pairs, size_px=64, seed=0)
    assert sampler.footprint(0) == (0.0, 0.0, 1.0, 1.0)
    crop = sampler.sample()
    assert _pearson(crop.images["ms"].mean(0), crop.images["pan"][0]) > 0.8
    # One raster with a CRS and one without: not a pair the sampler can align.
    mixed = pan_ms_pairs(tmp_path / "ms.tif", shared_file(*L8_PAN), "landsat8_oli_tirs")
    with pytest.raises(InputRasterError, match="not in one CRS"):
        PairedCropSampler(mixed).footprint(0)


def test_window_outside_the_raster_is_invalid(l8_sampler: PairedCropSampler) -> None:
    left, bottom, _, _ = l8_sampler.footprint(0)
    x, ok, _ = l8_sampler.read(0, "ms", (left - 1500, bottom, left + 1500, bottom + 3000), size_px=32)
    assert not ok[:, :14].any() and ok[:, 18:].all()
    assert float(x[:, :, :14].abs().max()) == 0.0


# ---------------------------------------------------------------------------------------------------- sampler
def test_bigearthnet_sampler_reproducible_batches(ben_pairs: list) -> None:
    a = PairedCropSampler(ben_pairs, size_px=64, seed=7).batch(3)
    b = PairedCropSampler(ben_pairs, size_px=64, seed=7).batch(3)
    c = PairedCropSampler(ben_pairs, size_px=64, seed=8).batch(3)
    assert a.images["s2"].shape == (3, 12, 64, 64) and a.images["s1"].shape == (3, 2, 64, 64)
    assert a.valid["s1"].shape == (3, 64, 64) and a.valid["s1"].dtype == torch.bool
    assert a.bands["s1"] == ["microwave_1", "microwave_2"] and a.bands["s2"][3] == "red_2"
    assert a.ids == b.ids and all(torch.equal(a.images[s], b.images[s]) for s in a.images)
    assert not torch.equal(a.images["s2"], c.images["s2"])
    assert all(lab for lab in a.labels)
    # Normalised with the presets' statistics: roughly standardised, finite.
    assert torch.isfinite(a.images["s2"]).all() and a.images["s2"].abs().mean() < 3


def test_select_and_errors(ben_pairs: list, l8_sampler: PairedCropSampler) -> None:
    rgb = ["red_2", "green_2", "blue_1"]
    crop = PairedCropSampler(ben_pairs, size_px=32, select={"s2": rgb}).sample(0)
    assert crop.bands["s2"] == rgb and crop.images["s2"].shape == (3, 32, 32)
    crop = PairedCropSampler(ben_pairs, size_px=32, families={"s2": ("red", "green", "blue")}).sample(0)
    assert crop.bands["s2"] == rgb  # engine.bands.select_band_families: B04, B03, B02
    with pytest.raises(BandResolutionError):
        PairedCropSampler(ben_pairs, families={"s1": ("red",)}).sample(0)
    with pytest.raises(ValueError, match="both select and families"):
        PairedCropSampler(ben_pairs, select={"s2": rgb}, families={"s2": ("red",)})
    with pytest.raises(InputRasterError, match="no band"):
        PairedCropSampler(ben_pairs, select={"s2": ["short_wave_infrared_9"]}).sample(0)
    with pytest.raises(ValueError, match="names sensors"):
        PairedCropSampler(ben_pairs, select={"s3": rgb})
    with pytest.raises(ValueError, match="do not have the sensors"):
        PairedCropSampler([ben_pairs[0], *l8_sampler.pairs])
    with pytest.raises(ValueError, match="scale"):
        PairedCropSampler(ben_pairs, scale=(0.0, 1.0))


def test_pair_images_whole_footprint_with_labels(ben_pairs: list) -> None:
    data = PairImages(ben_pairs, "s1", size_px=32, classes=BEN43_CLASSES)
    x, bands, label = data[0]
    assert x.shape == (2, 32, 32) and bands == ["microwave_1", "microwave_2"]
    assert label.shape == (43,) and label.dtype == np.float32
    assert {BEN43_CLASSES[i] for i in np.flatnonzero(label)} == set(ben_pairs[0].labels)
    with pytest.raises(ValueError, match="exactly one"):
        PairImages(ben_pairs, "s1", classes=BEN43_CLASSES, multilabel=False)
    with pytest.raises(ValueError, match="not in classes"):
        PairImages(ben_pairs, "s1", classes=BEN19_CLASSES)


# ---------------------------------------------------------------------------------------------------- constructors
def test_bigearthnet_pairs_43_and_19_classes(ben_pairs: list) -> None:
    assert len(ben_pairs) == 6 and all(p.sensors == ("s1", "s2") for p in ben_pairs)
    forest = next(p for p in ben_pairs if p.id == "S2B_MSIL2A_20170924T93020_69_24")
    assert forest.labels == ("Coniferous forest", "Mixed forest", "Transitional woodland/shrub", "Peatbogs",
                             "Water bodies")
    assert forest.presets == {"s1": "sentinel1_grd_db", "s2": "sentinel2_l2a"}
    ben19 = {p.id: p.labels for p in bigearthnet_pairs(shared_file(*BEN), nomenclature=19)}
    assert ben19[forest.id] == ("Coniferous forest", "Mixed forest", "Transitional woodland, shrub",
                                "Inland wetlands", "Inland waters")
    assert len(BEN43_CLASSES) == 43 and len(BEN19_CLASSES) == 19 and set(BEN43_TO_19.values()) == set(BEN19_CLASSES)
    with pytest.raises(ValueError, match="nomenclature"):
        bigearthnet_pairs(shared_file(*BEN), nomenclature=10)


def _msc_layout(root, ben_pairs: list, sensors=("Sentinel", "Sentinel-1")) -> None:
    """An MSC-France-like tree of real rasters; city names contain sensor names (X-STARS B6)."""
    for n, pair in enumerate(ben_pairs[:4]):
        city = "Sentinel-ville" if n % 2 else "Lyon"
        for sensor, key in zip(sensors, ("s2", "s1")):
            dst = root / sensor / city / f"tile_{n}.tif"
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(pair.paths[key], dst)


def test_pairs_from_folder_pairs_on_city_and_filename(tmp_path, ben_pairs: list) -> None:
    _msc_layout(tmp_path, ben_pairs)
    (tmp_path / "SPOT" / "Lyon").mkdir(parents=True)  # an extra top-level folder is ignored (X-STARS B5)
    pairs = pairs_from_folder(tmp_path, ["Sentinel", "Sentinel-1"], presets={"Sentinel-1": "sentinel1_grd_db"})
    assert [p.id for p in pairs] == ["Lyon/tile_0.tif", "Lyon/tile_2.tif", "Sentinel-ville/tile_1.tif",
                                     "Sentinel-ville/tile_3.tif"]
    pair = pairs[2]
    assert pair.paths["Sentinel"] == tmp_path / "Sentinel" / "Sentinel-ville" / "tile_1.tif"
    assert pair.paths["Sentinel-1"] == tmp_path / "Sentinel-1" / "Sentinel-ville" / "tile_1.tif"
    crop = PairedCropSampler(pairs, size_px=32).sample(2)
    assert crop.bands["Sentinel-1"] == ["microwave_1", "microwave_2"] and len(crop.bands["Sentinel"]) == 12


def test_pairs_from_folder_reports_missing_partners(tmp_path, ben_pairs: list) -> None:
    _msc_layout(tmp_path, ben_pairs)
    (tmp_path / "Sentinel-1" / "Lyon" / "tile_2.tif").unlink()
    (tmp_path / "Sentinel" / "Sentinel-ville" / "tile_3.tif").unlink()
    with pytest.raises(ValueError, match="2 missing partner") as err:
        pairs_from_folder(tmp_path)
    assert str(tmp_path / "Sentinel-1" / "Lyon" / "tile_2.tif") in str(err.value)
    assert str(tmp_path / "Sentinel" / "Sentinel-ville" / "tile_3.tif") in str(err.value)
    assert [p.id for p in pairs_from_folder(tmp_path, strict=False)] == ["Lyon/tile_0.tif", "Sentinel-ville/tile_1.tif"]
    with pytest.raises(FileNotFoundError, match="Landsat"):
        pairs_from_folder(tmp_path, ["Sentinel", "Landsat"])


def test_pairs_from_csv_resolves_relative_paths(tmp_path, ben_pairs: list) -> None:
    (tmp_path / "img").mkdir()
    rows = []
    for n, pair in enumerate(ben_pairs[:3]):
        for key in ("s1", "s2"):
            shutil.copy(pair.paths[key], tmp_path / "img" / f"{key}_{n}.tif")
        rows.append({"id": pair.id, "sar": f"img/s1_{n}.tif", "optical": f"img/s2_{n}.tif",
                     "labels": "|".join(pair.labels)})
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["id", "sar", "optical", "labels"])
        writer.writeheader()
        writer.writerows(rows)
    pairs = pairs_from_csv(tmp_path / "pairs.csv", presets={"sar": "sentinel1_grd_db"})
    assert [p.sensors for p in pairs] == [("sar", "optical")] * 3
    assert pairs[1].paths["optical"] == tmp_path / "img" / "s2_1.tif"
    assert [p.labels for p in pairs] == [p.labels for p in ben_pairs[:3]]
    assert [p.id for p in pairs] == [p.id for p in ben_pairs[:3]]
    (tmp_path / "img" / "s1_2.tif").unlink()
    with pytest.raises(FileNotFoundError, match="s1_2.tif"):
        pairs_from_csv(tmp_path / "pairs.csv")


def test_folder_sources_feed_the_pretrain_sampler(tmp_path) -> None:
    for parts in (L8_MS, L8_PAN):
        os.symlink(shared_file(*parts), tmp_path / parts[-1])
    sources = folder_sources(tmp_path)  # the pan-only file has no trainable band: skipped
    assert [s.name for s in sources] == [L8_MS[-1]]
    sampler = PretrainSampler(sources, tile_px=64, seed=0)
    image, keys, name = sampler.sample()
    assert image.shape[1:] == (64, 64) and name == L8_MS[-1] and "thermal_infrared_1" not in keys
    sampler.close()
