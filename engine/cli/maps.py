"""``msfm embed``, ``cluster``, ``similarity`` and ``change``: embedding rasters and the maps made from them."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from ..maps import (
    ClusterSettings,
    change_raster,
    cluster_raster,
    embed_raster,
    embedding_quicklook,
    read_tag,
    similarity_raster,
    write_pca_raster,
    write_pixel_embeddings,
)
from ..maps.quantized import ENCODINGS
from ..outputs import GEOTIFF
from ..raster import class_quicklook, open_raster
from .options import (
    Progress,
    add_inference_options,
    add_overwrite_option,
    add_region_option,
    band_overrides,
    check_cli_outputs,
    inference_settings,
    load_model_from,
    region_from,
)

__all__ = ("register",)


def _check_map_outputs(args: argparse.Namespace, extra: dict[str, Optional[str]]) -> None:
    """:func:`check_cli_outputs` of ``cluster`` / ``similarity``: the output, kept embeddings and ``extra``."""
    outputs = {"output": args.output, "--embeddings-output": args.embeddings_output, **extra}
    suffixes = {name: (".png",) if name == "--quicklook" else GEOTIFF for name in outputs}
    check_cli_outputs(args, outputs, {"input": args.input, "--embeddings": args.embeddings}, suffixes)


def cmd_embed(args: argparse.Namespace) -> int:
    """Write the embedding raster (and optional pixel-resolution embeddings, principal components, quicklook)."""
    check_cli_outputs(
        args, {"output": args.output, "--pixel-output": args.pixel_output, "--pca": args.pca,
               "--quicklook": args.quicklook}, {"input": args.input},
        {"output": GEOTIFF, "--pixel-output": GEOTIFF, "--pca": GEOTIFF, "--quicklook": (".png",)},
    )
    settings = inference_settings(args)
    model = load_model_from(args)
    bar = Progress("embed")
    try:
        res = embed_raster(
            args.input, args.output, model, settings=settings, sensor=args.sensor,
            overrides=band_overrides(args.band), region=region_from(args), progress=bar, overwrite=args.overwrite,
        )
    finally:
        bar.close()
    print(f"{res.path}: {res.width}×{res.height} cells × {res.embed_dim} bands, {res.cell_size_px:g} native px per "
          f"cell, {res.tiles} tiles ({res.skipped_tiles} nodata skipped) in {res.seconds:.1f} s")
    if args.pixel_output:
        print(write_pixel_embeddings(args.input, res.path, args.pixel_output, output_dtype=args.dtype,
                                     overwrite=args.overwrite))
    if args.pca:
        path = write_pca_raster(res.path, args.pca, 3, overwrite=args.overwrite)
        with open_raster(path) as ds:
            explained = read_tag(ds.tags(), "pca_explained")
        shares = ", ".join(f"{v:.0%}" for v in explained)
        print(f"{path}: principal components 1–3 explain {shares} of the variance")
    if args.quicklook:
        print(embedding_quicklook(res.path, args.quicklook, overwrite=args.overwrite))
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """Write the k-means class map (and its quicklook)."""
    _check_map_outputs(args, {"--quicklook": args.quicklook})
    clustering = ClusterSettings(k=args.k, resolution=args.resolution, seed=args.seed,
                                 spectral_weight=args.spectral_weight, suggest_k=args.suggest_k)
    settings = None if args.embeddings else inference_settings(args)
    model = None if args.embeddings else load_model_from(args)
    bar = Progress("cluster")
    try:
        res = cluster_raster(
            args.input, args.output, model, clustering=clustering,
            embeddings=args.embeddings, embedding_format=args.embedding_format,
            embeddings_output=args.embeddings_output,
            settings=settings, sensor=args.sensor,
            overrides=band_overrides(args.band), region=region_from(args), progress=bar, overwrite=args.overwrite,
        )
    finally:
        bar.close()
    shares = ", ".join(f"{i}:{f:.0%}" for i, f in enumerate(res.class_fractions))
    print(f"{res.path} ({res.resolution} resolution, k={res.k}; classes {shares}) + style {res.style}; "
          f"{res.seconds:.1f} s")
    if res.k_scores:
        print("k  silhouette (on the sample; higher is better)")
        for k, score in res.k_scores.items():
            notes = [note for note, c in (("used", res.k), ("suggested", res.suggested_k)) if c == k]
            print(f"{k:<3d}{score:7.3f}" + "".join(f"  <- {note}" for note in notes))
        print(res.k_report())
    if args.quicklook:
        print(class_quicklook(res.path, args.quicklook, overwrite=args.overwrite))
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    """Write the similarity map to the embedding under the query points."""
    _check_map_outputs(args, {})
    settings = None if args.embeddings else inference_settings(args)
    model = None if args.embeddings else load_model_from(args)
    query = [{"type": "Point", "coordinates": [x, y]} for x, y in args.point]
    bar = Progress("similarity")
    try:
        res = similarity_raster(
            args.input, args.output, model, query=query, embeddings=args.embeddings,
            embedding_format=args.embedding_format, embeddings_output=args.embeddings_output,
            resolution=args.resolution,
            settings=settings, sensor=args.sensor,
            overrides=band_overrides(args.band), region=region_from(args), progress=bar, overwrite=args.overwrite,
        )
    finally:
        bar.close()
    lo, hi = res.value_range
    print(f"{res.path} ({res.resolution} resolution): cosine similarity to the mean of {res.query_cells} cell(s), "
          f"{lo:.3f}…{hi:.3f}; {res.seconds:.1f} s")
    return 0


def cmd_change(args: argparse.Namespace) -> int:
    """Write the change map (cosine distance of the two rasters' embeddings, on the AFTER grid)."""
    towards = int(args.towards) if args.towards and args.towards.isdigit() else args.towards
    check_cli_outputs(args, {"output": args.output, "--mask-output": args.mask_output,
                             "--polygons-output": args.polygons_output, "--towards-output": args.towards_output},
                      {"before": args.before, "after": args.after, "--before-embeddings": args.before_embeddings,
                       "--after-embeddings": args.after_embeddings,
                       "--towards": towards if isinstance(towards, str) else None},
                      {"output": GEOTIFF, "--mask-output": GEOTIFF, "--polygons-output": (".gpkg",),
                       "--towards-output": GEOTIFF})
    threshold = args.threshold if args.threshold in (None, "otsu", "robust") else float(args.threshold)
    given = args.before_embeddings and args.after_embeddings
    model = None if given else load_model_from(args)
    bar = Progress("change")
    try:
        res = change_raster(
            args.before, args.after, args.output, model, before_embeddings=args.before_embeddings,
            after_embeddings=args.after_embeddings, embedding_format=args.embedding_format,
            resolution=args.resolution, on_grid=args.grid, calibration=args.calibration,
            no_change=tuple(args.no_change) if args.no_change else None, threshold=threshold,
            mask_output=args.mask_output, polygons_output=args.polygons_output, towards=towards,
            towards_output=args.towards_output, settings=None if given else inference_settings(args),
            before_sensor=args.before_sensor or args.sensor, after_sensor=args.after_sensor or args.sensor,
            before_overrides=band_overrides(args.band), after_overrides=band_overrides(args.band), progress=bar,
            overwrite=args.overwrite,
        )
    finally:
        bar.close()
    lo, hi = res.value_range
    moved = "; BEFORE resampled onto the AFTER grid" if res.reprojected else ""
    units = "cosine distance" if res.units == "cosine_distance" else "robust z-score"
    print(f"{res.path} ({res.resolution} resolution): {units} {lo:.3f}…{hi:.3f}{moved}; no change (cosine distance): "
          f"median {res.no_change[0]:.4f}, σ {res.no_change[1]:.4f}; {res.seconds:.1f} s")
    if res.threshold is not None:
        print(f"threshold {res.threshold:.4f}: {100 * (res.changed_fraction or 0):.1f} % changed"
              + "".join(f"; {path}" for path in (res.mask, res.polygons, res.towards) if path is not None))
    if res.towards_fractions:
        print("changed towards: " + ", ".join(f"{name} {100 * share:.1f} %"
                                              for name, share in res.towards_fractions.items()))
    return 0


def register(sub: Any) -> None:
    """Add ``embed``, ``cluster``, ``similarity`` and ``change`` to the ``msfm`` sub-parsers."""
    p = sub.add_parser("embed", help="write a patch-grid embedding raster (one pixel per 16×16 model patch)")
    p.add_argument("input", help="input raster")
    p.add_argument("output", help="output GeoTIFF (D float bands, NaN = nodata)")
    add_inference_options(p)
    add_region_option(p)
    p.add_argument("--pixel-output", help="also write embeddings interpolated to the input's pixel grid (large!)")
    p.add_argument("--pca", help="also write the first three principal components as a 3-band float32 GeoTIFF")
    p.add_argument("--quicklook", help="PNG of the first three principal components")
    add_overwrite_option(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("cluster", help="k-means class map of a raster's embeddings")
    p.add_argument("input", help="input raster")
    p.add_argument("output", help="output class GeoTIFF (uint8, nodata 255) + .qml style beside it")
    p.add_argument("--k", type=int, default=8, help="number of classes, 2..254 (default 8)")
    p.add_argument("--resolution", choices=["pixel", "patch"], default="pixel",
                   help="pixel: one class per input pixel (embeddings interpolated); patch: one per model patch")
    p.add_argument("--embeddings", help="reuse this embedding raster instead of running the model (ours, or "
                   "AlphaEarth / TESSERA / any float embedding raster)")
    p.add_argument("--embedding-format", choices=ENCODINGS, help="how --embeddings stores its values, where the "
                   "file does not say (default: detected)")
    p.add_argument("--embeddings-output", help="keep the computed embeddings at this path")
    p.add_argument("--seed", type=int, default=0, help="random seed of sampling and k-means")
    p.add_argument("--spectral-weight", type=float, default=0.0, metavar="W",
                   help="pixel resolution: cluster each pixel's embedding together with its own normalised bands, "
                   "weighted W (1 = as much weight as the embedding; default 0 = embeddings only)")
    p.add_argument("--suggest-k", action="store_true",
                   help="also print the silhouette of k = 2..10 on the sample (a report: the map keeps --k)")
    p.add_argument("--quicklook", help="PNG of the class map")
    add_inference_options(p)
    add_region_option(p)
    add_overwrite_option(p)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("similarity", help="cosine similarity of every location to the embedding under query points")
    p.add_argument("input", help="input raster")
    p.add_argument("output", help="output GeoTIFF (float32 cosine similarity in -1..1, NaN = nodata)")
    p.add_argument("--point", nargs=2, type=float, action="append", required=True, metavar=("X", "Y"),
                   help="query point in the raster's CRS (repeatable: the query is the mean of their cells)")
    p.add_argument("--resolution", choices=["pixel", "patch"], default="pixel",
                   help="pixel: the input's pixel grid (cell similarities interpolated bilinearly); patch: one value "
                   "per model patch")
    p.add_argument("--embeddings", help="reuse this embedding raster instead of running the model (ours, or "
                   "AlphaEarth / TESSERA / any float embedding raster)")
    p.add_argument("--embedding-format", choices=ENCODINGS, help="how --embeddings stores its values, where the "
                   "file does not say (default: detected)")
    p.add_argument("--embeddings-output", help="keep the computed embeddings at this path")
    add_inference_options(p)
    add_region_option(p)
    add_overwrite_option(p)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("change", help="change map: cosine distance between the embeddings of two rasters of one "
                       "place (same or different sensors), on the AFTER raster's grid")
    p.add_argument("before", help="the earlier raster")
    p.add_argument("after", help="the later raster (its grid is the output's)")
    p.add_argument("output", help="output GeoTIFF (float32 cosine distance in 0..2 or robust z-score, NaN = nodata) "
                   "+ .qml style")
    p.add_argument("--resolution", choices=["pixel", "patch"], default="pixel",
                   help="pixel: the AFTER raster's pixels (cell distances interpolated); patch: one value per cell")
    p.add_argument("--before-embeddings", help="reuse this embedding raster of BEFORE")
    p.add_argument("--after-embeddings", help="reuse this embedding raster of AFTER")
    p.add_argument("--embedding-format", choices=ENCODINGS, help="how the given embeddings store their values, "
                   "where the files do not say (default: detected)")
    p.add_argument("--grid", choices=["after", "before"], default="after",
                   help="whose grid the map is on (default after; the other side's embeddings are resampled onto it "
                   "when the grids differ)")
    p.add_argument("--calibration", choices=["auto", "distance", "zscore"], default="auto",
                   help="the map's values: the cosine distance, or its robust z-score (d - median) / σ against the "
                   "no-change distribution (auto, the default: z-score when BEFORE and AFTER are different sensors)")
    p.add_argument("--no-change", nargs=2, type=float, metavar=("MEDIAN", "SIGMA"),
                   help="the no-change cosine distances of this sensor pair (e.g. a batch change run's "
                   "calibration.json); default: estimated from the scene")
    p.add_argument("--threshold", help="a value in the map's units, 'otsu' or 'robust' (no-change median + 3σ): "
                   "writes --mask-output / --polygons-output / --towards-output (default otsu when one is given)")
    p.add_argument("--mask-output", help="change mask GeoTIFF (uint8: 0 unchanged, 1 changed, 255 nodata) + .qml")
    p.add_argument("--polygons-output", help="the changed areas as polygons (GeoPackage; with --towards, named "
                   "after the class they changed towards)")
    p.add_argument("--towards", metavar="K|CLASS_MAP", help="what changed cells became: K (k-means classes of the "
                   "AFTER embeddings) or a class map of the AFTER scene (msfm cluster / segment / classify output)")
    p.add_argument("--towards-output", help="GeoTIFF of the changed cells' AFTER classes (uint8, 255 elsewhere) + .qml")
    p.add_argument("--before-sensor", help="sensor preset of BEFORE (default: --sensor, else guessed)")
    p.add_argument("--after-sensor", help="sensor preset of AFTER (default: --sensor, else guessed)")
    add_inference_options(p)
    add_overwrite_option(p)
    p.set_defaults(func=cmd_change)
