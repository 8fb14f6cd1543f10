"""``msfm batch embed|cluster|similarity|change|segment``: a catalogue on Dask, resumable (:mod:`engine.batch`)."""

from __future__ import annotations

import argparse
import logging
from typing import Any, Optional, Union

from .options import Progress, add_inference_options, band_overrides, inference_settings

__all__ = ("register",)

_CATALOGUE_HELP = ("folder of rasters, glob pattern ('tiles/*.tif'), text file of paths or URLs (/vsicurl/, /vsis3/, "
                   "https://, s3://), STAC ItemCollection / catalog JSON, or one raster")
_RESUME = ("Scenes whose outputs an earlier run finished (same size and SHA-256 as in OUTDIR/manifest.jsonl) are "
           "skipped; failed scenes are retried. Needs Dask (requirements.txt).")


def cmd_batch(args: argparse.Namespace) -> int:
    """Run the batch command; print the outputs, the skipped and the failed scenes (exit status 2 if any failed)."""
    from ..batch import (  # imports Dask: only when run
        batch_change,
        batch_cluster,
        batch_embed,
        batch_segment,
        batch_similarity,
    )
    from ..maps import ClusterSettings  # with the batch import: the CLI starts without numpy

    logging.getLogger("engine.batch").setLevel(logging.INFO)  # the cluster, its dashboard link and failed scenes
    if not args.verbose:  # Dask logs every worker's start and stop at INFO
        logging.getLogger("distributed").setLevel(logging.WARNING)
    common = dict(settings=inference_settings(args), sensor=args.sensor, overrides=band_overrides(args.band),
                  asset=args.asset, workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite)
    bar = Progress(f"batch {args.batch_command}")
    try:
        if args.batch_command == "segment":
            report = batch_segment(args.catalogue, args.outdir, args.head, args.model, progress=bar, **common)
        else:
            common.update(backend=args.backend, num_heads=args.num_heads, progress=bar)
            if args.batch_command == "embed":
                report = batch_embed(args.catalogue, args.outdir, args.model, block_rows=args.block_rows, **common)
            elif args.batch_command == "cluster":
                clustering = ClusterSettings(k=args.k, resolution=args.resolution, seed=args.seed)
                report = batch_cluster(args.catalogue, args.outdir, args.model, clustering=clustering, **common)
            elif args.batch_command == "change":
                sensor, overrides = common.pop("sensor"), common.pop("overrides")
                threshold = _threshold(args.threshold)
                report = batch_change(args.before_catalogue, args.after_catalogue, args.outdir, args.model,
                                      resolution=args.resolution, calibration=args.calibration, threshold=threshold,
                                      towards=args.towards,
                                      before_sensor=args.before_sensor or sensor,
                                      after_sensor=args.after_sensor or sensor, before_overrides=overrides,
                                      after_overrides=overrides, **common)
            else:
                query = [{"type": "Point", "coordinates": [x, y]} for x, y in args.point]
                report = batch_similarity(args.catalogue, args.outdir, args.model, query=query,
                                          query_crs=args.query_crs, resolution=args.resolution, **common)
    finally:
        bar.close()
    done = {"embed": "embedded", "segment": "segmented", "cluster": "classified", "similarity": "compared",
            "change": "compared"}[args.batch_command]
    what = "pairs" if args.batch_command == "change" else "scenes"
    print(f"{args.outdir}: {len(report.done)} {what} {done}, {len(report.skipped)} already done (skipped), "
          f"{len(report.failed)} failed, in {report.seconds:.1f} s on {report.workers or 'no'} Dask workers")
    for scene, side in report.unpaired.items():
        print(f"not paired: {scene} (only in the {side.upper()} catalogue)")
    for path in report.mosaics:
        print(f"mosaic: {path}")
    if report.stac is not None:
        print(f"STAC collection: {report.stac}")
    for scene, error in report.failed.items():
        print(f"failed: {scene}: {error}")
    return 2 if report.failed else 0


def _threshold(text: Optional[str]) -> Optional[Union[float, str]]:
    """``--threshold`` as a number where it is one; else the text, which the engine checks (``otsu``, ``robust``)."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return text


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--asset", help="STAC asset key to read (needed when items hold several rasters)")
    p.add_argument("--workers", type=int, help="Dask worker processes of the local cluster (default: one per 2 "
                   "physical cores, at least 2; each runs the model with cores / workers threads)")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler (tcp://host:8786; default: "
                   "$DASK_SCHEDULER_ADDRESS, else a local cluster)")
    p.add_argument("--overwrite", action="store_true", help="redo every scene (else finished scenes are skipped)")
    p.set_defaults(func=cmd_batch)


def register(sub: Any) -> None:
    """Add ``batch`` (``embed``, ``cluster``, ``similarity``, ``change``, ``segment``) to the ``msfm`` sub-parsers."""
    batch = sub.add_parser("batch", help="run a command over every scene of a catalogue, on Dask (resumable)")
    commands = batch.add_subparsers(dest="batch_command", required=True)
    p = commands.add_parser(
        "embed", help="embedding COG per scene, a mosaic VRT per CRS and a STAC collection of the outputs",
        description=_RESUME)
    p.add_argument("catalogue", help=_CATALOGUE_HELP)
    p.add_argument("outdir", help="output folder: <scene>.tif (COG), mosaic_<CRS>.vrt, stac/collection.json, "
                   "manifest.jsonl")
    add_inference_options(p)
    p.add_argument("--block-rows", type=int,
                   help="split rasters taller than this many output cells (16-px patches) into blocks of rows, one "
                   "task each, so one large raster runs on every worker; <scene>.vrt joins the blocks")
    _add_batch_options(p)

    p = commands.add_parser(
        "cluster", help="k-means class maps of every scene with one set of classes (fitted across the scenes)",
        description="Embeds every scene into OUTDIR/embeddings, fits one k-means on a sample of all scenes "
        "(OUTDIR/kmeans.json, reused by reruns), then writes each scene's class map: class i is the same in every "
        "scene. " + _RESUME)
    p.add_argument("catalogue", help=_CATALOGUE_HELP)
    p.add_argument("outdir", help="output folder: <scene>.tif (uint8 classes, COG) and <scene>.qml, kmeans.json, "
                   "mosaic_<CRS>.vrt, stac/collection.json, manifest.jsonl, embeddings/")
    p.add_argument("--k", type=int, default=8, help="number of classes, 2..254 (default 8)")
    p.add_argument("--resolution", choices=["pixel", "patch"], default="pixel",
                   help="pixel: one class per input pixel; patch: one per model patch")
    p.add_argument("--seed", type=int, default=0, help="random seed of sampling and k-means")
    add_inference_options(p)
    _add_batch_options(p)

    p = commands.add_parser(
        "similarity", help="similarity maps of every scene to one query (points anywhere in the catalogue)",
        description="Embeds every scene into OUTDIR/embeddings, takes the query vector from the cells under the "
        "points in every scene they fall in (OUTDIR/query.json), then writes each scene's cosine similarity to it. "
        + _RESUME)
    p.add_argument("catalogue", help=_CATALOGUE_HELP)
    p.add_argument("outdir", help="output folder: <scene>.tif (float32 cosine similarity, COG), query.json, "
                   "mosaic_<CRS>.vrt, stac/collection.json, manifest.jsonl, embeddings/")
    p.add_argument("--point", nargs=2, type=float, action="append", required=True, metavar=("X", "Y"),
                   help="query point in --query-crs (repeatable: the query is the mean of their cells)")
    p.add_argument("--query-crs", default="EPSG:4326",
                   help="CRS of the query points (default EPSG:4326: X = longitude, Y = latitude)")
    p.add_argument("--resolution", choices=["pixel", "patch"], default="pixel",
                   help="pixel: each input's pixel grid; patch: one value per model patch")
    add_inference_options(p)
    _add_batch_options(p)

    p = commands.add_parser(
        "change", help="change maps of pairs of scenes (BEFORE and AFTER catalogues, paired by scene name), all "
        "calibrated against one no-change distribution",
        description="Pairs the scenes of the two catalogues by scene id (file stem or STAC item id; scenes of one "
        "catalogue only are listed and skipped), embeds both sides into OUTDIR/embeddings/before and /after, fits "
        "the no-change distribution of the sensor pair over all pairs (median and 1.4826 x MAD of the cosine "
        "distances, OUTDIR/calibration.json, reused by reruns), then writes each pair's change map on its AFTER "
        "grid with that calibration, so a z-score or a threshold means the same in every pair. " + _RESUME)
    p.add_argument("before_catalogue", help="the earlier scenes: " + _CATALOGUE_HELP)
    p.add_argument("after_catalogue", help="the later scenes, named as their BEFORE scenes: " + _CATALOGUE_HELP)
    p.add_argument("outdir", help="output folder: <scene>.tif (float32 change, COG) and <scene>.qml; with "
                   "--threshold <scene>_mask.tif and <scene>_changes.gpkg; calibration.json, mosaic_<CRS>.vrt, "
                   "stac/collection.json, manifest.jsonl, embeddings/before, embeddings/after")
    p.add_argument("--resolution", choices=["pixel", "patch"], default="pixel",
                   help="pixel: the AFTER raster's pixels (cell distances interpolated); patch: one value per cell")
    p.add_argument("--calibration", choices=["auto", "distance", "zscore"], default="auto",
                   help="the maps' values: the cosine distance, or its robust z-score (d - median) / σ against the "
                   "pooled no-change distribution (auto, the default: z-score where BEFORE and AFTER are different "
                   "sensors)")
    p.add_argument("--threshold", help="a value in the maps' units, 'robust' (pooled no-change median + 3σ, the "
                   "same in every pair) or 'otsu' (each map's own histogram): writes <scene>_mask.tif and "
                   "<scene>_changes.gpkg")
    p.add_argument("--towards", type=int, metavar="K", help="also one k-means of K classes over every AFTER scene: "
                   "<scene>_towards.tif holds the class each changed pixel became, the same classes in every pair "
                   "(threshold default otsu)")
    p.add_argument("--before-sensor", help="sensor preset of the BEFORE scenes (default: --sensor, else guessed)")
    p.add_argument("--after-sensor", help="sensor preset of the AFTER scenes (default: --sensor, else guessed)")
    add_inference_options(p)
    _add_batch_options(p)

    p = commands.add_parser(
        "segment", help="class-map COG per scene with one segmentation head, mosaic VRTs and a STAC collection",
        description=_RESUME)
    p.add_argument("catalogue", help=_CATALOGUE_HELP)
    p.add_argument("head", help="head file (.safetensors with its card, from msfm train-head) or exported .onnx "
                   "segmenter")
    p.add_argument("outdir", help="output folder: <scene>.tif (class COG) and <scene>.qml, mosaic_<CRS>.vrt, "
                   "stac/collection.json, manifest.jsonl")
    add_inference_options(p, model_default=None, model_help="(default: the encoder the head's card names)")
    _add_batch_options(p)
