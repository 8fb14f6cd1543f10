"""The msfm Processing algorithms (one module each); :data:`ALGORITHMS` lists them in toolbox order."""

from .bandmapping import BandMappingReport
from .batch import BatchChangeMaps, BatchClassMaps, BatchEmbeddings, BatchSimilarityMaps
from .change import ChangeMap
from .classify import ClassifyPixels
from .cluster import ClusterEmbeddings
from .download import DownloadModel
from .embed import ComputeEmbeddings
from .export import ExportOnnx
from .segment import SegmentWithHead, TrainSegmentationHead
from .similarity import SimilarityMap

ALGORITHMS = (ComputeEmbeddings, ClusterEmbeddings, SimilarityMap, ChangeMap, TrainSegmentationHead,
              SegmentWithHead, ClassifyPixels, BatchEmbeddings, BatchClassMaps, BatchSimilarityMaps, BatchChangeMaps,
              BandMappingReport, DownloadModel, ExportOnnx)

__all__ = ("ALGORITHMS",)
