"""msfm engine: spectrum-aware SMARTIES embeddings, tiled raster inference and clustering.

The engine never imports QGIS or ``training``. Heavy dependencies (torch) are imported lazily, so
``import engine`` works where only the band registry is needed.

Public API::

    from engine import load_model
    model = load_model("smarties-demo-tiny")              # or a Hub name, a .safetensors file or a folder
    emb = model.encode(x, ["red_2", "green_2", "blue_1"], output="grid")   # x: float32 [B, C, H, W]
    embed_raster("scene.tif", "emb.tif", model, region=Region(bounds=(left, bottom, right, top)))
    similarity_raster("scene.tif", "sim.tif", model, query=[{"type": "Point", "coordinates": [x, y]}])
    fit_head("scene.tif", read_polygons("labels.gpkg", "cover"), model, output="head.safetensors")
    segment_raster("scene.tif", "classes.tif", "head.safetensors", polygons_output="classes.gpkg")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": ".models",
    "list_models": ".models",
    "resolve_bands": ".bands",
    "embed_raster": ".inference",
    "cluster_raster": ".cluster",
    "InferenceSettings": ".inference",
    "Region": ".region",
    "similarity_raster": ".similarity",
    "fit_head": ".head_training",
    "read_polygons": ".labels",
    "load_head": ".heads",
    "segment_raster": ".segmentation",
}

__all__ = tuple(sorted(["__version__", *_LAZY]))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
