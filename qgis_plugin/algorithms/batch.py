"""*Batch embeddings (many rasters)*: every raster of a list of layers, a folder or a catalogue file, on Dask.

The algorithm is ``engine.batch.batch_embed`` (``msfm batch embed``): a Cloud-Optimized GeoTIFF per raster, a mosaic
VRT per CRS, a STAC collection, resumable. Parameter names (public contract): ``INPUTS``, ``FOLDER``, ``CATALOGUE``,
``ASSET``, the band and model parameters of *Compute embeddings*, ``OUTPUT_DTYPE``, ``WORKERS``, ``SCHEDULER``,
``OVERWRITE``, ``OUTPUT``.
"""

from __future__ import annotations

import json

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..runtime import engine
from .base import DEFAULT_MODEL, MsfmAlgorithm


class BatchEmbeddings(MsfmAlgorithm):
    NAME = "batch_embed"
    DISPLAY = "Batch embeddings (many rasters)"
    ICON = "embed"
    NEEDS = "batch"
    HELP = (
        "Computes the embeddings of many rasters at once, on the Dask cluster this computer starts (or an existing "
        "one: <i>Dask scheduler</i>), as <tt>msfm batch embed</tt> does. Give the rasters as layers, as a folder "
        "(searched recursively) or as a catalogue file: a text file of paths or URLs (one per line), or a STAC "
        "ItemCollection / catalog (<i>STAC asset</i> names the asset when items hold several rasters).<br><br>"
        "The output folder receives one Cloud-Optimized GeoTIFF per raster, a mosaic VRT per CRS (scenes in "
        "different CRSs are never reprojected), a STAC collection of the outputs (<tt>stac/collection.json</tt>) and "
        "<tt>manifest.jsonl</tt>. Running it again on the same folder skips the rasters already done (checked by "
        "size and checksum) and retries those that failed; a raster that fails does not stop the others. Every "
        "raster uses the same sensor preset, band overrides and model settings.<br><br>"
        "Each Dask worker loads the model once; <i>Workers</i> (empty: one per 2 processor cores) share the cores."
    )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "INPUTS", "Raster layers", QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "FOLDER", "…or a folder of rasters", behavior=QgsProcessingParameterFile.Folder, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "CATALOGUE", "…or a catalogue file (text list of paths/URLs, or STAC JSON)", optional=True,
            fileFilter="Catalogues (*.txt *.csv *.lst *.json);;All files (*)"))
        self.add_band_parameters(layer=False)
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
        self.addOutput(QgsProcessingOutputNumber("DONE", "Rasters embedded by this run"))
        self.addOutput(QgsProcessingOutputNumber("SKIPPED", "Rasters already done (skipped)"))
        self.addOutput(QgsProcessingOutputString("FAILED", "Rasters that failed (JSON: name → error)"))

    def catalogue(self, parameters, context):
        """The rasters: the layers' files, the folder or the catalogue file (exactly one of them)."""
        layers = self.parameterAsLayerList(parameters, "INPUTS", context)
        folder = self.parameterAsFile(parameters, "FOLDER", context)
        listing = self.parameterAsFile(parameters, "CATALOGUE", context)
        given = [bool(layers), bool(folder), bool(listing)]
        if sum(given) != 1:
            raise QgsProcessingException(
                "Give the rasters one way: as raster layers, as a folder, or as a catalogue file"
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
        catalogue = self.catalogue(parameters, context)
        model = (self.parameterAsFile(parameters, "MODEL_FILE", context)
                 or self.parameterAsEnumString(parameters, "MODEL", context) or DEFAULT_MODEL)
        settings = self.settings(parameters, context,
                                 output_dtype=self.parameterAsEnumString(parameters, "OUTPUT_DTYPE", context))
        workers = parameters.get("WORKERS")
        report = engine.batch.batch_embed(
            catalogue, self.parameterAsString(parameters, "OUTPUT", context), model, settings=settings,
            backend=self.backend(parameters, context), asset=self.parameterAsString(parameters, "ASSET", context)
            or None, workers=None if workers in (None, "") else self.parameterAsInt(parameters, "WORKERS", context),
            scheduler=self.parameterAsString(parameters, "SCHEDULER", context) or None,
            overwrite=self.parameterAsBoolean(parameters, "OVERWRITE", context),
            **self.band_arguments(parameters, context), **self.progress(feedback),
        )
        feedback.pushInfo(f"{len(report.done)} rasters embedded, {len(report.skipped)} already done, "
                          f"{len(report.failed)} failed, in {report.seconds:.1f} s on {report.workers} Dask workers")
        for name, error in report.failed.items():
            feedback.reportError(f"{name}: {error}")
        for path in report.mosaics:
            feedback.pushInfo(f"Mosaic: {path}")
        return {
            "OUTPUT": self.parameterAsString(parameters, "OUTPUT", context),
            "STAC": str(report.stac) if report.stac else "", "MOSAICS": json.dumps([str(p) for p in report.mosaics]),
            "DONE": len(report.done), "SKIPPED": len(report.skipped), "FAILED": json.dumps(report.failed),
        }
