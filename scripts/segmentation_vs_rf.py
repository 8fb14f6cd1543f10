"""Segmentation heads vs a per-pixel random forest on a real labelled raster, plus the speed/quality trade-off.

Raster: the SpaceNet-3 Las Vegas WorldView-3 panchromatic image (0.3 m, 1300 × 1300, ``../shared/data``) with its road
label raster (255 = road: centre lines buffered to ~2 m, 3.3 % of the pixels, and incomplete — some visible roads are
not drawn, so every score is a lower bound and the ranking is what matters).

Split: the label raster is cut into 224-px blocks (36) and a quarter of them (9) is held out for validation — the
split ``msfm train-head`` makes (:func:`engine.head_training.split_groups`, same seed). Every method trains on the
training blocks only and is scored on every pixel of the validation blocks:

- ``random forest``: :class:`sklearn.ensemble.RandomForestClassifier` (100 trees, balanced class weights) on the raw
  band values of 200 000 sampled training pixels — the baseline everyone tries first;
- ``linear`` / ``upernet``: :func:`engine.head_training.fit_head` (defaults: 300 steps, balanced class weights)
  on the frozen encoder, then :func:`engine.segmentation.segment_raster` over the whole image;
- with ``--random-init``, the same heads on a randomly initialised encoder of the same geometry (is pretraining
  worth anything?).

Scores (validation pixels): mIoU, macro F1, road IoU / F1, and the relaxed road F1 (``--slack-m`` 5 m: a predicted road
pixel counts when a labelled one is near, and vice versa — the usual road metric for centre-line labels, Mnih &
Hinton 2010). Then the trade-off of ``segment`` settings (tile overlap, half-patch shifted pass) for each head: wall
time relative to the fastest setting, and the scores.

Usage::

    .venv/bin/python scripts/segmentation_vs_rf.py --data ../shared/data --seeds 0 1 2 [--random-init]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.models import load_model  # noqa: E402
from engine.segmentation import (  # noqa: E402
    IGNORE,
    HeadFitSettings,
    LabelRaster,
    fit_head,
    label_grid,
    segment_raster,
    segmentation_scores,
    split_groups,
)
from engine.settings import InferenceSettings  # noqa: E402

IMAGE = "spacenet3_vegas_pan_0.3m.tif"
LABEL = "spacenet3_vegas_road_mask.tif"
NAMES = {"0": "background", "255": "road"}


def scores(pred: np.ndarray, labels: np.ndarray, val: np.ndarray, slack_px: int) -> dict[str, float]:
    """mIoU, macro F1, road IoU/F1 and relaxed road F1 of ``pred`` (class indices) on the ``val`` pixels."""
    from scipy.ndimage import distance_transform_edt

    ok = val & (labels != IGNORE) & (pred != IGNORE)
    cm = np.bincount(labels[ok].astype(np.int64) * 2 + pred[ok], minlength=4).reshape(2, 2)
    s = segmentation_scores(cm, ["background", "road"])
    road, found = labels == 1, pred == 1
    near_label = distance_transform_edt(~road) <= slack_px
    near_pred = distance_transform_edt(~found) <= slack_px
    precision = float(near_label[found & val].mean()) if (found & val).any() else 0.0
    recall = float(near_pred[road & val].mean()) if (road & val).any() else 0.0
    relaxed = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"miou": s["miou"], "macro_f1": s["macro_f1"], "road_iou": s["classes"]["road"]["iou"],
            "road_f1": s["classes"]["road"]["f1"], "relaxed_road_f1": relaxed}


def random_forest(image: np.ndarray, labels: np.ndarray, train: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(train & (labels != IGNORE))
    idx = rng.choice(idx, size=min(200_000, idx.size), replace=False)
    x = image.reshape(image.shape[0], -1).T
    rf = RandomForestClassifier(n_estimators=100, class_weight="balanced", n_jobs=2, random_state=seed,
                                min_samples_leaf=5)
    rf.fit(x[idx], labels.ravel()[idx])
    return rf.predict(x).reshape(labels.shape).astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--model", default="smarties-demo-tiny")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--slack-m", type=float, default=5.0)
    ap.add_argument("--random-init", action="store_true", help="also fit the heads on a random-init encoder")
    ap.add_argument("--tradeoff-seed", type=int, default=0, help="seed whose heads are timed with other settings")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write all numbers here")
    args = ap.parse_args()

    image_path, label_path = args.data / IMAGE, args.data / LABEL
    model = load_model(args.model)
    encoders = {"": model}
    if args.random_init:
        from engine.models import init_from_scratch

        encoders["random-init "] = init_from_scratch(copy.deepcopy(model), seed=0)
    with rasterio.open(image_path) as ds:
        image = ds.read().astype(np.float32)
        grid = label_grid(LabelRaster(label_path, names=NAMES), ds.crs, ds.transform, ds.shape)
        gsd = abs(ds.transform.a) * 111_320 * np.cos(np.radians((ds.bounds.top + ds.bounds.bottom) / 2))
    slack_px = int(round(args.slack_m / gsd))
    labels = grid.labels
    results: dict[str, list[dict[str, float]]] = {}
    tradeoff: dict[str, list[dict[str, float]]] = {}
    settings = InferenceSettings(threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="msfm-seg-") as tmp:
        for seed in args.seeds:
            train_g, val_g, _ = split_groups(grid, 0.25, seed)
            val = np.isin(grid.groups, sorted(val_g))
            train = np.isin(grid.groups, sorted(train_g))
            t0 = time.perf_counter()
            s = scores(random_forest(image, labels, train, seed), labels, val, slack_px)
            s["seconds"] = time.perf_counter() - t0
            results.setdefault("random forest (raw band)", []).append(s)
            print(f"seed {seed} random forest: {s}", flush=True)
            for prefix, encoder in encoders.items():
                for head_type in ("linear", "upernet"):
                    name = f"{prefix}{head_type}"
                    head = Path(tmp) / f"{name.replace(' ', '_')}-{seed}.safetensors"
                    t0 = time.perf_counter()
                    fit = fit_head(image_path, LabelRaster(label_path, names=NAMES), encoder, fit=HeadFitSettings(head_type=head_type, steps=args.steps, seed=seed), output=head, settings=settings)
                    fit_s = time.perf_counter() - t0
                    runs = [(112, 1)] if seed != args.tradeoff_seed or prefix else [(0, 1), (32, 1), (112, 1), (112, 2)]
                    for overlap, shifts in runs:
                        out = Path(tmp) / f"{head.stem}-{overlap}-{shifts}.tif"
                        t0 = time.perf_counter()
                        segment_raster(image_path, out, head, encoder,
                                       settings=InferenceSettings(overlap_px=overlap, threads=args.threads),
                                       shifts=shifts)
                        seg_s = time.perf_counter() - t0
                        with rasterio.open(out) as ds:
                            s = scores(ds.read(1), labels, val, slack_px)
                        s.update(seconds=seg_s, fit_seconds=fit_s, card_miou=fit.metrics.get("miou"))
                        if (overlap, shifts) == (112, 1):
                            results.setdefault(name, []).append(s)
                        if len(runs) > 1:
                            tradeoff.setdefault(f"{name} overlap {overlap} px, shifts {shifts}", []).append(s)
                        print(f"seed {seed} {name} overlap {overlap} shifts {shifts}: "
                              f"{json.dumps({k: round(v, 4) for k, v in s.items() if v is not None})}", flush=True)

    keys = ["miou", "macro_f1", "road_iou", "road_f1", "relaxed_road_f1"]
    print(f"\nValidation pixels of {len(args.seeds)} seed(s) (mean ± std over seeds), {IMAGE}, slack "
          f"{args.slack_m:g} m = {slack_px} px, model {args.model}, {args.steps} steps")
    print("| method | mIoU % | macro F1 % | road IoU % | road F1 % | relaxed road F1 % | fit s |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        cells = []
        for k in keys:
            v = np.array([r[k] for r in rows]) * 100
            cells.append(f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}")
        fit = np.mean([r.get("fit_seconds", r["seconds"]) for r in rows])
        print(f"| {name} | {' | '.join(cells)} | {fit:.0f} |")
    if tradeoff:
        print(f"\nsegment settings (seed {args.tradeoff_seed}): time relative to overlap 0 / shifts 1 of the same head")
        print("| head, setting | segment s | × time | mIoU % | road F1 % | relaxed road F1 % |")
        print("|---|---|---|---|---|---|")
        for name, rows in tradeoff.items():
            base = tradeoff[name.split(" overlap")[0] + " overlap 0 px, shifts 1"][0]["seconds"]
            r = rows[0]
            print(f"| {name} | {r['seconds']:.1f} | {r['seconds'] / base:.2f} | {100 * r['miou']:.1f} | "
                  f"{100 * r['road_f1']:.1f} | {100 * r['relaxed_road_f1']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "tradeoff": tradeoff}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
