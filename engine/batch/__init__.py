"""Batch runs: many scenes through one command on Dask, from a laptop to a cluster (docs/scale.md).

:func:`batch_embed` (and :func:`batch_segment`, with a segmentation head) takes a catalogue (:func:`read_catalogue`:
a folder, glob, list of paths/URLs or STAC document) and writes a Cloud-Optimized GeoTIFF per scene, a mosaic VRT per
CRS and a STAC collection, resumably (:class:`Manifest`). :func:`batch_cluster` and :func:`batch_similarity` fit one
k-means, or one query vector, over the whole catalogue, so their maps compare across scenes; :func:`batch_change`
maps the change of pairs of scenes of two catalogues against one no-change calibration (:mod:`.joint`).
Importing it imports Dask (``distributed``); the rest of the engine never does.
"""

from __future__ import annotations

from .catalogue import Scene, gdal_path, read_catalogue
from .cluster import ModelPlugin, dask_client, local_gpus, local_layout, worker_model
from .joint import batch_change, batch_cluster, batch_similarity
from .manifest import Manifest, run_key
from .products import Product, file_digest, write_cog, write_mosaics, write_stac, write_vrt
from .run import BatchReport, batch_embed, batch_segment, embed_scene, grid_rows, run_scenes, segment_scene, split

__all__ = (
    "BatchReport",
    "Manifest",
    "ModelPlugin",
    "Product",
    "Scene",
    "batch_change",
    "batch_cluster",
    "batch_embed",
    "batch_segment",
    "batch_similarity",
    "dask_client",
    "embed_scene",
    "file_digest",
    "gdal_path",
    "grid_rows",
    "local_gpus",
    "local_layout",
    "read_catalogue",
    "run_key",
    "run_scenes",
    "segment_scene",
    "split",
    "worker_model",
    "write_cog",
    "write_mosaics",
    "write_stac",
    "write_vrt",
)
