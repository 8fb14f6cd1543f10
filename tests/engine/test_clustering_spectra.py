"""Pixel-resolution class maps on the input grid; clustering on embeddings ⊕ weighted spectra; the k suggestion.

Real rasters of ../shared/data (SOURCES.md): the Sen1Floods11 India 900498 chips (Sentinel-2 L1C and Sentinel-1 dB,
512 × 512 px, EPSG:4326, hand water label) and the NAIP tile; the bundled ``smarties-demo-tiny``. Embeddings are
computed once per raster with abutting tiles (no overlap) to keep the module fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.windows import transform as window_transform

from engine.cli import main
from engine.errors import InputRasterError, SettingsError
from engine.maps import (
    ClusterSettings,
    PixelFeatures,
    cluster_raster,
    embed_raster,
    l2_normalize,
    pixel_window,
    sample_embeddings,
    similarity_raster,
    suggest_k,
)
from engine.raster import Region
from engine.settings import InferenceSettings
from tests.conftest import NAIP, shared_file

S2_CHIP = ("data", "sen1floods11_india_900498_s2_l1c.tif")
S1_CHIP = ("data", "sen1floods11_india_900498_s1_db.tif")
WATER = ("data", "sen1floods11_india_900498_water_label.tif")
#: name → (file, sensor preset); the presets' default scales apply (2 for Sentinel-1/2, 1 for NAIP).
RASTERS = {"s2": (S2_CHIP, "sentinel2_l1c"), "s1": (S1_CHIP, "sentinel1_grd_db"), "naip": (NAIP, "naip_rgbn")}
FAST = InferenceSettings(batch_size=4, device="cpu", threads=2, overlap_px=0)


class Embedded:
    """Embeddings of :data:`RASTERS`, each computed on first use (a few seconds each) and kept for the module."""

    def __init__(self, model: Any, folder: Path) -> None:
        self.model, self.folder, self.paths = model, folder, {}

    def __getitem__(self, name: str) -> tuple[Path, Path]:
        """``(input raster, its patch-grid embeddings)``; skips the test when the raster is not in ../shared."""
        parts, sensor = RASTERS[name]
        source = shared_file(*parts)
        if name not in self.paths:
            self.paths[name] = embed_raster(source, self.folder / f"{name}.tif", self.model, settings=FAST,
                                            sensor=sensor).path
        return source, self.paths[name]


@pytest.fixture(scope="module")
def embedded(demo_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Embedded:
    """The module's :class:`Embedded`."""
    return Embedded(demo_model, tmp_path_factory.mktemp("embeddings"))


def grid_of(path: Path) -> tuple:
    """(CRS, transform coefficients, width, height) of a raster: the exact grid, no tolerance."""
    with rasterio.open(path) as ds:
        return ds.crs, tuple(ds.transform), ds.width, ds.height


def best_cluster_iou(classes: np.ndarray, label: np.ndarray) -> float:
    """Max over clusters of the water IoU of one cluster alone (label −1 = no data, 1 = water; class 255 = nodata)."""
    valid = (label >= 0) & (classes != 255)
    water = (label == 1) & valid
    return max(float(((classes == c) & water).sum() / (((classes == c) & valid) | water).sum())
               for c in np.unique(classes[valid]))


# ------------------------------------------------------------------------------------------------ on the input grid
@pytest.mark.parametrize("name", ["s2", "s1", "naip"])
@pytest.mark.parametrize("method", ["guided", "bilinear"])
def test_pixel_class_map_is_exactly_on_the_input_grid(embedded: Embedded, name: str, method: str,
                                                      tmp_path: Path) -> None:
    source, emb = embedded[name]
    res = cluster_raster(source, tmp_path / "c.tif", embeddings=emb,
                         clustering=ClusterSettings(k=4, pixel_method=method))
    assert grid_of(res.path) == grid_of(source)
    with rasterio.open(emb) as grid, rasterio.open(source) as src:
        # NAIP: 59 × 46 cells of 16 px overhang the 934 × 723 px tile; the class map is still clipped to the input
        assert grid.width * grid.transform.a >= src.width * src.transform.a
    with rasterio.open(res.path) as ds:
        classes = ds.read(1)
    assert (classes != 255).mean() > 0.95 and set(np.unique(classes)) <= {0, 1, 2, 3, 255}


def test_spectral_class_map_and_similarity_map_are_on_the_input_grid(embedded: Embedded, tmp_path: Path) -> None:
    source, emb = embedded["s1"]
    res = cluster_raster(source, tmp_path / "c.tif", embeddings=emb,
                         clustering=ClusterSettings(k=3, spectral_weight=1.0, max_samples=5000))
    assert grid_of(res.path) == grid_of(source)
    with rasterio.open(source) as ds:
        centre = ds.transform * (256.5, 256.5)
    sim = similarity_raster(source, tmp_path / "s.tif", embeddings=emb, resolution="pixel",
                            query=[{"type": "Point", "coordinates": list(centre)}])
    assert grid_of(sim.path) == grid_of(source)


def test_region_class_maps_are_on_the_region_window_grid(demo_model: Any, tmp_path: Path) -> None:
    source = shared_file(*S2_CHIP)
    with rasterio.open(source) as ds:
        left, bottom, right, top = ds.bounds
        w, h = right - left, top - bottom  # bounds that cut through pixels: the window is rounded outward
        region = Region(bounds=(left + 0.237 * w, bottom + 0.311 * h, left + 0.713 * w, bottom + 0.83 * h))
        win = region.window(ds)
        expected = ds.crs, tuple(window_transform(win, ds.transform)), int(win.width), int(win.height)
    assert (win.col_off, win.row_off, win.width, win.height) == (121, 87, 245, 266)
    emb = tmp_path / "e.tif"
    res = cluster_raster(source, tmp_path / "c.tif", demo_model, settings=FAST, sensor="sentinel2_l1c", region=region,
                         embeddings_output=emb, clustering=ClusterSettings(k=3))
    assert grid_of(res.path) == expected
    spectral = cluster_raster(source, tmp_path / "cs.tif", embeddings=emb, region=region,
                              clustering=ClusterSettings(k=3, spectral_weight=1.0, max_samples=5000))
    assert grid_of(spectral.path) == expected


# ------------------------------------------------------------------------------------------------ spectral clustering
def test_spectral_weight_finds_flood_water_at_least_as_well_as_embeddings_alone(embedded: Embedded,
                                                                               tmp_path: Path) -> None:
    source, emb = embedded["s2"]
    with rasterio.open(shared_file(*WATER)) as ds:
        label = ds.read(1)
    scores = {}
    for weight in (0.0, 2.0):
        res = cluster_raster(source, tmp_path / f"c{weight}.tif", embeddings=emb,
                             clustering=ClusterSettings(k=4, spectral_weight=weight))
        with rasterio.open(res.path) as ds:
            classes, tags = ds.read(1), ds.tags()
        scores[weight] = best_cluster_iou(classes, label)
        assert res.spectral_weight == weight and tags.get("MSFM_SPECTRAL_WEIGHT") == (None if weight == 0 else "2.0")
    # k = 4, no tile overlap, seed 0 (measured 2026-12: embeddings alone 0.897, w = 2: 0.948; docs/inference.md has
    # the table over k, w and three chips): the spectra must not cost more than 0.02 of the best cluster's water IoU
    assert scores[2.0] >= scores[0.0] - 0.02, scores
    assert scores[0.0] > 0.8


def test_pixel_features_are_unit_embeddings_and_weighted_spectra(embedded: Embedded) -> None:
    source, emb = embedded["s2"]
    with rasterio.open(emb) as grid, rasterio.open(source) as src:
        d = grid.count
        half, one = PixelFeatures(grid, src, 0.5), PixelFeatures(grid, src, 1.0)
        target = pixel_window(grid, src)
        a, b = half.sample(target, 2000, seed=3), one.sample(target, 2000, seed=3)
        assert a.shape == b.shape and 1500 < len(a) <= 2000 and a.shape[1] == d + len(one.indexes) == one.dim
        np.testing.assert_allclose(np.linalg.norm(a[:, :d], axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(a[:, d:] * 2, b[:, d:], rtol=1e-6)
        # w = 1: the spectra weigh about as much as the embedding (mean squared norm of z / √C of the order of 1)
        assert 0.2 < float((b[:, d:] ** 2).sum(1).mean()) < 5
        with pytest.raises(SettingsError, match="spectral_weight"):
            PixelFeatures(grid, src, -1.0)


# ------------------------------------------------------------------------------------------------ k suggestion
def test_suggest_k_scores_every_candidate_deterministically(embedded: Embedded) -> None:
    _, emb = embedded["s2"]
    with rasterio.open(emb) as grid:
        x = l2_normalize(sample_embeddings(grid, 2000, 0))
    scores = suggest_k(x, ks=[2, 3, 5], seed=1)
    assert list(scores) == [2, 3, 5] and all(-1 <= s <= 1 for s in scores.values())
    assert suggest_k(x, ks=[5, 3, 2], seed=1) == scores
    with pytest.raises(SettingsError, match="at least 2"):
        suggest_k(x, ks=[1, 2])
    with pytest.raises(SettingsError):
        suggest_k(x, ks=[])
    with pytest.raises(InputRasterError, match="only 4 samples"):
        suggest_k(x[:4], ks=[2, 4])


def test_cluster_reports_the_suggested_k_without_applying_it(embedded: Embedded, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    source, emb = embedded["s2"]
    caplog.set_level("INFO", logger="engine.maps.clustering")
    res = cluster_raster(source, tmp_path / "c.tif", embeddings=emb,
                         clustering=ClusterSettings(k=12, suggest_k=True, max_samples=1500))
    assert res.k_scores is not None and list(res.k_scores) == [*range(2, 11), 12]
    assert res.suggested_k == max(res.k_scores, key=res.k_scores.get)
    with rasterio.open(res.path) as ds:
        assert ds.tags()["MSFM_K"] == "12"  # never applied silently
    line = res.k_report()
    assert line.startswith("k = 12 was used; the silhouette on the sample ") and f"k = {res.suggested_k}" in line
    assert line in caplog.text
    plain = cluster_raster(source, tmp_path / "d.tif", embeddings=emb, clustering=ClusterSettings(k=3))
    assert plain.k_scores is None and plain.suggested_k is None and plain.k_report() == ""


def test_cli_spectral_weight_and_suggest_k_print_the_table(embedded: Embedded, tmp_path: Path, capsys) -> None:
    source, emb = embedded["s1"]
    with rasterio.open(source) as ds:  # a 200 × 160 px window keeps it fast
        left, top = ds.transform * (100, 50)
        right, bottom = ds.transform * (300, 210)
    args = ["cluster", str(source), str(tmp_path / "c.tif"), "--embeddings", str(emb), "--k", "3",
            "--spectral-weight", "0.5", "--suggest-k", "--bounds", *(str(v) for v in (left, bottom, right, top))]
    assert main(args) == 0
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert (ds.width, ds.height) == (200, 160) and ds.tags()["MSFM_SPECTRAL_WEIGHT"] == "0.5"
    out = capsys.readouterr().out
    assert "k  silhouette" in out and "<- used" in out and "k = 3 was used" in out
    assert all(f"\n{k:<3d}" in out for k in range(2, 11))
    assert main(["cluster", str(source), str(tmp_path / "p.tif"), "--embeddings", str(emb), "--resolution", "patch",
                 "--spectral-weight", "1"]) == 2
    assert "needs pixel resolution" in capsys.readouterr().err


def test_settings_validation() -> None:
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(SettingsError, match="spectral_weight"):
            ClusterSettings(spectral_weight=bad)
    with pytest.raises(SettingsError, match="resolution='pixel'"):
        ClusterSettings(resolution="patch", spectral_weight=1.0)
    assert ClusterSettings(resolution="patch", suggest_k=True).spectral_weight == 0.0
