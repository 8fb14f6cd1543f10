"""The msfm Processing algorithms, run through ``processing.run`` on real rasters (headless QGIS).

Rasters come from ../shared/data: a Sentinel-2 L1C 13-band scene, a NAIP RGBN tile (no band descriptions) and a
BigEarthNet Sentinel-1 VV/VH patch. The bundled ``smarties-demo-tiny`` model (D = 192) runs on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from tests.conftest import BEN_S1, BEN_S2, NAIP, REPO, S2_L1C, TINY_S2, ndwi_water, shared_file, water_iou

pytestmark = pytest.mark.qgis

D_DEMO = 192
FAST = {"OVERLAP": 0}


def run(alg: str, params: dict, feedback: Any = None) -> dict:
    import processing

    return processing.run(f"msfm:{alg}", params, feedback=feedback)


def run_and_load(alg: str, params: dict) -> tuple[dict, Any]:
    """Run with outputs loaded into a fresh project (post-processors applied, as in the toolbox)."""
    import processing
    from qgis.core import QgsProject

    project = QgsProject.instance()
    project.clear()
    result = processing.runAndLoadResults(f"msfm:{alg}", params)
    return result, project


def layer_for(project: Any, path: str) -> Any:
    found = [lyr for lyr in project.mapLayers().values() if os.path.samefile(lyr.source(), path)]
    assert found, f"{path} was not loaded into the project"
    return found[0]


def write_gpkg(layer: Any, path: Path) -> Path:
    """Save a memory layer as a GeoPackage (how users hand points/polygons to the algorithms)."""
    from qgis.core import QgsCoordinateTransformContext, QgsVectorFileWriter

    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    error = QgsVectorFileWriter.writeAsVectorFormatV3(layer, str(path), QgsCoordinateTransformContext(), options)
    assert error[0] == QgsVectorFileWriter.NoError, error
    return path


def s2_window_extent(ds: Any, rows: slice, cols: slice) -> str:
    """Processing extent string ``xmin,xmax,ymin,ymax [CRS]`` of a pixel window of ``ds``."""
    left, top = ds.transform * (cols.start, rows.start)
    right, bottom = ds.transform * (cols.stop, rows.stop)
    return f"{left},{right},{bottom},{top} [{ds.crs.to_string()}]"


@pytest.fixture()
def s2_water_point(tmp_path: Path) -> tuple[Path, Any, tuple[float, float]]:
    """A GeoPackage with one point on open water of the S2 scene (max NDWI, band 3 vs band 8), and its window."""
    path = shared_file(*S2_L1C)
    rows, cols = slice(256, 512), slice(0, 512)
    with rasterio.open(path) as ds:
        green, nir = ds.read([3, 8], window=((rows.start, rows.stop), (cols.start, cols.stop))).astype(np.float32)
        ndwi = (green - nir) / np.maximum(green + nir, 1)
        r, c = np.unravel_index(np.argmax(ndwi), ndwi.shape)
        x, y = ds.transform * (cols.start + c + 0.5, rows.start + r + 0.5)
        extent = s2_window_extent(ds, rows, cols)
        crs = ds.crs.to_string()
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    layer = QgsVectorLayer(f"Point?crs={crs}", "query", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
    layer.dataProvider().addFeatures([feature])
    return write_gpkg(layer, tmp_path / "query.gpkg"), extent, (rows, cols, ndwi)


def test_provider_lists_the_algorithms_with_the_shared_parameters(msfm_provider: Any) -> None:
    ids = sorted(a.id() for a in msfm_provider.algorithms())
    assert ids == ["msfm:bandmapping", "msfm:batch_change", "msfm:batch_cluster", "msfm:batch_embed",
                   "msfm:batch_similarity", "msfm:change", "msfm:classify", "msfm:cluster", "msfm:downloadmodel",
                   "msfm:embed", "msfm:export_onnx", "msfm:segment", "msfm:similarity", "msfm:train_head"]
    for alg in msfm_provider.algorithms():
        assert not alg.flags() & alg.FlagNoThreading, f"{alg.id()} must run in the background thread"
        assert not alg.icon().isNull(), alg.id()
        names = {p.name() for p in alg.parameterDefinitions()}
        if alg.id() in ("msfm:embed", "msfm:cluster", "msfm:similarity"):
            assert {"INPUT", "SENSOR", "BAND_OVERRIDES", "MODEL", "MODEL_FILE", "DEVICE", "TILE_SIZE", "OVERLAP",
                    "BATCH_SIZE", "SCALE", "EXTENT", "MASK", "OUTPUT"} <= names
    assert msfm_provider.supportedOutputRasterLayerExtensions() == ["tif"]


def test_band_mapping_report_on_sentinel2(msfm_provider: Any, tmp_path: Path) -> None:
    from engine.spectral import resolve_bands

    path = shared_file(*S2_L1C)
    result = run("bandmapping", {"INPUT": str(path), "OUTPUT": str(tmp_path / "bands.html")})
    expected = resolve_bands(path)
    assert result["SENSOR"] == expected.sensor == "sentinel2_l1c"
    keys = [b.key or b.projection.label for b in expected.bands]
    assert json.loads(result["BANDS"]) == keys
    html = (tmp_path / "bands.html").read_text()
    assert html.count("<tr>") == len(expected.bands) + 1  # header + one row per embedded band
    assert expected.dropped and all(escape(d.reason) in html for d in expected.dropped)


def test_unresolvable_band_names_the_band_and_the_fix(msfm_provider: Any) -> None:
    from qgis.core import QgsProcessingException

    path = shared_file(*NAIP)  # 4 bands without descriptions or wavelengths
    with pytest.raises(QgsProcessingException) as err:
        run("bandmapping", {"INPUT": str(path)})
    message = str(err.value)
    assert "band 1" in message and "--band" not in message and "overrides={" not in message  # QGIS terms only
    assert "In QGIS: choose “USDA NAIP aerial R, G, B, NIR (8-bit)” (naip_rgbn) in 'Sensor preset'" in message
    assert "WorldView-2" in message and "'Band overrides' (e.g. 1=red_2; 2=green_2; 3=blue_1; 4=near_infrared_1" \
        in message
    # ...and the fix it suggests works, from the preset or from overrides.
    assert run("bandmapping", {"INPUT": str(path), "SENSOR": "naip_rgbn"})["SENSOR"] == "naip_rgbn"
    overrides = "1=red_2; 2=green_2; 3=blue_1; 4=near_infrared_1"
    resolved = run("bandmapping", {"INPUT": str(path), "BAND_OVERRIDES": overrides})
    assert json.loads(resolved["BANDS"]) == ["red_2", "green_2", "blue_1", "near_infrared_1"]


def test_embed_sentinel1_is_georeferenced_and_styled(msfm_provider: Any, tmp_path: Path) -> None:
    from qgis.core import QgsMultiBandColorRenderer

    path = shared_file(*BEN_S1)
    out = str(tmp_path / "s1_embeddings.tif")
    pca = str(tmp_path / "s1_pca.tif")
    result, project = run_and_load("embed", {"INPUT": str(path), "SENSOR": "sentinel1_grd_db", "OUTPUT": out,
                                             "OUTPUT_PCA": pca, **FAST})
    assert result["OUTPUT"] == out and result["EMBED_DIM"] == D_DEMO
    with rasterio.open(path) as src, rasterio.open(out) as emb:
        assert emb.count == D_DEMO and emb.crs == src.crs
        cell = emb.transform.a
        assert abs(emb.bounds.left - src.bounds.left) < 1e-6 and abs(emb.bounds.top - src.bounds.top) < 1e-6
        assert 0 <= emb.bounds.right - src.bounds.right < cell and 0 <= src.bounds.bottom - emb.bounds.bottom < cell
        assert np.isfinite(emb.read(1)).all()
    renderer = layer_for(project, out).renderer()
    assert isinstance(renderer, QgsMultiBandColorRenderer)
    assert len({renderer.redBand(), renderer.greenBand(), renderer.blueBand()}) == 3
    # named after the input, not "Embeddings"; the optional PCA preview asked for is on the map too, named and styled
    assert layer_for(project, out).name() == f"{path.stem} embeddings (smarties-demo-tiny)"
    assert layer_for(project, pca).name() == f"{path.stem} principal components"
    assert isinstance(layer_for(project, pca).renderer(), QgsMultiBandColorRenderer)
    project.clear()


def test_cluster_the_committed_tiny_raster_separates_water_from_land(msfm_provider: Any, tmp_path: Path) -> None:
    """``msfm:cluster`` on tests/data's crop (no ../shared needed): the input's grid, classes nameable water/land."""
    raster = tmp_path / "input" / TINY_S2.name  # a copy: QGIS writes .aux.xml statistics beside what it opens
    raster.parent.mkdir()
    shutil.copyfile(TINY_S2, raster)
    out = str(tmp_path / "classes.tif")
    result = run("cluster", {"INPUT": str(raster), "K": 3, "RESOLUTION": "pixel", "OUTPUT": out})
    assert result["OUTPUT"] == out and result["K"] == 3
    with rasterio.open(TINY_S2) as src, rasterio.open(out) as classes:
        assert (classes.crs, classes.transform, classes.shape) == (src.crs, src.transform, src.shape)
        labels = classes.read(1)
        green, nir = src.read([3, 8])  # B03, B08
    assert set(np.unique(labels)) == {0, 1, 2}
    assert water_iou(labels, ndwi_water(green, nir)) > 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.qml", "classes.tif", "input"]


def test_cluster_sentinel2_extent_pixel_classes_with_legend(msfm_provider: Any, tmp_path: Path) -> None:
    from qgis.core import QgsPalettedRasterRenderer

    path = shared_file(*S2_L1C)
    with rasterio.open(path) as ds:
        rows, cols = slice(128, 384), slice(256, 512)
        extent = s2_window_extent(ds, rows, cols)
        crs = ds.crs
    out = str(tmp_path / "classes.tif")
    params = {"INPUT": str(path), "K": 5, "RESOLUTION": "pixel", "EXTENT": extent, "OUTPUT": out, "SCALE": 1, **FAST}
    result, project = run_and_load("cluster", params)
    assert result["K"] == 5 and abs(sum(result["CLASS_FRACTIONS"]) - 1) < 1e-6
    with rasterio.open(out) as classes:
        assert classes.crs == crs and (classes.width, classes.height) == (256, 256)
        labels = classes.read(1)
        assert set(np.unique(labels)) <= set(range(5)) | {255}
        assert len(set(np.unique(labels)) - {255}) >= 3
        assert classes.colormap(1)[0][:3] != classes.colormap(1)[1][:3]
    renderer = layer_for(project, out).renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert [c.label for c in renderer.classes()] == [f"class {i}" for i in range(5)]
    assert layer_for(project, out).name() == f"{path.stem} classes (k=5)"
    project.clear()


def test_similarity_to_a_water_point_is_highest_on_water(msfm_provider: Any, tmp_path: Path,
                                                         s2_water_point: tuple) -> None:
    from qgis.core import QgsSingleBandPseudoColorRenderer

    query, extent, (rows, cols, ndwi) = s2_water_point
    out = str(tmp_path / "similarity.tif")
    params = {"INPUT": str(shared_file(*S2_L1C)), "QUERY": str(query), "EXTENT": extent, "RESOLUTION": "pixel",
              "OUTPUT": out, "SCALE": 1, **FAST}
    result, project = run_and_load("similarity", params)
    assert result["QUERY_CELLS"] == 1
    with rasterio.open(out) as sim:
        values = sim.read(1)
    assert values.shape == ndwi.shape
    water, land = values[ndwi > 0.2], values[ndwi < -0.2]
    assert np.nanmean(water) > np.nanmean(land) + 0.2, (np.nanmean(water), np.nanmean(land))
    assert np.nanmax(values) <= 1.0 + 1e-5 and np.nanmin(values) >= -1.0 - 1e-5
    assert isinstance(layer_for(project, out).renderer(), QgsSingleBandPseudoColorRenderer)
    assert layer_for(project, out).name() == f"{shared_file(*S2_L1C).stem} similarity"
    project.clear()


def test_mask_polygon_limits_the_output(msfm_provider: Any, tmp_path: Path) -> None:
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    path = shared_file(*NAIP)
    with rasterio.open(path) as ds:
        crs, t = ds.crs.to_string(), ds.transform
    # A triangle over the upper-left part of the tile.
    x0, y0 = t * (100, 100)
    x1, y1 = t * (400, 400)
    mask = QgsVectorLayer(f"Polygon?crs={crs}", "mask", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt(f"POLYGON(({x0} {y0}, {x1} {y0}, {x0} {y1}, {x0} {y0}))"))
    mask.dataProvider().addFeatures([feature])
    gpkg = write_gpkg(mask, tmp_path / "mask.gpkg")
    out = str(tmp_path / "masked.tif")
    run("cluster", {"INPUT": str(path), "SENSOR": "naip_rgbn", "MASK": str(gpkg), "K": 3, "OUTPUT": out, **FAST})
    with rasterio.open(out) as classes:
        assert abs(classes.bounds.left - x0) <= abs(t.a) and abs(classes.bounds.top - y0) <= abs(t.e)
        assert abs(classes.width - 300) <= 1 and abs(classes.height - 300) <= 1
        labels = classes.read(1)
    rows, cols = np.indices(labels.shape)
    diagonal = rows + cols - (labels.shape[0] - 1)  # < 0 inside the triangle, > 0 outside
    assert (labels[diagonal > 1] == 255).all()  # outside the polygon: nodata
    assert (labels[diagonal < -1] != 255).mean() > 0.99


def test_graphical_model_chains_embed_and_cluster(msfm_provider: Any, tmp_path: Path) -> None:
    """A graphical model: Compute embeddings → Cluster (reusing the embeddings), run as one algorithm."""
    import processing
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
    )

    model = QgsProcessingModelAlgorithm("embed then cluster", "msfm tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "Raster"), QgsProcessingModelParameter("raster"))
    embed = QgsProcessingModelChildAlgorithm("msfm:embed")
    embed.setChildId("embed")
    embed.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("raster")])
    embed.addParameterSources("SENSOR", [QgsProcessingModelChildParameterSource.fromStaticValue("sentinel2_l2a")])
    embed.addParameterSources("OVERLAP", [QgsProcessingModelChildParameterSource.fromStaticValue(0)])
    cluster = QgsProcessingModelChildAlgorithm("msfm:cluster")
    cluster.setChildId("cluster")
    cluster.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("raster")])
    cluster.addParameterSources("SENSOR", [QgsProcessingModelChildParameterSource.fromStaticValue("sentinel2_l2a")])
    cluster.addParameterSources("EMBEDDINGS", [QgsProcessingModelChildParameterSource.fromChildOutput("embed", "OUTPUT")])
    cluster.addParameterSources("K", [QgsProcessingModelChildParameterSource.fromStaticValue(4)])
    output = QgsProcessingModelOutput("classes", "Classes")
    output.setChildOutputName("OUTPUT")
    cluster.setModelOutputs({"classes": output})
    model.addChildAlgorithm(embed)
    model.addChildAlgorithm(cluster)
    tile = next(shared_file("data", "bigearthnet_mm").glob("*_s2_12band.tif"))
    out = str(tmp_path / "model_classes.tif")
    result = processing.run(model, {"raster": str(tile), "cluster:classes": out})
    assert Path(result["cluster:classes"]).exists()
    with rasterio.open(tile) as src, rasterio.open(out) as classes:
        assert (classes.width, classes.height) == (src.width, src.height) and classes.crs == src.crs
        assert set(np.unique(classes.read(1))) <= set(range(4)) | {255}


def test_cancelled_run_leaves_no_output(msfm_provider: Any, tmp_path: Path) -> None:
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    class CancelAfterFirstBatch(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.progressChanged.connect(lambda p: p > 0 and self.cancel())

    out = tmp_path / "cancelled.tif"
    feedback = CancelAfterFirstBatch()
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("embed", {"INPUT": str(shared_file(*S2_L1C)), "OUTPUT": str(out), "BATCH_SIZE": 2, "SCALE": 1,
                      **FAST}, feedback=feedback)
    assert feedback.progress() < 100
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file left behind


def test_an_output_that_is_the_input_is_refused_in_qgis(msfm_provider: Any, tmp_path: Path) -> None:
    """QGIS replaces existing outputs after asking, but never the input layer's file (issue 14)."""
    from qgis.core import QgsProcessingException

    raster = tmp_path / TINY_S2.name
    shutil.copyfile(TINY_S2, raster)
    before = raster.read_bytes()
    for alg, extra in (("embed", {}), ("cluster", {"K": 3})):
        with pytest.raises(QgsProcessingException, match="is the input raster.*would destroy"):
            run(alg, {"INPUT": str(raster), "OUTPUT": str(tmp_path / "." / raster.name), **extra})
    assert raster.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".aux.xml")) == [raster.name]


@pytest.mark.slow  # a QGIS Python in a subprocess
def test_plugin_loads_and_explains_when_torch_is_missing(tmp_path: Path) -> None:
    """QGIS's Python without torch: the provider loads; running a model explains what to install."""
    script = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch'", name="torch")
        sys.meta_path.insert(0, NoTorch())
        import importlib.util
        _find = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] == "torch" else _find(name, *a)
        from qgis.core import QgsApplication, QgsProcessingException
        app = QgsApplication([], False)
        app.initQgis()
        sys.path.append(QgsApplication.pkgDataPath() + "/python/plugins")
        from processing.core.Processing import Processing
        Processing.initialize()
        import qgis_plugin
        plugin = qgis_plugin.classFactory(None)
        plugin.initProcessing()
        import processing
        print("ALGS", len(QgsApplication.processingRegistry().providerById("msfm").algorithms()))
        print("BANDS", processing.run("msfm:bandmapping", {{"INPUT": {str(shared_file(*S2_L1C))!r}}})["SENSOR"])
        try:
            processing.run("msfm:embed", {{"INPUT": {str(shared_file(*BEN_S1))!r},
                                           "OUTPUT": {str(tmp_path / "x.tif")!r}}})
        except QgsProcessingException as exc:
            print("ERROR", exc)
        print("TORCH_IMPORTED", "torch" in sys.modules)
    """)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    out = proc.stdout
    assert "ALGS 14" in out, proc.stderr[-2000:]
    assert "BANDS sentinel2_l1c" in out
    assert "ERROR msfm needs Python package(s) that QGIS's Python does not have: torch" in out
    assert "pip install" in out and "Install packages…" in out and "only when you ask it to" in out
    assert "TORCH_IMPORTED False" in out


def test_batch_dialog_runs_one_row_per_raster(msfm_provider: Any, qgis_iface: Any, tmp_path: Path) -> None:
    """The toolbox's batch mode: every parameter gets a batch widget; two rows → two styled class maps."""
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from processing.tools import dataobjects
    from qgis.core import QgsApplication, QgsPalettedRasterRenderer, QgsProject

    QgsProject.instance().clear()
    alg = QgsApplication.processingRegistry().createAlgorithmById("msfm:cluster")
    dialog = BatchAlgorithmDialog(alg)
    panel = dialog.mainWidget()
    context = dataobjects.createContext()
    tiles = sorted(shared_file("data", "bigearthnet_mm").glob("*_s2_12band.tif"))[:2]
    while panel.batchRowCount() < len(tiles):
        panel.addRow()
    column = panel.parameter_to_column
    outputs = [tmp_path / f"classes_{i}.tif" for i in range(len(tiles))]
    for row, (tile, out) in enumerate(zip(tiles, outputs)):
        for name, value in {"INPUT": str(tile), "SENSOR": "sentinel2_l2a", "K": 4, "OVERLAP": 0}.items():
            panel.wrappers[row][column[name]].setParameterValue(value, context)
        panel.tblParameters.cellWidget(row + 1, column["OUTPUT"]).setValue(str(out))
    panel.checkLoadLayersOnCompletion.setChecked(True)
    dialog.runAlgorithm()
    for tile, out in zip(tiles, outputs):
        with rasterio.open(tile) as src, rasterio.open(out) as classes:
            assert (classes.width, classes.height, classes.crs) == (src.width, src.height, src.crs)
    paths = [str(out) for out in outputs]
    loaded = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.source() in paths]
    assert len(loaded) == 2 and all(isinstance(lyr.renderer(), QgsPalettedRasterRenderer) for lyr in loaded)
    QgsProject.instance().clear()
    dialog.deleteLater()


def test_non_file_layer_is_read_through_a_cloned_provider(msfm_provider: Any, tmp_path: Path) -> None:
    """A layer QGIS computes (virtual raster: the S1 VV band by formula) is read through its provider, not a path."""
    from qgis.core import QgsRasterLayer

    path = shared_file(*BEN_S1)
    src = QgsRasterLayer(str(path), "s1")
    e = src.extent()
    uri = (f"?crs={src.crs().authid()}&extent={e.xMinimum()},{e.yMinimum()},{e.xMaximum()},{e.yMaximum()}"
           f"&width={src.width()}&height={src.height()}&formula=%22s1@1%22&s1:uri={path}&s1:provider=gdal")
    layer = QgsRasterLayer(uri, "vv (virtual)", "virtualraster")
    assert layer.isValid() and layer.providerType() == "virtualraster"
    out = str(tmp_path / "virtual_embeddings.tif")
    result = run("embed", {"INPUT": layer, "BAND_OVERRIDES": "1=microwave_1", "OUTPUT": out, **FAST})
    assert json.loads(result["BANDS"]) == ["microwave_1"]
    with rasterio.open(path) as s1, rasterio.open(out) as emb:
        assert emb.count == D_DEMO and emb.crs == s1.crs
        assert np.allclose([emb.bounds.left, emb.bounds.top], [s1.bounds.left, s1.bounds.top])
        assert np.isfinite(emb.read(1)).all()


def test_a_blank_optional_output_is_not_a_layer_to_load(msfm_provider: Any, tmp_path: Path) -> None:
    """Batch mode hands every output cell over as a layer definition, blank ones included: those must not become
    layers to load ("The following layers were not correctly generated" on every successful row)."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingOutputLayerDefinition, QgsProject

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    project = QgsProject.instance()
    classes = str(tmp_path / "classes.tif")
    params = {"INPUT": str(shared_file(*BEN_S2)), "SENSOR": "sentinel2_l2a", "K": 3, "RESOLUTION": "patch",
              "OUTPUT": QgsProcessingOutputLayerDefinition(classes, project),
              "OUTPUT_EMBEDDINGS": QgsProcessingOutputLayerDefinition("", project)}
    processing.run("msfm:cluster", params, context=context)
    assert list(context.layersToLoadOnCompletion()) == [classes]


def test_change_map_of_a_scene_against_itself_is_zero_named_and_styled(msfm_provider: Any, tmp_path: Path) -> None:
    from qgis.core import QgsSingleBandPseudoColorRenderer

    path = shared_file("data", "sen1floods11_india_900498_s2_l1c.tif")
    out = str(tmp_path / "change.tif")
    result, project = run_and_load("change", {"BEFORE": str(path), "INPUT": str(path), "RESOLUTION": "patch",
                                              "SCALE": 1, "OUTPUT": out, **FAST})
    assert result["REPROJECTED"] is False
    with rasterio.open(out) as change:
        assert np.nanmax(change.read(1)) < 1e-5 and change.tags()["MSFM_KIND"] == "change"
    layer = layer_for(project, out)
    assert layer.name() == f"{path.stem} change since {path.stem}"
    assert isinstance(layer.renderer(), QgsSingleBandPseudoColorRenderer)
    project.clear()
    # a changed block, a mask at a given threshold and the changed areas, loaded with the map
    with rasterio.open(path) as ds:
        pixels, profile, descriptions = ds.read(), ds.profile, ds.descriptions
    pixels[:, 192:320, 192:320] = pixels[:, 0:128, 384:512][:, ::-1, ::-1]
    edited = tmp_path / "edited.tif"
    with rasterio.open(edited, "w", **profile) as dst:
        dst.write(pixels)
        dst.descriptions = descriptions
    mask, areas = str(tmp_path / "mask.tif"), str(tmp_path / "areas.gpkg")
    result, project = run_and_load("change", {"BEFORE": str(path), "INPUT": str(edited), "RESOLUTION": "patch",
                                              "SCALE": 1, "THRESHOLD": "value", "THRESHOLD_VALUE": 0.02,
                                              "OUTPUT": str(tmp_path / "c2.tif"), "OUTPUT_MASK": mask,
                                              "OUTPUT_POLYGONS": areas, "TOWARDS_K": 3,
                                              "OUTPUT_TOWARDS": str(tmp_path / "towards.tif"), **FAST})
    assert result["THRESHOLD_USED"] == pytest.approx(0.02) and result["UNITS"] == "cosine_distance"
    # changed towards: the k-means classes of the edited raster at the changed cells, styled with their legend
    assert sum(result["TOWARDS_FRACTIONS"].values()) == pytest.approx(1.0)
    towards = layer_for(project, str(tmp_path / "towards.tif"))
    assert towards.name() == "edited change since " + path.stem + " (towards)"
    assert {c.label for c in towards.renderer().classes()} <= {"class 0", "class 1", "class 2"}
    with rasterio.open(mask) as m:
        hit = m.read(1) == 1
    assert hit[12:20, 12:20].mean() > 0.5 and hit.sum() - hit[12:20, 12:20].sum() <= 3
    assert layer_for(project, mask).name() == "edited change since " + path.stem + " (mask)"
    assert [c.label for c in layer_for(project, mask).renderer().classes()] == ["unchanged", "changed"]
    loaded = [lyr for lyr in project.mapLayers().values() if lyr.name().endswith("(areas)")]
    assert len(loaded) == 1 and loaded[0].featureCount() >= 1
    project.clear()


def test_embeddings_made_elsewhere_are_clustered_and_searched_in_the_format_named(
        msfm_provider: Any, demo_model: Any, tmp_path: Path) -> None:
    """An AlphaEarth int8 export (written from our embeddings of the committed crop, without the band names that would
    give its layout away) reused by msfm:cluster and msfm:similarity with EMBEDDING_FORMAT = alphaearth, no model run;
    auto and a wrong format are refused with the engine's reason."""
    from qgis.core import QgsApplication, QgsFeature, QgsGeometry, QgsPointXY, QgsProcessingException, QgsVectorLayer

    from engine.maps import embed_raster
    from engine.maps.quantized import ENCODINGS
    from engine.settings import InferenceSettings
    from qgis_plugin.algorithms.cluster import FORMATS
    from tests.conftest import write_alphaearth

    assert FORMATS == ("auto", *ENCODINGS)  # the toolbox lists what the engine reads
    for alg_id in ("msfm:cluster", "msfm:similarity", "msfm:classify", "msfm:change"):
        param = QgsApplication.processingRegistry().algorithmById(alg_id).parameterDefinition("EMBEDDING_FORMAT")
        assert param.options() == list(FORMATS) and param.defaultValue() == "auto", alg_id
        assert param.flags() & param.FlagAdvanced, alg_id
    raster = tmp_path / "input" / TINY_S2.name  # a copy: QGIS writes .aux.xml statistics beside what it opens
    raster.parent.mkdir()
    shutil.copyfile(TINY_S2, raster)
    ours = embed_raster(raster, tmp_path / "ours.tif", demo_model,
                        settings=InferenceSettings(tile_size_px=224, overlap_px=32, scale=1.0, precision="fp32")).path
    with rasterio.open(ours) as ds:
        values, profile = ds.read().astype(np.float32), ds.profile
    alphaearth = tmp_path / "alphaearth.tif"
    write_alphaearth(alphaearth, values, profile, names=False)
    # MODEL: a registry model that is not downloaded (the Hub is offline): loading any model would fail the run
    params = {"INPUT": str(raster), "EMBEDDINGS": str(alphaearth), "K": 3, "RESOLUTION": "patch",
              "MODEL": "smarties-vit-b"}
    out = str(tmp_path / "classes.tif")
    result = run("cluster", {**params, "EMBEDDING_FORMAT": "alphaearth", "OUTPUT": out})
    assert result["TILES"] == 0
    with rasterio.open(TINY_S2) as src, rasterio.open(out) as classes:
        labels = classes.read(1)
        assert (classes.crs, classes.transform, classes.shape) == (src.crs, profile["transform"], values.shape[1:])
        green, nir = src.read([3, 8])  # B03, B08
    h, w = labels.shape  # one class per 16 × 16-px cell: the cell is water when most of its pixels are
    water = ndwi_water(green, nir)[: 16 * h, : 16 * w].reshape(h, 16, w, 16).mean(axis=(1, 3)) > 0.5
    assert set(np.unique(labels)) == {0, 1, 2} and water_iou(labels, water) > 0.9
    with pytest.raises(QgsProcessingException, match="64 int8 band.*do not say how they encode an embedding"):
        run("cluster", {**params, "OUTPUT": str(tmp_path / "auto.tif")})  # auto: the file does not tell
    with pytest.raises(QgsProcessingException,
                       match=r"alphaearth.tif is not a TESSERA embedding raster.*alphaearth_scales.tif beside it"):
        run("cluster", {**params, "EMBEDDING_FORMAT": "tessera", "OUTPUT": str(tmp_path / "tessera.tif")})
    # similarity to the embedding under a point: 1 in that point's cell
    x, y = profile["transform"] * (4.5, 3.5)
    query = QgsVectorLayer(f"Point?crs={profile['crs'].to_string()}", "query", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
    query.dataProvider().addFeatures([feature])
    similarity = str(tmp_path / "similarity.tif")
    run("similarity", {"INPUT": str(raster), "EMBEDDINGS": str(alphaearth), "EMBEDDING_FORMAT": "alphaearth",
                       "RESOLUTION": "patch", "QUERY": query, "MODEL": "smarties-vit-b", "OUTPUT": similarity})
    with rasterio.open(similarity) as sim:
        assert sim.read(1)[3, 4] == pytest.approx(1.0, abs=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".aux.xml")) == [
        "alphaearth.tif", "classes.qml", "classes.tif", "input", "ours.tif", "similarity.qml", "similarity.tif"]
