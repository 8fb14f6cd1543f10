"""The real QGIS desktop under Xvfb, as an analyst meets the plugin: a fresh profile and QGIS's own Python (without
the venv: no rasterio, ONNX Runtime or scikit-learn), the plugin from its zip, a real Sentinel-2 raster, the dock's
*Install packages…* (ONNX Runtime from the package registry, with pip), then *Run clustering* with an exported model
and *Change map* since the Sentinel-1 chip of the same place.

The scenario runs inside QGIS (tests/plugin/gui_scenario.py); its screenshots are kept under out/gui/ (the path is
printed) as CI artefacts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, shared_file
from tests.plugin.test_package import build

pytestmark = [pytest.mark.qgis, pytest.mark.slow]  # starts QGIS and installs ~150 MB of wheels: ~40 s
FLOOD_S2 = ("data", "sen1floods11_india_900498_s2_l1c.tif")
FLOOD_S1 = ("data", "sen1floods11_india_900498_s1_db.tif")
ARTEFACTS = REPO / "out" / "gui"


def test_fresh_qgis_installs_onnx_runtime_from_the_dock_then_clusters_and_maps_change(
        tmp_path: Path, demo_model: Any, capsys: pytest.CaptureFixture) -> None:
    xvfb, qgis = shutil.which("xvfb-run"), shutil.which("qgis")
    if xvfb is None or qgis is None:
        pytest.skip("needs xvfb-run and qgis (apt: xvfb qgis; `make setup` installs them)")
    from engine.models import export_encoder

    model = export_encoder(demo_model, tmp_path / "demo-tiny.onnx")
    raster = tmp_path / "s2.tif"  # a copy: QGIS may write .aux.xml statistics beside it
    shutil.copyfile(shared_file(*FLOOD_S2), raster)
    before = tmp_path / "s1.tif"
    shutil.copyfile(shared_file(*FLOOD_S1), before)
    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(build(tmp_path / "dist")) as zf:
        zf.extractall(plugins)
    out = tmp_path / "out"
    out.mkdir()
    # QGIS's own Python, as installed: none of the venv's packages, no user site
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "QGIS_")) and k not in ("VIRTUAL_ENV", "QT_QPA_PLATFORM")}  # a real X display
    env.update(MSFM_GUI_TEST=json.dumps({"raster": str(raster), "before": str(before), "model": str(model),
                                         "out": str(out), "timeout_s": 480}),
               QGIS_PLUGINPATH=str(plugins), PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(tmp_path / "hf-cache"), XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    command = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", qgis, "--profiles-path", str(tmp_path / "profiles"),
               "--nologo", "--noversioncheck", "--code", str(REPO / "tests" / "plugin" / "gui_scenario.py")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)  # its own process group: Xvfb and QGIS go with it on a timeout
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for png in out.glob("*.png"):
        shutil.copyfile(png, ARTEFACTS / png.name)
    with capsys.disabled():  # in the CI log whatever the outcome: the artefacts' paths
        print(f"\nGUI screenshots: {ARTEFACTS}/qgis.png, {ARTEFACTS}/install.png")
    result_file = out / "result.json"
    assert result_file.is_file(), stdout[-3000:] + stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert "error" not in result and result["steps"][-1] == "finished", result.get("error")
    assert not result.get("python_errors"), result["python_errors"]
    assert proc.returncode == 0, stderr[-3000:]  # QGIS quit cleanly
    # before: the dock offers the install; the onnx backend preselects ONNX Runtime
    assert result["install_row_before"] and "onnxruntime" in result["missing_onnx"] and result["choice"] == "onnx"
    assert result["dock_width"] >= 500  # wide enough for the band table (it opened ~300 px wide)
    # the install: no restart, nothing missing, the row gone, QGIS's numpy untouched in the folder
    assert result["install_status"] == "Installed: msfm is ready, no restart needed.", result["install_log"]
    assert result["missing_after"] == [] and not result["install_row_after"]
    folder = tmp_path / "profiles" / "profiles" / "default" / "python" / "msfm-packages"
    installed = {p.name.split("-")[0].lower() for d in folder.iterdir() for p in d.glob("*.dist-info")}
    assert {"onnxruntime", "rasterio", "scikit_learn"} <= installed and "numpy" not in installed
    with capsys.disabled():
        print(f"install from the dock: {result['install_seconds']:.1f} s")
    # the run: a named, styled class map; the dock still on the imagery, ready for another run
    assert result["run_enabled"] and result["status"].startswith("Class map (k=4) added to the project")
    assert sorted(result["layers"]) == ["flood chip S2", "flood chip S2 classes (k=4)"]
    assert result["class_renderer"] == ["paletted"] and result["class_legend"] == [[f"class {i}" for i in range(4)]]
    assert result["dock_layer"] == "flood chip S2" and result["dock_error"] == "" and result["run_enabled_after"]
    # Change map since the S1 chip, added afterwards: the dock back on S2, the styled change map named after both
    assert result["change_layer"] == "flood chip S2" and result["change_enabled"], result["change_tip"]
    assert "change map (" in result["change_estimate"]
    assert result["change_status"].startswith("Change map added to the project"), result["change_status"]
    assert result["change_layers"] == ["flood chip S2 change since flood chip S1"]
    assert result["change_renderer"] == ["singlebandpseudocolor"]
    assert result["dock_layer_after_change"] == "flood chip S2"
    assert (out / "qgis.png").stat().st_size > 50_000  # a rendered window, not a blank one
