"""The ONNX backend of the msfm Processing algorithms: ``BACKEND`` and ``.onnx`` model files, run by ONNX Runtime.

A ``.onnx`` ``MODEL_FILE`` (an encoder exported with ``msfm export-onnx``) always runs with ONNX Runtime, and then the
plugin needs neither torch nor onnx: the subprocess test hides both from the import system and runs ``msfm:embed``.
Raster: the NAIP RGBN tile of ../shared/data (934×723 px, sensor preset ``naip_rgbn``); model: the bundled
``smarties-demo-tiny`` (D = 192, 6 blocks), exported once per module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from tests.conftest import REPO, shared_file

pytestmark = pytest.mark.qgis
pytest.importorskip("onnxruntime")

NAIP = ("data", "naip_rgbn_5m_north_dakota_2020.tif")
D_DEMO = 192


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: Any) -> Path:
    """``smarties-demo-tiny`` exported to ONNX (224-px tiles), as ``msfm export-onnx`` writes it."""
    pytest.importorskip("onnx")
    from engine.models import load_model
    from engine.onnx_export import export_encoder

    return export_encoder(load_model("smarties-demo-tiny"), tmp_path_factory.mktemp("onnx") / "demo-tiny.onnx")


def run_logged(alg: str, params: dict) -> tuple[dict, str]:
    """``processing.run("msfm:<alg>")`` with the log it wrote."""
    import processing
    from qgis.core import QgsProcessingFeedback

    class Log(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def pushInfo(self, info: str) -> None:  # noqa: N802 - QGIS API
            self.lines.append(info)

    log = Log()
    result = processing.run(f"msfm:{alg}", params, feedback=log)
    return result, "\n".join(log.lines)


def test_parameters_backend_and_model_file(msfm_provider: Any) -> None:
    """Embedding algorithms: an advanced BACKEND (torch default) and a MODEL_FILE that takes .onnx files;
    segmentation: no BACKEND, .safetensors only."""
    from qgis.core import QgsApplication, QgsProcessingParameterDefinition

    registry = QgsApplication.processingRegistry()
    for alg_id in ("msfm:embed", "msfm:cluster", "msfm:similarity"):
        alg = registry.algorithmById(alg_id)
        backend = alg.parameterDefinition("BACKEND")
        assert backend is not None, alg_id
        assert backend.options() == ["torch", "onnx"] and backend.usesStaticStrings()
        assert backend.defaultValue() == "torch"
        assert backend.flags() & QgsProcessingParameterDefinition.FlagAdvanced
        model_file = alg.parameterDefinition("MODEL_FILE")
        assert model_file.checkValueIsAcceptable("/data/encoder.onnx")
        assert model_file.checkValueIsAcceptable("/data/encoder.safetensors")
        assert not model_file.checkValueIsAcceptable("/data/encoder.pt")
        assert "onnx" in alg.shortHelpString()
    for alg_id in ("msfm:train_head", "msfm:segment"):
        alg = registry.algorithmById(alg_id)
        assert alg.parameterDefinition("BACKEND") is None, alg_id
        assert not alg.parameterDefinition("MODEL_FILE").checkValueIsAcceptable("/data/encoder.onnx")


def test_cluster_with_an_onnx_model_file(msfm_provider: Any, onnx_file: Path, tmp_path: Path) -> None:
    """A .onnx MODEL_FILE runs with ONNX Runtime (BACKEND left at torch: the file decides) on the real NAIP tile."""
    path = shared_file(*NAIP)
    out = tmp_path / "classes.tif"
    result, log = run_logged("cluster", {"INPUT": str(path), "SENSOR": "naip_rgbn", "K": 4,
                                         "MODEL_FILE": str(onnx_file), "OVERLAP": 0, "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out) and result["K"] == 4
    with rasterio.open(path) as src, rasterio.open(out) as classes:
        assert (classes.width, classes.height, classes.crs) == (src.width, src.height, src.crs)
        labels = classes.read(1)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 255} and (labels != 255).mean() > 0.99
    assert sum(f > 0.01 for f in result["CLASS_FRACTIONS"]) >= 2
    assert f"Model: {onnx_file} (D={D_DEMO}, 6 blocks; ONNX backend: ONNX Runtime on cpu)" in log
    assert "Devices: onnxruntime" in log and "CPUExecutionProvider" in log
    assert "torch" not in log


def test_onnx_backend_exports_a_registry_model_once(msfm_provider: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """BACKEND onnx with a registry model: the engine exports it into the ONNX cache, then embeds with ONNX Runtime."""
    cache = tmp_path / "onnx-cache"
    monkeypatch.setenv("MSFM_ONNX_CACHE", str(cache))
    out = tmp_path / "emb.tif"
    result, log = run_logged("embed", {"INPUT": str(shared_file(*NAIP)), "SENSOR": "naip_rgbn", "BACKEND": "onnx",
                                       "MODEL": "smarties-demo-tiny", "OVERLAP": 0, "OUTPUT": str(out)})
    assert result["EMBED_DIM"] == D_DEMO and out.is_file()
    exported = list(cache.glob("*.onnx"))
    assert len(exported) == 1 and f"ONNX backend: ONNX Runtime on cpu, exported to {exported[0]}" in log


def test_onnx_model_with_another_tile_size_is_refused(msfm_provider: Any, onnx_file: Path, tmp_path: Path) -> None:
    from qgis.core import QgsProcessingException

    out = tmp_path / "emb.tif"
    with pytest.raises(QgsProcessingException) as err:
        run_logged("embed", {"INPUT": str(shared_file(*NAIP)), "SENSOR": "naip_rgbn", "MODEL_FILE": str(onnx_file),
                             "BACKEND": "onnx", "TILE_SIZE": 320, "OVERLAP": 0, "OUTPUT": str(out)})
    message = str(err.value)
    assert "exported for 224-px tiles" in message and "'Tile size' is 320" in message
    assert "Set 'Tile size' to 224" in message
    assert not out.exists()


TORCH_HIDDEN = """
import importlib.abc, json, sys

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx"):
            raise ImportError(name + " is hidden for this test")

sys.meta_path.insert(0, Hide())
from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingFeedback
app = QgsApplication([], False)
app.initQgis()
sys.path.append(QgsApplication.pkgDataPath() + "/python/plugins")
from processing.core.Processing import Processing
Processing.initialize()
import qgis_plugin
plugin = qgis_plugin.classFactory(None)  # as qgis_process loads it
plugin.initProcessing()
assert QgsApplication.processingRegistry().algorithmById("msfm:embed") is not None
import processing

class Log(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.lines = []
    def pushInfo(self, info):
        self.lines.append(info)

def report(key, params):
    log = Log()
    try:
        result = processing.run("msfm:embed", dict(params, INPUT={raster!r}, SENSOR="naip_rgbn", OVERLAP=0),
                                feedback=log)
        out = {{"ok": True, "embed_dim": result["EMBED_DIM"], "tiles": result["TILES"]}}
    except QgsProcessingException as exc:
        out = {{"ok": False, "error": str(exc)}}
    out.update(log="\\n".join(log.lines), torch="torch" in sys.modules, onnx="onnx" in sys.modules)
    print(key, json.dumps(out), flush=True)

report("ONNX", {{"MODEL_FILE": {onnx!r}, "BACKEND": "onnx", "OUTPUT": {out!r}}})
report("TORCH", {{"BACKEND": "torch", "OUTPUT": {out_torch!r}}})
report("EXPORT", {{"BACKEND": "onnx", "MODEL": "smarties-demo-tiny", "OUTPUT": {out_torch!r}}})
"""


def test_embed_runs_with_onnxruntime_while_torch_is_hidden(onnx_file: Path, tmp_path: Path) -> None:
    """QGIS's Python without torch and onnx: a .onnx model embeds with ONNX Runtime and torch is never imported;
    the torch backend, and the ONNX export of a registry model, explain what to install or pick instead."""
    out, out_torch = tmp_path / "emb.tif", tmp_path / "emb-torch.tif"
    script = TORCH_HIDDEN.format(raster=str(shared_file(*NAIP)), onnx=str(onnx_file), out=str(out),
                                 out_torch=str(out_torch))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               PYTHONPATH=str(REPO), MSFM_ONNX_CACHE=str(tmp_path / "onnx-cache"))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                          timeout=180, cwd=tmp_path)
    reports = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("ONNX ", "TORCH ",
                                                                                                  "EXPORT ")))
    assert set(reports) == {"ONNX", "TORCH", "EXPORT"}, (proc.stdout[-2000:], proc.stderr[-3000:])
    onnx_run, torch_run, export_run = (json.loads(reports[k]) for k in ("ONNX", "TORCH", "EXPORT"))

    assert onnx_run["ok"], onnx_run
    assert onnx_run["embed_dim"] == D_DEMO and onnx_run["tiles"] > 0
    assert "ONNX backend: ONNX Runtime" in onnx_run["log"] and "Devices: onnxruntime" in onnx_run["log"]
    with rasterio.open(out) as emb:
        assert emb.count == D_DEMO and emb.crs is not None
        assert np.isfinite(emb.read(1)).all()

    assert not torch_run["ok"] and not out_torch.exists()
    assert "msfm needs Python package(s) that QGIS's Python does not have: torch" in torch_run["error"]
    assert "pip install" in torch_run["error"] and "exported .onnx encoder in 'Local model file'" in torch_run["error"]

    assert not export_run["ok"]
    assert "needs a one-time export of the model to ONNX" in export_run["error"]
    assert "pick an exported .onnx encoder in 'Local model file'" in export_run["error"]
    assert "install torch" in export_run["error"] or "install onnx" in export_run["error"]

    for run in (onnx_run, torch_run, export_run):  # never imported, whatever was asked
        assert not run["torch"] and not run["onnx"]


def test_requirement_kinds_of_the_onnx_backend(tmp_path: Path, monkeypatch: Any) -> None:
    """The ONNX kinds need ONNX Runtime instead of torch; a hook that refuses an import counts as 'not installed'."""
    import importlib.abc

    from qgis_plugin import runtime

    assert runtime.requirement_kind("inference", "onnx") == "inference_onnx"
    assert runtime.requirement_kind("clustering", "onnx") == "clustering_onnx"
    assert runtime.requirement_kind("clustering", "torch") == "clustering"
    assert runtime.requirement_kind("bands", "onnx") == "bands"
    for kind in ("inference_onnx", "clustering_onnx"):
        assert "onnxruntime" in runtime.REQUIREMENTS[kind] and "torch" not in runtime.REQUIREMENTS[kind]
    assert "sklearn" in runtime.REQUIREMENTS["clustering_onnx"]

    (tmp_path / "msfm_probe_module.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert runtime.is_installed("msfm_probe_module")

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name == "msfm_probe_module":
                raise ImportError("msfm_probe_module is hidden")
            return None

    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    assert not runtime.is_installed("msfm_probe_module")
    assert runtime.missing_packages("bands") == []
