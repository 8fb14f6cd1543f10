"""*Batch … (many rasters)*: every raster of a list of layers, a folder or a catalogue file, on Dask.

*Batch embeddings*, *Batch class maps*, *Batch similarity maps* and *Batch change maps* are
``engine.batch.batch_embed``, ``batch_cluster``, ``batch_similarity`` and ``batch_change`` (``msfm batch
embed|cluster|similarity|change``): a Cloud-Optimized GeoTIFF per raster (per pair), a mosaic VRT per CRS, a STAC
collection, resumable; class maps share one k-means, similarity maps one query and change maps one no-change
calibration over all rasters. Parameter names (public contract): ``INPUTS``, ``FOLDER``, ``CATALOGUE``, ``ASSET``, the
band and model parameters of *Compute embeddings*, ``OUTPUT_DTYPE``, ``WORKERS``, ``SCHEDULER``, ``OVERWRITE``,
``OUTPUT``; ``K``, ``RESOLUTION``, ``SEED`` (class maps); ``QUERY``, ``RESOLUTION`` (similarity); change maps take
``BEFORE_INPUTS`` / ``BEFORE_FOLDER`` / ``BEFORE_CATALOGUE`` and ``AFTER_…`` instead of the one catalogue, with
``BEFORE_SENSOR`` (``SENSOR`` and ``BAND_OVERRIDES`` are the later rasters'), ``RESOLUTION``, ``CALIBRATION``,
``THRESHOLD``, ``THRESHOLD_VALUE``, and the output ``UNPAIRED``.
"""

from __future__ import annotations

import json

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..runtime import engine
from .base import AUTO_SENSOR, DEFAULT_MODEL, MsfmAlgorithm, features_as_geojson, sensor_ids
from .change import add_value_parameters, chosen_values

_HOW = (
    "on the Dask cluster this computer starts (or an existing one: <i>Dask scheduler</i>). Give the rasters as "
    "layers, as a folder (searched recursively) or as a catalogue file: a text file of paths or URLs (one per line), "
    "or a STAC ItemCollection / catalog (<i>STAC asset</i> names the asset when items hold several rasters).<br><br>"
)
_RESUME = (
    "Running it again on the same folder skips the rasters already done (checked by size and checksum) and retries "
    "those that failed; a raster that fails does not stop the others. Every raster uses the same sensor preset, band "
    "overrides and model settings.<br><br>Each Dask worker loads the model once; <i>Workers</i> (empty: one per 2 "
    "processor cores, or one per GPU) share the cores."
)


class BatchEmbeddings(MsfmAlgorithm):
    """*Batch embeddings (many rasters)*; the base of the other batch algorithms (:meth:`add_product_parameters`,
    :meth:`run_batch`)."""

    NAME = "batch_embed"
    DISPLAY = "Batch embeddings (many rasters)"
    ICON = "embed"
    NEEDS = "batch"
    #: What the output folder holds for each raster, in the help.
    PRODUCT = "embeddings"
    #: The catalogues it takes: (parameter-name prefix, what they hold, in labels); one catalogue without either.
    CATALOGUES: tuple[tuple[str, str], ...] = (("", ""),)
    HELP = (
        "Computes the embeddings of many rasters at once, as <tt>msfm batch embed</tt> does, " + _HOW
        + "The output folder receives one Cloud-Optimized GeoTIFF per raster, a mosaic VRT per CRS (scenes in "
        "different CRSs are never reprojected), a STAC collection of the outputs (<tt>stac/collection.json</tt>) and "
        "<tt>manifest.jsonl</tt>. " + _RESUME
    )

    def add_product_parameters(self) -> None:
        """The parameters of what is made from the embeddings (none for embeddings)."""

    def run_batch(self, catalogue, output: str, model: str, common: dict, parameters, context, feedback):
        """The engine's batch function for this product; returns its ``BatchReport``."""
        return engine.batch.batch_embed(catalogue, output, model, **common)

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        for prefix, what in self.CATALOGUES:
            self.addParameter(QgsProcessingParameterMultipleLayers(
                f"{prefix}INPUTS", f"{what}: raster layers" if what else "Raster layers", QgsProcessing.TypeRaster,
                optional=True))
            self.addParameter(QgsProcessingParameterFile(
                f"{prefix}FOLDER", "…or a folder of them" if what else "…or a folder of rasters",
                behavior=QgsProcessingParameterFile.Folder, optional=True))
            self.addParameter(QgsProcessingParameterFile(
                f"{prefix}CATALOGUE", f"…or a catalogue file{' of them' if what else ''} (text list of paths/URLs, "
                "or STAC JSON)", optional=True, fileFilter="Catalogues (*.txt *.csv *.lst *.json);;All files (*)"))
        self.add_band_parameters(layer=False)
        self.add_product_parameters()
        self.add_model_parameters()
        advanced = [
            QgsProcessingParameterString("ASSET", "STAC asset (needed when STAC items hold several rasters)",
                                         optional=True),
            QgsProcessingParameterEnum(
                "OUTPUT_DTYPE", "Storage type (float16: half the disk; int8: a quarter, read back by every msfm "
                "algorithm)", options=["float32", "float16", "int8"], defaultValue="float32", usesStaticStrings=True),
            QgsProcessingParameterNumber("WORKERS", "Workers (Dask processes; empty: one per 2 processor cores)",
                                         QgsProcessingParameterNumber.Integer, None, optional=True, minValue=1,
                                         maxValue=256),
            QgsProcessingParameterString("SCHEDULER", "Dask scheduler address (tcp://host:8786; empty: a cluster on "
                                         "this computer)", optional=True),
            QgsProcessingParameterBoolean("OVERWRITE", "Redo the rasters already done in the output folder",
                                          defaultValue=False),
        ]
        for param in advanced:
            param.setFlags(param.flags() | QgsProcessingParameterString.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Output folder"))
        self.addOutput(QgsProcessingOutputFile("STAC", "STAC collection of the outputs"))
        self.addOutput(QgsProcessingOutputString("MOSAICS", "Mosaic VRTs (JSON list of paths)"))
        self.addOutput(QgsProcessingOutputNumber("DONE", "Rasters done by this run"))
        self.addOutput(QgsProcessingOutputNumber("SKIPPED", "Rasters already done (skipped)"))
        self.addOutput(QgsProcessingOutputString("FAILED", "Rasters that failed (JSON: name → error)"))
        if len(self.CATALOGUES) > 1:
            self.addOutput(QgsProcessingOutputString(
                "UNPAIRED", "Rasters without a partner of the same name (JSON: name → the side that has it)"))

    def catalogue(self, parameters, context, prefix: str = "", what: str = ""):
        """The rasters: the layers' files, the folder or the catalogue file (exactly one of them)."""
        layers = self.parameterAsLayerList(parameters, f"{prefix}INPUTS", context)
        folder = self.parameterAsFile(parameters, f"{prefix}FOLDER", context)
        listing = self.parameterAsFile(parameters, f"{prefix}CATALOGUE", context)
        given = [bool(layers), bool(folder), bool(listing)]
        if sum(given) != 1:
            raise QgsProcessingException(
                f"Give the {what.lower() or 'rasters'} one way: as raster layers, as a folder, or as a catalogue file"
                + (" (more than one was given)." if sum(given) > 1 else "."))
        if layers:
            files = [layer for layer in layers if layer.providerType() != "gdal"]
            if files:
                raise QgsProcessingException(
                    f"Layer {files[0].name()!r} is not a file GDAL reads ({files[0].providerType()}); save it as a "
                    "GeoTIFF first (Export > Save As…), or use Compute embeddings for it.")
            return [layer.source() for layer in layers]
        return folder or listing

    def compute(self, parameters, context, feedback) -> dict:
        catalogues = [self.catalogue(parameters, context, prefix, what) for prefix, what in self.CATALOGUES]
        catalogue = catalogues[0] if len(catalogues) == 1 else tuple(catalogues)
        model = (self.parameterAsFile(parameters, "MODEL_FILE", context)
                 or self.parameterAsEnumString(parameters, "MODEL", context) or DEFAULT_MODEL)
        settings = self.settings(parameters, context,
                                 output_dtype=self.parameterAsEnumString(parameters, "OUTPUT_DTYPE", context))
        workers = parameters.get("WORKERS")
        common = dict(
            settings=settings, backend=self.backend(parameters, context),
            asset=self.parameterAsString(parameters, "ASSET", context) or None,
            workers=None if workers in (None, "") else self.parameterAsInt(parameters, "WORKERS", context),
            scheduler=self.parameterAsString(parameters, "SCHEDULER", context) or None,
            overwrite=self.parameterAsBoolean(parameters, "OVERWRITE", context),
            **self.band_arguments(parameters, context), **self.progress(feedback),
        )
        report = self.run_batch(catalogue, self.parameterAsString(parameters, "OUTPUT", context), model, common,
                                parameters, context, feedback)
        feedback.pushInfo(f"{len(report.done)} rasters done ({self.PRODUCT}), {len(report.skipped)} already done, "
                          f"{len(report.failed)} failed, in {report.seconds:.1f} s on {report.workers} Dask workers")
        for name, error in report.failed.items():
            feedback.reportError(f"{name}: {error}")
        for name, side in report.unpaired.items():
            feedback.pushWarning(f"{name}: only among the {side} rasters (no partner of the same name), not compared")
        for path in report.mosaics:
            feedback.pushInfo(f"Mosaic: {path}")
        outputs = {
            "OUTPUT": self.parameterAsString(parameters, "OUTPUT", context),
            "STAC": str(report.stac) if report.stac else "", "MOSAICS": json.dumps([str(p) for p in report.mosaics]),
            "DONE": len(report.done), "SKIPPED": len(report.skipped), "FAILED": json.dumps(report.failed),
        }
        if len(self.CATALOGUES) > 1:
            outputs["UNPAIRED"] = json.dumps(report.unpaired)
        return outputs


class BatchClassMaps(BatchEmbeddings):
    NAME = "batch_cluster"
    DISPLAY = "Batch class maps (many rasters)"
    ICON = "cluster"
    PRODUCT = "class maps"
    HELP = (
        "k-means class maps of many rasters with <b>one set of classes</b>: class 3 is the same land cover in every "
        "raster, so the maps mosaic into one map (clustering each raster on its own numbers its classes anew). As "
        "<tt>msfm batch cluster</tt>, " + _HOW
        + "Every raster is embedded (kept in <tt>embeddings/</tt> of the output folder), one k-means is fitted on a "
        "sample of all rasters in proportion to their area (<tt>kmeans.json</tt>, reused when the run is repeated, so "
        "rasters added later get the same classes), then every raster gets its class map: a paletted "
        "Cloud-Optimized GeoTIFF with its style, a mosaic VRT per CRS and a STAC collection. " + _RESUME
    )

    def add_product_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterNumber(
            "K", "Number of classes (k)", QgsProcessingParameterNumber.Integer, 8, minValue=2, maxValue=254))
        self.addParameter(QgsProcessingParameterEnum(
            "RESOLUTION", "Output resolution", options=["pixel", "patch"], defaultValue="pixel",
            usesStaticStrings=True))
        seed = QgsProcessingParameterNumber("SEED", "Random seed (sampling and k-means)",
                                            QgsProcessingParameterNumber.Integer, 0, minValue=0)
        seed.setFlags(seed.flags() | QgsProcessingParameterNumber.FlagAdvanced)
        self.addParameter(seed)

    def run_batch(self, catalogue, output, model, common, parameters, context, feedback):
        clustering = engine.maps.ClusterSettings(
            k=self.parameterAsInt(parameters, "K", context), seed=self.parameterAsInt(parameters, "SEED", context),
            resolution=self.parameterAsEnumString(parameters, "RESOLUTION", context))
        return engine.batch.batch_cluster(catalogue, output, model, clustering=clustering, **common)


class BatchSimilarityMaps(BatchEmbeddings):
    NAME = "batch_similarity"
    DISPLAY = "Batch similarity maps (many rasters)"
    ICON = "similarity"
    PRODUCT = "similarity maps"
    HELP = (
        "Finds what looks like an example across many rasters. The query is the mean embedding of the patches under "
        "the points (or inside the polygons) of the query layer, wherever they fall among the rasters; every raster "
        "gets the cosine similarity (−1…1) of each location to it. As <tt>msfm batch similarity</tt>, " + _HOW
        + "Every raster is embedded (kept in <tt>embeddings/</tt> of the output folder), the query vector is saved "
        "in <tt>query.json</tt> (reused when the run is repeated), then every raster gets its similarity map: a "
        "Cloud-Optimized GeoTIFF, a mosaic VRT per CRS and a STAC collection. " + _RESUME
    )

    def add_product_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterFeatureSource(
            "QUERY", "Query points or polygons", [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterEnum(
            "RESOLUTION", "Output resolution", options=["pixel", "patch"], defaultValue="pixel",
            usesStaticStrings=True))

    def run_batch(self, catalogue, output, model, common, parameters, context, feedback):
        source = self.parameterAsSource(parameters, "QUERY", context)
        wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")  # the rasters may lie in several CRSs
        query = features_as_geojson(source, wgs84, context, feedback) if source else []
        if not query:
            raise QgsProcessingException("The query layer has no feature (check 'Selected features only').")
        return engine.batch.batch_similarity(
            catalogue, output, model, query=query, query_crs="EPSG:4326",
            resolution=self.parameterAsEnumString(parameters, "RESOLUTION", context), **common)


class BatchChangeMaps(BatchEmbeddings):
    NAME = "batch_change"
    DISPLAY = "Batch change maps (pairs of rasters)"
    ICON = "similarity"
    PRODUCT = "change maps"
    CATALOGUES = (("BEFORE_", "Earlier rasters (before)"), ("AFTER_", "Later rasters (after)"))
    HELP = (
        "Change maps of many places at once: each earlier raster is paired with the later raster of the <b>same "
        "file name</b> (rasters without a partner are listed and skipped), and every pair gets the cosine distance "
        "of its two embeddings on the later raster's grid, as <tt>msfm batch change</tt> does, " + _HOW
        + "Both sides are embedded (kept in <tt>embeddings/before</tt> and <tt>embeddings/after</tt>), then the "
        "typical distance where nothing changed is measured once over all pairs (median and robust spread, "
        "<tt>calibration.json</tt>, reused when the run is repeated), so that a robust z-score, a threshold value "
        "or <i>robust</i> (typical distance + 3 robust standard deviations) means the same in every pair; "
        "<i>otsu</i> is cut on each map's own values. <i>Sensor preset</i> and <i>Band overrides</i> are those of "
        "the later rasters. Each pair gives a Cloud-Optimized GeoTIFF with its style and, with a threshold, a change "
        "mask (<tt>_mask.tif</tt>) and the changed areas (<tt>_changes.gpkg</tt>); a mosaic VRT per CRS and a STAC "
        "collection cover the maps. With <i>Changed towards</i> k > 0, one k-means over every later raster gives "
        "each changed location the class it became (<tt>_towards.tif</tt>, the same classes in every pair; the "
        "changed areas named after them; threshold <i>otsu</i> when none is chosen). " + _RESUME
    )

    def add_product_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterEnum(
            "BEFORE_SENSOR", "Sensor preset of the earlier rasters (auto: from their band names and metadata)",
            options=sensor_ids(), defaultValue=AUTO_SENSOR, usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterEnum(
            "RESOLUTION", "Output resolution", options=["pixel", "patch"], defaultValue="pixel",
            usesStaticStrings=True))
        add_value_parameters(self, masks="masks", optional=True)
        self.addParameter(QgsProcessingParameterNumber(
            "TOWARDS_K", "Changed towards: k of one k-means over every later raster (0: none)",
            QgsProcessingParameterNumber.Integer, 0, minValue=0, maxValue=254))

    def run_batch(self, catalogue, output, model, common, parameters, context, feedback):
        before, after = catalogue
        sensor, overrides = common.pop("sensor"), common.pop("overrides")
        before_sensor = self.parameterAsEnumString(parameters, "BEFORE_SENSOR", context)
        calibration, threshold = chosen_values(self, parameters, context)
        towards = self.parameterAsInt(parameters, "TOWARDS_K", context)
        return engine.batch.batch_change(
            before, after, output, model, resolution=self.parameterAsEnumString(parameters, "RESOLUTION", context),
            calibration=calibration, threshold=threshold, towards=towards or None,
            before_sensor=None if before_sensor in ("", AUTO_SENSOR) else before_sensor, after_sensor=sensor,
            after_overrides=overrides, **common)
