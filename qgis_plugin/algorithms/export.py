"""*Export model to ONNX*: an encoder, or an encoder with its segmentation head, as one ``.onnx`` file for ONNX Runtime.

The exported file runs where torch is not installed: an encoder with the embedding algorithms (``MODEL_FILE``), an
encoder + head (a *segmenter*) with *Segment with a head* (``HEAD``). Writing it needs torch and onnx (ONNX Runtime too
for the int8 and float16 copies). Parameter names (public contract): ``MODEL``, ``MODEL_FILE``, ``HEAD``,
``PRECISION``, ``SENSOR``, ``TILE_SIZE``, ``OUTPUT``.
"""

from __future__ import annotations

import json
from pathlib import Path

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from .. import runtime
from ..runtime import engine
from .base import AUTO_SENSOR, DEFAULT_MODEL, MsfmAlgorithm, load_model, model_names, sensor_ids

#: ``PRECISION`` values (``engine.export.PRECISIONS``): float32 as exported; int8 (ONNX Runtime dynamic
#: quantization, for the CPU); float16 (CUDA). Kept here too: the dialog is built before the engine is imported.
PRECISIONS = ("float32", "int8", "float16")
NO_SENSOR = "none"


class ExportOnnx(MsfmAlgorithm):
    NAME = "export_onnx"
    DISPLAY = "Export model to ONNX"
    GROUP = "Models and bands"
    ICON = "msfm"
    NEEDS = "export_onnx"
    HELP = (
        "Exports a model to an ONNX file that ONNX Runtime runs without torch, e.g. in a QGIS where only "
        "onnxruntime is installed (as <tt>msfm export-onnx</tt> does).<br><br>"
        "<b>Encoder</b> (no segmentation head): the model (or a local .safetensors file) with its spectral "
        "projection inside the graph, so one file serves every band combination. Use it as <i>Local model file</i> "
        "of Compute embeddings, Cluster embeddings and Similarity map. <i>Sensor preset</i> (optional) records that "
        "sensor's resolution and band statistics in the metadata (for Deepness and other tools).<br><br>"
        "<b>Segmenter</b> (a head file from <i>Train segmentation head</i>): the encoder and the head in one graph, "
        "the head's card (classes, colours, bands, normalisation, scale) in its metadata. Use it as the head of "
        "<i>Segment with a head</i>. The encoder is the one named in the head's card (its fine-tuned copy beside "
        "the head, if any) unless <i>Encoder weights</i> is set.<br><br>"
        "<i>Precision</i>: <i>float32</i> as trained; <i>int8</i> for the CPU (weights of the matrix products "
        "quantized, about half the size, usually faster, near-identical results); <i>float16</i> for CUDA GPUs "
        "(onnxruntime-gpu; too slow on the CPU). <i>Tile size</i> is fixed in the graph (empty: 224 for an "
        "encoder, the head's training chip size for a segmenter); runs must use the same tile size.<br><br>"
        "Needs torch and onnx (and onnxruntime for int8/float16) in the Python that runs it."
    )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterEnum(
            "MODEL", "Model (encoder)", options=model_names(), defaultValue=DEFAULT_MODEL, usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterFile(
            "MODEL_FILE", "Encoder weights (.safetensors; overrides Model, and the encoder named in the head's card)",
            extension="safetensors", optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "HEAD", "Segmentation head (.safetensors; empty: export the encoder alone)", extension="safetensors",
            optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            "PRECISION", "Precision (float32; int8: smaller and faster on the CPU; float16: for CUDA GPUs)",
            options=list(PRECISIONS), defaultValue="float32", usesStaticStrings=True))
        sensors = [NO_SENSOR, *(s for s in sensor_ids() if s != AUTO_SENSOR)]
        self.addParameter(QgsProcessingParameterEnum(
            "SENSOR", "Sensor preset recorded in an encoder's metadata (none: no resolution or band statistics)",
            options=sensors, defaultValue=NO_SENSOR, usesStaticStrings=True, optional=True))
        tile = QgsProcessingParameterNumber(
            "TILE_SIZE", "Tile size fixed in the graph (model pixels, multiple of 16; empty: 224, or the head's "
            "training chip size)", QgsProcessingParameterNumber.Integer, None, optional=True, minValue=16,
            maxValue=1024)  # the engine's tile limit (InferenceSettings)
        tile.setFlags(tile.flags() | QgsProcessingParameterNumber.FlagAdvanced)
        self.addParameter(tile)
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "ONNX file", "ONNX model (*.onnx)"))
        self.addOutput(QgsProcessingOutputString("FORMAT", "Export format (msfm_format)"))
        self.addOutput(QgsProcessingOutputString("CLASSES", "Class names of a segmenter (JSON list; [] for an encoder)"))
        self.addOutput(QgsProcessingOutputNumber("SIZE_MB", "File size (MB)"))

    def checkParameterValues(self, parameters, context) -> tuple[bool, str]:  # noqa: N802 - QGIS API
        # not MsfmAlgorithm's tile/overlap checks: the tile size may be empty here, and there is no overlap
        ok, message = QgsProcessingAlgorithm.checkParameterValues(self, parameters, context)
        tile = parameters.get("TILE_SIZE")
        if ok and tile not in (None, "") and self.parameterAsInt(parameters, "TILE_SIZE", context) % 16:
            return False, f"The tile size ({tile}) must be a multiple of the 16-pixel patch size."
        return ok, message

    def dependency_hint(self, exc, parameters, context) -> str:
        return ("\nExporting reads the checkpoint with torch and writes the graph with onnx: run it once in a Python "
                "that has them (or msfm export-onnx on any machine); the .onnx file it writes then runs in a QGIS "
                "with onnxruntime alone.")

    def compute(self, parameters, context, feedback) -> dict:
        """Export (``engine.export.export``) and report the file's format, classes and size.

        Raises:
            QgsProcessingException: Bad output name or folder, or a missing head file.
            qgis_plugin.runtime.DependencyError: onnxruntime missing for an int8/float16 copy.
        """
        precision = self.parameterAsEnumString(parameters, "PRECISION", context) or "float32"
        if precision != "float32":
            runtime.require("inference_onnx")  # quantize / to_float16 use ONNX Runtime's tools
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output:
            raise QgsProcessingException("Choose the .onnx file to write.")
        output = Path(output)
        if output.suffix.lower() != ".onnx":
            raise QgsProcessingException(f"Name the output file .onnx (got {output.name}).")
        if not output.parent.is_dir():
            raise QgsProcessingException(f"The output folder {output.parent} does not exist; create it first.")
        tile = None if parameters.get("TILE_SIZE") in (None, "") else self.parameterAsInt(parameters, "TILE_SIZE",
                                                                                           context)
        head_path = self.parameterAsFile(parameters, "HEAD", context)
        model_file = self.parameterAsFile(parameters, "MODEL_FILE", context)
        sensor = self.parameterAsEnumString(parameters, "SENSOR", context)
        sensor = None if sensor in ("", NO_SENSOR, AUTO_SENSOR) else sensor
        head = None
        if head_path:
            if not Path(head_path).is_file():
                raise QgsProcessingException(f"The segmentation head file {head_path!r} does not exist.")
            if sensor:
                feedback.pushWarning(f"Sensor preset {sensor} ignored: a segmenter records the head's bands and "
                                     "statistics from its card.")
            head = engine.segmentation.load_head(head_path)
            name = model_file or engine.segmentation.encoder_source(head.card, head_path)
            feedback.pushInfo(f"Exporting the {head.card.head_type} head {Path(head_path).name} "
                              f"({head.card.num_classes} classes) with its encoder {name}")
        else:
            name = model_file or self.parameterAsEnumString(parameters, "MODEL", context) or DEFAULT_MODEL
            feedback.pushInfo(f"Exporting the encoder {name}")
        # the engine writes every file under a temporary name: a failed export leaves none behind
        engine.export.export(load_model(name), output, head=head, precision=precision, tile_size_px=tile,
                           sensor=sensor, overwrite=True)
        meta = engine.models.read_metadata(output)
        size_mb = output.stat().st_size / 1e6
        tile_px = meta.get("msfm_tile_size_px")
        card = meta.get("msfm_head_card")
        if card:
            classes = [c["name"] for c in card["classes"]]
            what = (f"{card['head_type']} head, {len(classes)} classes ({', '.join(classes)}), input "
                    f"[B, {len(card['bands'])}, {tile_px}, {tile_px}] → probabilities")
        else:
            classes = []
            what = f"inputs image [B, C, {tile_px}, {tile_px}] + band_mix [C, 17] → cls, grid"
        feedback.pushInfo(f"{output.name}: {meta.get('msfm_format')}, {precision}; encoder {meta.get('msfm_encoder')} "
                          f"(D={meta.get('msfm_embed_dim')}, depth {meta.get('msfm_depth')}); {what}; "
                          f"{size_mb:.1f} MB")
        return {"OUTPUT": str(output), "FORMAT": meta.get("msfm_format"), "SIZE_MB": size_mb,
                "CLASSES": json.dumps(classes, ensure_ascii=False)}
