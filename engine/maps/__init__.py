"""Maps from embeddings: embedding rasters, k-means class maps, similarity maps, principal components.

- :mod:`~engine.maps.embeddings` — :func:`embed_raster`, a raster of any size → a georeferenced patch-grid embedding
  raster, streamed tile by tile;
- :mod:`~engine.maps.tags` — the provenance an embedding raster carries (:class:`EmbeddingTags`);
- :mod:`~engine.maps.upsample` — from the patch grid to the input's pixels (bilinear embeddings, guided class maps);
- :mod:`~engine.maps.pixel_features` — per-pixel features, interpolated embedding ⊕ weighted spectra
  (:class:`PixelFeatures`);
- :mod:`~engine.maps.clustering` — :func:`cluster_raster`, k-means class maps; :func:`suggest_k`, silhouette per k;
- :mod:`~engine.maps.similarity` — :func:`similarity_raster`, cosine similarity to the embedding under a query;
- :mod:`~engine.maps.change` — :func:`change_raster`, the cosine distance between two rasters' embeddings;
- :mod:`~engine.maps.pca` — principal components of an embedding raster (raster and RGB quicklook).
"""

from __future__ import annotations

from .change import ChangeResult, change_raster, robust_spread, sample_distances
from .clustering import (
    ClusterResult,
    ClusterSettings,
    cluster_raster,
    fit_kmeans,
    l2_normalize,
    sample_embeddings,
    suggest_k,
)
from .embeddings import EmbeddingResult, RunsOn, embed_raster, grid_encoder, provide_embeddings
from .pca import embedding_quicklook, principal_components, project, write_pca_raster
from .pixel_features import PixelFeatures
from .quantized import EmbeddingRaster, EmbeddingStorage, dequantize, open_embeddings, quantize
from .similarity import SimilarityResult, query_sum, query_vector, similarity_raster
from .tags import EmbeddingTags, product_tags, read_tag, recorded_bands
from .upsample import GridInterpolator, GuidedClassUpsampler, pixel_row_bands, pixel_window, write_pixel_embeddings

__all__ = (
    "ChangeResult",
    "ClusterResult",
    "ClusterSettings",
    "EmbeddingRaster",
    "EmbeddingResult",
    "EmbeddingStorage",
    "EmbeddingTags",
    "GridInterpolator",
    "GuidedClassUpsampler",
    "PixelFeatures",
    "RunsOn",
    "SimilarityResult",
    "change_raster",
    "cluster_raster",
    "dequantize",
    "embed_raster",
    "embedding_quicklook",
    "fit_kmeans",
    "grid_encoder",
    "l2_normalize",
    "open_embeddings",
    "pixel_row_bands",
    "pixel_window",
    "principal_components",
    "product_tags",
    "project",
    "provide_embeddings",
    "quantize",
    "query_sum",
    "query_vector",
    "read_tag",
    "recorded_bands",
    "robust_spread",
    "sample_distances",
    "sample_embeddings",
    "similarity_raster",
    "suggest_k",
    "write_pca_raster",
    "write_pixel_embeddings",
)
