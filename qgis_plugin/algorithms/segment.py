"""Segmentation: *Train segmentation head* (polygons with a class field → a head file) and *Segment with a head*
(a head file → a pixel-resolution class map, optionally its probabilities and polygons).

A head reads the encoder's patch tokens; its card (``NAME.json`` beside ``NAME.safetensors``) records the encoder,
the bands, their normalisation, the scale and the classes, so *Segment with a head* needs only the head and a raster
with the same bands. ``HEAD`` may also be an exported segmenter (``.onnx``: the encoder and the head in one graph,
the card in its metadata; ``msfm export-onnx OUT.onnx --head HEAD.safetensors`` or *Export model to ONNX*): it runs
with ONNX Runtime alone, torch is never imported, and ``MODEL_FILE`` must stay empty. Parameter names (public
contract, beside the shared ones of :mod:`.base`): ``POLYGONS``, ``CLASS_FIELD``, ``HEAD_TYPE``, ``STEPS``,
``VAL_FRACTION``, ``FINETUNE`` (training), ``HEAD``, ``SHIFTS``, ``OUTPUT_PROBABILITIES``, ``OUTPUT_POLYGONS``
(segmentation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterVectorDestination,
)
from qgis.PyQt.QtCore import QVariant

from .. import runtime
from ..runtime import engine
from ..styling import style_classes
from .base import MsfmAlgorithm, cached, is_onnx_file, iter_features, load_model

HEAD_TYPES = ("linear", "upernet", "pixel")
HEAD_FILTER = "Segmentation head (*.safetensors)"
#: What *Segment with a head* takes: a head file, or an encoder + head exported as one ONNX graph.
SEGMENTER_FILTER = "Segmentation head or exported segmenter (*.safetensors *.onnx)"


def _plain(value: Any) -> Any:
    """A class field value as a plain Python value (QVariant NULL → None; dates and other types → text)."""
    if isinstance(value, QVariant):
        value = None if value.isNull() else value.value()
    if value is None or isinstance(value, (str, int, float)):
        return value
    return value.toString() if hasattr(value, "toString") else str(value)


#: From this many polygons on, a field with a different value on every polygon is taken for an identifier.
IDENTIFIER_POLYGONS = 6


def check_class_field(source: Any, field: str, values: list) -> None:
    """Refuse a class field that is an identifier (``fid``, ``id``…): a different value on each of ≥ 6 polygons would
    train one class per polygon. The message names the fields that look like classes.

    Raises:
        QgsProcessingException: The field has as many distinct values as there are polygons.
    """
    if len(values) < IDENTIFIER_POLYGONS or len(set(values)) < len(values):
        return
    candidates = []
    for index, other in enumerate(source.fields()):
        if other.name() != field:
            distinct = [v for v in map(_plain, source.uniqueValues(index)) if v is not None and str(v).strip()]
            if 2 <= len(distinct) <= len(values) // 2:
                candidates.append(f"{other.name()} ({len(distinct)} classes)")
    raise QgsProcessingException(
        f"The class field {field!r} has a different value on each of the {len(values)} polygons: it looks like an "
        "identifier, not a class, and would train one class per polygon. Choose the field that holds each "
        "polygon's class in 'Class field'" + (f": {', '.join(candidates)}." if candidates else
                                               " (several polygons per class).")
    )


class TrainSegmentationHead(MsfmAlgorithm):
    NAME = "train_head"
    DISPLAY = "Train segmentation head"
    GROUP = "Segmentation"
    ICON = "train_head"
    HELP = (
        "Trains a segmentation head on the layer from a few polygons with a class field (text or number), for "
        "<i>Segment with a head</i>. Draw a handful of polygons per class (at least two per class, so that one can "
        "be kept for validation); <i>Selected features only</i> trains on a selection. The polygons may be in any "
        "CRS: they are reprojected to the layer's.<br><br>"
        "The encoder stays frozen (unless <i>Fine-tune the encoder</i>): chips centred on the training polygons are "
        "encoded once and the head learns for the given number of steps. A <i>linear</i> head (1×1 convolution on "
        "the last block, one prediction per 16-px patch) fits in seconds; <i>UPerNet</i> reads four blocks and suits "
        "thin classes (roads) with many labels but takes minutes; <i>pixel</i> (the default) joins two blocks with "
        "the layer's own bands at full resolution, so class boundaries follow the image inside a 16-px patch "
        "(shorelines, field edges): the best few-shot maps measured, in about a minute on two cores. Whole polygons (a share of each "
        "class's, <i>Validation fraction</i>) are kept out of training and scored: mIoU, macro F1, overall accuracy "
        "and per-class IoU/F1 appear in the log and as outputs.<br><br>"
        "Output: the head file (.safetensors) and its card (.json beside it: encoder, bands, normalisation, scale, "
        "class names and colours, validation metrics); with fine-tuning also NAME.encoder.safetensors. The tile "
        "size is the training chip side; the scale (empty: the sensor preset's) is recorded in the card and reused "
        "when segmenting."
    )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.add_band_parameters()
        self.addParameter(QgsProcessingParameterFeatureSource(
            "POLYGONS", "Training polygons", [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField(
            "CLASS_FIELD", "Class field", parentLayerParameterName="POLYGONS", type=QgsProcessingParameterField.Any))
        self.addParameter(QgsProcessingParameterEnum(
            "HEAD_TYPE", "Head", options=list(HEAD_TYPES), defaultValue="pixel", usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterNumber(
            "STEPS", "Training steps", QgsProcessingParameterNumber.Integer, 300, minValue=1, maxValue=100000))
        advanced = [
            QgsProcessingParameterNumber("VAL_FRACTION", "Validation fraction (share of each class's polygons)",
                                         QgsProcessingParameterNumber.Double, 0.25, minValue=0.0, maxValue=0.9),
            QgsProcessingParameterBoolean("FINETUNE", "Fine-tune the encoder (slower; saves the encoder too)",
                                          defaultValue=False),
        ]
        for param in advanced:
            param.setFlags(param.flags() | QgsProcessingParameterNumber.FlagAdvanced)
            self.addParameter(param)
        self.add_model_parameters(backend=False, overlap=False, tile_label="Training chip size", precision=False)
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Segmentation head", HEAD_FILTER))
        self.addOutput(QgsProcessingOutputFile("CARD", "Head card (.json)"))
        self.addOutput(QgsProcessingOutputNumber("MIOU", "Validation mIoU"))
        self.addOutput(QgsProcessingOutputNumber("MACRO_F1", "Validation macro F1"))
        self.addOutput(QgsProcessingOutputNumber("OVERALL_ACCURACY", "Validation overall accuracy"))
        self.addOutput(QgsProcessingOutputString("CLASSES", "Class names (JSON list, in class-index order)"))

    def polygon_labels(self, parameters, context, feedback) -> Any:
        """``PolygonLabels`` of ``POLYGONS`` in the layer's CRS, with the layer's feature ids (named by the engine's
        errors, e.g. empty class values).

        Raises:
            QgsProcessingException: No layer, no such field, or cancelled while reading.
        """
        source = self.parameterAsSource(parameters, "POLYGONS", context)
        if source is None:
            raise QgsProcessingException("The training polygon layer is missing or invalid.")
        field = self.parameterAsString(parameters, "CLASS_FIELD", context)
        names = source.fields().names()
        if field not in names:
            raise QgsProcessingException(f"The polygon layer has no field {field!r}; its fields are {names}. Pick "
                                         "the field that holds the class of each polygon.")
        geometries, values, ids = [], [], []
        for feature, geometry in iter_features(source, self.layer_crs, context, feedback, field):
            geometries.append(geometry)
            values.append(_plain(feature[field]))
            ids.append(feature.id())
        if feedback.isCanceled():
            raise QgsProcessingException("Cancelled while reading the polygons; no head written.")
        check_class_field(source, field, values)
        labels = engine.segmentation.PolygonLabels(
            geometries, values, self.layer_crs.toWkt() if source.sourceCrs().isValid() else None, field=field,
            source=f"layer {source.sourceName()!r}" if source.sourceName() else "the polygon layer", ids=ids,
        )
        return labels

    def compute(self, parameters, context, feedback) -> dict:
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output:
            raise QgsProcessingException("Choose a file for the segmentation head (.safetensors).")
        source = self.layer_path(parameters, context, feedback)
        labels = self.polygon_labels(parameters, context, feedback)
        model = self.model(parameters, context, feedback)
        steps = self.parameterAsInt(parameters, "STEPS", context)
        finetune = self.parameterAsBoolean(parameters, "FINETUNE", context)
        head_type = self.parameterAsEnumString(parameters, "HEAD_TYPE", context) or "pixel"
        feedback.pushInfo(f"{len(labels.geometries)} polygons, field {labels.field!r}; {head_type} head, "
                          f"{steps} steps{', fine-tuning the encoder' if finetune else ''}")
        fit = engine.segmentation.HeadFitSettings(
            head_type=head_type, steps=steps, finetune=finetune,
            val_fraction=self.parameterAsDouble(parameters, "VAL_FRACTION", context))
        result = engine.segmentation.fit_head(
            source, labels, model, fit=fit, output=output, settings=self.settings(parameters, context),
            **self.band_arguments(parameters, context), **self.progress(feedback), overwrite=True,
        )
        card = result.head.card
        for note in result.notes:
            feedback.pushWarning(note)
        if result.losses:
            feedback.pushInfo(f"{len(result.losses)} steps on {result.train_chips} training chips in "
                              f"{result.seconds:.1f} s; loss {result.losses[0]:.3f} → {result.losses[-1]:.3f}")
        metrics = result.metrics
        report_metrics(metrics, feedback)
        names = [c.name for c in card.classes]
        outputs = {
            "OUTPUT": output, "CARD": str(result.card), "MIOU": metrics.get("miou"),
            "MACRO_F1": metrics.get("macro_f1"), "OVERALL_ACCURACY": metrics.get("overall_accuracy"),
            "CLASSES": json.dumps(names, ensure_ascii=False), "METRICS": json.dumps(metrics, ensure_ascii=False),
            "TRAIN_CHIPS": result.train_chips, "VAL_CHIPS": result.val_chips, "SECONDS": result.seconds,
        }
        if card.encoder.get("file"):
            outputs["ENCODER"] = str(Path(output).with_name(card.encoder["file"]))
        return outputs


def _score(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report_metrics(metrics: dict, feedback) -> None:
    """Validation metrics of a head in the log: mIoU, macro F1, overall accuracy, then IoU/F1 per class."""
    if not metrics:
        feedback.pushWarning("No validation score: no polygon was kept for validation (each class needs at least "
                             "two polygons, and the validation fraction must be above 0).")
        return
    feedback.pushInfo(f"Validation ({metrics.get('split', '')}): mIoU {_score(metrics.get('miou'))}, macro F1 "
                      f"{_score(metrics.get('macro_f1'))}, overall accuracy {_score(metrics.get('overall_accuracy'))}")
    for name, scores in metrics.get("classes", {}).items():
        if scores.get("iou") is None:
            feedback.pushInfo(f"  {name}: no validation pixel")
        else:
            feedback.pushInfo(f"  {name}: IoU {_score(scores['iou'])}, F1 {_score(scores['f1'])}, precision "
                              f"{_score(scores.get('precision'))}, recall {_score(scores.get('recall'))} "
                              f"({scores.get('pixels', 0)} px)")


class SegmentWithHead(MsfmAlgorithm):
    NAME = "segment"
    DISPLAY = "Segment with a head"
    GROUP = "Segmentation"
    ICON = "segment"
    HELP = (
        "Classifies every pixel of the layer with a segmentation head (from <i>Train segmentation head</i>, or a "
        "SMARTIES checkpoint with its published segmentation head). The head's card says which encoder to use, "
        "which bands it expects (the layer must map to the same spectral ranges: check <i>Band mapping report</i>, "
        "use the sensor preset or band overrides otherwise), how to normalise them and at which scale; there is "
        "no model choice. <i>Encoder weights</i> is needed only when the encoder named in the card cannot be found "
        "(e.g. a head trained on a local model file on another machine).<br><br>"
        "<i>Passes</i>: 2 adds a pass of tiles shifted by half a patch, which gives finer class boundaries for twice "
        "the time. Tile overlap also smooths the result (cost ∝ (tile / (tile − overlap))²). An empty scale uses "
        "the head's training scale; the outputs are on the layer's own pixel grid whatever the scale (class "
        "probabilities are averaged onto its pixels before the argmax).<br><br>"
        "Outputs: the class map (paletted GeoTIFF, classes 0…K−1 named as in the card, nodata 255), optionally the "
        "class probabilities (one float band per class) and the class polygons (GeoPackage with fields "
        "<i>class</i> and <i>name</i>).<br><br>"
        "<b>Without torch</b>: the head may be an exported segmenter (<b>.onnx</b>: the encoder and the head in one "
        "graph, the card in its metadata), made where torch is installed with <i>Export model to ONNX</i> (a head "
        "file as <i>Segmentation head</i>) or <tt>msfm export-onnx seg.onnx --head head.safetensors</tt>. It runs "
        "with ONNX Runtime alone (onnxruntime, numpy, rasterio); leave <i>Encoder weights</i> empty (the file holds "
        "its encoder), and keep <i>Tile size</i> at the exported one (by default the head's training chip size). "
        "int8 exports suit the CPU, float16 ones CUDA (onnxruntime-gpu)."
    )
    NEEDS = "segmentation"

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.add_band_parameters()
        self.addParameter(QgsProcessingParameterFile(
            "HEAD", "Segmentation head (.safetensors from Train segmentation head, or an exported .onnx segmenter)",
            fileFilter=SEGMENTER_FILTER))
        self.addParameter(QgsProcessingParameterNumber(
            "SHIFTS", "Passes (1: plain tiles; 2: plus a half-patch shifted pass: finer boundaries, 2× time)",
            QgsProcessingParameterNumber.Integer, 1, minValue=1, maxValue=2))
        model_file = QgsProcessingParameterFile(
            "MODEL_FILE", "Encoder weights (.safetensors; empty: the model named in the head's card; must be empty "
            "with a .onnx segmenter)", extension="safetensors", optional=True)
        model_file.setFlags(model_file.flags() | QgsProcessingParameterFile.FlagAdvanced)
        self.addParameter(model_file)
        self.add_device_parameters(scale_default="the head's training scale")
        self.add_region_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Classes"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_PROBABILITIES", "Class probabilities", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT_POLYGONS", "Class polygons (GeoPackage)", QgsProcessing.TypeVectorPolygon, optional=True,
            createByDefault=False))

    def _refusal(self, parameters, context) -> str:
        """Why ``HEAD`` and ``MODEL_FILE`` do not go together ("" when they do)."""
        head = self.parameterAsFile(parameters, "HEAD", context)
        model_file = self.parameterAsFile(parameters, "MODEL_FILE", context)
        if is_onnx_file(head) and model_file:
            return (f"{Path(head).name} is an exported segmenter: it holds its encoder, so 'Encoder weights' must be "
                    f"empty (it is {model_file}). Clear 'Encoder weights' (MODEL_FILE), or pick the head's "
                    ".safetensors file to run it with that encoder on torch.")
        return ""  # a .onnx MODEL_FILE never gets here: the parameter takes .safetensors only

    def checkParameterValues(self, parameters, context) -> tuple[bool, str]:  # noqa: N802 - QGIS API
        ok, message = super().checkParameterValues(parameters, context)
        if ok:
            message = self._refusal(parameters, context)
            ok = not message
        return ok, message

    def backend(self, parameters, context) -> str:
        """``"onnx"`` for a ``.onnx`` ``HEAD`` (an exported segmenter: ONNX Runtime, no torch), else ``"torch"``.

        Raises:
            QgsProcessingException: A ``.onnx`` head with ``MODEL_FILE`` set (the file holds its encoder).
        """
        message = self._refusal(parameters, context)
        if message:
            raise QgsProcessingException(message)
        return "onnx" if is_onnx_file(self.parameterAsFile(parameters, "HEAD", context)) else "torch"

    def dependency_hint(self, exc, parameters, context) -> str:
        if "torch" not in exc.missing:
            return ""
        head = self.parameterAsFile(parameters, "HEAD", context) or "head.safetensors"
        return ("\nWithout torch: export the head with its encoder as one .onnx segmenter where torch is installed "
                f"('Export model to ONNX' with the head, or msfm export-onnx seg.onnx --head {head}) and pick the "
                ".onnx file as the segmentation head: it runs with ONNX Runtime alone.")

    def head(self, parameters, context) -> tuple[Any, str]:
        """The head of ``HEAD`` (loaded on the CPU) and its path.

        Raises:
            QgsProcessingException: No such file. engine.errors.CheckpointError: Not a head file.
        """
        path = self._head_path(parameters, context)
        return engine.segmentation.load_head(path), path

    def _head_path(self, parameters, context) -> str:
        path = self.parameterAsFile(parameters, "HEAD", context)
        if not path or not Path(path).is_file():
            raise QgsProcessingException(f"The segmentation head file {path!r} does not exist; train one with "
                                         "'Train segmentation head' or pick a .safetensors head file or an "
                                         "exported .onnx segmenter.")
        return path

    def segmenter(self, parameters, context, feedback) -> Any:
        """The exported segmenter of a ``.onnx`` ``HEAD`` in ONNX Runtime (loaded once and reused; no torch).

        Raises:
            QgsProcessingException: No such file, or a tile size other than the exported one.
            engine.errors.CheckpointError: Not a segmenter (an exported encoder: the message says how to export the
                head), or CUDA asked for without onnxruntime-gpu.
        """
        path = self._head_path(parameters, context)
        device = self.parameterAsEnumString(parameters, "DEVICE", context) or "auto"
        # an exported encoder picked by mistake: the engine's CheckpointError says so and how to export the head
        segmenter = cached((str(path), Path(path).stat().st_mtime, "segmenter", device),
                           lambda: engine.segmentation.OnnxSegmenter(path, device=device))
        card = segmenter.card
        quantization = (segmenter.metadata.get("msfm_quantization") or {}).get("weights", "float32")
        feedback.pushInfo(f"Head: exported segmenter {Path(path).name} ({card.head_type}, {card.num_classes} classes "
                          f"({', '.join(c.name for c in card.classes)}); encoder {card.encoder.get('name')}; "
                          f"{segmenter.tile_size_px}-px tiles, {quantization}; ONNX Runtime on {segmenter.device})")
        feedback.pushInfo(f"Devices: {runtime.onnxruntime_report()}")
        if quantization == "float16" and segmenter.device == "cpu":
            feedback.pushWarning("This is a float16 export, made for CUDA: ONNX Runtime's CPU provider runs it slowly "
                                 "or not at all. On the CPU use the float32 or int8 export.")
        self.check_onnx_tile(segmenter, parameters, context, "export it again for {tile}-px tiles ('Export model "
                             "to ONNX' with Tile size {tile}, or msfm export-onnx seg.onnx --head HEAD.safetensors "
                             "--tile-size-px {tile})")
        return segmenter

    def encoder(self, parameters, context, feedback, head: Any, head_path: str) -> Any:
        """The encoder the head belongs to (``MODEL_FILE`` when given, else its card's), loaded once and reused."""
        name = self.parameterAsFile(parameters, "MODEL_FILE", context) or \
            engine.segmentation.encoder_source(head.card, head_path)
        try:
            model = load_model(name)
        except (engine.errors.ModelNotAvailableError, engine.errors.CheckpointError) as exc:
            raise QgsProcessingException(
                f"{exc}\nThe head was trained on the encoder {head.card.encoder.get('name')!r}; choose that model's "
                "weights in 'Encoder weights'.") from exc
        feedback.pushInfo(f"Head: {head.card.head_type}, {head.card.num_classes} classes "
                          f"({', '.join(c.name for c in head.card.classes)}); encoder {name}")
        feedback.pushInfo(f"Devices: {runtime.device_report()}; {runtime.cpu_threads()}")
        return model

    def compute(self, parameters, context, feedback) -> dict:
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        probabilities = self.optional_output(parameters, "OUTPUT_PROBABILITIES", context)
        polygons = self.optional_output(parameters, "OUTPUT_POLYGONS", context)
        if self.backend(parameters, context) == "onnx":
            head, model = self.segmenter(parameters, context, feedback), None  # holds its encoder
        else:
            head, head_path = self.head(parameters, context)
            model = self.encoder(parameters, context, feedback, head, head_path)
        source = self.layer_path(parameters, context, feedback)
        region = self.region(parameters, context, feedback)
        result = engine.segmentation.segment_raster(
            source, output, head, model, settings=self.settings(parameters, context),
            shifts=self.parameterAsInt(parameters, "SHIFTS", context) or 1, region=region,
            probabilities_output=probabilities, polygons_output=polygons,
            **self.band_arguments(parameters, context), **self.progress(feedback), overwrite=True,
        )
        names = list(result.class_names)
        shares = ", ".join(f"{n}: {100 * f:.1f} %" for n, f in zip(names, result.class_fractions))
        feedback.pushInfo(f"{result.tiles} tiles in {result.seconds:.1f} s; class shares {shares}")
        head_name = Path(self.parameterAsFile(parameters, "HEAD", context)).stem
        self.show_output("OUTPUT", output, f"segmentation ({head_name})",
                         lambda layer: style_classes(layer, names))
        outputs = {"OUTPUT": output, "CLASS_NAMES": names, "CLASS_FRACTIONS": list(result.class_fractions),
                   "TILES": result.tiles, "SECONDS": result.seconds}
        if probabilities:
            outputs["OUTPUT_PROBABILITIES"] = probabilities
            self.show_output("OUTPUT_PROBABILITIES", probabilities,
                             f"class probabilities ({head_name})", with_output=output)
        if polygons:
            outputs["OUTPUT_POLYGONS"] = polygons
            self.show_output("OUTPUT_POLYGONS", polygons, f"segmentation ({head_name}) polygons",
                             with_output=output)
        return outputs
