"""*Batch embeddings / class maps / similarity maps (many rasters)* and *Batch change maps (pairs of rasters)* in QGIS
Processing: real rasters on a local Dask cluster, one way to give them, cancel and resume; one k-means, one query and
one no-change calibration across the rasters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import rasterio
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from tests.conftest import BEN_S1, L8, shared_file
from tests.engine.test_batch import S1_CHIP, S2_CHIP
from tests.plugin.test_algorithms import D_DEMO, run, write_gpkg

pytestmark = [pytest.mark.qgis, pytest.mark.slow]  # each run starts a Dask cluster (~3 s)
FAST = {"TILE_SIZE": 224, "OVERLAP": 32, "SCALE": 1, "WORKERS": 1, "PRECISION": "fp32"}


class CancelAfterFirst(QgsProcessingFeedback):
    """Cancels once the first raster is recorded as done in the output folder's manifest."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.manifest = out / "manifest.jsonl"

    def setProgress(self, progress: float) -> None:  # noqa: N802 - QGIS API
        super().setProgress(progress)
        if self.manifest.is_file() and len(self.manifest.read_text().splitlines()) > 1:  # a header, then scenes
            self.cancel()


def test_layers_become_cogs_mosaics_and_stac_and_a_cancelled_run_resumes(msfm_provider: Any,
                                                                          tmp_path: Path) -> None:
    rasters = [str(shared_file(*BEN_S1)), str(shared_file(*L8))]
    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("batch_embed", {"INPUTS": rasters, "OUTPUT": str(out), **FAST}, feedback=CancelAfterFirst(out))
    result = run("batch_embed", {"INPUTS": rasters, "OUTPUT": str(out), **FAST})
    assert (result["DONE"], result["SKIPPED"], json.loads(result["FAILED"])) == (1, 1, {})
    names = sorted(Path(r).stem for r in rasters)
    assert sorted(p.stem for p in out.glob("*.tif")) == names
    for name in names:
        with rasterio.open(out / f"{name}.tif") as ds:
            assert ds.count == D_DEMO and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert len(json.loads(result["MOSAICS"])) == 2 and Path(result["STAC"]).is_file()  # two CRSs: two mosaics


def test_the_rasters_are_given_one_way(msfm_provider: Any, tmp_path: Path) -> None:
    with pytest.raises(QgsProcessingException, match="one way"):
        run("batch_embed", {"INPUTS": [str(shared_file(*BEN_S1))], "FOLDER": str(tmp_path),
                            "OUTPUT": str(tmp_path / "out"), **FAST})
    with pytest.raises(QgsProcessingException, match="one way"):
        run("batch_embed", {"OUTPUT": str(tmp_path / "out"), **FAST})


def test_class_maps_share_one_kmeans_and_a_query_layer_maps_every_raster(msfm_provider: Any, tmp_path: Path) -> None:
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    rasters = [str(shared_file(*BEN_S1)), str(shared_file(*L8))]
    result = run("batch_cluster", {"INPUTS": rasters, "K": 3, "OUTPUT": str(tmp_path / "classes"), **FAST})
    assert (result["DONE"], json.loads(result["FAILED"])) == (2, {})
    fitted = json.loads((tmp_path / "classes" / "kmeans.json").read_text())
    assert len(fitted["centers"]) == 3 and fitted["scenes"] == 2
    for raster in rasters:
        with rasterio.open(tmp_path / "classes" / f"{Path(raster).stem}.tif") as ds:
            assert ds.dtypes[0] == "uint8" and set(ds.colormap(1)) >= {0, 1, 2}
    with rasterio.open(rasters[1]) as ds:  # a point of the Landsat-8 raster, given in another CRS (UTM → the layer's)
        x, y = ds.xy(300, 300)
        crs = ds.crs.to_string()
    layer = QgsVectorLayer(f"Point?crs={crs}", "query", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
    layer.dataProvider().addFeatures([feature])
    query = write_gpkg(layer, tmp_path / "query.gpkg")
    result = run("batch_similarity", {"INPUTS": rasters, "QUERY": str(query), "RESOLUTION": "patch",
                                      "OUTPUT": str(tmp_path / "similar"), **FAST})
    assert (result["DONE"], json.loads(result["FAILED"])) == (2, {})
    assert json.loads((tmp_path / "similar" / "query.json").read_text())["scenes"] == {Path(rasters[1]).stem: 1}
    with rasterio.open(tmp_path / "similar" / f"{Path(rasters[1]).stem}.tif") as ds:
        row, col = ds.index(x, y)
        assert ds.read(1)[row, col] == pytest.approx(1.0, abs=1e-5)  # the query's own cell


def test_change_maps_pair_two_folders_by_name_with_one_calibration(msfm_provider: Any, tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    for folder in (before, after):
        folder.mkdir()
        shutil.copyfile(shared_file(*S2_CHIP), folder / "india.tif")  # the same scene on both sides
    shutil.copyfile(shared_file(*S1_CHIP), before / "only_before.tif")
    with pytest.raises(QgsProcessingException, match=r"Give the later rasters \(after\) one way"):
        run("batch_change", {"BEFORE_FOLDER": str(before), "OUTPUT": str(tmp_path / "none"), **FAST})
    result = run("batch_change", {"BEFORE_FOLDER": str(before), "AFTER_INPUTS": [str(after / "india.tif")],
                                  "RESOLUTION": "patch", "THRESHOLD": "value", "THRESHOLD_VALUE": 0.05,
                                  "TOWARDS_K": 3, "OUTPUT": str(tmp_path / "change"), **FAST})
    assert (result["DONE"], json.loads(result["FAILED"])) == (1, {})
    assert json.loads(result["UNPAIRED"]) == {"only_before": "before"}
    fitted = json.loads((tmp_path / "change" / "calibration.json").read_text())
    assert fitted["pairs"] == 1
    with rasterio.open(tmp_path / "change" / "india.tif") as ds:
        assert ds.tags()["MSFM_NO_CHANGE"] == f"{fitted['median']:.6g} {fitted['sigma']:.6g}"
        assert ds.tags()["MSFM_UNITS"] == "cosine_distance" and float(ds.read(1).max()) < 1e-5  # itself: no change
    with rasterio.open(tmp_path / "change" / "india_mask.tif") as mask:
        assert float(mask.tags()["MSFM_THRESHOLD"]) == 0.05 and (mask.read(1) == 0).all()
    assert (tmp_path / "change" / "india_changes.gpkg").is_file()
    assert len(fitted["towards_centers"]) == 3  # one k-means over the later rasters: nothing changed, so all 255
    with rasterio.open(tmp_path / "change" / "india_towards.tif") as towards:
        assert (towards.read(1) == 255).all()
