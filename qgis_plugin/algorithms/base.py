"""What every msfm Processing algorithm shares: parameters, reading the layer, the region, the model, errors.

Threading (QGIS Processing rules): ``prepareAlgorithm`` and ``postProcessAlgorithm`` run on the main thread,
``processAlgorithm`` in a worker thread (no ``FlagNoThreading``). So the layer is only *looked at* in
``prepareAlgorithm`` — its file path is recorded, or its data provider is cloned for layers that are not files — and
the worker reads the file with the engine or the clone. Output layers are styled by post-processors attached in
``postProcessAlgorithm`` (:mod:`qgis_plugin.styling`).

Parameter names are a public contract (batch mode, models, ``qgis_process``, the dock): ``INPUT``, ``SENSOR``,
``BAND_OVERRIDES``, ``MODEL``, ``MODEL_FILE``, ``BACKEND``, ``DEVICE``, ``PRECISION``, ``TILE_SIZE``, ``OVERLAP``,
``BATCH_SIZE``, ``SCALE``, ``EXTENT``, ``MASK``, ``OUTPUT``.

Backends (``BACKEND``, embedding algorithms only): ``torch`` runs the checkpoint; ``onnx`` runs an exported encoder
with ONNX Runtime. A ``.onnx`` ``MODEL_FILE`` always runs with ONNX Runtime, and then torch is never imported: the
plugin works with onnxruntime, numpy and rasterio alone. A registry model with ``onnx`` is exported once by the
engine, which needs torch. *Segment with a head* has no ``BACKEND``: its ``HEAD`` file decides (a ``.onnx`` segmenter,
encoder and head in one graph, runs with ONNX Runtime alone).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsFeature,
    QgsFeatureRequest,
    QgsFeatureSource,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsRasterBlockFeedback,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
)
from qgis.PyQt.QtGui import QIcon

from .. import runtime, timing
from ..runtime import engine

ICONS = Path(__file__).resolve().parents[1] / "icons"
if not ICONS.is_dir():  # development checkout: icons/ sits at the repository root
    ICONS = Path(__file__).resolve().parents[2] / "icons"

#: Model used when the user picks nothing: bundled with the plugin, works offline.
DEFAULT_MODEL = "smarties-demo-tiny"
DEVICES = ("auto", "cpu", "cuda")
#: The engine's ``engine.settings.PRECISIONS`` (written out so the toolbox lists them where the engine cannot load).
PRECISIONS = ("auto", "fp32", "bf16", "int8")
BACKENDS = runtime.BACKENDS
MODEL_FILTER = "Model weights (*.safetensors *.onnx)"


def band_advice(exc: Exception, in_dock: bool = False) -> str:
    """A band-mapping error worded for QGIS: what could not be mapped, then what to do in QGIS, naming the sensor
    presets that fit (by their names); the engine's command-line and Python fix is left out.

    Args:
        exc: An ``engine.errors.BandResolutionError`` (its ``presets`` and ``unmapped``), or any error.
        in_dock: Advice for the dock (the preset chooser and band table above) rather than an algorithm dialog.
    """
    lines = [line for line in str(exc).splitlines() if not line.startswith(("Fix:", "Valid range keys"))]
    presets = [engine.spectral.get_sensor(p) for p in getattr(exc, "presets", ())]
    unmapped = getattr(exc, "unmapped", ()) or (1,)
    where = "'Sensor preset' above" if in_dock else "'Sensor preset'"
    advice = ["In QGIS:"]
    if presets:
        others = "; ".join(f"{s.name} ({s.id})" for s in presets[1:])
        advice.append(f"choose “{presets[0].name}” ({presets[0].id}) in {where}"
                      + (f" (other presets with as many bands: {others})" if others else "") + ", or")
    example = "; ".join(f"{i}={key}" for i, key in zip(unmapped, ("red_2", "green_2", "blue_1", "near_infrared_1")))
    if in_dock:
        advice.append("choose a range in the Range column of each band's row (or type them in 'Overrides', e.g. "
                      f"{example}).")
    else:
        advice.append(f"give each band a range in 'Band overrides' (e.g. {example}: a range key, a central wavelength "
                      "in nm, or drop). The msfm dock lists every band with a range chooser, and 'Band mapping "
                      "report' shows what was resolved.")
    return "\n".join(lines + [" ".join(advice)])


AUTO_SENSOR = "auto"
#: Appended to the help of the algorithms that have ``BACKEND``.
BACKEND_HELP = (
    "<br><br><i>Inference backend</i> (advanced): <i>torch</i> runs the model's checkpoint; <i>onnx</i> runs an "
    "exported encoder with ONNX Runtime. Choosing a <b>.onnx</b> file (made with <tt>msfm export-onnx</tt>) as local "
    "model file always uses ONNX Runtime and needs no torch at all; its tile size is fixed at export (224). A "
    "registry model with <i>onnx</i> is exported once into the ONNX cache, which needs torch."
)


def icon(name: str) -> QIcon:
    """An SVG icon of ``icons/`` (``icon("cluster")``)."""
    return QIcon(str(ICONS / f"{name}.svg"))


def sensor_ids() -> list[str]:
    """``"auto"`` followed by every sensor preset id of the engine (needs only numpy)."""
    try:
        return [AUTO_SENSOR, *(s.id for s in engine.spectral.list_sensors())]
    except Exception:  # the plugin must load even where the engine cannot be imported; the run will explain
        return [AUTO_SENSOR]


def model_names() -> list[str]:
    """Registry names of the models, the bundled default first (needs no torch)."""
    try:
        names = [s.name for s in engine.models.list_models()]
    except Exception:
        return [DEFAULT_MODEL]
    return sorted(names, key=lambda n: n != DEFAULT_MODEL)


def parse_overrides(text: Optional[str]) -> Optional[dict]:
    """The ``BAND_OVERRIDES`` string (``"4=red_2; 5=842.5"``) as the engine's override mapping (None if empty)."""
    if not text or not text.strip():
        return None
    return engine.spectral.parse_overrides(text) or None


_MODEL_LOCK = threading.Lock()
_MODEL_CACHE: dict[tuple, Any] = {}


def is_onnx_file(name_or_path: Optional[str]) -> bool:
    """True for a ``.onnx`` file name (an exported encoder: always run with ONNX Runtime)."""
    return bool(name_or_path) and str(name_or_path).lower().endswith(".onnx")


def load_model(name_or_path: str, backend: str = "torch", device: str = "cpu") -> Any:
    """Load an encoder once and keep the last one (batch runs and the dock reuse it). Thread-safe.

    ``backend="onnx"`` (implied by a ``.onnx`` file) gives the engine's ONNX Runtime encoder on ``device`` (its
    execution provider is chosen at load time); a torch model is loaded on the CPU and moved by the engine.
    """
    path = engine.models.resolve_weights(name_or_path)
    backend = "onnx" if is_onnx_file(str(path)) else backend
    device = device if backend == "onnx" else "cpu"
    return cached((str(path), path.stat().st_mtime, backend, device),
                  lambda: engine.models.load_model(name_or_path, device=device, backend=backend))


def cached(key: tuple, load: Callable[[], Any]) -> Any:
    """``load()``, kept for the next call with the same ``key`` (one entry: the last model loaded). Thread-safe.
    Exceptions of ``load()`` pass through and nothing is cached then."""
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE.clear()
            _MODEL_CACHE[key] = load()
        return _MODEL_CACHE[key]


class MsfmAlgorithm(QgsProcessingAlgorithm):
    """Base class: metadata helpers, the shared parameters and the layer/region/model plumbing.

    Subclasses set ``NAME``, ``DISPLAY``, ``GROUP``, ``ICON``, ``HELP`` and ``NEEDS`` (a key of
    :data:`qgis_plugin.runtime.REQUIREMENTS`), and implement ``initAlgorithm`` and ``compute``.
    """

    NAME = ""
    DISPLAY = ""
    GROUP = "Embeddings"
    ICON = "msfm"
    HELP = ""
    NEEDS = "inference"

    def __init__(self) -> None:
        super().__init__()
        self.source: Optional[str] = None
        self.layer_crs = QgsCoordinateReferenceSystem()
        self._clone: Optional[QgsRasterDataProvider] = None
        self._layer_extent = QgsRectangle()
        self._layer_size = (0, 0)
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self.layer_name = ""  # the input layer's name: outputs are named after it
        self.outputs_to_show: dict[str, tuple[Optional[Callable[[QgsRasterLayer], None]], str, str, str]] = {}

    # --- QgsProcessingAlgorithm metadata -----------------------------------------------------------------------
    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.DISPLAY

    def group(self) -> str:
        return self.GROUP

    def groupId(self) -> str:  # noqa: N802
        return self.GROUP.lower().replace(" ", "")

    def icon(self) -> QIcon:
        return icon(self.ICON)

    def shortHelpString(self) -> str:  # noqa: N802
        return self.HELP

    def helpUrl(self) -> str:  # noqa: N802
        return "https://github.com/msfm-project/msfm#use-it-in-qgis"

    def createInstance(self) -> "MsfmAlgorithm":  # noqa: N802
        return type(self)()

    # --- shared parameters -------------------------------------------------------------------------------------
    def add_band_parameters(self, layer: bool = True) -> None:
        """``INPUT`` raster layer (unless ``layer`` is False), ``SENSOR`` preset and ``BAND_OVERRIDES``."""
        if layer:
            self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster layer"))
        self.addParameter(
            QgsProcessingParameterEnum(
                "SENSOR", "Sensor preset (auto: from the layer's band names and metadata)", options=sensor_ids(),
                defaultValue=AUTO_SENSOR, usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                "BAND_OVERRIDES",
                "Band overrides (band=range key or wavelength in nm, e.g. 4=red_2; 5=842.5; 1=drop)",
                defaultValue="", optional=True,
            )
        )

    def add_model_parameters(self, backend: bool = True, **device: Any) -> None:
        """``MODEL``, ``MODEL_FILE``, ``DEVICE``, the advanced ``BACKEND`` (unless ``backend`` is False: the model
        must then run with torch and ``MODEL_FILE`` takes ``.safetensors`` only) and the advanced tiling knobs
        (``device``: options of :meth:`add_device_parameters`)."""
        self.addParameter(
            QgsProcessingParameterEnum(
                "MODEL", "Model", options=model_names(), defaultValue=DEFAULT_MODEL, usesStaticStrings=True
            )
        )
        if backend:
            self.addParameter(
                QgsProcessingParameterFile(
                    "MODEL_FILE", "Local model file (.safetensors, or an exported .onnx encoder; overrides Model)",
                    optional=True, fileFilter=MODEL_FILTER,
                )
            )
        else:
            self.addParameter(
                QgsProcessingParameterFile(
                    "MODEL_FILE", "Local model file (.safetensors; overrides Model)", extension="safetensors",
                    optional=True,
                )
            )
        self.add_device_parameters(**device)
        if backend:
            param = QgsProcessingParameterEnum(
                "BACKEND", "Inference backend (onnx: ONNX Runtime, needs no torch with a .onnx model file; "
                "a .onnx model file always uses onnx)", options=list(BACKENDS), defaultValue="torch",
                usesStaticStrings=True,
            )
            param.setFlags(param.flags() | QgsProcessingParameterEnum.FlagAdvanced)
            self.addParameter(param)

    def add_device_parameters(self, scale_default: str = "the sensor preset's", overlap: bool = True,
                              tile_label: str = "Tile size", precision: bool = True) -> None:
        """``DEVICE`` and the advanced ``PRECISION`` (unless ``precision`` is False: heads are fitted in fp32),
        ``TILE_SIZE``, ``OVERLAP`` (unless ``overlap`` is False), ``BATCH_SIZE`` and ``SCALE`` (``scale_default``
        says what an empty scale means)."""
        self.addParameter(
            QgsProcessingParameterEnum(
                "DEVICE", "Device", options=list(DEVICES), defaultValue="auto", usesStaticStrings=True
            )
        )
        if precision:
            param = QgsProcessingParameterEnum(
                "PRECISION", "Precision (auto: bf16 where the processor or GPU has native bf16, else fp32; int8: "
                "ONNX Runtime, fastest on CPUs without bf16)", options=list(PRECISIONS), defaultValue="auto",
                usesStaticStrings=True)
            param.setFlags(param.flags() | QgsProcessingParameterEnum.FlagAdvanced)
            self.addParameter(param)
        advanced = [
            QgsProcessingParameterNumber("TILE_SIZE", f"{tile_label} (model pixels, multiple of 16)",
                                         QgsProcessingParameterNumber.Integer, 224, minValue=16, maxValue=1024),
            QgsProcessingParameterNumber("OVERLAP", "Tile overlap (model pixels, multiple of 16)",
                                         QgsProcessingParameterNumber.Integer, 112, minValue=0, maxValue=1008),
            QgsProcessingParameterNumber("BATCH_SIZE", "Batch size (tiles per forward pass; empty: 8 on a CPU, as "
                                         "many as fit in half the free memory on a GPU)",
                                         QgsProcessingParameterNumber.Integer, None, optional=True, minValue=1,
                                         maxValue=1024),
            QgsProcessingParameterNumber("SCALE", f"Scale (model pixels per layer pixel; empty: {scale_default})",
                                         QgsProcessingParameterNumber.Double, None, optional=True,
                                         minValue=0.05, maxValue=20),
        ]
        if not overlap:
            advanced = [p for p in advanced if p.name() != "OVERLAP"]
        for param in advanced:
            param.setFlags(param.flags() | QgsProcessingParameterNumber.FlagAdvanced)
            self.addParameter(param)

    def add_region_parameters(self) -> None:
        """``EXTENT`` (optional) and ``MASK`` (optional polygons): the processing region."""
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Processing extent (empty: whole layer)",
                                                       optional=True))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                "MASK", "Mask polygons (only pixels inside are processed)",
                [QgsProcessing.TypeVectorPolygon], optional=True,
            )
        )

    def checkParameterValues(self, parameters: dict, context: QgsProcessingContext) -> tuple[bool, str]:  # noqa: N802
        ok, message = super().checkParameterValues(parameters, context)
        if not ok or "TILE_SIZE" not in {p.name() for p in self.parameterDefinitions()}:
            return ok, message
        tile = self.parameterAsInt(parameters, "TILE_SIZE", context)
        overlap = self.parameterAsInt(parameters, "OVERLAP", context)  # 0 where the algorithm has no OVERLAP
        if tile % 16 or overlap % 16:
            return False, f"Tile size ({tile}) and overlap ({overlap}) must be multiples of the 16-pixel patch size."
        if overlap >= tile:
            return False, f"The overlap ({overlap}) must be smaller than the tile size ({tile})."
        return True, ""

    # --- main thread: look at the layer ------------------------------------------------------------------------
    def prepareAlgorithm(self, parameters: dict, context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> bool:
        if "INPUT" not in {p.name() for p in self.parameterDefinitions()}:
            return True
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException("The input raster layer is missing or invalid.")
        self.layer_crs = layer.crs()
        self.layer_name = layer.name()
        self._layer_extent = QgsRectangle(layer.extent())
        self._layer_size = (layer.width(), layer.height())
        if layer.providerType() == "gdal":
            self.source = layer.source()
        else:  # a WMS/virtual/database raster: the worker thread reads a clone of its provider
            self._clone = layer.dataProvider().clone()
            self.source = None
        return True

    def layer_path(self, parameters: dict, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> str:
        """A GDAL-readable path of the input: the layer's file, or an export through its data provider.

        Layers that are not files (virtual, database, web rasters) are read through the clone of their provider made
        in ``prepareAlgorithm`` (a layer's own provider belongs to the main thread) and exported to a temporary
        GeoTIFF covering ``EXTENT`` when given (the whole layer otherwise) at the layer's native resolution.
        """
        if self.source is not None:
            return self.source
        provider, self._clone = self._clone, None
        if provider is None or not provider.capabilities() & QgsRasterDataProvider.Size:
            raise QgsProcessingException(
                "This layer has no native pixel size (e.g. a WMS/XYZ web layer). Save the area you need as a "
                "GeoTIFF first (right-click the layer ▸ Export ▸ Save As…, at the resolution you want) and run the "
                "algorithm on that file."
            )
        extent = self._layer_extent
        if "EXTENT" in parameters:
            wanted = self.parameterAsExtent(parameters, "EXTENT", context, self.layer_crs)
            if not wanted.isNull() and not wanted.isEmpty():
                extent = wanted.intersect(self._layer_extent)
        width, height = self._layer_size
        res_x = self._layer_extent.width() / max(width, 1)
        res_y = self._layer_extent.height() / max(height, 1)
        self._tmp = tempfile.TemporaryDirectory(prefix="msfm-layer-")
        path = os.path.join(self._tmp.name, "layer.tif")
        pipe = QgsRasterPipe()
        pipe.set(provider)  # the pipe owns the clone from now on
        writer = QgsRasterFileWriter(path)
        block_feedback = QgsRasterBlockFeedback()
        feedback.canceled.connect(block_feedback.cancel)
        error = writer.writeRaster(pipe, max(1, round(extent.width() / res_x)), max(1, round(extent.height() / res_y)),
                                   extent, provider.crs(), context.transformContext(), block_feedback)
        if feedback.isCanceled():
            raise QgsProcessingException("Cancelled while reading the layer; no output written.")
        if error != QgsRasterFileWriter.NoError:
            raise QgsProcessingException(f"Could not read the layer through its data provider (error {error}).")
        feedback.pushInfo(f"Layer read through its data provider into {path}")
        return path

    # --- worker thread helpers ---------------------------------------------------------------------------------
    def region(self, parameters: dict, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> Any:
        """The engine ``Region`` of ``EXTENT`` and ``MASK`` in the layer's CRS, or None for the whole layer."""
        bounds = None
        extent = self.parameterAsExtent(parameters, "EXTENT", context, self.layer_crs)
        if extent is not None and not extent.isNull() and not extent.isEmpty():
            bounds = (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())
        geometries: tuple = ()
        mask = self.parameterAsSource(parameters, "MASK", context)
        if mask is not None:
            geometries = tuple(features_as_geojson(mask, self.layer_crs, context, feedback))
            if not geometries:
                raise QgsProcessingException("The mask layer has no polygon (check 'Selected features only').")
        if bounds is None and not geometries:
            return None
        return engine.raster.Region(bounds=bounds, geometries=geometries)

    def settings(self, parameters: dict, context: QgsProcessingContext, **extra: Any) -> Any:
        """The engine's ``InferenceSettings`` from the tiling parameters (plus ``extra`` fields).

        No tile limit (``max_tiles=None``): QGIS shows the progress and the user can cancel, so a large run is the
        user's call (the command line asks for ``--yes`` instead)."""
        scale, batch_size = parameters.get("SCALE"), parameters.get("BATCH_SIZE")
        extra.setdefault("max_tiles", None)
        return engine.InferenceSettings(
            tile_size_px=self.parameterAsInt(parameters, "TILE_SIZE", context),
            overlap_px=self.parameterAsInt(parameters, "OVERLAP", context),
            batch_size=None if batch_size in (None, "") else self.parameterAsInt(parameters, "BATCH_SIZE", context),
            device=self.parameterAsEnumString(parameters, "DEVICE", context) or "auto",
            precision=self.parameterAsEnumString(parameters, "PRECISION", context) or "auto",
            scale=None if scale in (None, "") else self.parameterAsDouble(parameters, "SCALE", context),
            **extra,
        )

    def band_arguments(self, parameters: dict, context: QgsProcessingContext) -> dict[str, Any]:
        """``sensor`` and ``overrides`` keyword arguments for the engine."""
        sensor = self.parameterAsEnumString(parameters, "SENSOR", context)
        return {
            "sensor": None if sensor in ("", AUTO_SENSOR) else sensor,
            "overrides": parse_overrides(self.parameterAsString(parameters, "BAND_OVERRIDES", context)),
        }

    def check_onnx_tile(self, model: Any, parameters: dict, context: QgsProcessingContext, fix: str) -> None:
        """Raise :class:`QgsProcessingException` unless 'Tile size' is the tile size an ONNX model (encoder or
        segmenter) was exported for; ``fix`` (formatted with ``tile``) says how to export it again."""
        tile = self.parameterAsInt(parameters, "TILE_SIZE", context)
        if tile != model.tile_size_px:
            raise QgsProcessingException(
                f"The ONNX model {Path(model.provenance.weights_path).name} was exported for {model.tile_size_px}-px tiles, but "
                f"'Tile size' is {tile}. Set 'Tile size' to {model.tile_size_px}, or {fix.format(tile=tile)}.")

    def backend(self, parameters: dict, context: QgsProcessingContext) -> str:
        """``"torch"`` or ``"onnx"``: ``onnx`` for a ``.onnx`` ``MODEL_FILE``, else ``BACKEND``; torch where the
        algorithm has no ``BACKEND`` (its ``MODEL_FILE``, if any, takes ``.safetensors`` only, which QGIS checks)."""
        names = {p.name() for p in self.parameterDefinitions()}
        if "BACKEND" not in names:
            return "torch"
        path = self.parameterAsFile(parameters, "MODEL_FILE", context)
        if is_onnx_file(path):
            return "onnx"
        return self.parameterAsEnumString(parameters, "BACKEND", context) or "torch"

    def model(self, parameters: dict, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> Any:
        """Load the chosen model (``MODEL_FILE`` wins over ``MODEL``) with the chosen backend and report it with
        the devices (ONNX Runtime's execution providers for the ``onnx`` backend: torch is not touched).

        Raises:
            QgsProcessingException: The ONNX export of a checkpoint needs a missing package, or a tile-size mismatch.
            engine.errors.EngineError: The engine's loading errors (unknown model, bad checkpoint).
        """
        path = self.parameterAsFile(parameters, "MODEL_FILE", context)
        name = path or self.parameterAsEnumString(parameters, "MODEL", context) or DEFAULT_MODEL
        backend = self.backend(parameters, context)
        device = self.parameterAsEnumString(parameters, "DEVICE", context) or "auto"
        if backend == "onnx" and not is_onnx_file(name):
            model = self._export_onnx(name, device)
        else:
            model = load_model(name, backend=backend, device=device)
        depth = model.depth  # every engine encoder (SMARTIES, DINO, ONNX Runtime) records it
        if backend == "onnx":
            exported = "" if is_onnx_file(name) else f", exported to {model.provenance.weights_path}"
            feedback.pushInfo(f"Model: {name} (D={model.embed_dim}, {depth} blocks; ONNX backend: ONNX Runtime "
                              f"on {model.device}{exported})")
            feedback.pushInfo(f"Devices: {runtime.onnxruntime_report()}")
            self.check_onnx_tile(model, parameters, context, "export the encoder again for {tile}-px tiles "
                                 "(msfm export-onnx OUT.onnx --tile-size-px {tile}), or use the torch backend")
        else:
            feedback.pushInfo(f"Model: {name} (D={model.embed_dim}, {depth} blocks; torch backend)")
            feedback.pushInfo(f"Devices: {runtime.device_report()}; {runtime.cpu_threads()}")
        return model

    @staticmethod
    def _export_onnx(name: str, device: str) -> Any:
        """A registry model or ``.safetensors`` file with the ONNX backend: the engine exports it to ONNX once (into
        its ONNX cache), which needs torch and onnx; explain the way out when they are missing."""
        if runtime.is_installed("torch"):
            runtime.import_torch()  # the export imports torch: keep its own BLAS inside QGIS (see runtime)
        try:
            return load_model(name, backend="onnx", device=device)
        except ImportError as exc:
            module = (exc.name or "").split(".")[0] or next(
                (m for m in ("torch", "onnx", "safetensors") if m in str(exc)), "")
            if module not in ("torch", "onnx", "safetensors"):
                raise
            raise QgsProcessingException(
                f"The ONNX backend with the model {name!r} needs a one-time export of the model to ONNX, and that "
                f"export needs {module} ({exc}). Either pick an exported .onnx encoder in 'Local model file' "
                f"(make one where torch is installed: msfm export-onnx model.onnx --model {name}), "
                f"or install {module}:\n{runtime.install_instructions([module])}") from exc

    @staticmethod
    def progress(feedback: QgsProcessingFeedback) -> dict[str, Any]:
        """``progress``/``is_canceled`` callbacks for the engine (called once per batch or window).

        (Engine calls also pass ``overwrite=True``: QGIS's output widgets ask the user before an existing file is
        chosen, and the engine still refuses an output that is an input.)
        """
        return {"progress": lambda f: feedback.setProgress(100.0 * f), "is_canceled": feedback.isCanceled}

    # --- run ---------------------------------------------------------------------------------------------------
    def processAlgorithm(self, parameters: dict, context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict:
        backend = self.backend(parameters, context)
        kind = runtime.requirement_kind(self.NEEDS, backend)
        try:
            runtime.require(kind)
            if "torch" in runtime.REQUIREMENTS[kind]:
                runtime.import_torch()  # before the engine imports it: keeps torch's own BLAS inside QGIS
        except runtime.DependencyError as exc:
            raise QgsProcessingException(f"{exc}{self.dependency_hint(exc, parameters, context)}") from exc
        try:
            return self.compute(parameters, context, feedback)
        except engine.errors.InferenceCancelled as exc:
            raise QgsProcessingException(f"Cancelled: {exc}") from exc
        except engine.errors.BandResolutionError as exc:
            raise QgsProcessingException(band_advice(exc)) from exc
        except (engine.errors.EngineError, ValueError, runtime.DependencyError) as exc:
            raise QgsProcessingException(str(exc)) from exc
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def dependency_hint(self, exc: runtime.DependencyError, parameters: dict, context: QgsProcessingContext) -> str:
        """Appended to the install instructions when a package is missing: the way round it, if there is one."""
        if "torch" in exc.missing and "BACKEND" in {p.name() for p in self.parameterDefinitions()}:
            model = self.parameterAsEnumString(parameters, "MODEL", context) or DEFAULT_MODEL
            return ("\nWithout torch: pick an exported .onnx encoder in 'Local model file' (it runs with ONNX "
                    "Runtime; export one where torch is installed with: msfm export-onnx model.onnx --model "
                    f"{self.parameterAsFile(parameters, 'MODEL_FILE', context) or model}).")
        return ""

    def compute(self, parameters: dict, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> dict:
        """The work of the algorithm (worker thread); returns the outputs."""
        raise NotImplementedError

    def optional_output(self, parameters: dict, name: str, context: QgsProcessingContext) -> Optional[str]:
        """The path of an optional layer output, or None when it is left blank.

        Batch mode hands every output cell over as a layer definition, blank ones included, and
        ``parameterAsOutputLayer`` would register the blank one as a layer to load: QGIS then reports it as "not
        correctly generated" after every successful row. A blank one is therefore never resolved.
        """
        value = parameters.get(name)
        if isinstance(value, QgsProcessingOutputLayerDefinition):
            value = value.sink.staticValue()
        if value is None or not str(value).strip():
            return None
        return self.parameterAsOutputLayer(parameters, name, context) or None

    def record_timing(self, parameters: dict, context: QgsProcessingContext, embedded: Any, seconds: float) -> None:
        """Record the run's per-tile and fixed seconds for the dock's time estimate (:mod:`..timing`).

        Args:
            parameters: The run's parameters (model, device choice, tile size, backend make the key).
            context: The run's context.
            embedded: The run's ``EmbeddingResult`` (None when existing embeddings were used: nothing is recorded).
            seconds: The whole run's seconds (k-means and writing included).
        """
        if embedded is None:
            return
        model = (self.parameterAsFile(parameters, "MODEL_FILE", context)
                 or self.parameterAsEnumString(parameters, "MODEL", context) or DEFAULT_MODEL)
        name = timing.key(model, self.parameterAsEnumString(parameters, "DEVICE", context) or "auto",
                          self.parameterAsInt(parameters, "TILE_SIZE", context), self.backend(parameters, context))
        timing.record(name, embedded.tiles, seconds, embedded.tile_seconds)

    def show_output(self, name: str, path: str, what: str,
                    style: Optional[Callable[[QgsRasterLayer], None]] = None, with_output: str = "") -> None:
        """How the output ``name`` (at ``path``) appears when Processing loads it, applied when the run ends.

        Args:
            name: The output parameter (``OUTPUT``, ``OUTPUT_POLYGONS``…).
            path: Its file.
            what: What it is, for its layer name: ``"<input layer> <what>"`` (``"scene classes (k=6)"``); a name
                the user gave the output (or the file name QGIS prefers) is kept.
            style: Styles the raster layer (the post-processor is attached on the main thread).
            with_output: For an optional output: the path of the main output; it is loaded whenever that one is
                (asking for class polygons or a PCA preview means wanting to see them).
        """
        definition = self.parameterDefinition(name)
        self.outputs_to_show[path] = (style, f"{self.layer_name or 'msfm'} {what}",
                                      definition.description() if definition is not None else "", with_output)

    def postProcessAlgorithm(self, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> dict:  # noqa: N802
        from ..styling import attach

        for path, (style, layer_name, generic, follows) in self.outputs_to_show.items():
            if follows and not context.willLoadLayerOnCompletion(path) and context.willLoadLayerOnCompletion(follows):
                context.addLayerToLoadOnCompletion(
                    path, QgsProcessingContext.LayerDetails(layer_name, context.project(), layer_name))
            attach(context, path, style, layer_name, generic)
        return {}


def iter_features(source: QgsFeatureSource, crs: QgsCoordinateReferenceSystem, context: QgsProcessingContext,
                  feedback: QgsProcessingFeedback, field: Optional[str] = None) -> Iterator[tuple[QgsFeature, dict]]:
    """``(feature, GeoJSON geometry in crs)`` for the source's non-empty features; stops early when cancelled.

    Geometries are transformed from the source's CRS (left as they are when the source has none). ``field`` limits
    the attributes read to that one.

    Raises:
        QgsProcessingException: A geometry cannot be transformed (the feature and both CRSs are named).
    """
    source_crs = source.sourceCrs()
    transform = QgsCoordinateTransform(source_crs, crs, context.transformContext()) if source_crs.isValid() else None
    request = QgsFeatureRequest()
    if field:
        request.setSubsetOfAttributes([field], source.fields())
    for feature in source.getFeatures(request):
        if feedback.isCanceled():
            return
        geometry = feature.geometry()
        if geometry is None or geometry.isEmpty():
            continue
        if transform is not None:
            try:
                geometry.transform(transform)
            except QgsCsException as exc:
                raise QgsProcessingException(
                    f"Feature {feature.id()} cannot be transformed from {source_crs.authid() or source_crs.description()}"
                    f" to the raster's {crs.authid() or crs.description()}: {exc}") from exc
        yield feature, json.loads(geometry.asJson())


def features_as_geojson(source: QgsFeatureSource, crs: QgsCoordinateReferenceSystem, context: QgsProcessingContext,
                        feedback: QgsProcessingFeedback) -> list[dict]:
    """Geometries of a feature source as GeoJSON mappings in ``crs`` (curves segmentised, empty ones skipped)."""
    return [geometry for _, geometry in iter_features(source, crs, context, feedback)]
