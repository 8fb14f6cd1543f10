"""*Similarity map*: cosine similarity of every location to the embedding under query points or polygons."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterRasterDestination,
)

from ..runtime import engine
from ..styling import style_similarity
from .base import BACKEND_HELP, MsfmAlgorithm, features_as_geojson
from .cluster import add_reuse_parameters, embedding_format, embeddings_path


class SimilarityMap(MsfmAlgorithm):
    NAME = "similarity"
    DISPLAY = "Similarity map"
    ICON = "similarity"
    HELP = (
        "Finds places that look like an example. The query is the mean embedding of the patches under the points "
        "(or inside the polygons) of the query layer; the output gives, for every location, the cosine similarity "
        "(−1…1, higher = more similar) of its embedding to the query. Use <i>Selected features only</i> to try "
        "several examples from one layer, and reuse embeddings computed once by <i>Compute embeddings</i> or made "
        "elsewhere (AlphaEarth, TESSERA, any float raster: <i>Embedding format</i> when the file does not say)."
    ) + BACKEND_HELP

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.add_band_parameters()
        self.addParameter(QgsProcessingParameterFeatureSource(
            "QUERY", "Query points or polygons",
            [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon]))
        add_reuse_parameters(self)
        self.add_model_parameters()
        self.add_region_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Similarity"))

    def compute(self, parameters, context, feedback) -> dict:
        query_source = self.parameterAsSource(parameters, "QUERY", context)
        query = features_as_geojson(query_source, self.layer_crs, context, feedback) if query_source else []
        if not query:
            raise QgsProcessingException("The query layer has no feature (check 'Selected features only').")
        source = self.layer_path(parameters, context, feedback)
        embeddings = embeddings_path(self, parameters, context)
        model = None if embeddings else self.model(parameters, context, feedback)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        result = engine.maps.similarity_raster(
            source, output, model, query=query, embeddings=embeddings,
            embedding_format=embedding_format(self, parameters, context),
            resolution=self.parameterAsEnumString(parameters, "RESOLUTION", context),
            settings=self.settings(parameters, context), region=self.region(parameters, context, feedback),
            **self.band_arguments(parameters, context), **self.progress(feedback), overwrite=True,
        )
        feedback.pushInfo(f"query = mean of {result.query_cells} patch embedding(s); {result.seconds:.1f} s")
        self.record_timing(parameters, context, result.embeddings, result.seconds)
        self.show_output("OUTPUT", output, "similarity", style_similarity)
        return {"OUTPUT": output, "QUERY_CELLS": result.query_cells, "SECONDS": result.seconds,
                "TILES": result.embeddings.tiles if result.embeddings else 0}
