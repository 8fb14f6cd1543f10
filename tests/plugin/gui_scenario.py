"""Run inside the QGIS desktop application (``qgis --code``) by tests/plugin/test_gui.py, as an analyst would:
enable msfm in a fresh profile, load a real raster, open the dock, install ONNX Runtime from the dock, pick an exported
model, run clustering from the dock, then a change map since an earlier raster (added to the project afterwards), and
record what QGIS shows (``result.json``, screenshots) before quitting.

Configuration comes from the environment variable ``MSFM_GUI_TEST`` (JSON: ``raster``, ``before`` (the earlier
raster of the same place), ``model``, ``out``).
"""

import json
import os
import time
import traceback
from pathlib import Path

import qgis.utils
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface, loadPlugin, plugins, startPlugin

CONFIG = json.loads(os.environ["MSFM_GUI_TEST"])
OUT = Path(CONFIG["out"])
RESULT: dict = {"steps": []}
TIMEOUT_S = float(CONFIG.get("timeout_s", 900))


def record_exception(kind, value, tb, *args, **kwargs) -> None:
    """Python errors QGIS would show in a modal dialog (which would stop this scenario) are recorded instead."""
    RESULT.setdefault("python_errors", []).append("".join(traceback.format_exception(kind, value, tb)))


qgis.utils.showException = record_exception


def record_message(message: str, tag: str, level) -> None:
    if tag in ("msfm", "Processing", "Python warning", "Python error"):
        RESULT.setdefault("log", []).append(f"[{tag}] {message}")


QgsApplication.messageLog().messageReceived.connect(record_message)


def step(name: str, **values) -> None:
    RESULT["steps"].append(name)
    RESULT.update(values)
    (OUT / "result.json").write_text(json.dumps(RESULT, indent=1, default=str))


def finish(error: str = "") -> None:
    if error:
        RESULT["error"] = error
    try:
        iface.mainWindow().grab().save(str(OUT / "qgis.png"))
    finally:
        step("finished")
        QgsProject.instance().removeAllMapLayers()  # no "temporary layers will be lost" question
        QgsProject.instance().setDirty(False)  # no "save the project?" question
        QTimer.singleShot(20000, exit_hung)
        iface.actionExit().trigger()  # QGIS's own way out (QgsApplication.exit skips it, and QGIS 3.22 then aborts)


def exit_hung() -> None:
    """QGIS has not quit 20 s after File ▸ Exit: record what the screen shows, and stop with exit status 3."""
    QgsApplication.primaryScreen().grabWindow(0).save(str(OUT / "exit_hung.png"))
    step("exit hung", top_level=[w.windowTitle() for w in QgsApplication.topLevelWidgets() if w.isVisible()])
    os._exit(3)


def scenario():
    assert loadPlugin("msfm") and startPlugin("msfm"), f"the msfm plugin did not start: {RESULT.get('python_errors')}"
    plugin = plugins["msfm"]
    layer = QgsRasterLayer(CONFIG["raster"], "flood chip S2")
    assert layer.isValid(), CONFIG["raster"]
    QgsProject.instance().addMapLayer(layer)
    iface.setActiveLayer(layer)
    plugin.action.trigger()  # the toolbar button opens the dock
    dock = plugin.dock
    yield lambda: dock.isVisible()
    step("dock shown", missing_before=dock.missing_packages(),
         install_row_before=dock.packages_row.isVisible(), dock_layer_before=dock.layer.name() if dock.layer else None)
    dock.model_file_widget.setFilePath(CONFIG["model"])  # an exported .onnx encoder: the onnx backend
    dialog = dock.open_installer()
    step("installer opened", choice=dialog.choice(), missing_onnx=dock.missing_packages())
    started = time.perf_counter()
    dialog.install_button.click()
    yield lambda: dialog.task is None
    dialog.grab().save(str(OUT / "install.png"))
    step("installed", install_seconds=time.perf_counter() - started, install_status=dialog.status.text(),
         install_log=dialog.log.toPlainText()[-4000:], missing_after=dock.missing_packages(),
         install_row_after=dock.packages_row.isVisible())
    dialog.close()
    iface.setActiveLayer(layer)
    dock.set_layer(layer)
    dock.k_spin.setValue(4)
    step("ready to run", dock_width=dock.width(), run_enabled=dock.run_button.isEnabled(), band_error=dock.error,
         tiles=dock.tiles_label.text())
    dock.run_button.click()
    yield lambda: not dock.is_running()
    layers = list(QgsProject.instance().mapLayers().values())
    classes = [lyr for lyr in layers if lyr is not layer]
    step("clustered", status=dock.status_label.text(), layers=[lyr.name() for lyr in layers],
         class_renderer=[lyr.renderer().type() for lyr in classes if lyr.renderer() is not None],
         class_legend=[[str(c.label) for c in lyr.renderer().classes()] for lyr in classes
                       if hasattr(lyr.renderer(), "classes")],
         active_layer=iface.activeLayer().name() if iface.activeLayer() else None,
         dock_layer=dock.layer.name() if dock.layer else None, dock_error=dock.error,
         run_enabled_after=dock.run_button.isEnabled())
    before = QgsRasterLayer(CONFIG["before"], "flood chip S1")
    assert before.isValid(), CONFIG["before"]
    QgsProject.instance().addMapLayer(before)  # QGIS makes it the active layer: the dock follows it…
    iface.setActiveLayer(layer)  # …and back to the later raster
    dock.before_combo.setLayer(before)
    dock.before_combo.activated.emit(dock.before_combo.currentIndex())  # as a user's pick
    step("ready for change", change_enabled=dock.change_button.isEnabled(), change_tip=dock.change_button.toolTip(),
         change_layer=dock.layer.name() if dock.layer else None, change_estimate=dock.estimate_label.text())
    dock.change_button.click()
    yield lambda: not dock.is_running()
    changes = [lyr for lyr in QgsProject.instance().mapLayers().values() if "change since" in lyr.name()]
    step("changed", change_status=dock.status_label.text(), change_layers=[lyr.name() for lyr in changes],
         change_renderer=[lyr.renderer().type() for lyr in changes if lyr.renderer() is not None],
         dock_layer_after_change=dock.layer.name() if dock.layer else None)


def drive(steps, deadline: float) -> None:
    """Advance the scenario whenever the condition it waits for holds (polled every 0.2 s)."""
    try:
        condition = next(steps)
    except StopIteration:
        finish()
        return
    except Exception:
        finish(traceback.format_exc())
        return

    def poll() -> None:
        if time.monotonic() > deadline:
            finish(f"timed out after {TIMEOUT_S:.0f} s at step {RESULT['steps'][-1:]}")
        elif condition():
            drive(steps, deadline)
        else:
            QTimer.singleShot(200, poll)

    poll()


QTimer.singleShot(1000, lambda: drive(scenario(), time.monotonic() + TIMEOUT_S))
