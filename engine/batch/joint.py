"""Maps that compare across the scenes of a catalogue: one k-means, or one query, for every scene.

Clustering each scene on its own numbers its classes independently (class 3 is water in one scene and forest in the
next), and a query point lies in one scene only. :func:`batch_cluster` and :func:`batch_similarity` therefore run in
three steps on one Dask cluster:

1. every scene is embedded into ``OUTDIR/embeddings`` (the outputs and manifest of :func:`engine.batch.batch_embed`:
   resumable, and a product of their own);
2. one fit over the whole catalogue, on the client: k-means on a sample of cells drawn from every scene in proportion
   to its area (``OUTDIR/kmeans.json``), or the query vector, the normalised mean of the L2-normalised cells under
   the query in every scene it touches (``OUTDIR/query.json``). A rerun with the same key reuses the file, so scenes
   added to the catalogue later get the same classes; ``overwrite`` fits again (and redoes every map);
3. every scene's map with that fit (:func:`engine.cluster_raster` with ``centers``, :func:`engine.similarity_raster`
   with ``query_embedding``): COGs whose classes, colours and values compare across scenes, so each mosaic VRT is one
   map, and a STAC collection.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_geom

from ..atomic import write_text
from ..callbacks import CancelFn, ProgressFn, check_canceled, scaled
from ..errors import InputRasterError, SettingsError
from ..maps import (
    ClusterSettings,
    cluster_raster,
    fit_kmeans,
    open_embeddings,
    query_sum,
    sample_embeddings,
    similarity_raster,
)
from ..maps.clustering import Resolution
from ..raster import as_geometry
from ..settings import InferenceSettings
from ..spectral import Overrides
from .catalogue import Scene
from .cluster import ModelPlugin
from .manifest import Manifest, run_key
from .run import BatchReport, Session, embed_scenes, open_folder, run_batch, scene_task

__all__ = ("EMBEDDINGS_FOLDER", "batch_cluster", "batch_similarity", "cluster_scene", "query_part", "sample_scene",
           "similarity_scene")

log = logging.getLogger(__name__)

#: The sub-folder of a batch cluster/similarity run that holds the embeddings (a ``batch embed`` output folder).
EMBEDDINGS_FOLDER = "embeddings"
_QUERY_TYPES = ("Point", "MultiPoint", "Polygon", "MultiPolygon")
#: Shares of the progress bar: embedding, then the fit, then the maps.
_EMBED, _FIT = 0.8, 0.85


def batch_cluster(
    catalogue: Union[str, Path, Sequence[str]],
    output_folder: Union[str, Path],
    model: str = "smarties-demo-tiny",
    *,
    clustering: Optional[ClusterSettings] = None,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    backend: str = "torch",
    num_heads: Optional[int] = None,
    asset: Optional[str] = None,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    overwrite: bool = False,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
) -> BatchReport:
    """k-means class maps of every scene of a catalogue with one set of classes: class i is the same in every scene.

    k-means is fitted once on ``clustering.max_samples`` cells drawn from all scenes in proportion to their area
    (each scene's share spread over it as in :func:`engine.maps.sample_embeddings`), on L2-normalised embeddings as
    :func:`engine.cluster_raster`; classes are numbered by decreasing size in that sample.

    Args:
        catalogue: As :func:`engine.batch.batch_embed`.
        output_folder: Created if missing; holds ``<scene id>.tif`` (uint8 classes, nodata 255, colour table) and
            ``<scene id>.qml``, ``kmeans.json`` (the centres), ``mosaic_<CRS>.vrt``, ``stac/``, ``manifest.jsonl``
            and ``embeddings/`` (a :func:`engine.batch.batch_embed` folder).
        model: As :func:`engine.batch.batch_embed`.
        clustering: ``k``, resolution, pixel method, sample size and seed (:class:`engine.ClusterSettings`); the
            spectral weight must be 0 and ``suggest_k`` off (both are per-raster).
        settings: As :func:`engine.batch.batch_embed`.
        sensor: As :func:`engine.batch.batch_embed`.
        overrides: As :func:`engine.batch.batch_embed`.
        backend: As :func:`engine.batch.batch_embed`.
        num_heads: As :func:`engine.batch.batch_embed`.
        asset: As :func:`engine.batch.batch_embed`.
        workers: As :func:`engine.batch.batch_embed`.
        scheduler: As :func:`engine.batch.batch_embed`.
        overwrite: Redo the embeddings, the fit and every class map.
        progress: Called with the fraction done (embedding to 0.8, the fit to 0.85, then the class maps).
        is_canceled: As :func:`engine.batch.batch_embed`.

    Returns:
        :class:`engine.batch.BatchReport` of the class maps; ``failed`` also lists the scenes whose embedding failed.

    Raises:
        SettingsError: A spectral weight or ``suggest_k``.
        engine.errors.InputRasterError: An empty catalogue, or fewer valid cells in all scenes than ``k``.
        As :func:`engine.batch.batch_embed` otherwise.
    """
    clustering = clustering or ClusterSettings()
    if clustering.spectral_weight > 0 or clustering.suggest_k:
        raise SettingsError("batch clustering fits one k-means on the embeddings of every scene: the spectral weight "
                            "and the k scores are per raster (use spectral_weight 0 and no suggest_k, or msfm cluster "
                            "per raster)")

    def fit(session: Session, outputs: Sequence[Any]) -> dict[str, Any]:
        client = session.client()
        paths = [str(p.path) for p in outputs]
        cells = [_cells(path) for path in paths]
        shares = [max(clustering.k, math.ceil(clustering.max_samples * c / sum(cells))) for c in cells]
        samples = np.concatenate(client.gather(client.map(sample_scene, paths, shares, seed=clustering.seed,
                                                          pure=False)))
        centers = fit_kmeans(samples, clustering.k, clustering.seed).cluster_centers_
        log.info("k-means (k=%d) fitted on %d cells of %d scenes", clustering.k, len(samples), len(paths))
        return {"k": clustering.k, "samples": int(len(samples)), "scenes": len(paths),
                "centers": np.asarray(centers, np.float32).tolist()}

    def task(fitted: Mapping[str, Any], embeddings: str, label: str) -> Callable[..., dict[str, Any]]:
        return partial(cluster_scene, embeddings=embeddings, centers=np.asarray(fitted["centers"], np.float32),
                       clustering=clustering, label=f"k-means (k={clustering.k}) of {label}")

    return _joint("cluster", "kmeans.json", {"clustering": asdict(clustering)}, fit, task, "class map", catalogue,
                  output_folder, model, settings=settings, sensor=sensor, overrides=overrides, backend=backend,
                  num_heads=num_heads, asset=asset, workers=workers, scheduler=scheduler, overwrite=overwrite,
                  progress=progress, is_canceled=is_canceled)


def batch_similarity(
    catalogue: Union[str, Path, Sequence[str]],
    output_folder: Union[str, Path],
    model: str = "smarties-demo-tiny",
    *,
    query: Sequence[Any],
    query_crs: str = "EPSG:4326",
    resolution: Resolution = "pixel",
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    backend: str = "torch",
    num_heads: Optional[int] = None,
    asset: Optional[str] = None,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    overwrite: bool = False,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
) -> BatchReport:
    """Similarity maps of every scene of a catalogue to one query: what looks like the query, wherever it lies.

    The query vector is the normalised mean of the L2-normalised embeddings of the cells under the query geometries
    in every scene they touch (:func:`engine.maps.query_sum`; a cell of two overlapping scenes counts in each), and
    every scene's map is the cosine similarity to it (:func:`engine.similarity_raster`).

    Args:
        catalogue: As :func:`engine.batch.batch_embed`.
        output_folder: Created if missing; holds ``<scene id>.tif`` (float32 cosine similarity in −1..1, NaN
            nodata), ``query.json`` (the query and its vector), ``mosaic_<CRS>.vrt``, ``stac/``, ``manifest.jsonl``
            and ``embeddings/`` (a :func:`engine.batch.batch_embed` folder).
        model: As :func:`engine.batch.batch_embed`.
        query: GeoJSON-like ``Point``/``MultiPoint``/``Polygon``/``MultiPolygon`` geometries in ``query_crs``.
        query_crs: CRS of the query (default ``EPSG:4326``, longitude/latitude: scenes may lie in several CRSs).
        resolution: ``"pixel"`` (each input's pixel grid) or ``"patch"`` (one value per embedding cell).
        settings: As :func:`engine.batch.batch_embed`.
        sensor: As :func:`engine.batch.batch_embed`.
        overrides: As :func:`engine.batch.batch_embed`.
        backend: As :func:`engine.batch.batch_embed`.
        num_heads: As :func:`engine.batch.batch_embed`.
        asset: As :func:`engine.batch.batch_embed`.
        workers: As :func:`engine.batch.batch_embed`.
        scheduler: As :func:`engine.batch.batch_embed`.
        overwrite: Redo the embeddings, the query vector and every map.
        progress: As :func:`batch_cluster`.
        is_canceled: As :func:`engine.batch.batch_embed`.

    Returns:
        :class:`engine.batch.BatchReport` of the similarity maps; ``failed`` also lists the scenes whose embedding
        failed.

    Raises:
        SettingsError: An unknown CRS or resolution.
        engine.errors.InputRasterError: An empty or malformed query, an empty catalogue, or no valid cell under the
            query in any scene.
        As :func:`engine.batch.batch_embed` otherwise.
    """
    geometries = [as_geometry(g, _QUERY_TYPES, f"query geometry {i + 1}") for i, g in enumerate(query or ())]
    if not geometries:
        raise InputRasterError("the query is empty; give at least one Point/MultiPoint/Polygon/MultiPolygon, e.g. "
                               f'[{{"type": "Point", "coordinates": [lon, lat]}}] in {query_crs}')
    try:
        CRS.from_user_input(query_crs)
    except CRSError as exc:
        raise SettingsError(f"unknown query CRS {query_crs!r} ({exc}); give e.g. 'EPSG:4326' or 'EPSG:32631'") \
            from exc
    if resolution not in ("patch", "pixel"):
        raise SettingsError(f"resolution must be 'patch' or 'pixel', got {resolution!r}")

    def fit(session: Session, outputs: Sequence[Any]) -> dict[str, Any]:
        client = session.client()
        parts = client.gather(client.map(query_part, [str(p.path) for p in outputs], geometries=geometries,
                                         crs=query_crs, pure=False))
        cells = {p.id: count for p, (_, count) in zip(outputs, parts) if count}
        if not cells:
            raise InputRasterError(f"no valid embedding under the query in any of the {len(outputs)} scenes: give "
                                   f"query geometries in {query_crs} that lie on valid data of at least one scene")
        total = np.sum([vector for vector, count in parts if count], axis=0)
        vector = total / max(np.linalg.norm(total), 1e-12)
        log.info("query vector: mean of %d cells in %d scenes", sum(cells.values()), len(cells))
        return {"cells": int(sum(cells.values())), "scenes": cells, "vector": vector.astype(np.float32).tolist()}

    def task(fitted: Mapping[str, Any], embeddings: str, label: str) -> Callable[..., dict[str, Any]]:
        return partial(similarity_scene, embeddings=embeddings, vector=np.asarray(fitted["vector"], np.float32),
                       query=geometries, crs=query_crs, resolution=resolution, label=f"similarity with {label}")

    return _joint("similarity", "query.json", {"query": geometries, "query_crs": query_crs, "resolution": resolution},
                  fit, task, "cosine similarity", catalogue, output_folder, model, settings=settings, sensor=sensor,
                  overrides=overrides, backend=backend, num_heads=num_heads, asset=asset, workers=workers,
                  scheduler=scheduler, overwrite=overwrite, progress=progress, is_canceled=is_canceled)


FitFn = Callable[[Session, Sequence[Any]], dict[str, Any]]
TaskFn = Callable[[Mapping[str, Any], str, str], Callable[..., dict[str, Any]]]


def _joint(command: str, fit_file: str, recipe: Mapping[str, Any], fit: FitFn, task: TaskFn, title: str,
           catalogue: Union[str, Path, Sequence[str]], output_folder: Union[str, Path], model: str, *,
           settings: Optional[InferenceSettings], sensor: Optional[str], overrides: Optional[Overrides], backend: str,
           num_heads: Optional[int], asset: Optional[str], workers: Optional[int], scheduler: Optional[str],
           overwrite: bool, progress: Optional[ProgressFn], is_canceled: Optional[CancelFn]) -> BatchReport:
    """The three steps of :func:`batch_cluster` and :func:`batch_similarity` (module docstring).

    ``fit(session, embedded products) → JSON-able dict`` is the catalogue-wide fit; ``task(fit, embeddings folder,
    model label)`` gives the per-scene task of :func:`engine.batch.run_batch`.
    """
    started = time.perf_counter()
    settings = settings or InferenceSettings()
    folder, scenes = open_folder(catalogue, output_folder, asset)
    plugin = ModelPlugin(str(model), backend, num_heads, device=settings.device)
    key = run_key(command, plugin.key(), {**asdict(settings), "sensor": sensor, "overrides": overrides, **recipe})
    manifest = Manifest(folder, key, command, overwrite=overwrite)  # another run's folder is refused before any work
    embeddings = folder / EMBEDDINGS_FOLDER
    embeddings.mkdir(exist_ok=True)
    with Session(settings, scheduler, workers) as session:
        embedded = embed_scenes(session, plugin, scenes, embeddings, sensor=sensor, overrides=overrides,
                                overwrite=overwrite, progress=scaled(progress, 0.0, _EMBED), is_canceled=is_canceled,
                                description=f"embeddings of msfm batch {command} of {catalogue} with {model}")
        if not embedded.outputs:
            raise InputRasterError(f"no scene of {catalogue} could be embedded: "
                                   + "; ".join(f"{s}: {e}" for s, e in embedded.failed.items()))
        check_canceled(is_canceled, f"before the {command} fit")
        fitted, refitted = _fitted(folder / fit_file, key, lambda: fit(session, embedded.outputs), overwrite)
        if refitted and not overwrite:  # maps of an earlier fit must not stay beside maps of this one
            manifest = Manifest(folder, key, command, overwrite=True)
        if progress is not None:
            progress(_FIT)
        done = {p.id for p in embedded.outputs}
        label = str(embedded.outputs[0].record.get("model", model))
        report = run_batch(session, task(fitted, str(embeddings.resolve()), label),
                           [s for s in scenes if s.id in done], manifest, progress=scaled(progress, _FIT, 1.0),
                           is_canceled=is_canceled, description=f"msfm batch {command} of {catalogue} with {model}",
                           title=title)
    report.failed = {**embedded.failed, **report.failed}
    report.seconds = time.perf_counter() - started
    return report


def _fitted(path: Path, key: str, fit: Callable[[], dict[str, Any]], overwrite: bool) -> tuple[dict[str, Any], bool]:
    """The run's fit: read from ``path`` when it holds this key (and not ``overwrite``), else made and written.

    Returns:
        ``(fit, whether it was made now)``.
    """
    if not overwrite and path.is_file():
        try:
            fitted = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            fitted = {}
        if fitted.get("key") == key:
            log.info("reusing the fit of an earlier run: %s (overwrite to fit again)", path)
            return fitted, False
    fitted = {"key": key, **fit()}
    write_text(path, json.dumps(fitted))
    return fitted, True


def _cells(path: str) -> int:
    with rasterio.open(path) as ds:
        return int(ds.width * ds.height)


def sample_scene(path: str, samples: int, seed: int) -> np.ndarray:
    """The sampling task of :func:`batch_cluster`: about ``samples`` valid embeddings of one embedding raster.

    Returns:
        ``[N, D]`` float32, spread over the raster (:func:`engine.maps.sample_embeddings`).
    """
    with open_embeddings(path) as grid:
        return sample_embeddings(grid, samples, seed).astype(np.float32)


def query_part(path: str, geometries: Sequence[Mapping[str, Any]], crs: str) -> tuple[np.ndarray, int]:
    """The query task of :func:`batch_similarity`: one embedding raster's part of the query vector.

    Returns:
        ``(sum [D] float64 of the L2-normalised valid cells under the geometries, their number)``
        (:func:`engine.maps.query_sum`; the geometries are reprojected from ``crs`` to the raster's CRS).
    """
    with open_embeddings(path) as grid:
        local = _reprojected(geometries, crs, grid.crs)
        return query_sum(grid, local) if local else (np.zeros(grid.count), 0)


def _reprojected(geometries: Sequence[Mapping[str, Any]], crs: str, target: Any) -> list[dict[str, Any]]:
    """The geometries in the ``target`` CRS, less those outside its domain (a point far from a UTM zone)."""
    out = []
    for geometry in geometries:
        try:
            out.append(transform_geom(crs, target, geometry))
        except Exception:  # GDAL: "Point outside of projection domain" → not in this scene
            continue
    return out


def cluster_scene(scene: Scene, folder: str, settings: InferenceSettings, sensor: Optional[str],
                  overrides: Optional[Overrides], *, embeddings: str, centers: np.ndarray,
                  clustering: ClusterSettings, label: str) -> dict[str, Any]:
    """The task of one scene of :func:`batch_cluster`: its class map with the shared centres, as ``<id>.tif`` (COG).

    Args:
        scene: The scene; its embeddings are ``embeddings/<id>.tif``.
        folder: The output folder.
        settings: Unused (the embeddings exist); the signature of every scene task.
        sensor: Unused, as ``settings``.
        overrides: Unused, as ``settings``.
        embeddings: The embeddings folder.
        centers: ``[k, D]`` k-means centres.
        clustering: Resolution and pixel method.
        label: What made the map, for the manifest and STAC.

    Returns:
        The manifest record, as :func:`engine.batch.embed_scene`.
    """
    def classify(path: Path, progress: ProgressFn) -> tuple[Optional[int], str]:
        cluster_raster(scene.href, path, embeddings=Path(embeddings) / f"{scene.id}.tif", clustering=clustering,
                       centers=centers, progress=progress)
        return None, label

    return scene_task(scene, folder, classify)


def similarity_scene(scene: Scene, folder: str, settings: InferenceSettings, sensor: Optional[str],
                     overrides: Optional[Overrides], *, embeddings: str, vector: np.ndarray,
                     query: Sequence[Mapping[str, Any]], crs: str, resolution: Resolution,
                     label: str) -> dict[str, Any]:
    """The task of one scene of :func:`batch_similarity`: its similarity to the shared query vector (COG).

    Args:
        scene: As :func:`cluster_scene`.
        folder: As :func:`cluster_scene`.
        settings: As :func:`cluster_scene`.
        sensor: As :func:`cluster_scene`.
        overrides: As :func:`cluster_scene`.
        embeddings: As :func:`cluster_scene`.
        vector: ``[D]`` unit query vector.
        query: The query geometries (in ``crs``), recorded in the map's tags in the scene's CRS.
        crs: The query's CRS.
        resolution: ``"pixel"`` or ``"patch"``.
        label: As :func:`cluster_scene`.

    Returns:
        The manifest record, as :func:`engine.batch.embed_scene`.
    """
    def compare(path: Path, progress: ProgressFn) -> tuple[Optional[int], str]:
        source = Path(embeddings) / f"{scene.id}.tif"
        with rasterio.open(source) as ds:
            local = _reprojected(query, crs, ds.crs)
        similarity_raster(scene.href, path, query=local, query_embedding=vector, embeddings=source,
                          resolution=resolution, progress=progress)
        return None, label

    return scene_task(scene, folder, compare)
