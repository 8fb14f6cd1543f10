"""The ``msfm`` Processing provider: toolbox group, batch mode, graphical modeler and ``qgis_process``."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from . import runtime
from .algorithms import ALGORITHMS
from .algorithms.base import icon


class MsfmProvider(QgsProcessingProvider):
    """Registers every algorithm of :data:`qgis_plugin.algorithms.ALGORITHMS` (no GUI, no torch import)."""

    def id(self) -> str:
        return "msfm"

    def name(self) -> str:
        return "msfm (multi-sensor foundation models)"

    def longName(self) -> str:  # noqa: N802 - QGIS API
        return f"msfm {runtime.engine_version()}: SMARTIES embeddings, clustering, similarity and segmentation"

    def icon(self) -> QIcon:
        return icon("msfm")

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802 - the engine writes GeoTIFF
        return ["tif"]

    def defaultRasterFileExtension(self) -> str:  # noqa: N802
        return "tif"

    def supportsNonFileBasedOutput(self) -> bool:  # noqa: N802 - the engine writes files (no memory/database layers)
        return False

    def supportedOutputVectorLayerExtensions(self) -> list[str]:  # noqa: N802 - the engine writes GeoPackage
        return ["gpkg"]

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: N802, N803
        return "gpkg"
