"""Batch maps fitted across a catalogue (engine.batch.joint): one k-means for every scene, so a scene and a crop of it
get the same classes where k-means fitted per scene numbers them differently; one query vector for every scene, equal
to the single-raster query where one scene holds it; reruns reuse the fit and classify only new scenes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform
from rasterio.windows import Window

from engine.batch import batch_cluster, batch_similarity
from engine.errors import InputRasterError, OutputError, SettingsError
from engine.maps import ClusterSettings, cluster_raster, similarity_raster
from tests.conftest import L8, shared_file
from tests.engine.test_batch import FAST, S1_CHIP, S2_CHIP, _corrupt, _partials

L8_ID = "l8_l1_10band_30m_gulfcoast"
#: The crop of the Landsat-8 scene (627 × 603 px): rows 304.. (19 cells of 16 px), every column.
CROP_ROW = 304


def _crop(source: Path, output: Path, row_off: int) -> Path:
    with rasterio.open(source) as src:
        window = Window(0, row_off, src.width, src.height - row_off)
        profile = {**src.profile, "height": int(window.height), "transform": src.window_transform(window)}
        with rasterio.open(output, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.descriptions = src.descriptions
            for band in range(1, src.count + 1):
                dst.update_tags(band, **src.tags(band))
            dst.update_tags(**src.tags())
    return output


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A Landsat-8 scene, its lower half as a scene of its own, the Sentinel-2 flood chip and a corrupt raster,
    clustered together (k = 4) on a 2-worker local cluster."""
    folder = tmp_path_factory.mktemp("joint")
    scenes = [shared_file(*L8), _crop(shared_file(*L8), folder / "l8_crop.tif", CROP_ROW), shared_file(*S2_CHIP),
              _corrupt(folder)]
    catalogue = folder / "scenes.txt"
    catalogue.write_text("\n".join(map(str, scenes)) + "\n")
    clustering = ClusterSettings(k=4, seed=1)
    report = batch_cluster(catalogue, folder / "out", clustering=clustering, settings=FAST, workers=2)
    return {"folder": folder, "catalogue": catalogue, "report": report, "out": folder / "out",
            "clustering": clustering}


@pytest.mark.slow
def test_one_kmeans_gives_a_scene_and_its_crop_the_same_classes(clustered: dict[str, Any]) -> None:
    report, out = clustered["report"], clustered["out"]
    assert sorted(report.done) == sorted([L8_ID, "l8_crop", "sen1floods11_india_900498_s2_l1c"])
    assert list(report.failed) == ["corrupt"] and "InputRasterError" in report.failed["corrupt"]
    fitted = json.loads((out / "kmeans.json").read_text())
    with rasterio.open(out / "embeddings" / f"{L8_ID}.tif") as emb:
        assert np.shape(fitted["centers"]) == (4, emb.count) and fitted["scenes"] == 3
    with rasterio.open(out / f"{L8_ID}.tif") as full, rasterio.open(out / "l8_crop.tif") as crop:
        assert full.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and full.nodata == 255
        assert full.colormap(1) == crop.colormap(1)
        window = Window(0, CROP_ROW, crop.width, crop.height)
        joint = _agreement(full.read(1, window=window), crop.read(1))
    # k-means fitted on each scene alone numbers its classes by their share of that scene
    alone = {}
    for name, source in ((L8_ID, shared_file(*L8)), ("l8_crop", clustered["folder"] / "l8_crop.tif")):
        res = cluster_raster(source, clustered["folder"] / f"alone_{name}.tif", clustering=clustered["clustering"],
                             embeddings=out / "embeddings" / f"{name}.tif")
        with rasterio.open(res.path) as ds:
            alone[name] = ds.read(1, window=window if name == L8_ID else None)
    separate = _agreement(alone[L8_ID], alone["l8_crop"])
    # the same place, embedded from two tilings: 0.81 of the pixels in the same class with one k-means, 0.26 with
    # one k-means per scene (measured)
    assert joint >= 0.7 and joint >= separate + 0.2, (joint, separate)
    assert (out / f"{L8_ID}.qml").is_file() and (out / "mosaic_EPSG_32616.vrt").is_file()
    assert _partials(out) == []


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the pixels valid in both class maps that have the same class."""
    valid = (a != 255) & (b != 255)
    assert valid.mean() > 0.95
    return float((a[valid] == b[valid]).mean())


@pytest.mark.slow
def test_a_rerun_reuses_the_fit_and_classifies_only_new_scenes(clustered: dict[str, Any]) -> None:
    out, catalogue, clustering = clustered["out"], clustered["catalogue"], clustered["clustering"]
    fit = (out / "kmeans.json").stat().st_mtime_ns
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")}
    again = batch_cluster(catalogue, out, clustering=clustering, settings=FAST, workers=1)
    assert again.done == [] and len(again.skipped) == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")} == stamps
    with open(catalogue, "a") as f:
        f.write(f"{shared_file(*S1_CHIP)}\n")
    grown = batch_cluster(catalogue, out, clustering=clustering, settings=FAST, workers=1)
    assert grown.done == ["sen1floods11_india_900498_s1_db"] and len(grown.skipped) == 3
    assert (out / "kmeans.json").stat().st_mtime_ns == fit  # the classes of the first fit
    with pytest.raises(OutputError, match="another run"):
        batch_cluster(catalogue, out, clustering=ClusterSettings(k=5), settings=FAST)
    with pytest.raises(SettingsError, match="spectral weight"):
        batch_cluster(catalogue, out, clustering=ClusterSettings(k=4, spectral_weight=1.0), settings=FAST)


@pytest.mark.slow
def test_one_query_in_one_scene_maps_every_scene(tmp_path: Path) -> None:
    scenes = [shared_file(*L8), shared_file(*S2_CHIP)]
    with rasterio.open(scenes[0]) as ds:
        x, y = ds.xy(300, 440)  # a pixel of the Landsat-8 scene (UTM 16N)
        lon, lat = (v[0] for v in transform(ds.crs, "EPSG:4326", [x], [y]))
    point = {"type": "Point", "coordinates": [lon, lat]}
    report = batch_similarity(scenes, tmp_path / "out", query=[point], resolution="patch", settings=FAST, workers=2)
    assert sorted(report.done) == sorted([L8_ID, "sen1floods11_india_900498_s2_l1c"]) and not report.failed
    fitted = json.loads((tmp_path / "out" / "query.json").read_text())
    assert fitted["scenes"] == {L8_ID: 1} and fitted["cells"] == 1
    # the query lies in one scene: its map equals the single-raster similarity to the same point
    single = similarity_raster(scenes[0], tmp_path / "single.tif", query=[{"type": "Point", "coordinates": [x, y]}],
                               embeddings=tmp_path / "out" / "embeddings" / f"{L8_ID}.tif", resolution="patch")
    with rasterio.open(single.path) as a, rasterio.open(tmp_path / "out" / f"{L8_ID}.tif") as b:
        assert (a.transform, a.shape) == (b.transform, b.shape)
        np.testing.assert_allclose(b.read(1), a.read(1), atol=1e-6)
        assert np.nanmax(b.read(1)) == pytest.approx(1.0, abs=1e-5)
    with rasterio.open(tmp_path / "out" / "sen1floods11_india_900498_s2_l1c.tif") as s2:
        values = s2.read(1)
        assert np.isfinite(values).mean() > 0.95 and np.nanmax(np.abs(values)) <= 1.0
    with pytest.raises(InputRasterError, match="no valid embedding under the query in any of the 2 scenes"):
        batch_similarity(scenes, tmp_path / "nowhere", query=[{"type": "Point", "coordinates": [0.0, 0.0]}],
                         settings=FAST, workers=1)
