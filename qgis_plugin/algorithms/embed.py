"""*Compute embeddings*: the layer's patch-grid embedding raster (one D-band pixel per 16-px ViT patch)."""

from __future__ import annotations

import json

from qgis.core import QgsProcessingParameterEnum, QgsProcessingParameterRasterDestination

from ..runtime import engine
from ..styling import style_rgb
from .base import BACKEND_HELP, MsfmAlgorithm


class ComputeEmbeddings(MsfmAlgorithm):
    NAME = "embed"
    DISPLAY = "Compute embeddings"
    ICON = "embed"
    HELP = (
        "Encodes the raster tile by tile with a spectrum-aware foundation model (SMARTIES) and writes one embedding "
        "vector per 16×16-pixel patch as a D-band GeoTIFF in the layer's CRS. Each band is mapped to the model's "
        "spectral ranges from the layer's band names and metadata (see <i>Band mapping report</i>); use the sensor "
        "preset and band overrides to correct it.<br><br>Tiles are streamed and blended (cosine window) so memory "
        "does not grow with the raster size; nodata pixels are masked. The optional principal-components output "
        "is a 3-band RGB preview of the embeddings."
    ) + BACKEND_HELP

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.add_band_parameters()
        self.add_model_parameters()
        self.add_region_parameters()
        dtype = QgsProcessingParameterEnum(
            "OUTPUT_DTYPE", "Storage type (float16: half the disk; int8: a quarter, with a per-cell scale band, read "
            "back by every msfm algorithm)", options=["float32", "float16", "int8"], defaultValue="float32",
            usesStaticStrings=True)
        dtype.setFlags(dtype.flags() | QgsProcessingParameterEnum.FlagAdvanced)
        self.addParameter(dtype)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Embeddings"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_PCA", "Principal components (RGB preview)", optional=True, createByDefault=False))

    def compute(self, parameters, context, feedback) -> dict:
        source = self.layer_path(parameters, context, feedback)
        region = self.region(parameters, context, feedback)
        model = self.model(parameters, context, feedback)
        settings = self.settings(parameters, context,
                                 output_dtype=self.parameterAsEnumString(parameters, "OUTPUT_DTYPE", context))
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        result = engine.maps.embed_raster(source, output, model, settings=settings, region=region,
                                          **self.band_arguments(parameters, context), **self.progress(feedback),
                                          overwrite=True)
        self.record_timing(parameters, context, result, result.seconds)
        feedback.pushInfo(f"{result.tiles} tiles in {result.seconds:.1f} s → {result.width}×{result.height} cells "
                          f"of {result.cell_size_px:g} layer pixels, {result.embed_dim} bands")
        with engine.raster.open_raster(output) as grid:
            _, components = engine.maps.principal_components(grid, 3)
        bands = _loading_bands(components)
        self.show_output("OUTPUT", output, f"embeddings ({model.provenance.label})",
                         lambda layer: style_rgb(layer, bands))
        outputs = {
            "OUTPUT": output, "TILES": result.tiles, "SECONDS": result.seconds, "EMBED_DIM": result.embed_dim,
            "SENSOR": result.mapping.sensor or "", "BANDS": json.dumps([b.projection.label for b in result.mapping.bands]),
        }
        pca_output = self.optional_output(parameters, "OUTPUT_PCA", context)
        if pca_output:
            engine.maps.write_pca_raster(output, pca_output, 3, overwrite=True)
            self.show_output("OUTPUT_PCA", pca_output, "principal components",
                             lambda layer: style_rgb(layer, (1, 2, 3)), with_output=output)
            outputs["OUTPUT_PCA"] = pca_output
        return outputs


def _loading_bands(components) -> tuple[int, int, int]:
    """For PC1..PC3, the (distinct, 1-based) embedding band with the largest absolute loading."""
    chosen: list[int] = []
    for row in components[:3]:
        for band in (abs(row)).argsort()[::-1]:
            if int(band) + 1 not in chosen:
                chosen.append(int(band) + 1)
                break
    while len(chosen) < 3:
        chosen.append(chosen[-1] if chosen else 1)
    return tuple(chosen)
