"""The ONNX backend of the msfm Processing algorithms: ``BACKEND`` and ``.onnx`` model files, run by ONNX Runtime.

A ``.onnx`` ``MODEL_FILE`` (an encoder exported with ``msfm export-onnx``) always runs with ONNX Runtime, and then the
plugin needs neither torch nor onnx: the subprocess tests hide both from the import system
(:func:`tests.conftest.run_without_torch`) and run ``msfm:embed``, and ``msfm:segment`` with an exported segmenter
(encoder + head in one ``.onnx``). Rasters: the NAIP RGBN tile of ../shared/data (934×723 px, sensor preset
``naip_rgbn``) for embeddings; the SpaceNet-3 Las Vegas pan image (1300×1300 px, 0.3 m) and its road mask for a road
head (3 steps: it need not be good, the ONNX run must compute what torch computes), segmented on a 400×400-px extent.
Model: the bundled ``smarties-demo-tiny`` (D = 192, 6 blocks), exported once per module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from tests.conftest import NAIP, VEGAS_PAN, VEGAS_ROADS, run_without_torch, shared_file

pytestmark = pytest.mark.qgis
pytest.importorskip("onnxruntime")

D_DEMO = 192
#: The segmented window of the pan image: (row, col) origin and side, in pixels.
WINDOW = (450, 300, 400)
# With the head's scale (1.0 here): 2 × 2 tiles of 224 px on WINDOW; torch in fp32, as the export it is compared with.
SEGMENT_FAST = {"OVERLAP": 32, "PRECISION": "fp32"}


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: Any, demo_model: Any) -> Path:
    """``smarties-demo-tiny`` exported to ONNX (224-px tiles), as ``msfm export-onnx`` writes it."""
    pytest.importorskip("onnx")
    from engine.models import export_encoder

    return export_encoder(demo_model, tmp_path_factory.mktemp("onnx") / "demo-tiny.onnx")


@pytest.fixture(scope="module")
def roads(tmp_path_factory: Any, demo_model: Any) -> dict:
    """A linear road head fitted for 3 steps on the Vegas pan image (``.safetensors`` + card) and its export as one
    ``.onnx`` segmenter (encoder + head, float32)."""
    pytest.importorskip("onnx")
    from engine.export import export_segmenter
    from engine.segmentation import HeadFitSettings, LabelRaster, fit_head, load_head
    from engine.settings import InferenceSettings

    folder = tmp_path_factory.mktemp("roads")
    labels = LabelRaster(shared_file(*VEGAS_ROADS), names={0: "background", 255: "road"})
    fit = fit_head(shared_file(*VEGAS_PAN), labels, demo_model, fit=HeadFitSettings(head_type="linear", steps=3), output=folder / "roads.safetensors", settings=InferenceSettings(tile_size_px=224, overlap_px=32, batch_size=8, scale=1.0, threads=2))
    return {"head": fit.path, "onnx": export_segmenter(load_head(fit.path), demo_model, folder / "roads.onnx")}


def pan_extent() -> str:
    """``WINDOW`` of the pan image as a Processing extent string (in the raster's CRS)."""
    row, col, side = WINDOW
    with rasterio.open(shared_file(*VEGAS_PAN)) as ds:
        left, top = ds.transform * (col, row)
        right, bottom = ds.transform * (col + side, row + side)
        return f"{left},{right},{bottom},{top} [{ds.crs.to_string()}]"


@pytest.fixture(scope="module")
def torch_segmentation(msfm_provider: Any, roads: dict, tmp_path_factory: Any) -> dict:
    """``msfm:segment`` of the road head's ``.safetensors`` (torch) on ``WINDOW``: results, classes, probabilities."""
    folder = tmp_path_factory.mktemp("torch-segment")
    classes, probabilities = folder / "classes.tif", folder / "probabilities.tif"
    result, log = run_logged("segment", {"INPUT": str(shared_file(*VEGAS_PAN)), "HEAD": str(roads["head"]),
                                         "EXTENT": pan_extent(), "OUTPUT": str(classes),
                                         "OUTPUT_PROBABILITIES": str(probabilities), **SEGMENT_FAST})
    assert "torch" in log and "ONNX Runtime" not in log
    with rasterio.open(classes) as c, rasterio.open(probabilities) as p:
        assert (c.width, c.height) == (WINDOW[2], WINDOW[2]) and p.count == 2
        return {"result": result, "classes": c.read(1), "probabilities": p.read(), "profile": c.profile}


def assert_same_segmentation(reference: dict, classes: Path, probabilities: Path | None = None) -> None:
    """``classes`` (and ``probabilities``) equal the torch run's: same grid, class map on > 99.9 % of pixels."""
    with rasterio.open(classes) as c:
        got = c.read(1)
        assert (c.width, c.height, c.crs, c.transform) == tuple(reference["profile"][k] for k in (
            "width", "height", "crs", "transform"))
    expected = reference["classes"]
    assert got.shape == expected.shape and (got == expected).mean() > 0.999
    assert set(np.unique(got)) <= {0, 1}
    if probabilities is not None:
        with rasterio.open(probabilities) as p:
            assert np.nanmax(np.abs(p.read() - reference["probabilities"])) <= 1e-4


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
    segmentation: no BACKEND and .safetensors encoder weights only; *Segment with a head* takes a .safetensors head or
    an exported .onnx segmenter (the head file's extension decides the backend)."""
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
    segment = registry.algorithmById("msfm:segment")
    head = segment.parameterDefinition("HEAD")
    assert head.checkValueIsAcceptable("/data/roads.safetensors") and head.checkValueIsAcceptable("/data/roads.onnx")
    assert not head.checkValueIsAcceptable("/data/roads.pt")
    assert "*.safetensors *.onnx" in head.fileFilter()
    assert ".onnx" in segment.shortHelpString() and "Without torch" in segment.shortHelpString()


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


#: A QGIS Python run by :func:`run_without_torch` (torch and onnx hidden): Processing, the plugin loaded as
#: qgis_process loads it, and ``report(KEY, alg, params, outputs)``, which prints ``KEY {json}`` with the chosen
#: outputs or the error, the log, and whether torch or onnx were imported. Test bodies are appended.
TORCH_HIDDEN = """
import json
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

def report(key, alg, params, outputs=()):
    log = Log()
    try:
        result = processing.run("msfm:" + alg, params, feedback=log)
        out = {"ok": True, **{name: result[name] for name in outputs}}
    except QgsProcessingException as exc:
        out = {"ok": False, "error": str(exc)}
    out.update(log="\\n".join(log.lines), torch="torch" in sys.modules, onnx="onnx" in sys.modules)
    print(key, json.dumps(out), flush=True)
"""


def run_hidden(body: str, keys: tuple[str, ...], tmp_path: Path) -> dict[str, dict]:
    """Run ``TORCH_HIDDEN`` + ``body`` with torch and onnx hidden; the ``report`` of each key."""
    proc = run_without_torch(TORCH_HIDDEN + body, timeout=180, QT_QPA_PLATFORM="offscreen",
                             QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
                             MSFM_ONNX_CACHE=str(tmp_path / "onnx-cache"))
    reports = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.split(" ", 1)[0] in keys)
    assert set(reports) == set(keys), (proc.stdout[-2000:], proc.stderr[-3000:])
    return {key: json.loads(value) for key, value in reports.items()}


@pytest.mark.slow  # a QGIS Python in a subprocess
def test_embed_runs_with_onnxruntime_while_torch_is_hidden(onnx_file: Path, tmp_path: Path) -> None:
    """QGIS's Python without torch and onnx: a .onnx model embeds with ONNX Runtime and torch is never imported;
    the torch backend, and the ONNX export of a registry model, explain what to install or pick instead."""
    out, out_torch = tmp_path / "emb.tif", tmp_path / "emb-torch.tif"
    common = {"INPUT": str(shared_file(*NAIP)), "SENSOR": "naip_rgbn", "OVERLAP": 0}
    body = f"""
common = {common!r}
report("ONNX", "embed", dict(common, MODEL_FILE={str(onnx_file)!r}, BACKEND="onnx", OUTPUT={str(out)!r}),
       ["EMBED_DIM", "TILES"])
report("TORCH", "embed", dict(common, BACKEND="torch", OUTPUT={str(out_torch)!r}))
report("EXPORT", "embed", dict(common, BACKEND="onnx", MODEL="smarties-demo-tiny", OUTPUT={str(out_torch)!r}))
"""
    reports = run_hidden(body, ("ONNX", "TORCH", "EXPORT"), tmp_path)
    onnx_run, torch_run, export_run = (reports[k] for k in ("ONNX", "TORCH", "EXPORT"))

    assert onnx_run["ok"], onnx_run
    assert onnx_run["EMBED_DIM"] == D_DEMO and onnx_run["TILES"] > 0
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


@pytest.mark.slow  # `roads` and a QGIS Python in a subprocess
def test_segment_with_an_onnx_segmenter_while_torch_is_hidden(roads: dict, torch_segmentation: dict,
                                                              tmp_path: Path) -> None:
    """QGIS's Python without torch and onnx: ``msfm:segment`` with the exported segmenter writes the styled class map
    (class names from the ONNX card) equal to the torch run's, and torch is never imported; a .safetensors head
    explains how to go without torch."""
    classes, probabilities = tmp_path / "classes.tif", tmp_path / "probabilities.tif"
    common = {"INPUT": str(shared_file(*VEGAS_PAN)), "EXTENT": pan_extent(), **SEGMENT_FAST}
    body = f"""
common = {common!r}
report("SEGMENT", "segment", dict(common, HEAD={str(roads["onnx"])!r}, OUTPUT={str(classes)!r},
       OUTPUT_PROBABILITIES={str(probabilities)!r}), ["CLASS_NAMES", "CLASS_FRACTIONS", "TILES"])
report("TORCH_HEAD", "segment", dict(common, HEAD={str(roads["head"])!r}, OUTPUT={str(tmp_path / "t.tif")!r}))
report("EXPORT", "export_onnx", dict(HEAD={str(roads["head"])!r}, OUTPUT={str(tmp_path / "e.onnx")!r}))
"""
    reports = run_hidden(body, ("SEGMENT", "TORCH_HEAD", "EXPORT"), tmp_path)
    onnx_run, torch_head, export = reports["SEGMENT"], reports["TORCH_HEAD"], reports["EXPORT"]

    assert onnx_run["ok"], onnx_run
    reference = torch_segmentation["result"]
    assert onnx_run["CLASS_NAMES"] == reference["CLASS_NAMES"] == ["background", "road"]
    assert onnx_run["TILES"] == reference["TILES"] == 4  # 400 px: 2 × 2 tiles of 224 px, overlap 32
    assert np.allclose(onnx_run["CLASS_FRACTIONS"], reference["CLASS_FRACTIONS"], atol=1e-3)
    assert min(reference["CLASS_FRACTIONS"]) > 0.01, reference  # both classes present: the comparison means something
    assert "Head: exported segmenter roads.onnx (linear, 2 classes (background, road)" in onnx_run["log"]
    assert "ONNX Runtime on cpu" in onnx_run["log"] and "Devices: onnxruntime" in onnx_run["log"]
    assert_same_segmentation(torch_segmentation, classes, probabilities)
    with rasterio.open(classes) as c:
        assert json.loads(c.tags()["MSFM_CLASSES"]) == ["background", "road"]
    assert "road" in classes.with_suffix(".qml").read_text()

    assert not torch_head["ok"] and not (tmp_path / "t.tif").exists()
    assert "msfm needs Python package(s) that QGIS's Python does not have: torch" in torch_head["error"]
    assert "export the head with its encoder as one .onnx segmenter" in torch_head["error"]
    assert not export["ok"] and not (tmp_path / "e.onnx").exists()
    assert "does not have: onnx, torch" in export["error"] and "runs in a QGIS with onnxruntime alone" in export["error"]
    for run in (onnx_run, torch_head, export):
        assert not run["torch"] and not run["onnx"]


@pytest.mark.slow  # `roads`: a head fitted on the 1300-px pan image and exported
def test_onnx_segmenter_refusals_name_the_fix(msfm_provider: Any, roads: dict, onnx_file: Path,
                                             tmp_path: Path) -> None:
    """Encoder weights with a segmenter, an exported encoder as the head, another tile size: each says what to do."""
    from qgis.core import QgsProcessingException

    common = {"INPUT": str(shared_file(*VEGAS_PAN)), "EXTENT": pan_extent(), "OUTPUT": str(tmp_path / "c.tif"),
              **SEGMENT_FAST}
    cases = [
        ({"HEAD": str(roads["onnx"]), "MODEL_FILE": str(roads["head"])},
         ["roads.onnx is an exported segmenter: it holds its encoder", "Clear 'Encoder weights' (MODEL_FILE)"]),
        ({"HEAD": str(onnx_file)}, ["demo-tiny.onnx is an exported encoder", "not a segmenter", "--head"]),
        ({"HEAD": str(roads["onnx"]), "TILE_SIZE": 256},
         ["exported for 224-px tiles, but 'Tile size' is 256", "Set 'Tile size' to 224"]),
        ({"HEAD": str(roads["head"]), "MODEL_FILE": str(onnx_file)}, ["Incorrect parameter value for MODEL_FILE"]),
    ]
    for params, phrases in cases:
        with pytest.raises(QgsProcessingException) as err:
            run_logged("segment", {**common, **params})
        for phrase in phrases:
            assert phrase in str(err.value), (params, str(err.value))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # export and int8 quantization
def test_export_algorithm_writes_an_int8_encoder(msfm_provider: Any, tmp_path: Path) -> None:
    """*Export model to ONNX* without a head: the encoder, int8, with a sensor preset's metadata."""
    pytest.importorskip("onnx")
    from engine.models import ONNX_FORMAT, read_metadata

    out = tmp_path / "demo_int8.onnx"
    result, log = run_logged("export_onnx", {"MODEL": "smarties-demo-tiny", "PRECISION": "int8",
                                             "SENSOR": "naip_rgbn", "OUTPUT": str(out)})
    meta = read_metadata(out)
    assert result["OUTPUT"] == str(out) and result["FORMAT"] == meta["msfm_format"] == ONNX_FORMAT
    assert meta["msfm_quantization"]["weights"] == "int8" and meta["msfm_tile_size_px"] == 224
    assert meta["msfm_sensor"] == "naip_rgbn" and meta["model_type"] == "Recognition" and "class_names" not in meta
    assert json.loads(result["CLASSES"]) == [] and result["SIZE_MB"] == pytest.approx(out.stat().st_size / 1e6)
    assert f"{out.name}: {ONNX_FORMAT}, int8; encoder smarties-demo-tiny (D={D_DEMO}, depth 6)" in log
    assert list(tmp_path.iterdir()) == [out]  # the float32 file it was derived from is gone


@pytest.mark.slow  # `roads` and the torch segmentation it is compared with
def test_export_algorithm_writes_a_segmenter_that_segments(msfm_provider: Any, roads: dict,
                                                           torch_segmentation: dict, tmp_path: Path) -> None:
    """*Export model to ONNX* with the road head (float32; the encoder named in its card), then *Segment with a head*
    with the export gives the torch run's class map."""
    from engine.models import SEGMENTER_FORMAT, read_metadata

    out = tmp_path / "roads_export.onnx"
    result, log = run_logged("export_onnx", {"HEAD": str(roads["head"]), "OUTPUT": str(out)})
    meta = read_metadata(out)
    assert result["FORMAT"] == meta["msfm_format"] == SEGMENTER_FORMAT and "msfm_quantization" not in meta
    assert meta["class_names"] == {"0": "background", "1": "road"} and meta["msfm_encoder"] == "smarties-demo-tiny"
    assert json.loads(result["CLASSES"]) == ["background", "road"]
    assert "float32; encoder smarties-demo-tiny" in log and "linear head, 2 classes (background, road)" in log

    classes, probabilities = tmp_path / "classes.tif", tmp_path / "probabilities.tif"
    result, log = run_logged("segment", {"INPUT": str(shared_file(*VEGAS_PAN)), "HEAD": str(out),
                                         "EXTENT": pan_extent(), "OUTPUT": str(classes),
                                         "OUTPUT_PROBABILITIES": str(probabilities), **SEGMENT_FAST})
    assert result["CLASS_NAMES"] == ["background", "road"]
    assert "Head: exported segmenter roads_export.onnx (linear, 2 classes" in log and "float32" in log
    assert_same_segmentation(torch_segmentation, classes, probabilities)


def test_requirement_kinds_of_the_onnx_backend(tmp_path: Path, monkeypatch: Any) -> None:
    """The ONNX kinds need ONNX Runtime instead of torch; a hook that refuses an import counts as 'not installed'."""
    import importlib.abc

    from qgis_plugin import runtime

    assert runtime.requirement_kind("inference", "onnx") == "inference_onnx"
    assert runtime.requirement_kind("clustering", "onnx") == "clustering_onnx"
    assert runtime.requirement_kind("clustering", "torch") == "clustering"
    assert runtime.requirement_kind("bands", "onnx") == "bands"
    assert runtime.requirement_kind("segmentation", "onnx") == "segmentation_onnx"
    assert runtime.REQUIREMENTS["segmentation_onnx"] == ("numpy", "rasterio", "onnxruntime")
    assert {"torch", "onnx"} <= set(runtime.REQUIREMENTS["export_onnx"])
    for kind in ("inference_onnx", "clustering_onnx", "segmentation_onnx"):
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
