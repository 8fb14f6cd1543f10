"""``msfm classify``: a random forest on each pixel's bands ⊕ embeddings, fitted on labels and applied in one run."""

from __future__ import annotations

import argparse
from typing import Any, Union

from ..errors import SettingsError
from ..maps.quantized import ENCODINGS
from ..outputs import GEOTIFF
from ..segmentation import ForestSettings, LabelRaster, PolygonLabels, classify_raster, read_polygons
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


def cmd_classify(args: argparse.Namespace) -> int:
    """Fit the forest, write the class map (and probabilities), print the validation scores."""
    check_cli_outputs(
        args, {"output": args.output, "--probabilities": args.probabilities,
               "--embeddings-output": args.embeddings_output},
        {"input": args.input, "--polygons": args.polygons, "--label-raster": args.label_raster,
         "--embeddings": args.embeddings},
        {"output": GEOTIFF, "--probabilities": GEOTIFF, "--embeddings-output": GEOTIFF},
    )
    if bool(args.polygons) == bool(args.label_raster):
        raise SettingsError("give either --polygons FILE --class-field NAME or --label-raster FILE")
    names = class_names(args.class_name)
    labels: Union[PolygonLabels, LabelRaster]
    if args.polygons:
        if not args.class_field:
            raise SettingsError("--polygons needs --class-field (the attribute holding each polygon's class)")
        labels = read_polygons(args.polygons, args.class_field, names=names)
    else:
        labels = LabelRaster(args.label_raster, ignore_values=args.ignore_value or (), names=names)
    forest = ForestSettings(features=args.features, n_estimators=args.trees, min_samples_leaf=args.min_samples_leaf,
                            max_samples=args.max_samples,
                            val_fraction=args.val_fraction, seed=args.seed,
                            embedding_components=args.components or None)
    settings = inference_settings(args)
    model = load_model_from(args) if forest.features != "bands" and not args.embeddings else None
    bar = Progress("classify")
    try:
        res = classify_raster(
            args.input, labels, args.output, model, forest=forest, embeddings=args.embeddings,
            embedding_format=args.embedding_format, embeddings_output=args.embeddings_output, settings=settings,
            sensor=args.sensor, overrides=band_overrides(args.band), region=region_from(args),
            probabilities_output=args.probabilities, progress=bar, overwrite=args.overwrite,
        )
    finally:
        bar.close()
    shares = ", ".join(f"{n} {f:.0%}" for n, f in zip(res.class_names, res.class_fractions))
    print(f"{res.path} + style {res.style}: {shares}; {forest.n_estimators} trees on {sum(res.train_pixels)} "
          f"training pixels × {res.feature_count} features ({forest.features}); fit {res.fit_seconds:.1f} s, map "
          f"{res.predict_seconds:.1f} s, total {res.seconds:.1f} s")
    for note in res.notes:
        print(f"note: {note}")
    m = res.metrics
    if m:
        per = ", ".join(f"{name} IoU {100 * v['iou']:.1f} / F1 {100 * v['f1']:.1f}"
                        for name, v in m["classes"].items() if v["iou"] is not None)
        print(f"validation ({m['split']}): mIoU {100 * m['miou']:.1f} %, macro F1 {100 * m['macro_f1']:.1f} %; {per}")
    else:
        print("no validation split (every class has a single polygon, or --val-fraction 0)")
    for extra in (res.probabilities, res.embeddings.path if res.embeddings and args.embeddings_output else None):
        if extra:
            print(extra)
    return 0


def register(sub: Any) -> None:
    """Add ``classify`` to the ``msfm`` sub-parsers."""
    p = sub.add_parser("classify", help="classify every pixel with a random forest fitted on polygons (or a label "
                       "raster): raw bands + upsampled embeddings, no model file")
    p.add_argument("input", help="input raster")
    p.add_argument("output", help="class GeoTIFF (uint8, nodata 255, colour table) + .qml style beside it")
    p.add_argument("--polygons", help="vector file of labelled polygons (GeoPackage, shapefile, GeoJSON, ...)")
    p.add_argument("--class-field", help="attribute of --polygons holding the class")
    p.add_argument("--label-raster", help="raster of class values instead of polygons (any CRS/grid)")
    p.add_argument("--ignore-value", type=float, action="append", help="label-raster value meaning unlabelled")
    p.add_argument("--class-name", action="append", metavar="VALUE=NAME", help="name a class value (repeatable)")
    p.add_argument("--features", choices=["bands+embeddings", "bands", "embeddings"], default="bands+embeddings",
                   help="per-pixel features (default bands+embeddings; bands: the classical classifier, no model)")
    p.add_argument("--trees", type=int, default=200, help="trees of the forest (default 200)")
    p.add_argument("--max-samples", type=int, default=200_000,
                   help="most labelled pixels used to fit, balanced per class (default 200000; lower for speed)")
    p.add_argument("--min-samples-leaf", type=int, default=1, help="fewest training pixels per leaf (default 1)")
    p.add_argument("--components", type=int, default=16,
                   help="principal components of the embeddings used as features (default 16; 0 = all dimensions)")
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="share of each class's polygons (or label blocks) held out for validation (default 0.25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probabilities", help="also write class probabilities (float32, one band per class)")
    p.add_argument("--embeddings", help="reuse this embedding raster of the input instead of running the model (ours, "
                   "or AlphaEarth / TESSERA / any float embedding raster, with --features embeddings)")
    p.add_argument("--embedding-format", choices=ENCODINGS, help="how --embeddings stores its values, where the "
                   "file does not say (default: detected)")
    p.add_argument("--embeddings-output", help="keep the embeddings computed on the way here")
    add_inference_options(p)
    add_region_option(p)
    add_overwrite_option(p)
    p.set_defaults(func=cmd_classify)
