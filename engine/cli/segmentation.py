"""``msfm train-head`` (a segmentation head from polygons or a label raster) and ``msfm segment`` (a class map)."""

from __future__ import annotations

import argparse
from typing import Any, Union

from .. import segmentation
from ..errors import SettingsError
from ..outputs import GEOTIFF
from ..segmentation import LabelRaster, PolygonLabels, card_path, read_polygons, segment_raster
from .options import (
    Progress,
    add_inference_options,
    add_overwrite_option,
    add_region_option,
    band_overrides,
    check_cli_outputs,
    class_names,
    inference_settings,
    load_model_from,
    region_from,
)

__all__ = ("register",)


def cmd_train_head(args: argparse.Namespace) -> int:
    """Train a head, write it with its card, print its validation scores."""
    check_cli_outputs(args, {"output": args.output, "head card": str(card_path(args.output))},
                      {"input": args.input, "--polygons": args.polygons, "--label-raster": args.label_raster},
                      {"output": (".safetensors",)})
    names = class_names(args.class_name)
    if bool(args.polygons) == bool(args.label_raster):
        raise SettingsError("give either --polygons FILE --class-field NAME or --label-raster FILE")
    labels: Union[PolygonLabels, LabelRaster]
    if args.polygons:
        if not args.class_field:
            raise SettingsError("--polygons needs --class-field (the attribute holding each polygon's class)")
        labels = read_polygons(args.polygons, args.class_field, names=names)
    else:
        labels = LabelRaster(args.label_raster, ignore_values=args.ignore_value or (), names=names)
    fit = segmentation.HeadFitSettings(head_type=args.head, steps=args.steps, lr=args.lr,
                                       val_fraction=args.val_fraction, finetune=args.finetune, seed=args.seed)
    settings = inference_settings(args)
    model = load_model_from(args)
    bar = Progress("train head")
    try:
        res = segmentation.fit_head(
            args.input, labels, model, fit=fit, output=args.output, settings=settings,
            sensor=args.sensor, overrides=band_overrides(args.band), progress=bar, overwrite=args.overwrite,
        )
    finally:
        bar.close()
    print(f"{res.path} (+ card {res.card}): {res.head.card.head_type} head, "
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
    """Write the class map (and optional probabilities and polygons)."""
    head_card = card_path(args.head) if not args.head.lower().endswith(".onnx") else None
    check_cli_outputs(
        args, {"output": args.output, "--probabilities": args.probabilities, "--polygons": args.polygons},
        {"input": args.input, "head": args.head, "head card": str(head_card) if head_card else None},
        {"output": GEOTIFF, "--probabilities": GEOTIFF, "--polygons": (".gpkg",)},
    )
    settings = inference_settings(args)
    model = load_model_from(args) if args.model else None
    bar = Progress("segment")
    try:
        res = segment_raster(
            args.input, args.output, args.head, model, settings=settings, shifts=args.shifts,
            sensor=args.sensor, overrides=band_overrides(args.band), region=region_from(args),
            probabilities_output=args.probabilities, polygons_output=args.polygons, progress=bar,
            overwrite=args.overwrite, grid=args.grid,
        )
    finally:
        bar.close()
    shares = ", ".join(f"{n} {f:.0%}" for n, f in zip(res.class_names, res.class_fractions))
    print(f"{res.path} + style {res.style}: {shares}; {res.tiles} tiles ({res.skipped_tiles} nodata skipped) in "
          f"{res.seconds:.1f} s")
    for extra in (res.probabilities, res.polygons):
        if extra:
            print(extra)
    return 0


def register(sub: Any) -> None:
    """Add ``train-head`` and ``segment`` to the ``msfm`` sub-parsers."""
    p = sub.add_parser("train-head", help="train a segmentation head on a raster and polygons (or a label raster)")
    p.add_argument("input", help="input raster")
    p.add_argument("output", help="head file to write (.safetensors; the JSON card is written beside it)")
    p.add_argument("--polygons", help="vector file of labelled polygons (GeoPackage, shapefile, GeoJSON, ...)")
    p.add_argument("--class-field", help="attribute of --polygons holding the class")
    p.add_argument("--label-raster", help="raster of class values instead of polygons (any CRS/grid)")
    p.add_argument("--ignore-value", type=float, action="append", help="label-raster value meaning unlabelled")
    p.add_argument("--class-name", action="append", metavar="VALUE=NAME", help="name a class value (repeatable)")
    p.add_argument("--head", choices=["linear", "upernet", "pixel"], default="pixel",
                   help="pixel (default): two blocks + the input bands at full resolution, boundaries follow the "
                   "pixels; linear: 1×1 conv on the last block (10× faster to fit); upernet: four blocks, thin "
                   "classes from many labels")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps (default 300)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-3 linear and pixel, 1e-3 UPerNet)")
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="share of each class's polygons (or label blocks) held out for validation (default 0.25)")
    p.add_argument("--finetune", action="store_true", help="train the encoder too (slow; saved beside the head)")
    p.add_argument("--seed", type=int, default=0)
    add_inference_options(p)
    add_overwrite_option(p)
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
    p.add_argument("--grid", choices=["input", "model"], default="input",
                   help="input (default): the outputs on the input raster's pixel grid; model: on the grid the head "
                   "reads (scale × finer, e.g. 2× for Sentinel-1/-2)")
    add_inference_options(p, model_default=None, model_help="(default: the encoder named in the head's card)")
    add_region_option(p)
    add_overwrite_option(p)
    p.set_defaults(func=cmd_segment)
