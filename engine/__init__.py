"""msfm engine: spectrum-aware SMARTIES and X-STARS embeddings of any raster, maps made from them, segmentation.

The engine never imports QGIS or ``training``. Nothing heavy is imported until used: ``import engine`` is instant,
the spectral registry needs numpy only, and ONNX Runtime models run without torch.

The layers, in the data's order (docs/architecture.md): :mod:`engine.spectral` (bands → SMARTIES projections,
normalisation) → :mod:`engine.raster` (reading, tiling, blending, regions, writing) → :mod:`engine.models` (encoders,
checkpoints, registry, ONNX runners) → :mod:`engine.maps` (embeddings, k-means, similarity, PCA) and
:mod:`engine.segmentation` (heads, labels, fitting, class maps) → :mod:`engine.export` (ONNX) → :mod:`engine.batch`
(many scenes on Dask) → :mod:`engine.cli`.
Shared by all: :mod:`engine.errors`, :mod:`engine.settings`, :mod:`engine.callbacks`, :mod:`engine.atomic`,
:mod:`engine.provenance`, :mod:`engine.host`.

Public API::

    from engine import load_model, embed_raster, cluster_raster, ClusterSettings, Region
    model = load_model("smarties-demo-tiny")              # or a Hub name, a .safetensors file or a folder
    emb = model.encode(x, ["red_2", "green_2", "blue_1"], output="grid")   # x: float32 [B, C, H, W]
    embed_raster("scene.tif", "emb.tif", model, region=Region(bounds=(left, bottom, right, top)))
    cluster_raster("scene.tif", "classes.tif", model, clustering=ClusterSettings(k=8))
    similarity_raster("scene.tif", "sim.tif", model, query=[{"type": "Point", "coordinates": [x, y]}])
    fit_head("scene.tif", read_polygons("labels.gpkg", "cover"), model, output="head.safetensors")
    segment_raster("scene.tif", "classes.tif", "head.safetensors", polygons_output="classes.gpkg")

Everything else is reached through the subpackages (``engine.spectral.list_sensors()``, ``engine.export.export``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import (
        atomic,
        batch,
        callbacks,
        cli,
        errors,
        export,
        host,
        maps,
        models,
        provenance,
        raster,
        segmentation,
        settings,
        spectral,
    )
    from .errors import EngineError
    from .maps import ClusterSettings, cluster_raster, embed_raster, similarity_raster
    from .models import Encoder, list_models, load_model
    from .raster import Region
    from .segmentation import HeadFitSettings, fit_head, load_head, read_polygons, segment_raster
    from .settings import InferenceSettings
    from .spectral import list_sensors, resolve_bands

_NAMES = {
    "ClusterSettings": ".maps",
    "EngineError": ".errors",
    "Encoder": ".models",
    "HeadFitSettings": ".segmentation",
    "InferenceSettings": ".settings",
    "Region": ".raster",
    "cluster_raster": ".maps",
    "embed_raster": ".maps",
    "fit_head": ".segmentation",
    "list_models": ".models",
    "list_sensors": ".spectral",
    "load_head": ".segmentation",
    "load_model": ".models",
    "read_polygons": ".segmentation",
    "resolve_bands": ".spectral",
    "segment_raster": ".segmentation",
    "similarity_raster": ".maps",
}
_SUBPACKAGES = ("atomic", "batch", "callbacks", "cli", "errors", "export", "host", "maps", "models", "provenance",
                "raster", "segmentation", "settings", "spectral")
__getattr__ = lazy_getattr(__name__, _NAMES, _SUBPACKAGES)

__all__ = (
    "ClusterSettings",
    "Encoder",
    "EngineError",
    "HeadFitSettings",
    "InferenceSettings",
    "Region",
    "__version__",
    "atomic",
    "batch",
    "callbacks",
    "cli",
    "cluster_raster",
    "embed_raster",
    "errors",
    "export",
    "fit_head",
    "host",
    "list_models",
    "list_sensors",
    "load_head",
    "load_model",
    "maps",
    "models",
    "provenance",
    "raster",
    "read_polygons",
    "resolve_bands",
    "segment_raster",
    "segmentation",
    "settings",
    "similarity_raster",
    "spectral",
)
