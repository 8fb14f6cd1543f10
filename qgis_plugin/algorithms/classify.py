"""*Classify pixels (random forest on bands + embeddings)*: polygons with a class field → a per-pixel class map, fitted
and applied in one run (no model file), like QGIS's classic supervised classifiers.

Parameter names (public contract, beside the shared ones of :mod:`.base`): ``POLYGONS``, ``CLASS_FIELD``,
``FEATURES``, ``TREES``, ``VAL_FRACTION``, ``COMPONENTS``, ``EMBEDDINGS``, ``EMBEDDING_FORMAT``,
``OUTPUT_PROBABILITIES``.
"""

from __future__ import annotations

import json

from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..runtime import engine
from ..styling import style_classes
from .base import MsfmAlgorithm
from .cluster import add_embedding_format_parameter, embedding_format
from .segment import TrainSegmentationHead, report_metrics

FEATURES = ("bands+embeddings", "bands", "embeddings")


class ClassifyPixels(MsfmAlgorithm):
    NAME = "classify"
    DISPLAY = "Classify pixels (random forest on bands + embeddings)"
    GROUP = "Segmentation"
    ICON = "segment"
    NEEDS = "clustering"  # torch (the embeddings) and scikit-learn (the forest)
    HELP = (
        "Classifies every pixel of the layer with a random forest (scikit-learn) fitted on the pixels of a few "
        "polygons with a class field, in one run: nothing is saved but the map, as with QGIS's classic supervised "
        "classifiers. Each pixel's features are its own bands, normalised as the encoder reads them, and, with "
        "<i>bands+embeddings</i>, the encoder's embedding interpolated at the pixel (reduced to its first "
        "<i>Embedding components</i> principal components, so bands and embeddings weigh alike). <i>bands</i> is the "
        "classical classifier and needs no model.<br><br>"
        "<b>When to use it rather than a head</b>: for a quick map of one scene, when the classes differ in their "
        "spectra (water, vegetation, bare soil, snow) and the boundaries must follow the pixels: the forest keeps "
        "every pixel's own values, and on a Sentinel-2 flood chip it beat the few-shot linear head. Train a "
        "<i>segmentation head</i> instead when the classes are defined by texture or context (buildings, field "
        "types) or when the same model is to be applied to other scenes (a head is a file; the forest is refitted "
        "every run).<br><br>"
        "Whole polygons (a share of each class's, <i>Validation fraction</i>) are kept out of the fit and scored "
        "(mIoU, macro F1, per-class IoU in the log and as outputs); the map comes from the forest fitted without "
        "them. Output: the class map on the layer's own pixel grid (paletted GeoTIFF, classes named from the field's "
        "values, nodata 255), optionally the class probabilities (one float band per class).<br><br>"
        "<i>Existing embeddings</i> can be ours or made elsewhere (AlphaEarth, TESSERA, any float raster: "
        "<i>Embedding format</i> when the file does not say; they carry no band statistics, so use <i>embeddings</i>)."
    )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.add_band_parameters()
        self.addParameter(QgsProcessingParameterFeatureSource(
            "POLYGONS", "Training polygons", [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField(
            "CLASS_FIELD", "Class field", parentLayerParameterName="POLYGONS", type=QgsProcessingParameterField.Any))
        self.addParameter(QgsProcessingParameterEnum(
            "FEATURES", "Per-pixel features", options=list(FEATURES), defaultValue=FEATURES[0],
            usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterNumber(
            "TREES", "Trees", QgsProcessingParameterNumber.Integer, 200, minValue=1, maxValue=5000))
        advanced = [
            QgsProcessingParameterNumber("VAL_FRACTION", "Validation fraction (share of each class's polygons)",
                                         QgsProcessingParameterNumber.Double, 0.25, minValue=0.0, maxValue=0.9),
            QgsProcessingParameterNumber("COMPONENTS", "Embedding components (principal components; 0 = all)",
                                         QgsProcessingParameterNumber.Integer, 16, minValue=0, maxValue=4096),
        ]
        for param in advanced:
            param.setFlags(param.flags() | QgsProcessingParameterNumber.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterRasterLayer(
            "EMBEDDINGS", "Existing embeddings of this layer (skip the model)", optional=True))
        add_embedding_format_parameter(self)
        self.add_model_parameters(backend=False)
        self.add_region_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Classes"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_PROBABILITIES", "Class probabilities", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("MIOU", "Validation mIoU"))
        self.addOutput(QgsProcessingOutputNumber("MACRO_F1", "Validation macro F1"))
        self.addOutput(QgsProcessingOutputString("CLASSES", "Class names (JSON list, in class-index order)"))

    def compute(self, parameters, context, feedback) -> dict:
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        probabilities = self.optional_output(parameters, "OUTPUT_PROBABILITIES", context)
        source = self.layer_path(parameters, context, feedback)
        # the polygons are read exactly as Train segmentation head reads them (layer feature ids in messages)
        labels = TrainSegmentationHead.polygon_labels(self, parameters, context, feedback)
        features = self.parameterAsEnumString(parameters, "FEATURES", context) or FEATURES[0]
        embeddings_layer = self.parameterAsRasterLayer(parameters, "EMBEDDINGS", context)
        embeddings = embeddings_layer.source() if embeddings_layer is not None and features != "bands" else None
        model = self.model(parameters, context, feedback) if features != "bands" and not embeddings else None
        trees = self.parameterAsInt(parameters, "TREES", context)
        forest = engine.segmentation.ForestSettings(
            features=features, n_estimators=trees,
            val_fraction=self.parameterAsDouble(parameters, "VAL_FRACTION", context),
            embedding_components=self.parameterAsInt(parameters, "COMPONENTS", context) or None)
        feedback.pushInfo(f"{len(labels.geometries)} polygons, field {labels.field!r}; random forest of {trees} "
                          f"trees on {features}")
        result = engine.segmentation.classify_raster(
            source, labels, output, model, forest=forest, embeddings=embeddings,
            embedding_format=embedding_format(self, parameters, context), settings=self.settings(parameters, context),
            region=self.region(parameters, context, feedback),
            probabilities_output=probabilities, **self.band_arguments(parameters, context),
            **self.progress(feedback), overwrite=True,
        )
        for note in result.notes:
            feedback.pushWarning(note)
        names = list(result.class_names)
        shares = ", ".join(f"{n}: {100 * f:.1f} %" for n, f in zip(names, result.class_fractions))
        feedback.pushInfo(f"{sum(result.train_pixels)} training pixels × {result.feature_count} features; fit "
                          f"{result.fit_seconds:.1f} s, map {result.predict_seconds:.1f} s (total "
                          f"{result.seconds:.1f} s); class shares {shares}")
        report_metrics(result.metrics, feedback)
        self.show_output("OUTPUT", output, "classes (random forest)",
                         lambda layer: style_classes(layer, names))
        if probabilities:
            self.show_output("OUTPUT_PROBABILITIES", probabilities, "class probabilities (random forest)",
                             with_output=output)
        metrics = result.metrics
        outputs = {
            "OUTPUT": output, "CLASS_NAMES": names, "CLASS_FRACTIONS": list(result.class_fractions),
            "MIOU": metrics.get("miou"), "MACRO_F1": metrics.get("macro_f1"),
            "CLASSES": json.dumps(names, ensure_ascii=False), "METRICS": json.dumps(metrics, ensure_ascii=False),
            "TRAIN_PIXELS": list(result.train_pixels), "SECONDS": result.seconds,
        }
        if probabilities:
            outputs["OUTPUT_PROBABILITIES"] = probabilities
        return outputs
