"""*Cluster embeddings (k-means)*: an unsupervised class map of the layer, at pixel or patch resolution."""

from __future__ import annotations

from typing import Optional

from qgis.core import (
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..runtime import engine
from ..styling import style_classes
from .base import BACKEND_HELP, MsfmAlgorithm

#: ``EMBEDDING_FORMAT``: how an existing embedding raster stores its values (the engine's
#: ``engine.maps.quantized.ENCODINGS``, written out so that the toolbox lists them where the engine cannot load);
#: ``auto``: detected from the file.
FORMATS = ("auto", "msfm", "alphaearth", "tessera", "float")


def add_embedding_format_parameter(alg: MsfmAlgorithm) -> None:
    """The advanced ``EMBEDDING_FORMAT`` (:data:`FORMATS`, default ``auto``) of the existing embeddings."""
    param = QgsProcessingParameterEnum("EMBEDDING_FORMAT", "Embedding format of existing embeddings",
                                       options=list(FORMATS), defaultValue="auto", usesStaticStrings=True)
    param.setFlags(param.flags() | QgsProcessingParameterEnum.FlagAdvanced)
    alg.addParameter(param)


def embedding_format(alg: MsfmAlgorithm, parameters, context) -> Optional[str]:
    """``EMBEDDING_FORMAT`` as the engine's ``embedding_format``: ``"msfm"``, ``"alphaearth"``, ``"tessera"`` or
    ``"float"``; None for ``auto`` (the engine detects it from the file, and refuses a file that cannot tell)."""
    fmt = alg.parameterAsEnumString(parameters, "EMBEDDING_FORMAT", context)
    return None if fmt in ("", "auto") else fmt


def add_reuse_parameters(alg: MsfmAlgorithm) -> None:
    """``RESOLUTION`` (pixel/patch), ``EMBEDDINGS`` (reuse an embedding raster instead of running the model) and its
    advanced ``EMBEDDING_FORMAT``."""
    alg.addParameter(QgsProcessingParameterEnum(
        "RESOLUTION", "Output resolution", options=["pixel", "patch"], defaultValue="pixel", usesStaticStrings=True))
    alg.addParameter(QgsProcessingParameterRasterLayer(
        "EMBEDDINGS", "Existing embeddings of this layer (skip the model)", optional=True))
    add_embedding_format_parameter(alg)


def embeddings_path(alg: MsfmAlgorithm, parameters, context) -> Optional[str]:
    """Source file of ``EMBEDDINGS``, or None."""
    layer = alg.parameterAsRasterLayer(parameters, "EMBEDDINGS", context)
    return layer.source() if layer is not None else None


class ClusterEmbeddings(MsfmAlgorithm):
    NAME = "cluster"
    DISPLAY = "Cluster embeddings (k-means)"
    ICON = "cluster"
    NEEDS = "clustering"
    HELP = (
        "Computes the layer's embeddings (or reuses existing ones) and groups them into <b>k</b> classes with "
        "k-means on L2-normalised vectors. At <i>pixel</i> resolution class boundaries follow the image's edges "
        "(joint bilateral upsampling of the patch classes guided by the layer's pixels); at <i>patch</i> resolution "
        "there is one class per 16×16-pixel patch. The output is a paletted GeoTIFF (classes 0…k−1, nodata 255) "
        "with its legend.<br><br><i>Spectral weight</i> (pixel resolution): above 0, every pixel is clustered on its "
        "interpolated embedding together with its own normalised bands, the bands weighted by this value (1 = as "
        "much weight as the embedding; 0 = embeddings only). <i>Suggest k (report only)</i> scores k = 2…10 by the "
        "silhouette on the sample and writes the table to the log; the map keeps the k chosen above.<br><br>"
        "Existing embeddings can be ours or made elsewhere (AlphaEarth, TESSERA, any float raster: <i>Embedding "
        "format</i> when the file does not say; at <i>pixel</i> resolution their classes are interpolated, not guided "
        "by the image, since they carry no band statistics)."
    ) + BACKEND_HELP

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.add_band_parameters()
        self.addParameter(QgsProcessingParameterNumber(
            "K", "Number of classes (k)", QgsProcessingParameterNumber.Integer, 8, minValue=2, maxValue=254))
        add_reuse_parameters(self)
        self.addParameter(QgsProcessingParameterNumber(
            "SPECTRAL_WEIGHT", "Spectral weight", QgsProcessingParameterNumber.Double, 0.0, minValue=0.0,
            maxValue=100.0))
        self.addParameter(QgsProcessingParameterBoolean("SUGGEST_K", "Suggest k (report only)", defaultValue=False))
        self.add_model_parameters()
        self.add_region_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Classes"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_EMBEDDINGS", "Embeddings (kept)", optional=True, createByDefault=False))

    def compute(self, parameters, context, feedback) -> dict:
        source = self.layer_path(parameters, context, feedback)
        embeddings = embeddings_path(self, parameters, context)
        model = None if embeddings else self.model(parameters, context, feedback)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        kept = self.optional_output(parameters, "OUTPUT_EMBEDDINGS", context)
        k = self.parameterAsInt(parameters, "K", context)
        clustering = engine.maps.ClusterSettings(
            k=k, resolution=self.parameterAsEnumString(parameters, "RESOLUTION", context),
            spectral_weight=self.parameterAsDouble(parameters, "SPECTRAL_WEIGHT", context),
            suggest_k=self.parameterAsBoolean(parameters, "SUGGEST_K", context))
        result = engine.maps.cluster_raster(
            source, output, model, clustering=clustering, embeddings=embeddings,
            embedding_format=embedding_format(self, parameters, context), embeddings_output=kept,
            settings=self.settings(parameters, context),
            region=self.region(parameters, context, feedback), **self.band_arguments(parameters, context),
            **self.progress(feedback), overwrite=True,
        )
        shares = ", ".join(f"{i}: {100 * f:.1f} %" for i, f in enumerate(result.class_fractions))
        what = "embeddings" if result.spectral_weight == 0 else f"pixels (spectral weight {result.spectral_weight:g})"
        feedback.pushInfo(f"k-means on {result.samples} {what}, {result.seconds:.1f} s; class shares {shares}")
        if result.k_scores:
            feedback.pushInfo("Silhouette on the sample (higher is better): " + ", ".join(
                f"k = {c}: {score:.3f}" for c, score in result.k_scores.items()))
            feedback.pushInfo(result.k_report())
        self.record_timing(parameters, context, result.embeddings, result.seconds)
        labels = [f"class {i}" for i in range(k)]
        self.show_output("OUTPUT", output, f"classes (k={k})", lambda layer: style_classes(layer, labels))
        outputs = {"OUTPUT": output, "K": k, "CLASS_FRACTIONS": list(result.class_fractions), "SECONDS": result.seconds,
                   "TILES": result.embeddings.tiles if result.embeddings else 0}
        if result.k_scores:
            outputs["SUGGESTED_K"] = result.suggested_k
        if kept:
            outputs["OUTPUT_EMBEDDINGS"] = kept
            self.show_output("OUTPUT_EMBEDDINGS", kept, "embeddings")
        return outputs
