"""The msfm Processing algorithms (one module each); :data:`ALGORITHMS` lists them in toolbox order."""

from .bandmapping import BandMappingReport
from .change import ChangeMap
from .batch import BatchClassMaps, BatchEmbeddings, BatchSimilarityMaps
from .classify import ClassifyPixels
from .cluster import ClusterEmbeddings
from .download import DownloadModel
from .embed import ComputeEmbeddings
from .export import ExportOnnx
from .segment import SegmentWithHead, TrainSegmentationHead
from .similarity import SimilarityMap

ALGORITHMS = (ComputeEmbeddings, ClusterEmbeddings, SimilarityMap, ChangeMap, TrainSegmentationHead,
              SegmentWithHead, ClassifyPixels, BatchEmbeddings, BatchClassMaps, BatchSimilarityMaps,
              BandMappingReport, DownloadModel, ExportOnnx)

__all__ = ("ALGORITHMS",)
