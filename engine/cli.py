"""The ``msfm`` command line: band mapping, models, embeddings, clustering and the offline demo.

Examples::

    msfm bands scene.tif                       # how each band maps onto SMARTIES' spectral ranges
    msfm models list
    msfm embed scene.tif emb.tif --model smarties-vit-b --device cuda
    msfm cluster scene.tif classes.tif --k 8 --resolution pixel --quicklook classes.png
    msfm embed scene.tif emb.tif --bounds 440000 4160000 445000 4165000 --pca pca.tif
    msfm similarity scene.tif sim.tif --point 444345 4168545 --embeddings emb.tif
    msfm train-head scene.tif head.safetensors --polygons labels.gpkg --class-field cover --head upernet
    msfm segment scene.tif head.safetensors classes.tif --polygons classes.gpkg
    msfm export-onnx demo.onnx --model smarties-demo-tiny   # one graph for every band combination
    msfm export-onnx classes.onnx --head head.safetensors    # encoder + head: segment with onnxruntime alone
    msfm demo                                  # bundled Sentinel-2 scene + bundled model, fully offline
    msfm train smarties-mae CONFIG             # provided by the training package (entry point, see below)
    msfm eval knn DATASET                      # frozen-encoder kNN / linear-probe / retrieval (training package)

Other installed packages add sub-commands through the ``msfm.commands`` entry-point group (:func:`add_plugin_commands`):
msfm's own ``training`` package registers ``train`` and ``eval`` that way, so the engine never imports it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from . import __version__
from .errors import EngineError

__all__ = ("PLUGIN_COMMANDS", "PLUGIN_GROUP", "add_plugin_commands", "main")

REPO = Path(__file__).resolve().parents[1]
DEMO_RASTER = REPO / "demo" / "s2_l1c_virginia_13band_10m.tif"
DEMO_MODEL = "smarties-demo-tiny"

#: Entry-point group of sub-commands contributed by other packages.
PLUGIN_GROUP = "msfm.commands"
#: Sub-commands known to come from a plugin package, and what provides them (for the "not installed" message).
PLUGIN_COMMANDS = {
    "train": "the msfm training package (training/, SMARTIES MAE / X-STARS pretraining)",
    "eval": "the msfm training package (training/, kNN / linear-probe / cross-sensor retrieval evaluation)",
}
_INSTALL_HINT = (
    "install msfm from a source checkout with its training dependencies: `make setup`, or "
    "`pip install -r requirements.txt && pip install -e '.[train]'`"
)


def _parse_band_overrides(items: Optional[Sequence[str]]) -> Optional[dict[Any, Any]]:
    """``["3=red_2", "B8=near_infrared_1", "5=842.5"]`` → ``{3: "red_2", "B8": "near_infrared_1", 5: 842.5}``
    (:func:`engine.bands.parse_overrides`; one ``--band`` may also hold several items separated by ``;`` or ``,``)."""
    from .bands import parse_overrides

    return parse_overrides(";".join(items or ())) or None


def _add_region_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bounds", nargs=4, type=float, metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"),
        help="process only this box, in the raster's CRS units (rounded outward to whole pixels)",
    )


def _region(args: argparse.Namespace) -> Any:
    """The :class:`engine.region.Region` of ``--bounds``, or None."""
    if not args.bounds:
        return None
    from .region import Region

    return Region(bounds=tuple(args.bounds))


def _add_band_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sensor", help="sensor preset id (see `msfm sensors`); guessed from band metadata when omitted")
    p.add_argument(
        "--band", action="append", metavar="BAND=KEY",
        help="override one band's mapping: 1-based index or description = range key or central wavelength in nm "
        "(repeatable), e.g. --band 4=red_2 --band 5=842.5",
    )


def _add_inference_options(p: argparse.ArgumentParser, model_default: Optional[str] = DEMO_MODEL,
                           model_help: str = f"(default {DEMO_MODEL})") -> None:
    _add_band_options(p)
    p.add_argument("--model", default=model_default,
                   help=f"model name (`msfm models list`) or .safetensors path {model_help}")
    p.add_argument("--num-heads", type=int, help="attention heads, if the checkpoint does not say")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch, or onnx: ONNX Runtime (a .onnx --model always uses it; a checkpoint is exported once "
                   "into the ONNX cache)")
    p.add_argument("--tile-size-px", type=int, default=224, help="tile side in model-input pixels, multiple of 16 (default 224)")
    p.add_argument(
        "--overlap-px", type=int, default=112,
        help="overlap of neighbouring tiles in model-input pixels, multiple of 16 (default 112 = half a tile: tile "
        "context then averages out and class maps show no tile-shaped boundaries; 32 is 2.9× faster)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument(
        "--scale", type=float,
        help="model-input pixels per native pixel (2 = upsample 2×); default from the sensor preset "
        "(2 for Sentinel-1/2 and Landsat, as SMARTIES was pretrained on upsampled 10 m imagery; 1 otherwise)",
    )
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="embedding raster data type")


def _settings(args: argparse.Namespace) -> Any:
    from .inference import InferenceSettings

    return InferenceSettings(
        tile_size_px=args.tile_size_px, overlap_px=args.overlap_px, batch_size=args.batch_size,
        device=args.device, threads=args.threads, scale=args.scale, output_dtype=args.dtype,
    )


class _Progress:
    """tqdm bar fed with completed fractions."""

    def __init__(self, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=desc, unit="%", bar_format="{l_bar}{bar}| {elapsed}<{remaining}")

    def __call__(self, fraction: float) -> None:
        self.bar.update(round(fraction * 100) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _load(args: argparse.Namespace) -> Any:
    from .models import load_model

    backend = getattr(args, "backend", "torch")
    return load_model(args.model, num_heads=args.num_heads, device=args.device if backend == "onnx" else "cpu",
                      backend=backend)


def cmd_bands(args: argparse.Namespace) -> int:
    from .bands import describe_mapping, resolve_bands
    from .inference import band_statistics
    from .readers import open_raster

    with open_raster(args.input) as ds:
        mapping = resolve_bands(ds, sensor=args.sensor, overrides=_parse_band_overrides(args.band))
        # Show the statistics inference will use, including those estimated from the raster.
        mapping = mapping.with_stats(band_statistics(ds, mapping))
    print(describe_mapping(mapping))
    return 0


def cmd_sensors(args: argparse.Namespace) -> int:
    from .sensors import list_sensors

    for s in list_sensors():
        bands = ", ".join(b.name for b in s.bands)
        print(f"{s.id:<20} {s.name} — scale {s.default_scale:g} — bands: {bands}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import download_model, list_models, model_info

    if args.action == "list":
        for spec in list_models():
            info = model_info(spec.name)
            state = "bundled" if info.get("bundled_present") else ("cached" if info.get("cached") else "not available")
            print(f"{spec.name:<40} {state:<14} {spec.description}")
    elif args.action == "info":
        print(json.dumps(model_info(args.name), indent=2, default=str))
    else:
        print(download_model(args.name))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .inference import embed_raster

    model = _load(args)
    bar = _Progress("embed")
    try:
        res = embed_raster(
            args.input, args.output, model, settings=_settings(args), sensor=args.sensor,
            overrides=_parse_band_overrides(args.band), region=_region(args), progress=bar,
        )
    finally:
        bar.close()
    print(f"{res.path}: {res.width}×{res.height} cells × {res.embed_dim} bands, {res.cell_size_px:g} native px per "
          f"cell, {res.tiles} tiles in {res.seconds:.1f} s")
    if args.pixel_output:
        from .upsample import write_pixel_embeddings

        print(write_pixel_embeddings(args.input, res.path, args.pixel_output, output_dtype=args.dtype))
    if args.pca:
        import rasterio

        from .pca import write_pca_raster

        path = write_pca_raster(res.path, args.pca, 3)
        with rasterio.open(path) as ds:
            explained = json.loads(ds.tags()["MSFM_PCA_EXPLAINED"])
        shares = ", ".join(f"{v:.0%}" for v in explained)
        print(f"{path}: principal components 1–3 explain {shares} of the variance")
    if args.quicklook:
        from .quicklook import embedding_quicklook

        print(embedding_quicklook(res.path, args.quicklook))
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from .cluster import cluster_raster

    model = None if args.embeddings else _load(args)
    bar = _Progress("cluster")
    try:
        res = cluster_raster(
            args.input, args.output, model, k=args.k, resolution=args.resolution, embeddings=args.embeddings,
            embeddings_output=args.embeddings_output, settings=None if args.embeddings else _settings(args),
            sensor=args.sensor, overrides=_parse_band_overrides(args.band), seed=args.seed, region=_region(args),
            progress=bar,
        )
    finally:
        bar.close()
    shares = ", ".join(f"{i}:{f:.0%}" for i, f in enumerate(res.class_fractions))
    print(f"{res.path} ({res.resolution} resolution, k={res.k}; classes {shares}) + style {res.style}; {res.seconds:.1f} s")
    if args.quicklook:
        from .quicklook import class_quicklook

        print(class_quicklook(res.path, args.quicklook))
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    from .similarity import similarity_raster

    model = None if args.embeddings else _load(args)
    query = [{"type": "Point", "coordinates": [x, y]} for x, y in args.point]
    bar = _Progress("similarity")
    try:
        res = similarity_raster(
            args.input, args.output, model, query=query, embeddings=args.embeddings,
            embeddings_output=args.embeddings_output, resolution=args.resolution,
            settings=None if args.embeddings else _settings(args), sensor=args.sensor,
            overrides=_parse_band_overrides(args.band), region=_region(args), progress=bar,
        )
    finally:
        bar.close()
    lo, hi = res.value_range
    print(f"{res.path} ({res.resolution} resolution): cosine similarity to the mean of {res.query_cells} cell(s), "
          f"{lo:.3f}…{hi:.3f}; {res.seconds:.1f} s")
    return 0


def _class_names(items: Optional[Sequence[str]]) -> Optional[dict[str, str]]:
    """``["0=background", "255=road"]`` → ``{"0": "background", "255": "road"}``."""
    out = {}
    for item in items or ():
        value, sep, name = item.partition("=")
        if not sep or not name:
            raise EngineError(f"--class-name takes VALUE=NAME, got {item!r}")
        out[value.strip()] = name.strip()
    return out or None


def cmd_train_head(args: argparse.Namespace) -> int:
    from .head_training import fit_head
    from .labels import LabelRaster, read_polygons

    names = _class_names(args.class_name)
    if bool(args.polygons) == bool(args.label_raster):
        raise EngineError("give either --polygons FILE --class-field NAME or --label-raster FILE")
    if args.polygons:
        if not args.class_field:
            raise EngineError("--polygons needs --class-field (the attribute holding each polygon's class)")
        labels: Any = read_polygons(args.polygons, args.class_field, names=names)
    else:
        labels = LabelRaster(args.label_raster, ignore_values=args.ignore_value or (), names=names)
    model = _load(args)
    bar = _Progress("train head")
    try:
        res = fit_head(
            args.input, labels, model, head_type=args.head, output=args.output, settings=_settings(args),
            sensor=args.sensor, overrides=_parse_band_overrides(args.band), steps=args.steps, lr=args.lr,
            val_fraction=args.val_fraction, finetune=args.finetune, seed=args.seed, progress=bar,
        )
    finally:
        bar.close()
    print(f"{res.path} (+ card {res.path.with_suffix('.json')}): {res.head.card.head_type} head, "
          f"{res.train_chips} training chips, loss {res.losses[0]:.3f} → {res.losses[-1]:.3f}, {res.seconds:.1f} s")
    m = res.metrics
    if m:
        per = ", ".join(f"{name} IoU {100 * v['iou']:.1f} / F1 {100 * v['f1']:.1f}"
                        for name, v in m["classes"].items() if v["iou"] is not None)
        print(f"validation ({m['split']}): mIoU {100 * m['miou']:.1f} %, macro F1 {100 * m['macro_f1']:.1f} %; {per}")
    else:
        print("no validation split (every class has a single polygon, or --val-fraction 0)")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from .segmentation import segment_raster

    model = _load(args) if args.model else None
    bar = _Progress("segment")
    try:
        res = segment_raster(
            args.input, args.output, args.head, model, settings=_settings(args), shifts=args.shifts, sensor=args.sensor,
            overrides=_parse_band_overrides(args.band), region=_region(args),
            probabilities_output=args.probabilities, polygons_output=args.polygons, progress=bar,
        )
    finally:
        bar.close()
    shares = ", ".join(f"{n} {f:.0%}" for n, f in zip(res.class_names, res.class_fractions))
    print(f"{res.path} + style {res.style}: {shares}; {res.tiles} tiles in {res.seconds:.1f} s")
    for extra in (res.probabilities, res.polygons):
        if extra:
            print(extra)
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from .models.onnx_encoder import read_metadata
    from .onnx_export import export

    if args.int8 and args.fp16:
        raise SystemExit("choose --int8 (CPU) or --fp16 (CUDA), not both")
    head = None
    if args.head:
        from .heads import load_head
        from .models import load_model
        from .segmentation import encoder_source

        head = load_head(args.head)
        model = load_model(args.model or encoder_source(head, args.head), num_heads=args.num_heads)
    else:
        args.model = args.model or DEMO_MODEL
        model = _load(args)
    path = export(model, args.output, head=head, precision="int8" if args.int8 else "float16" if args.fp16 else
                  "float32", tile_size_px=args.tile_size_px, sensor=args.sensor)
    meta = read_metadata(path)
    tile = meta["msfm_tile_size_px"]
    what = (f"{meta['msfm_head_card']['head_type']} head, classes {list(meta['class_names'].values())}; input image "
            f"[B, {len(meta['msfm_head_card']['bands'])}, {tile}, {tile}], output probabilities" if args.head else
            f"inputs image [B, C, {tile}, {tile}] + band_mix [C, 17], outputs cls, grid")
    precision = "int8, " if args.int8 else "float16, " if args.fp16 else ""
    print(f"{path}: {meta['msfm_encoder']} (D={meta['msfm_embed_dim']}, depth {meta['msfm_depth']}), {what}; "
          f"{precision}{path.stat().st_size / 1e6:.1f} MB")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .bands import describe_mapping, resolve_bands
    from .cluster import cluster_raster
    from .inference import InferenceSettings
    from .models import load_model
    from .quicklook import class_quicklook, embedding_quicklook, rgb_quicklook

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not DEMO_RASTER.exists():
        raise EngineError(f"demo raster {DEMO_RASTER} is missing; run from a full clone of the repository")
    print(f"input: {DEMO_RASTER.name} (Sentinel-2 L1C, 13 bands, 10 m, Eastern Shore of Virginia)")
    mapping = resolve_bands(DEMO_RASTER)
    print(describe_mapping(mapping))
    model = load_model(DEMO_MODEL)
    bar = _Progress("demo")
    try:
        res = cluster_raster(
            DEMO_RASTER, out / "classes.tif", model, k=args.k, resolution="pixel",
            embeddings_output=out / "embeddings.tif", settings=InferenceSettings(threads=args.threads), progress=bar,
        )
    finally:
        bar.close()
    emb = res.embeddings
    assert emb is not None
    red, green, blue = (mapping.indexes[mapping.keys.index(k)] for k in ("red_2", "green_2", "blue_1"))
    looks = [
        rgb_quicklook(DEMO_RASTER, out / "input_truecolor.png", (red, green, blue)),
        embedding_quicklook(emb.path, out / "embeddings_pca.png"),
        class_quicklook(res.path, out / "classes.png"),
    ]
    print(f"embeddings: {emb.path} ({emb.width}×{emb.height} cells × {emb.embed_dim}, {emb.tiles} tiles, {emb.seconds:.1f} s)")
    print(f"classes:    {res.path} (k={res.k}, pixel resolution) + {res.style}")
    print("quicklooks: " + ", ".join(str(p) for p in looks))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    import platform

    import numpy
    import rasterio

    lines = {"msfm": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
             "rasterio": rasterio.__version__, "GDAL (rasterio)": rasterio.__gdal_version__}
    try:
        import torch

        lines["torch"] = torch.__version__
        lines["CUDA"] = f"{torch.version.cuda} (available: {torch.cuda.is_available()})"
    except ImportError:
        lines["torch"] = "not installed"
    for name in ("onnxruntime", "huggingface_hub", "safetensors", "sklearn"):
        try:
            lines[name] = __import__(name).__version__
        except ImportError:
            lines[name] = "not installed"
    for k, v in lines.items():
        print(f"{k:<16} {v}")
    return 0


def _unavailable(sub: Any, name: str, message: str) -> None:
    """Make ``msfm NAME ...`` print ``message`` and exit with status 2 (plugin missing or broken)."""

    def run(args: argparse.Namespace) -> int:
        print(f"msfm {name}: {message}", file=sys.stderr)
        return 2

    parser = sub.choices.get(name)
    if parser is None:  # (a plugin that failed half-way may have added its parser already: reuse it)
        parser = sub.add_parser(name, help="(not available) " + message.split(";")[0], add_help=False)
        parser.add_argument("_rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _entry_points(group: str) -> list[Any]:
    from importlib.metadata import entry_points

    try:
        return list(entry_points(group=group))
    except TypeError:  # Python 3.9: entry_points() returns a dict of groups
        return list(entry_points().get(group, []))  # type: ignore[attr-defined]


def add_plugin_commands(sub: Any) -> None:
    """Add the sub-commands registered under the ``msfm.commands`` entry-point group.

    An entry point ``NAME = "module:function"`` (in the providing package's ``pyproject.toml``, e.g. ``train =
    "training.cli:register"``) is loaded and called as ``function(subparsers)``; it adds the sub-command ``NAME``
    with ``set_defaults(func=...)`` (a callable ``func(args) → exit status``) and should import nothing heavy. An entry
    point that fails to load, or a name of :data:`PLUGIN_COMMANDS` nobody provides, becomes a sub-command that says
    why and how to install it (exit status 2). Built-in sub-commands cannot be replaced.

    Args:
        sub: The ``argparse`` sub-parsers action of the ``msfm`` parser.
    """
    for ep in sorted(_entry_points(PLUGIN_GROUP), key=lambda e: e.name):
        if ep.name in sub.choices:
            logging.getLogger(__name__).warning("entry point %s = %s ignored: `msfm %s` already exists", ep.name,
                                                ep.value, ep.name)
            continue
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not break the other commands
            _unavailable(sub, ep.name, f"its provider {ep.value} failed to load ({type(exc).__name__}: {exc}); "
                         + _INSTALL_HINT)
    for name, what in PLUGIN_COMMANDS.items():
        if name not in sub.choices:
            _unavailable(sub, name, f"comes with {what}, which is not installed here; {_INSTALL_HINT}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msfm", description="Multi-sensor foundation models for GIS rasters.")
    parser.add_argument("--version", action="version", version=f"msfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bands", help="show how a raster's bands map onto SMARTIES spectral ranges")
    p.add_argument("input", help="input raster")
    _add_band_options(p)
    p.set_defaults(func=cmd_bands)

    p = sub.add_parser("sensors", help="list the sensor presets")
    p.set_defaults(func=cmd_sensors)

    p = sub.add_parser("models", help="list, describe or download models")
    msub = p.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="named models and whether they are available offline")
    for action in ("info", "download"):
        q = msub.add_parser(action, help=f"{action} a named model")
        q.add_argument("name")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("embed", help="write a patch-grid embedding raster (one pixel per 16×16 model patch)")
    p.add_argument("input", help="input raster")
    p.add_argument("output", help="output GeoTIFF (D float bands, NaN = nodata)")
    _add_inference_options(p)
    _add_region_option(p)
    p.add_argument("--pixel-output", help="also write embeddings interpolated to the input's pixel grid (large!)")
    p.add_argument("--pca", help="also write the first three principal components as a 3-band float32 GeoTIFF")
    p.add_argument("--quicklook", help="PNG of the first three principal components")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("cluster", help="k-means class map of a raster's embeddings")
    p.add_argument("input", help="input raster")
    p.add_argument("output", help="output class GeoTIFF (uint8, nodata 255) + .qml style beside it")
    p.add_argument("--k", type=int, default=8, help="number of classes, 2..254 (default 8)")
    p.add_argument("--resolution", choices=["pixel", "patch"], default="pixel",
                   help="pixel: one class per input pixel (embeddings interpolated); patch: one per model patch")
    p.add_argument("--embeddings", help="reuse this embedding raster instead of running the model")
    p.add_argument("--embeddings-output", help="keep the computed embeddings at this path")
    p.add_argument("--seed", type=int, default=0, help="random seed of sampling and k-means")
    p.add_argument("--quicklook", help="PNG of the class map")
    _add_inference_options(p)
    _add_region_option(p)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("similarity", help="cosine similarity of every location to the embedding under query points")
    p.add_argument("input", help="input raster")
    p.add_argument("output", help="output GeoTIFF (float32 cosine similarity in -1..1, NaN = nodata)")
    p.add_argument("--point", nargs=2, type=float, action="append", required=True, metavar=("X", "Y"),
                   help="query point in the raster's CRS (repeatable: the query is the mean of their cells)")
    p.add_argument("--resolution", choices=["pixel", "patch"], default="pixel",
                   help="pixel: the input's pixel grid (cell similarities interpolated bilinearly); patch: one value "
                   "per model patch")
    p.add_argument("--embeddings", help="reuse this embedding raster instead of running the model")
    p.add_argument("--embeddings-output", help="keep the computed embeddings at this path")
    _add_inference_options(p)
    _add_region_option(p)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("train-head", help="train a segmentation head on a raster and polygons (or a label raster)")
    p.add_argument("input", help="input raster")
    p.add_argument("output", help="head file to write (.safetensors; the JSON card is written beside it)")
    p.add_argument("--polygons", help="vector file of labelled polygons (GeoPackage, shapefile, GeoJSON, ...)")
    p.add_argument("--class-field", help="attribute of --polygons holding the class")
    p.add_argument("--label-raster", help="raster of class values instead of polygons (any CRS/grid)")
    p.add_argument("--ignore-value", type=float, action="append", help="label-raster value meaning unlabelled")
    p.add_argument("--class-name", action="append", metavar="VALUE=NAME", help="name a class value (repeatable)")
    p.add_argument("--head", choices=["linear", "upernet"], default="linear",
                   help="linear: 1×1 conv on the last block (fast); upernet: four blocks, finer boundaries")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps (default 300)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-3 linear, 1e-3 UPerNet)")
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="share of each class's polygons (or label blocks) held out for validation (default 0.25)")
    p.add_argument("--finetune", action="store_true", help="train the encoder too (slow; saved beside the head)")
    p.add_argument("--seed", type=int, default=0)
    _add_inference_options(p)
    p.set_defaults(func=cmd_train_head)

    p = sub.add_parser("segment", help="classify every pixel of a raster with a trained segmentation head "
                       "(bands, statistics and scale default to the head card's)")
    p.add_argument("input", help="input raster (the bands the head was trained on)")
    p.add_argument("head", help="head file (.safetensors with its .json card), or an encoder + head exported with "
                   "`msfm export-onnx --head` (.onnx: ONNX Runtime, no torch)")
    p.add_argument("output", help="class GeoTIFF (uint8, nodata 255, colour table) + .qml style beside it")
    p.add_argument("--probabilities", help="also write class probabilities (float32, one band per class)")
    p.add_argument("--polygons", help="also write class polygons (GeoPackage .gpkg)")
    p.add_argument("--shifts", type=int, choices=[1, 2], default=1,
                   help="2 = add a pass shifted by half a patch: finer boundaries, twice the time")
    _add_inference_options(p, model_default=None, model_help="(default: the encoder named in the head's card)")
    _add_region_option(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("export-onnx", help="export a SMARTIES encoder (spectral projection in the graph), or an encoder "
                       "with its segmentation head, to ONNX for ONNX Runtime (no torch needed to run it)")
    p.add_argument("output", help="destination .onnx file")
    p.add_argument("--head", help="export this segmentation head (.safetensors) with its encoder: image → class "
                   "probabilities, the head's card in the metadata; `msfm segment` takes the .onnx as the head")
    p.add_argument("--model", help=f"model name or .safetensors path (default {DEMO_MODEL}; with --head, the encoder "
                   "the head's card names)")
    p.add_argument("--num-heads", type=int, help="attention heads, if the checkpoint does not say")
    p.add_argument("--tile-size-px", type=int,
                   help="tile side fixed in the graph (default 224; with --head, the head's training chip size)")
    p.add_argument("--sensor", help="record this preset's resolution and standardisation (Deepness keys)")
    p.add_argument("--int8", action="store_true",
                   help="quantize to int8 for the CPU (ONNX Runtime dynamic; ~2.5× torch on ViT-B, cosine 0.99999 on "
                   "the demo scene)")
    p.add_argument("--fp16", action="store_true", help="convert to float16 for the CUDA execution provider")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("demo", help="cluster the bundled Sentinel-2 scene with the bundled model (offline)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--k", type=int, default=8, help="number of classes (default 8)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("versions", help="versions of msfm and its dependencies (for bug reports)")
    p.set_defaults(func=cmd_versions)

    add_plugin_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``msfm`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (EngineError, FileNotFoundError) as exc:
        print(f"msfm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("msfm: interrupted; partial outputs were removed", file=sys.stderr)
        return 130
