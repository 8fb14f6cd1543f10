"""The msfm dock, built offscreen with pytest-qgis's stub iface, on real rasters of ../shared/data.

Expected band ranges and tile counts are computed with the engine on the same files, never hard-coded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import BEN_S2, NAIP, S2_L1C, shared_file

pytestmark = pytest.mark.qgis

#: Sen1Floods11 India chip 900498: Sentinel-1 (VV, VH in dB) and Sentinel-2 L1C of the same place, 512 × 512 px.
FLOOD_S1 = ("data", "sen1floods11_india_900498_s1_db.tif")
FLOOD_S2 = ("data", "sen1floods11_india_900498_s2_l1c.tif")


def _clear_settings() -> None:
    from qgis.core import QgsSettings

    QgsSettings().remove("msfm/dock")
    QgsSettings().remove("msfm/timing")


@pytest.fixture()
def make_dock(qgis_iface: Any, msfm_provider: Any) -> Iterator[Any]:
    """Factory of docks on the stub iface, with clean ``msfm/dock`` and ``msfm/timing`` settings; docks are closed
    afterwards."""
    from qgis_plugin.dock import MsfmDock

    _clear_settings()
    docks = []

    def make() -> Any:
        docks.append(MsfmDock(qgis_iface))
        return docks[-1]

    yield make
    for dock in docks:
        dock.close_dock()
        dock.deleteLater()
    _clear_settings()


def raster(*parts: str) -> Any:
    from qgis.core import QgsRasterLayer

    path = shared_file(*parts)
    layer = QgsRasterLayer(str(path), path.stem)
    assert layer.isValid()
    return layer


def cell(dock: Any, band: int, column: str) -> str:
    from qgis_plugin.dock import COLUMNS

    return dock.table.item(band - 1, COLUMNS.index(column)).text()


def choose(dock: Any, band: int, data: str) -> None:
    """Pick an entry of a band's range chooser as a user would (the combo's ``activated`` signal)."""
    combo = dock.range_combo(band)
    position = combo.findData(data)
    assert position >= 0, data
    combo.setCurrentIndex(position)
    combo.activated.emit(position)


def test_bands_tiles_and_estimate_of_a_sentinel2_layer(make_dock: Any) -> None:
    from engine.raster import tile_grid
    from engine.spectral import resolve_bands

    dock = make_dock()
    layer = raster(*S2_L1C)
    dock.set_layer(layer)
    expected = resolve_bands(layer.source())
    assert dock.table.rowCount() == layer.bandCount() == 13
    for band in expected.bands:
        assert dock.range_combo(band.index).currentText() == (band.key or band.projection.label)
        assert cell(dock, band.index, "Rule") == band.rule
        assert cell(dock, band.index, "Why") == band.reason
    for gone in expected.dropped:  # B10 cirrus
        assert dock.range_combo(gone.index).currentText() == "drop"
        assert cell(dock, gone.index, "Why") == gone.reason
    assert not dock.message_label.isVisibleTo(dock)
    assert expected.sensor in dock.sensor_label.text()

    dock.tile_spin.setValue(224)
    dock.overlap_spin.setValue(32)
    scale = expected.default_scale
    grid = tile_grid(round(layer.height() * scale), round(layer.width() * scale), 224, 32, 16)
    assert dock.tile_count() == len(grid)
    assert f"</b> {len(grid)} tiles of 224 px" in dock.tiles_label.text()
    assert "</b> ~" in dock.estimate_label.text() and "rough guess" in dock.estimate_label.text()


def test_editing_a_range_sets_overrides_and_reresolves(make_dock: Any) -> None:
    from engine.spectral import resolve_bands
    from qgis_plugin.algorithms.base import parse_overrides

    dock = make_dock()
    dock.set_layer(raster(*S2_L1C))
    choose(dock, 8, "near_infrared_2")
    assert dock.overrides_text() == "8=near_infrared_2"
    assert cell(dock, 8, "Rule") == "override"
    assert dock.range_combo(8).currentText() == "near_infrared_2"

    combo = dock.range_combo(5)  # a wavelength typed into the chooser
    combo.setEditText("842.5")
    combo.lineEdit().editingFinished.emit()
    choose(dock, 1, "drop")
    text = "1=drop; 5=842.5; 8=near_infrared_2"
    assert dock.overrides_text() == text
    assert dock.overrides_edit.text() == text
    assert dock.parameters("msfm:embed")["BAND_OVERRIDES"] == text
    expected = resolve_bands(str(shared_file(*S2_L1C)), overrides=parse_overrides(text))
    band5 = next(b for b in expected.bands if b.index == 5)
    assert dock.range_combo(5).currentText() == (band5.key or band5.projection.label)
    assert cell(dock, 5, "Rule") == "override"
    assert cell(dock, 1, "Rule") == "override" and dock.range_combo(1).currentText() == "drop"

    choose(dock, 8, "__auto__")  # back to what the layer says
    assert dock.overrides_text() == "1=drop; 5=842.5"
    assert cell(dock, 8, "Rule") == "description"
    dock.overrides_edit.setText("4=red_1")  # the string can be typed too
    dock.overrides_edit.editingFinished.emit()
    assert dock.overrides == {4: "red_1"} and cell(dock, 4, "Rule") == "override"


def test_naip_without_sensor_names_the_band_then_the_preset_resolves_it(make_dock: Any) -> None:
    from engine.errors import BandResolutionError
    from engine.spectral import resolve_bands

    dock = make_dock()
    dock.set_layer(raster(*NAIP))
    with pytest.raises(BandResolutionError) as engine_error:
        resolve_bands(str(shared_file(*NAIP)))
    assert dock.table.rowCount() == 4  # still listed, so ranges can be picked
    assert dock.message_label.isVisibleTo(dock)
    text = dock.message_label.text()
    assert str(engine_error.value).splitlines()[1] in text  # the engine's reason for band 1
    assert "band 1" in text and "--band" not in text and "overrides={" not in text  # no command-line syntax
    assert "In QGIS: choose “USDA NAIP aerial R, G, B, NIR (8-bit)” (naip_rgbn) in 'Sensor preset' above" in text
    assert {cell(dock, b, "Rule") for b in range(1, 5)} == {"unresolved"}
    assert not dock.run_button.isEnabled()

    dock.sensor_combo.setCurrentIndex(dock.sensor_combo.findData("naip_rgbn"))
    expected = resolve_bands(str(shared_file(*NAIP)), sensor="naip_rgbn")
    assert not dock.message_label.isVisibleTo(dock)
    assert [dock.range_combo(b.index).currentText() for b in expected.bands] == [b.key for b in expected.bands]
    assert {cell(dock, b, "Rule") for b in range(1, 5)} == {"preset"}
    assert dock.parameters("msfm:cluster")["SENSOR"] == "naip_rgbn"
    assert dock.run_button.isEnabled()


def test_settings_persist_across_two_docks(make_dock: Any) -> None:
    first = make_dock()
    naip = raster(*NAIP)
    first.set_layer(naip)
    first.sensor_combo.setCurrentIndex(first.sensor_combo.findData("naip_rgbn"))
    choose(first, 4, "near_infrared_2")
    first.model_combo.setCurrentIndex(first.model_combo.findData("smarties-vit-b"))
    first.device_combo.setCurrentIndex(first.device_combo.findData("cpu"))
    for spin, value in ((first.tile_spin, 256), (first.overlap_spin, 32), (first.batch_spin, 4),
                        (first.scale_spin, 1.5), (first.k_spin, 5)):
        spin.setValue(value)
    assert "not downloaded" in first.model_label.text() and first.download_button.isEnabled()
    first.close_dock()

    second = make_dock()
    assert second.model_name() == "smarties-vit-b" and second.device_combo.currentData() == "cpu"
    assert (second.tile_spin.value(), second.overlap_spin.value(), second.batch_spin.value(),
            second.scale_spin.value(), second.k_spin.value()) == (256, 32, 4, 1.5, 5)
    second.set_layer(naip)  # per-file choices come back with the layer
    assert second.sensor() == "naip_rgbn" and second.overrides_text() == "4=near_infrared_2"
    assert cell(second, 4, "Rule") == "override"
    params = second.parameters("msfm:embed")
    assert {k: params[k] for k in ("MODEL", "DEVICE", "TILE_SIZE", "OVERLAP", "BATCH_SIZE", "SCALE")} == {
        "MODEL": "smarties-vit-b", "DEVICE": "cpu", "TILE_SIZE": 256, "OVERLAP": 32, "BATCH_SIZE": 4, "SCALE": 1.5}
    second.set_layer(raster(*S2_L1C))  # another file: its own (default) choices
    assert second.sensor() == "auto" and second.overrides_text() == ""


def test_diagnostics_land_on_the_clipboard(make_dock: Any) -> None:
    from qgis.PyQt.QtWidgets import QApplication

    dock = make_dock()
    dock.diagnostics_button.click()
    text = QApplication.clipboard().text()
    assert "QGIS: 3." in text and "- torch:" in text and "onnxruntime" in text and "model cache" in text
    assert "copied" in dock.status_label.text()


def test_non_raster_and_no_layer_clear_the_dock(make_dock: Any, qgis_iface: Any) -> None:
    from qgis.core import QgsVectorLayer

    dock = make_dock()
    dock.set_layer(raster(*S2_L1C))
    assert dock.table.rowCount() == 13 and dock.run_button.isEnabled()
    vector = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    qgis_iface.currentLayerChanged.emit(vector)  # follows the iface's current layer
    assert dock.layer is None and dock.table.rowCount() == 0
    assert "not a raster layer" in dock.layer_label.text()
    assert not dock.run_button.isEnabled() and not any(b.isEnabled() for b in dock.dialog_buttons.values())
    assert dock.tiles_label.text().endswith("</b> -")
    dock.set_layer(None)
    assert "Select a raster layer" in dock.layer_label.text() and dock.table.rowCount() == 0
    dock.close_dock()  # disconnected: the iface no longer drives it
    qgis_iface.currentLayerChanged.emit(raster(*S2_L1C))
    assert dock.layer is None


def test_dialog_buttons_prefill_the_processing_dialog(make_dock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import processing

    calls = []

    def fake_dialog(alg_id: str, params: dict) -> dict:
        calls.append((alg_id, params))
        return {"TILES": 10, "SECONDS": 5.0} if alg_id == "msfm:embed" else {}

    monkeypatch.setattr(processing, "execAlgorithmDialog", fake_dialog)
    dock = make_dock()
    layer = raster(*S2_L1C)
    dock.set_layer(layer)
    dock.k_spin.setValue(6)
    for button in dock.dialog_buttons.values():
        button.click()
    assert [c[0] for c in calls] == ["msfm:embed", "msfm:cluster", "msfm:similarity", "msfm:bandmapping"]
    embed, cluster, _, report = (c[1] for c in calls)
    assert embed["INPUT"] is layer and embed["MODEL"] == "smarties-demo-tiny" and embed["TILE_SIZE"] == 224
    assert "K" not in embed and cluster["K"] == 6
    assert set(report) == {"INPUT", "SENSOR", "BAND_OVERRIDES"}
    dock.dialog_buttons["msfm:embed"].click()  # the run's own seconds, not how long the dialog stayed open
    assert dock.status_label.text() == "msfm:embed: finished in 5.0 s"


def test_backend_and_model_file_reach_the_algorithm_parameters(make_dock: Any, monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """The backend chooser becomes BACKEND of the embedding algorithms (dialogs and the background clustering); a
    .onnx model file becomes MODEL_FILE and fixes the backend to onnx; both are remembered."""
    import processing

    calls: list = []
    monkeypatch.setattr(processing, "execAlgorithmDialog", lambda alg_id, params: calls.append((alg_id, params)) or {})
    dock = make_dock()
    dock.set_layer(raster(*S2_L1C))
    assert dock.backend() == "torch" and dock.parameters("msfm:embed")["BACKEND"] == "torch"
    dock.backend_combo.setCurrentIndex(dock.backend_combo.findData("onnx"))
    for button in dock.dialog_buttons.values():
        button.click()
    embed, cluster, similarity, report = (c[1] for c in calls)
    assert embed["BACKEND"] == cluster["BACKEND"] == similarity["BACKEND"] == "onnx"
    assert "BACKEND" not in report and "MODEL_FILE" not in embed and embed["MODEL"] == "smarties-demo-tiny"
    tasks: list = []
    monkeypatch.setattr(dock, "start_task", lambda alg_id, params, on_done: tasks.append((alg_id, params)) or True)
    assert dock.run_clustering()
    assert tasks[0][0] == "msfm:cluster" and tasks[0][1]["BACKEND"] == "onnx"
    dock.detect_devices()  # the onnx backend reports ONNX Runtime's providers (torch not asked)
    assert "onnxruntime" in dock.device_label.text() and "CPUExecutionProvider" in dock.device_label.text()

    dock.backend_combo.setCurrentIndex(dock.backend_combo.findData("torch"))
    encoder = tmp_path / "encoder.onnx"
    dock.model_file_widget.setFilePath(str(encoder))
    assert dock.backend_combo.currentData() == "onnx" and not dock.backend_combo.isEnabled()
    params = dock.parameters("msfm:cluster")
    assert params["MODEL_FILE"] == str(encoder) and params["BACKEND"] == "onnx"
    assert "encoder.onnx overrides it" in dock.model_label.text()
    assert dock.timing_key().endswith(f"/encoder.onnx/{dock.device_combo.currentData()}/224/onnx")
    dock.close_dock()

    second = make_dock()
    assert second.model_file() == str(encoder) and second.backend() == "onnx"
    assert not second.backend_combo.isEnabled()
    second.model_file_widget.setFilePath("")
    assert second.backend_combo.isEnabled() and second.backend() == "onnx"  # the chooser keeps onnx
    assert "MODEL_FILE" not in second.parameters("msfm:embed")
    second.backend_combo.setCurrentIndex(second.backend_combo.findData("torch"))
    assert second.parameters("msfm:similarity")["BACKEND"] == "torch"


def test_run_clustering_in_the_background_adds_a_styled_class_map(make_dock: Any, qgis_new_project: Any) -> None:
    from qgis.core import QgsPalettedRasterRenderer, QgsProject

    layer = raster(*BEN_S2)
    QgsProject.instance().addMapLayer(layer)
    dock = make_dock()
    dock.set_layer(layer)
    dock.sensor_combo.setCurrentIndex(dock.sensor_combo.findData("sentinel2_l2a"))
    dock.overlap_spin.setValue(0)
    dock.scale_spin.setValue(4)  # 120 px → 480 model px: 9 tiles, enough to be timed
    dock.k_spin.setValue(4)
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    assert dock.tile_count() == 9 and "rough guess" in dock.estimate_label.text()
    assert dock.run_clustering()
    assert dock.is_running() and dock.cancel_button.isEnabled() and not dock.run_button.isEnabled()
    wait_for(dock, 60)
    assert dock.progress.value() == 100, dock.status_label.text()
    classes = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name().endswith("classes (k=4)")]
    assert len(classes) == 1, dock.status_label.text()
    renderer = classes[0].renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)  # styled by the algorithm's post-processor:
    assert [c.label for c in renderer.classes()] == [f"class {i}" for i in range(4)]
    assert "measured here" in dock.estimate_label.text() and dock.run_button.isEnabled()
    # QGIS makes the new class map the active layer: the dock stays on the imagery (issue 18, item 2)
    dock._on_current_layer_changed(classes[0])
    assert dock.layer is layer and dock.error == "" and dock.run_button.isEnabled()
    assert "is an msfm output (classes)" in dock.layer_label.text()
    other = raster(*NAIP)  # an ordinary raster is followed as before
    dock._on_current_layer_changed(other)
    assert dock.layer is other


def wait_for(dock: Any, seconds: float) -> None:
    from qgis.core import QgsApplication

    deadline = time.monotonic() + seconds
    while dock.is_running() and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.02)
    assert not dock.is_running(), f"the task did not finish in {seconds} s"


def test_cancel_stops_the_background_run(make_dock: Any, qgis_new_project: Any) -> None:
    from qgis.core import QgsApplication, QgsProject

    layer = raster(*S2_L1C)  # 1024 × 1024 at scale 2: 324 tiles, far longer than the cancellation
    QgsProject.instance().addMapLayer(layer)
    dock = make_dock()
    dock.set_layer(layer)
    assert dock.run_clustering()
    deadline = time.monotonic() + 30
    while dock.progress.value() == 0 and dock.is_running() and time.monotonic() < deadline:
        QgsApplication.processEvents()  # until the first batch is encoded: cancel in the middle of the run
        time.sleep(0.02)
    assert dock.is_running() and dock.progress.value() > 0
    dock.cancel_button.click()
    wait_for(dock, 30)
    assert "cancelled" in dock.status_label.text() and dock.progress.value() == 0
    assert list(QgsProject.instance().mapLayers().values()) == [layer]
    assert "rough guess" in dock.estimate_label.text()  # a cancelled run is not timed
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()


def test_screenshot_of_the_dock_is_not_blank(make_dock: Any, tmp_path: Path) -> None:
    from qgis.core import QgsApplication
    from qgis.PyQt.QtGui import QImage

    dock = make_dock()
    dock.set_layer(raster(*S2_L1C))
    dock.resize(480, 900)
    dock.show()
    QgsApplication.processEvents()
    path = tmp_path / "dock.png"
    assert dock.grab().save(str(path))
    image = QImage(str(path))
    assert (image.width(), image.height()) == (480, 900)
    colours = {image.pixel(x, y) for x in range(0, 480, 4) for y in range(0, 900, 4)}
    assert len(colours) > 20
    dock.hide()


def test_plugin_creates_the_dock_and_unload_disconnects_it(qgis_iface: Any, msfm_provider: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from qgis.core import QgsApplication

    from qgis_plugin.plugin import MsfmPlugin

    # The session's provider is already registered: a second one would be rejected (and deleted) by the registry.
    monkeypatch.setattr(MsfmPlugin, "initProcessing", lambda self: None)
    plugin = MsfmPlugin(qgis_iface)
    plugin.initGui()
    dock = plugin.dock
    assert dock.objectName() == "MsfmDock" and not dock.isVisible()
    # QGIS shows an added dock for an instant before initGui hides it: no device probe (it would import torch)
    dock.show()
    dock.hide()
    QgsApplication.processEvents()
    assert dock.devices is None
    plugin.unload()
    assert plugin.dock is None and dock.layer is None
    qgis_iface.currentLayerChanged.emit(raster(*S2_L1C))  # the unloaded dock no longer follows the iface
    assert dock.layer is None
    assert QgsApplication.processingRegistry().providerById("msfm") is msfm_provider


def test_the_estimate_separates_fixed_from_per_tile_seconds_and_toolbox_runs_update_it(
        make_dock: Any, qgis_new_project: Any) -> None:
    from qgis.core import QgsProject, QgsSettings

    from qgis_plugin import timing

    name = timing.key("smarties-demo-tiny", "cpu", 224, "torch")
    assert not timing.record(name, 4, 3.0, 1.0)  # too few tiles to say anything
    # a 48-tile run of 10 s of which 4 s on the tiles: 81 tiles take 6 + 81 × 4/48 s, not 81 × 10/48
    assert timing.record(name, 48, 10.0, 4.0)
    seconds, source = timing.estimate(name, 81, None, "cpu")
    assert seconds == pytest.approx(6 + 81 * 4 / 48) and "0.0833 s/tile + 6.0 s fixed" in source
    # a toolbox run (not the dock's) records its own timing, which the dock then shows
    QgsSettings().remove(timing.GROUP)
    layer = raster(*BEN_S2)
    QgsProject.instance().addMapLayer(layer)
    dock = make_dock()
    dock.set_layer(layer)
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.overlap_spin.setValue(0)
    dock.scale_spin.setValue(4)
    assert "rough guess" in dock.estimate_label.text()
    import processing

    result = processing.run("msfm:embed", {**dock.parameters("msfm:embed"), "OUTPUT": "TEMPORARY_OUTPUT"})
    assert result["TILES"] == dock.tile_count() == 9
    dock.refresh_estimate()
    assert "measured here" in dock.estimate_label.text() and timing.measured(dock.timing_key()) is not None


def listed_before(dock: Any) -> list[str]:
    """The layers *Change since* offers, by name."""
    combo = dock.before_combo
    return [combo.layer(i).name() for i in range(combo.count()) if combo.layer(i) is not None]


def choose_before(dock: Any, layer: Any) -> None:
    """Pick the earlier raster in *Change since* as a user would (the combo's ``activated`` signal)."""
    dock.before_combo.setLayer(layer)
    assert dock.before_combo.currentLayer() is not None
    dock.before_combo.activated.emit(dock.before_combo.currentIndex())


def test_change_map_since_an_earlier_layer_runs_in_the_background(make_dock: Any, qgis_new_project: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """*Change since* (the S1 chip) and *Change map* on the S2 chip of the same place: disabled until an earlier layer
    is chosen, the dock's values as parameters, the named change map in the project (of cosine distances in [0, 2]),
    the estimate counting both rasters' tiles, msfm outputs not offered, the choice remembered for the layer."""
    import numpy as np
    import rasterio
    from qgis.core import QgsProject, QgsSingleBandPseudoColorRenderer

    from engine.raster import tile_grid

    s1, s2 = raster(*FLOOD_S1), raster(*FLOOD_S2)
    QgsProject.instance().addMapLayers([s1, s2])
    dock = make_dock()
    dock.set_layer(s2)
    assert listed_before(dock) == [s1.name()]  # not the dock's own layer
    assert dock.before_layer() is None and not dock.change_button.isEnabled()
    assert dock.change_button.toolTip() == "Choose the earlier raster in 'Change since' first."
    assert "change map" not in dock.estimate_label.text()
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.overlap_spin.setValue(0)
    dock.scale_spin.setValue(1)
    choose_before(dock, s1)
    assert dock.before_layer().id() == s1.id() and dock.change_button.isEnabled()
    assert f"“{s1.name()}” (earlier) and “{s2.name()}” (later)" in dock.change_button.toolTip()
    tiles = len(tile_grid(s2.height(), s2.width(), 224, 0, 16))
    assert dock.before_tile_count() == len(tile_grid(s1.height(), s1.width(), 224, 0, 16)) == tiles == 9
    assert f"; change map ({tiles} + {tiles} tiles): ~" in dock.estimate_label.text()

    started: list = []
    start_task = dock.start_task
    monkeypatch.setattr(dock, "start_task", lambda alg_id, params, on_done: started.append((alg_id, params))
                        or start_task(alg_id, params, on_done))
    assert dock.run_change()
    alg_id, params = started[0]
    assert alg_id == "msfm:change" and params["BEFORE"] is s1 and params["BEFORE_SENSOR"] == "auto"
    assert {k: v for k, v in params.items() if k not in ("BEFORE", "BEFORE_SENSOR", "OUTPUT")} == \
        dock.parameters("msfm:change")
    assert params["INPUT"] is s2 and params["SCALE"] == 1 and params["DEVICE"] == "cpu"
    assert dock.is_running() and not dock.change_button.isEnabled() and not dock.run_button.isEnabled()
    assert "in progress" in dock.change_button.toolTip()
    wait_for(dock, 120)
    assert dock.status_label.text().startswith("Change map added to the project in "), dock.status_label.text()
    changes = [lyr for lyr in QgsProject.instance().mapLayers().values() if "change since" in lyr.name()]
    assert [lyr.name() for lyr in changes] == [f"{s2.name()} change since {s1.name()}"]
    assert isinstance(changes[0].renderer(), QgsSingleBandPseudoColorRenderer)
    with rasterio.open(changes[0].source()) as ds:
        values, tags = ds.read(1), ds.tags()
        assert ds.shape == (s2.height(), s2.width()) and tags["MSFM_KIND"] == "change"
    # two sensors: CALIBRATION auto maps the robust z-score of the cosine distance, (d − median) / σ, against the
    # scene's no-change distribution, recorded with it; the distances behind it are in [0, 2]
    assert tags["MSFM_UNITS"] == "robust_z"
    median, sigma = map(float, tags["MSFM_NO_CHANGE"].split())
    valid = np.isfinite(values)
    distance = median + sigma * values[valid].astype(np.float64)
    assert valid.mean() > 0.9 and distance.min() >= -1e-4 and distance.max() <= 2 + 1e-4
    assert 0.01 < median < 2 and sigma > 0 and abs(np.median(values[valid])) < 0.1
    assert listed_before(dock) == [s1.name()]  # the change map (an msfm output) is not offered
    assert dock.change_button.isEnabled() and dock.before_layer().id() == s1.id()
    dock.close_dock()

    second = make_dock()  # the earlier layer is remembered for this layer's file
    second.set_layer(s2)
    assert second.before_layer() is not None and second.before_layer().id() == s1.id()
    second.set_layer(s1)  # another layer: its own choice (none), and S1 itself is not offered
    assert second.before_layer() is None and listed_before(second) == [s2.name()]
    assert not second.change_button.isEnabled()
