"""Screenshot of the msfm dock on the bundled Sentinel-2 scene, for the docs.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/dock_screenshot.py docs/img/dock.png

Builds the dock headless (a throw-away QGIS profile, so no user setting leaks into the picture), shows the demo's
13-band Sentinel-2 layer (``demo/``, else ``../shared/data``), detects the devices, and saves a grab 480 px wide and
tall enough to show the whole dock.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = (REPO / "demo" / "s2_l1c_virginia_13band_10m.tif",
              REPO.parent / "shared" / "data" / "s2_l1c_13band_10m_virginia.tif")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--width", type=int, default=480, help="pixels (default 480)")
    parser.add_argument("--height", type=int, default=0, help="pixels (default: the whole dock, about 1150)")
    args = parser.parse_args()
    raster = next((p for p in CANDIDATES if p.exists()), None)
    if raster is None:
        parser.error(f"no Sentinel-2 demo raster found ({', '.join(map(str, CANDIDATES))})")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(REPO))

    with tempfile.TemporaryDirectory(prefix="msfm-screenshot-") as profile:
        os.environ["QGIS_CUSTOM_CONFIG_PATH"] = profile
        return _grab(raster, args.output, args.width, args.height)


def _grab(raster: Path, output: Path, width: int, height: int) -> int:
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QObject, pyqtSignal
    from qgis.PyQt.QtWidgets import QMainWindow

    app = QgsApplication([], True)
    app.initQgis()
    font = app.font()
    font.setPointSizeF(10)  # QGIS's usual UI size (the offscreen platform defaults to 12 pt)
    app.setFont(font)
    sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))
    from processing.core.Processing import Processing

    from qgis_plugin.dock import MsfmDock
    from qgis_plugin.provider import MsfmProvider

    Processing.initialize()
    QgsApplication.processingRegistry().addProvider(MsfmProvider())

    window = QMainWindow()  # the dock sizes itself against QGIS's main window (a 1600-px-wide one here)
    window.resize(1600, 1000)

    class Iface(QObject):  # the three things the dock asks of QGIS's interface
        currentLayerChanged = pyqtSignal(object)  # noqa: N815 - QGIS API name

        def activeLayer(self) -> None:  # noqa: N802
            return None

        def mainWindow(self) -> QMainWindow:  # noqa: N802
            return window

    layer = QgsRasterLayer(str(raster), raster.stem)
    QgsProject.instance().addMapLayer(layer)
    iface = Iface()
    dock = MsfmDock(iface)
    iface.currentLayerChanged.emit(layer)
    dock.resize(width, height or 900)
    dock.show()
    dock.detect_devices()
    app.processEvents()
    if not height:  # tall enough to show every section without scrolling
        body = dock.widget().widget()
        height = body.heightForWidth(body.width()) if body.hasHeightForWidth() else body.sizeHint().height()
        height += dock.height() - dock.widget().viewport().height() + 2
        dock.resize(width, height)
        app.processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    ok = dock.grab().save(str(output))
    dock.close_dock()  # tear down in order, or the interpreter segfaults on exit
    dock.deleteLater()
    app.processEvents()
    del dock, layer
    QgsProject.instance().clear()
    app.exitQgis()
    print(f"{output}: {width} × {height}" if ok else f"could not write {output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
