"""*Change map*: the cosine distance between the embeddings of two rasters of one place, on the later raster's grid.

``engine.maps.change_raster`` (``msfm change``). Parameter names (public contract): ``BEFORE`` and its
``BEFORE_SENSOR``, ``INPUT`` (the AFTER raster) with ``SENSOR`` and ``BAND_OVERRIDES``, ``BEFORE_EMBEDDINGS``,
``EMBEDDINGS`` (of the AFTER raster), ``EMBEDDING_FORMAT``, ``RESOLUTION``, ``GRID``, ``CALIBRATION``, ``THRESHOLD`` and
``THRESHOLD_VALUE``, ``TOWARDS_CLASSES`` and ``TOWARDS_K``, the model parameters, ``OUTPUT``, ``OUTPUT_MASK``,
``OUTPUT_POLYGONS``, ``OUTPUT_TOWARDS``.
"""

from __future__ import annotations

from typing import Optional, Union

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)

from ..runtime import engine
from ..styling import style_classes, style_similarity
from .base import AUTO_SENSOR, BACKEND_HELP, MsfmAlgorithm, sensor_ids
from .cluster import add_embedding_format_parameter, embedding_format

#: How the change mask's threshold is chosen (engine.maps.change_raster).
THRESHOLDS = ("otsu", "robust", "value")
#: What the change map's values are (engine.maps.change_raster ``calibration``).
CALIBRATIONS = ("auto", "distance", "zscore")


def add_value_parameters(alg: MsfmAlgorithm, masks: str = "mask", optional: bool = False) -> None:
    """``CALIBRATION`` (:data:`CALIBRATIONS`), ``THRESHOLD`` (:data:`THRESHOLDS`, ``none`` first when the masks are
    optional: batch runs) and ``THRESHOLD_VALUE`` of a change algorithm; ``masks`` names them in the labels."""
    alg.addParameter(QgsProcessingParameterEnum(
        "CALIBRATION", "Values (auto: robust z-score for two different sensors, else cosine distance)",
        options=list(CALIBRATIONS), defaultValue="auto", usesStaticStrings=True))
    alg.addParameter(QgsProcessingParameterEnum(
        "THRESHOLD", f"Threshold of the change {masks}" + (" (none: no mask)" if optional else ""),
        options=["none", *THRESHOLDS] if optional else list(THRESHOLDS),
        defaultValue="none" if optional else "otsu", usesStaticStrings=True))
    alg.addParameter(QgsProcessingParameterNumber(
        "THRESHOLD_VALUE", "Threshold value (in the map's units, with 'value')", QgsProcessingParameterNumber.Double,
        0.1))


def chosen_values(alg: MsfmAlgorithm, parameters, context) -> tuple[str, Optional[Union[float, str]]]:
    """``(calibration, threshold)`` for the engine: the threshold a value with ``value``, None with ``none``."""
    how = alg.parameterAsEnumString(parameters, "THRESHOLD", context) or "none"
    threshold = alg.parameterAsDouble(parameters, "THRESHOLD_VALUE", context) if how == "value" else how
    return (alg.parameterAsEnumString(parameters, "CALIBRATION", context) or "auto",
            None if how == "none" else threshold)


class ChangeMap(MsfmAlgorithm):
    NAME = "change"
    DISPLAY = "Change map"
    ICON = "similarity"
    NEEDS = "inference"
    HELP = (
        "Maps what changed between two rasters of one place: both are embedded with the same model and every "
        "location gets the <b>cosine distance</b> of its two embeddings (0 = unchanged for the model, about 1 = "
        "unrelated, up to 2), on the later raster's grid. The two may come from different sensors (e.g. Sentinel-1 "
        "before a flood, Sentinel-2 after it: give each its sensor preset); a model trained to align sensors makes "
        "such distances more meaningful. When the two grids differ the earlier embeddings are resampled onto the "
        "later grid (the log says so), or the later ones onto the earlier grid (<i>Output grid</i>, advanced). "
        "Existing embedding rasters can be reused, ours or made elsewhere (AlphaEarth, TESSERA, any float raster: "
        "<i>Embedding format</i> when the file does not say).<br><br>"
        "<i>Values</i>: <i>auto</i> writes the cosine distance for one sensor and, for two different sensors, its "
        "<b>robust z-score</b> (distance minus the scene's typical distance, over its robust spread; 3 = clearly "
        "more than usual), since two sensors' embeddings differ even where nothing changed; the log then recommends "
        "a model aligned on the pair.<br><br>"
        "<i>Change mask</i> and <i>Changed areas</i> (optional) mark the locations above a threshold: <i>otsu</i> "
        "(Otsu's method on the values), <i>robust</i> (the scene's typical distance + 3 robust standard "
        "deviations, assuming most of it did not change) or a <i>value</i> (in the map's units).<br><br>"
        "<i>Changed towards</i> (optional): each changed location gets the class the later raster has there, from "
        "a class map of it (<i>Class map of the later raster</i>: a clustering or segmentation output) or from "
        "k-means with <i>k</i> classes; the changed areas are then named after those classes."
    ) + BACKEND_HELP

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", "Earlier raster (before)"))
        self.addParameter(QgsProcessingParameterEnum(
            "BEFORE_SENSOR", "Sensor preset of the earlier raster (auto: from its band names and metadata)",
            options=sensor_ids(), defaultValue=AUTO_SENSOR, usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Later raster (after; the output's grid)"))
        self.add_band_parameters(layer=False)
        self.addParameter(QgsProcessingParameterEnum(
            "RESOLUTION", "Output resolution", options=["pixel", "patch"], defaultValue="pixel",
            usesStaticStrings=True))
        grid = QgsProcessingParameterEnum("GRID", "Output grid (the later or the earlier raster's)",
                                          options=["after", "before"], defaultValue="after", usesStaticStrings=True)
        grid.setFlags(grid.flags() | QgsProcessingParameterEnum.FlagAdvanced)
        self.addParameter(grid)
        for name, label in (("BEFORE_EMBEDDINGS", "Existing embeddings of the earlier raster"),
                            ("EMBEDDINGS", "Existing embeddings of the later raster")):
            self.addParameter(QgsProcessingParameterRasterLayer(name, label, optional=True))
        add_embedding_format_parameter(self)
        add_value_parameters(self)
        self.addParameter(QgsProcessingParameterRasterLayer(
            "TOWARDS_CLASSES", "Class map of the later raster (for 'changed towards')", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "TOWARDS_K", "k of the k-means classes (for 'changed towards' without a class map)",
            QgsProcessingParameterNumber.Integer, 6, minValue=2, maxValue=254))
        self.add_model_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Change (cosine distance)"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_MASK", "Change mask", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "OUTPUT_POLYGONS", "Changed areas (polygons)", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_TOWARDS", "Changed towards (classes of the changed locations)", optional=True,
            createByDefault=False))

    def compute(self, parameters, context, feedback) -> dict:
        after = self.layer_path(parameters, context, feedback)
        before_layer = self.parameterAsRasterLayer(parameters, "BEFORE", context)
        if before_layer is None or before_layer.providerType() != "gdal":
            raise QgsProcessingException("The earlier raster must be a file GDAL reads; save it as a GeoTIFF first "
                                         "(Export ▸ Save As…).")
        given = {name: layer.source() for name in ("BEFORE_EMBEDDINGS", "EMBEDDINGS")
                 if (layer := self.parameterAsRasterLayer(parameters, name, context)) is not None}
        model = None if len(given) == 2 else self.model(parameters, context, feedback)
        before_sensor = self.parameterAsEnumString(parameters, "BEFORE_SENSOR", context)
        bands = self.band_arguments(parameters, context)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        mask = self.optional_output(parameters, "OUTPUT_MASK", context)
        polygons = self.optional_output(parameters, "OUTPUT_POLYGONS", context)
        towards_map = self.optional_output(parameters, "OUTPUT_TOWARDS", context)
        classes = self.parameterAsRasterLayer(parameters, "TOWARDS_CLASSES", context)
        towards = (classes.source() if classes is not None else self.parameterAsInt(parameters, "TOWARDS_K", context)) \
            if towards_map else None
        calibration, threshold = chosen_values(self, parameters, context)
        result = engine.maps.change_raster(
            before_layer.source(), after, output, model, before_embeddings=given.get("BEFORE_EMBEDDINGS"),
            after_embeddings=given.get("EMBEDDINGS"), embedding_format=embedding_format(self, parameters, context),
            resolution=self.parameterAsEnumString(parameters, "RESOLUTION", context),
            on_grid=self.parameterAsEnumString(parameters, "GRID", context) or "after",
            calibration=calibration,
            threshold=threshold if mask or polygons or towards_map else None, mask_output=mask,
            polygons_output=polygons, towards=towards, towards_output=towards_map,
            settings=None if model is None else self.settings(parameters, context),
            before_sensor=None if before_sensor in ("", AUTO_SENSOR) else before_sensor,
            after_sensor=bands["sensor"], after_overrides=bands["overrides"], **self.progress(feedback),
            overwrite=True,
        )
        lo, hi = result.value_range
        if result.reprojected:
            feedback.pushInfo("The embeddings of one raster were resampled (bilinear) onto the other's grid.")
        median, sigma = result.no_change
        if result.notice:
            feedback.pushWarning(result.notice)
        units = "cosine distance" if result.units == "cosine_distance" else "robust z-score"
        feedback.pushInfo(f"{units} {lo:.3f}…{hi:.3f}; typical cosine distance (median) {median:.4f}, robust σ "
                          f"{sigma:.4f}; {result.seconds:.1f} s")
        since = f"change since {before_layer.name()}"
        self.show_output("OUTPUT", output, since, style_similarity)
        outputs = {"OUTPUT": output, "UNITS": result.units, "REPROJECTED": result.reprojected,
                   "SECONDS": result.seconds}
        if result.threshold is not None:
            feedback.pushInfo(f"threshold {result.threshold:.4f} ({threshold or 'otsu'}): "
                              f"{100 * result.changed_fraction:.1f} % changed")
            outputs["THRESHOLD_USED"] = result.threshold
        if mask:
            outputs["OUTPUT_MASK"] = mask
            self.show_output("OUTPUT_MASK", mask, f"{since} (mask)",
                             lambda layer: style_classes(layer, ["unchanged", "changed"]), with_output=output)
        if polygons:
            outputs["OUTPUT_POLYGONS"] = polygons
            self.show_output("OUTPUT_POLYGONS", polygons, f"{since} (areas)", with_output=output)
        if towards_map and result.towards is not None:
            outputs["OUTPUT_TOWARDS"] = towards_map
            outputs["TOWARDS_FRACTIONS"] = dict(result.towards_fractions)
            feedback.pushInfo("changed towards: " + ", ".join(
                f"{name} {100 * share:.1f} %" for name, share in result.towards_fractions.items()))
            self.show_output("OUTPUT_TOWARDS", towards_map, f"{since} (towards)",
                             lambda layer: style_classes(layer, result.towards_classes), with_output=output)
        return outputs
