"""Maps that compare across the scenes of a catalogue: one k-means, one query or one calibration for every scene.

Clustering each scene on its own numbers its classes independently (class 3 is water in one scene and forest in the
next), a query point lies in one scene only, and a change map calibrated on its own scene reads "3σ" against that
scene's noise alone. :func:`batch_cluster`, :func:`batch_similarity` and :func:`batch_change` (pairs of scenes of two
catalogues, matched by scene id) therefore run in three steps on one Dask cluster:

1. every scene is embedded into ``OUTDIR/embeddings`` (the outputs and manifest of :func:`engine.batch.batch_embed`:
   resumable, and a product of their own); the two sides of pairs into ``embeddings/before`` and
   ``embeddings/after``, each with its own sensor preset;
2. one fit over the whole catalogue, on the client: k-means on a sample of cells drawn from every scene in proportion
   to its area (``OUTDIR/kmeans.json``), the query vector, the normalised mean of the L2-normalised cells under
   the query in every scene it touches (``OUTDIR/query.json``), or the no-change distribution of the sensor pair,
   ``(median, σ = 1.4826·MAD)`` of the cosine distances sampled from every pair in proportion to its area
   (``OUTDIR/calibration.json``). A rerun with the same key reuses the file, so scenes added to the catalogue later
   get the same classes (the same calibration); ``overwrite`` fits again (and redoes every map);
3. every scene's map with that fit (:func:`engine.cluster_raster` with ``centers``, :func:`engine.similarity_raster`
   with ``query_embedding``, :func:`engine.maps.change_raster` with ``no_change``): COGs whose classes, colours and
   values compare across scenes, so each mosaic VRT is one map, and a STAC collection.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
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
    change_raster,
    cluster_raster,
    fit_kmeans,
    open_embeddings,
    query_sum,
    read_tag,
    robust_spread,
    sample_distances,
    sample_embeddings,
    similarity_raster,
)
from ..maps.change import MIN_SIGMA, Calibration, check_change_options
from ..maps.clustering import Resolution
from ..raster import as_geometry
from ..settings import InferenceSettings
from ..spectral import Overrides
from .catalogue import Scene
from .cluster import ModelPlugin
from .manifest import Manifest, run_key
from .products import Product
from .run import BatchReport, Session, embed_scenes, open_folder, run_batch, scene_task

__all__ = ("EMBEDDINGS_FOLDER", "Side", "batch_change", "batch_cluster", "batch_similarity", "change_scene",
           "cluster_scene", "distance_sample", "query_part", "sample_scene", "similarity_scene")

log = logging.getLogger(__name__)

#: The sub-folder of a batch cluster/similarity run that holds the embeddings (a ``batch embed`` output folder).
EMBEDDINGS_FOLDER = "embeddings"
_QUERY_TYPES = ("Point", "MultiPoint", "Polygon", "MultiPolygon")
#: Shares of the progress bar: embedding, then the fit, then the maps.
_EMBED, _FIT = 0.8, 0.85
#: The file of a :func:`batch_change` run that holds its no-change calibration.
CALIBRATION_FILE = "calibration.json"
#: What :func:`batch_change` adds beside each change map ``<id>.tif`` when a threshold is given.
_MASK, _POLYGONS, _TOWARDS = "_mask.tif", "_changes.gpkg", "_towards.tif"


@dataclass(frozen=True)
class Side:
    """One catalogue of a joint run and how its scenes are embedded.

    Attributes:
        catalogue: As :func:`engine.batch.batch_embed`.
        sensor: Sensor preset of its scenes (None: guessed per scene).
        overrides: Band overrides of its scenes.
        name: ``""`` for the one catalogue of :func:`batch_cluster` / :func:`batch_similarity` (embedded into
            ``embeddings/``); ``"before"`` / ``"after"`` for the two of :func:`batch_change` (embedded into
            ``embeddings/<name>``; scenes of the two are paired by id).
    """

    catalogue: Union[str, Path, Sequence[str]]
    sensor: Optional[str] = None
    overrides: Optional[Overrides] = None
    name: str = ""


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

    def fit(session: Session, embedded: Sequence[tuple[Product, ...]]) -> dict[str, Any]:
        paths = [str(made[0].path) for made in embedded]
        centers, samples = _catalogue_kmeans(session, paths, clustering)
        return {"k": clustering.k, "samples": samples, "scenes": len(paths), "centers": centers.tolist()}

    def task(fitted: Mapping[str, Any], embeddings: str, label: str) -> Callable[..., dict[str, Any]]:
        return partial(cluster_scene, embeddings=embeddings, centers=np.asarray(fitted["centers"], np.float32),
                       clustering=clustering, label=f"k-means (k={clustering.k}) of {label}")

    return _joint("cluster", "kmeans.json", {"clustering": asdict(clustering)}, fit, task, "class map",
                  [Side(catalogue, sensor, overrides)], output_folder, model, settings=settings, backend=backend,
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

    def fit(session: Session, embedded: Sequence[tuple[Product, ...]]) -> dict[str, Any]:
        client = session.client()
        outputs = [made[0] for made in embedded]
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
                  fit, task, "cosine similarity", [Side(catalogue, sensor, overrides)], output_folder, model,
                  settings=settings, backend=backend, num_heads=num_heads, asset=asset, workers=workers,
                  scheduler=scheduler, overwrite=overwrite, progress=progress, is_canceled=is_canceled)


def _catalogue_kmeans(session: Session, paths: Sequence[str], clustering: ClusterSettings) -> tuple[np.ndarray, int]:
    """k-means on ``clustering.max_samples`` cells drawn from every embedding raster in proportion to its cells.

    Returns:
        ``(centres [k, D] float32, in decreasing cluster size; the number of cells sampled)``.
    """
    client = session.client()
    cells = [_cells(path) for path in paths]
    shares = [max(clustering.k, math.ceil(clustering.max_samples * c / sum(cells))) for c in cells]
    samples = np.concatenate(client.gather(client.map(sample_scene, paths, shares, seed=clustering.seed, pure=False)))
    centers = fit_kmeans(samples, clustering.k, clustering.seed).cluster_centers_
    log.info("k-means (k=%d) fitted on %d cells of %d scenes", clustering.k, len(samples), len(paths))
    return np.asarray(centers, np.float32), int(len(samples))


def batch_change(
    before_catalogue: Union[str, Path, Sequence[str]],
    after_catalogue: Union[str, Path, Sequence[str]],
    output_folder: Union[str, Path],
    model: str = "smarties-demo-tiny",
    *,
    resolution: Resolution = "pixel",
    calibration: Calibration = "auto",
    threshold: Optional[Union[float, str]] = None,
    towards: Optional[int] = None,
    max_samples: int = 100_000,
    settings: Optional[InferenceSettings] = None,
    before_sensor: Optional[str] = None,
    after_sensor: Optional[str] = None,
    before_overrides: Optional[Overrides] = None,
    after_overrides: Optional[Overrides] = None,
    backend: str = "torch",
    num_heads: Optional[int] = None,
    asset: Optional[str] = None,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    overwrite: bool = False,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
) -> BatchReport:
    """Change maps of pairs of scenes, BEFORE and AFTER, all calibrated against one no-change distribution.

    Scenes of the two catalogues are paired by id (:attr:`engine.batch.Scene.id`: the file stem, or the STAC item
    id); a scene of one catalogue only is logged and listed in the report's ``unpaired``, and not processed. Both sides
    are embedded (``embeddings/before``, ``embeddings/after``, each with its sensor preset), then the no-change
    distribution of the sensor pair is fitted once: ``(median, σ = 1.4826·MAD)`` of the cosine distances of
    ``max_samples`` cells drawn from every pair in proportion to its area (:func:`engine.maps.sample_distances` on
    the workers, :func:`engine.maps.robust_spread` on the client), as if most of every pair did not change. Every
    pair's map is then :func:`engine.maps.change_raster` with that ``no_change``, so a z-score, a threshold value or
    ``"robust"`` (median + 3σ) means the same in every pair; ``"otsu"`` is still cut on each map's own histogram.

    Args:
        before_catalogue: The earlier scenes: any catalogue :func:`engine.batch.batch_embed` takes.
        after_catalogue: The later scenes (each map is on its AFTER scene's grid).
        output_folder: Created if missing; holds ``<id>.tif`` (float32 COG: cosine distance in 0..2 or robust
            z-score, NaN nodata; tag ``MSFM_NO_CHANGE`` = the calibration) and ``<id>.qml``; with a threshold also
            ``<id>_mask.tif`` (uint8 COG: 0 unchanged, 1 changed, 255 nodata; ``.qml``) and ``<id>_changes.gpkg``
            (the changed areas as polygons); ``calibration.json`` (``median``, ``sigma``, ``pairs``, ``samples``,
            ``sensors``), ``mosaic_<CRS>.vrt`` of the change maps, ``stac/`` (the mask and polygons are assets of each
            item), ``manifest.jsonl`` and ``embeddings/before``, ``embeddings/after`` (:func:`engine.batch.batch_embed`
            folders).
        model: As :func:`engine.batch.batch_embed` (one model embeds both sides).
        resolution: ``"pixel"`` (the AFTER raster's pixels) or ``"patch"`` (its embedding cells).
        calibration: The maps' values, as :func:`engine.maps.change_raster`: ``"distance"``, ``"zscore"``
            (``(d − median) / σ`` with the pooled calibration) or ``"auto"`` (z-score where a pair's two sides were
            embedded from different bands).
        threshold: None (no mask), a value in the maps' units, ``"robust"`` or ``"otsu"`` (the default with
            ``towards``).
        towards: ``k``: also fit one k-means (k classes) over the AFTER embeddings of every pair (as
            :func:`batch_cluster`; its centres in ``calibration.json``) and write ``<id>_towards.tif``, the class
            each changed pixel became, the same classes in every pair (:func:`engine.maps.change_raster`
            ``towards``); the polygons are then named after those classes.
        max_samples: Cells sampled over all pairs for the calibration (≥ 1; each pair at least one row of cells).
        settings: As :func:`engine.batch.batch_embed`.
        before_sensor: Sensor preset of every BEFORE scene (None: guessed per scene).
        after_sensor: Sensor preset of every AFTER scene (None: guessed per scene).
        before_overrides: Band overrides of every BEFORE scene.
        after_overrides: Band overrides of every AFTER scene.
        backend: As :func:`engine.batch.batch_embed`.
        num_heads: As :func:`engine.batch.batch_embed`.
        asset: STAC asset key of both catalogues.
        workers: As :func:`engine.batch.batch_embed`.
        scheduler: As :func:`engine.batch.batch_embed`.
        overwrite: Redo the embeddings, the calibration and every map (else finished pairs are skipped and a rerun
            reuses ``calibration.json``, so pairs added later are calibrated like the first ones).
        progress: Called with the fraction done (embedding to 0.8, the calibration to 0.85, then the maps).
        is_canceled: As :func:`engine.batch.batch_embed`.

    Returns:
        :class:`engine.batch.BatchReport` of the change maps (ids are the pairs' scene ids); ``failed`` also lists the
        pairs whose embedding failed (``"BEFORE: …"`` / ``"AFTER: …"``), ``unpaired`` the scenes without a partner.

    Raises:
        SettingsError: An unknown resolution, calibration or threshold, or ``max_samples`` below 1.
        engine.errors.InputRasterError: An empty catalogue, two catalogues without a scene id in common (the message
            names a few ids of each), no pair embedded on both sides, or no cell valid in both sides of any pair.
        As :func:`engine.batch.batch_embed` otherwise.
    """
    check_change_options(resolution, calibration, threshold)
    if towards is not None and not 2 <= towards <= 254:
        raise SettingsError(f"towards k must be 2..254 (uint8 classes), got {towards}")
    if towards is not None and threshold is None:
        threshold = "otsu"  # as change_raster: the classes of the changed pixels need a cut
    if max_samples < 1:
        raise SettingsError(f"max_samples must be ≥ 1 (cells sampled for the calibration), got {max_samples}")

    def fit(session: Session, embedded: Sequence[tuple[Product, ...]]) -> dict[str, Any]:
        client = session.client()
        before, after = [str(b.path) for b, _ in embedded], [str(a.path) for _, a in embedded]
        cells = [_cells(path) for path in after]
        shares = [max(1, math.ceil(max_samples * c / sum(cells))) for c in cells]
        parts = client.gather(client.map(distance_sample, before, after, shares, pure=False))
        for made, part in zip(embedded, parts):  # the pair's map fails with the same message
            if part["error"]:
                log.warning("pair %s left out of the calibration: %s", made[-1].id, part["error"])
        sampled = [part for part in parts if not part["error"]]
        distances = np.concatenate([part["distances"] for part in sampled] or [np.zeros(0, np.float32)])
        if not distances.size:
            raise InputRasterError(f"no cell is valid in both embeddings of any of the {len(embedded)} pairs: give "
                                   "BEFORE and AFTER rasters of one place that overlap on valid data"
                                   + "".join(f"; {part['error']}" for part in parts[:3] if part["error"]))
        median, sigma = robust_spread(distances)
        if sigma <= 0:  # over half of the cells are exactly alike: z-scores and 'robust' divide by the floor
            log.warning("the no-change distances have no spread (MAD 0): σ set to %.0e", MIN_SIGMA)
            sigma = MIN_SIGMA
        pairs: dict[tuple[Optional[str], Optional[str]], int] = {}
        for part in sampled:
            pairs[(part["before"], part["after"])] = pairs.get((part["before"], part["after"]), 0) + 1
        sensors = [{"before": b, "after": a, "pairs": n} for (b, a), n in pairs.items()]
        if len(sensors) > 1:
            log.warning("one calibration pools pairs of %d sensor pairs (%s); for a calibration per sensor pair, run "
                        "one batch per pair of presets (before_sensor / after_sensor)", len(sensors),
                        ", ".join(f"{s['before']} → {s['after']}: {s['pairs']}" for s in sensors))
        log.info("no-change calibration: median %.4g, σ %.4g from %d cosine distances of %d pairs", median, sigma,
                 len(distances), len(sampled))
        fitted = {"median": median, "sigma": sigma, "pairs": len(sampled), "samples": int(distances.size),
                  "sensors": sensors, "before_sensor": before_sensor, "after_sensor": after_sensor}
        if towards is not None:
            centers, _ = _catalogue_kmeans(session, after, ClusterSettings(k=towards, resolution=resolution))
            fitted["towards_centers"] = centers.tolist()
        return fitted

    def task(fitted: Mapping[str, Any], embeddings: str, label: str) -> Callable[..., dict[str, Any]]:
        centers = fitted.get("towards_centers")
        return partial(change_scene, embeddings=embeddings, no_change=(fitted["median"], fitted["sigma"]),
                       resolution=resolution, calibration=calibration, threshold=threshold,
                       towards=None if centers is None else np.asarray(centers, np.float32),
                       label=f"change ({calibration}) of {label}")

    recipe = {"resolution": resolution, "calibration": calibration, "threshold": threshold, "towards": towards,
              "max_samples": max_samples}
    sides = [Side(before_catalogue, before_sensor, before_overrides, "before"),
             Side(after_catalogue, after_sensor, after_overrides, "after")]
    return _joint("change", CALIBRATION_FILE, recipe, fit, task, "change map", sides, output_folder, model,
                  settings=settings, backend=backend, num_heads=num_heads, asset=asset, workers=workers,
                  scheduler=scheduler, overwrite=overwrite, progress=progress, is_canceled=is_canceled)


FitFn = Callable[[Session, Sequence[tuple[Product, ...]]], dict[str, Any]]
TaskFn = Callable[[Mapping[str, Any], str, str], Callable[..., dict[str, Any]]]


def _joint(command: str, fit_file: str, recipe: Mapping[str, Any], fit: FitFn, task: TaskFn, title: str,
           sides: Sequence[Side], output_folder: Union[str, Path], model: str, *,
           settings: Optional[InferenceSettings], backend: str, num_heads: Optional[int], asset: Optional[str],
           workers: Optional[int], scheduler: Optional[str], overwrite: bool, progress: Optional[ProgressFn],
           is_canceled: Optional[CancelFn]) -> BatchReport:
    """The three steps of :func:`batch_cluster`, :func:`batch_similarity` and :func:`batch_change` (module docstring).

    ``sides`` are one catalogue, or the two of a pair run (their scenes paired by id, :func:`_paired`); each side is
    embedded with its own sensor and overrides. ``fit(session, embedded) → JSON-able dict`` is the catalogue-wide
    fit, where ``embedded`` holds, for every scene (pair) embedded on every side, its embedding products in the order
    of ``sides``; ``task(fit, embeddings folder, model label)`` gives the per-scene task of
    :func:`engine.batch.run_batch`, which runs on the scenes of the last side (the AFTER scenes of pairs, whose grid
    a change map has).
    """
    started = time.perf_counter()
    settings = settings or InferenceSettings()
    listed = [open_folder(side.catalogue, output_folder, asset) for side in sides]
    folder = listed[0][0]
    scenes, unpaired = _paired(sides, [side_scenes for _, side_scenes in listed])
    plugin = ModelPlugin(str(model), backend, num_heads, device=settings.device)
    embedding = {f"{side.name}_{what}" if side.name else what: value for side in sides
                 for what, value in (("sensor", side.sensor), ("overrides", side.overrides))}
    key = run_key(command, plugin.key(), {**asdict(settings), **embedding, **recipe})
    manifest = Manifest(folder, key, command, overwrite=overwrite)  # another run's folder is refused before any work
    embeddings = folder / EMBEDDINGS_FOLDER
    source = " and ".join(str(side.catalogue) for side in sides)
    wanted = {scene.id for scene in scenes}
    with Session(settings, scheduler, workers) as session:
        made: list[dict[str, Product]] = []
        failed: dict[str, str] = {}
        for i, (side, (_, side_scenes)) in enumerate(zip(sides, listed)):
            target = embeddings / side.name if side.name else embeddings
            target.mkdir(parents=True, exist_ok=True)
            embedded = embed_scenes(
                session, plugin, [s for s in side_scenes if s.id in wanted], target, sensor=side.sensor,
                overrides=side.overrides, overwrite=overwrite,
                progress=scaled(progress, _EMBED * i / len(sides), _EMBED * (i + 1) / len(sides)),
                is_canceled=is_canceled,
                description=f"{side.name or 'the'} embeddings of msfm batch {command} of {side.catalogue} with {model}")
            made.append({p.id: p for p in embedded.outputs})
            for name, error in embedded.failed.items():
                failed.setdefault(name, f"{side.name.upper()}: {error}" if side.name else error)
        ready = [scene for scene in scenes if all(scene.id in products for products in made)]
        if not ready:
            raise InputRasterError(f"no scene of {source} could be embedded: "
                                   + "; ".join(f"{s}: {e}" for s, e in failed.items()))
        check_canceled(is_canceled, f"before the {command} fit")
        products = [tuple(side_made[scene.id] for side_made in made) for scene in ready]
        fitted, refitted = _fitted(folder / fit_file, key, lambda: fit(session, products), overwrite)
        if refitted and not overwrite:  # maps of an earlier fit must not stay beside maps of this one
            manifest = Manifest(folder, key, command, overwrite=True)
        if progress is not None:
            progress(_FIT)
        label = str(products[0][-1].record.get("model", model))
        report = run_batch(session, task(fitted, str(embeddings.resolve()), label), ready, manifest,
                           progress=scaled(progress, _FIT, 1.0), is_canceled=is_canceled,
                           description=f"msfm batch {command} of {source} with {model}", title=title)
    report.failed = {**failed, **report.failed}
    report.unpaired = unpaired
    report.seconds = time.perf_counter() - started
    return report


def _paired(sides: Sequence[Side], listed: Sequence[Sequence[Scene]]) -> tuple[list[Scene], dict[str, str]]:
    """The scenes a joint run maps: those of the one catalogue, or the pairs of scenes with one id in both.

    A pair is its AFTER scene (the last side's: a change map is on its grid), with the BEFORE scene's raster in its
    properties (``msfm:before``, which the map's task reads and the STAC item records).

    Returns:
        ``(scenes in the last catalogue's order, unpaired: id → the side that alone holds it)``.

    Raises:
        InputRasterError: Two catalogues without a scene id in common (the message names a few of each).
    """
    if len(sides) == 1:
        return list(listed[0]), {}
    by_id = [{scene.id: scene for scene in scenes} for scenes in listed]
    common = set(by_id[0]).intersection(*by_id[1:])
    if not common:
        few = "; ".join(f"{side.name.upper()} {', '.join(repr(s.id) for s in scenes[:3])}"
                        + (f" and {len(scenes) - 3} more" if len(scenes) > 3 else "")
                        for side, scenes in zip(sides, listed))
        raise InputRasterError(f"no scene of {' and '.join(str(side.catalogue) for side in sides)} is in both: "
                               f"{few}. Pairs are matched by scene id (the file stem or STAC item id): give the "
                               "BEFORE and AFTER rasters of one place the same file name")
    unpaired = {scene.id: side.name for side, scenes in zip(sides, listed) for scene in scenes
                if scene.id not in common}
    if unpaired:
        named = [f"{name} (only {side.upper()})" for name, side in unpaired.items()]
        log.warning("%d scenes without a partner in the other catalogue, not compared: %s%s", len(unpaired),
                    ", ".join(named[:10]), f" and {len(named) - 10} more" if len(named) > 10 else "")
    return [replace(scene, properties={**scene.properties, **{f"msfm:{side.name}": other[scene.id].href
                                                              for side, other in zip(sides[:-1], by_id[:-1])}})
            for scene in listed[-1] if scene.id in common], unpaired


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


def distance_sample(before: str, after: str, samples: int) -> dict[str, Any]:
    """The calibration task of :func:`batch_change`: about ``samples`` cosine distances of one pair of embeddings.

    Returns:
        ``distances``: float32 [N] finite cosine distances on the AFTER grid, from rows spread over it
        (:func:`engine.maps.sample_distances`); ``before``, ``after``: the sensor preset each side's embeddings
        record (None where they record none); ``error``: None, or why the pair could not be compared (embeddings of
        different models, rasters that do not overlap…: the pair is left out of the calibration, and its map fails
        with the same message).
    """
    try:
        distances = sample_distances(before, after, samples)
    except Exception as exc:  # reported; the other pairs are calibrated
        return {"distances": np.zeros(0, np.float32), "before": None, "after": None,
                "error": f"{type(exc).__name__}: {exc}"}
    return {"distances": distances, "before": _sensor(before), "after": _sensor(after), "error": None}


def _sensor(path: str) -> Optional[str]:
    """The sensor preset an embedding raster records (``MSFM_SENSOR``), or None."""
    with rasterio.open(path) as ds:
        sensor = read_tag(ds.tags(), "sensor")
    return None if sensor in (None, "None") else str(sensor)


def change_scene(scene: Scene, folder: str, settings: InferenceSettings, sensor: Optional[str],
                 overrides: Optional[Overrides], *, embeddings: str, no_change: tuple[float, float],
                 resolution: Resolution, calibration: Calibration, threshold: Optional[Union[float, str]],
                 label: str, towards: Optional[np.ndarray] = None) -> dict[str, Any]:
    """The task of one pair of :func:`batch_change`: its change map with the pooled calibration, as ``<id>.tif``.

    With a threshold, the change mask ``<id>_mask.tif`` (COG) and the changed areas ``<id>_changes.gpkg`` go beside
    it, and with ``towards`` the classes the changed pixels became, ``<id>_towards.tif`` (companions of the manifest
    record, :func:`engine.batch.scene_task`).

    Args:
        scene: The AFTER scene, with its BEFORE raster in ``properties["msfm:before"]`` (:func:`_paired`); the
            embeddings are ``embeddings/before/<id>.tif`` and ``embeddings/after/<id>.tif``.
        folder: As :func:`cluster_scene`.
        settings: As :func:`cluster_scene`.
        sensor: As :func:`cluster_scene`.
        overrides: As :func:`cluster_scene`.
        embeddings: The embeddings folder (with ``before/`` and ``after/``).
        no_change: ``(median, σ)`` of the no-change cosine distances (``calibration.json``).
        resolution: ``"pixel"`` or ``"patch"``.
        calibration: ``"auto"``, ``"distance"`` or ``"zscore"``.
        threshold: None, a value, ``"robust"`` or ``"otsu"``.
        label: As :func:`cluster_scene`.
        towards: ``[k, D]`` k-means centres of the AFTER scenes (``calibration.json``), or None.

    Returns:
        The manifest record, as :func:`engine.batch.embed_scene`.
    """
    companions = ((_MASK, _POLYGONS) if threshold is not None else ()) + ((_TOWARDS,) if towards is not None else ())

    def compare(path: Path, progress: ProgressFn) -> tuple[Optional[int], str]:
        source = Path(embeddings)
        mask, polygons, classes = (path.with_name(path.stem + ending) for ending in (_MASK, _POLYGONS, _TOWARDS))
        change_raster(scene.properties["msfm:before"], scene.href, path,
                      before_embeddings=source / "before" / f"{scene.id}.tif",
                      after_embeddings=source / "after" / f"{scene.id}.tif", resolution=resolution,
                      calibration=calibration, no_change=no_change, threshold=threshold,
                      mask_output=mask if threshold is not None else None,
                      polygons_output=polygons if threshold is not None else None, towards=towards,
                      towards_output=classes if towards is not None else None, progress=progress)
        return None, label

    return scene_task(scene, folder, compare, companions)
