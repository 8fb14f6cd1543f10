"""Does k-means on a model's embeddings beat k-means on the raw bands? Measured on a real labelled raster.

Raster: the SpaceNet-3 Las Vegas WorldView-3 panchromatic image (0.3 m, 1300 × 1300) of ``../shared/data`` with its
road label (255 = road; the label is incomplete: some visible roads are not drawn, so every score is a lower bound
and the ranking is what matters).

For each method and k, the class map (one class per input pixel) is compared with the road label:

- ``road F1``: the union of clusters that best matches the road label (clusters ranked by their road share, the best
  prefix kept) — how well *some* set of clusters traces the roads, as an analyst would pick them;
- ``relaxed F1``: the same with a slack of ``--slack-m`` (5 m) around the labelled centre lines (the usual road
  metric for centre-line labels, Mnih & Hinton 2010), so a cluster that covers the whole road surface is not
  penalised for the label's narrow buffer;
- ``AMI``: adjusted mutual information of the clusters and road / not-road (:func:`sklearn.metrics.adjusted_mutual_info_score`).

Methods: k-means on the raw band (pixel values, :class:`sklearn.cluster.KMeans` fitted on 50 000 sampled pixels),
k-means on the embeddings of each ``--model`` (:func:`engine.cluster_raster`, pixel resolution, guided upsampling,
the defaults of ``msfm cluster``), and on those of a randomly initialised encoder of the first model's geometry
(is the training worth anything?).

Usage::

    .venv/bin/python scripts/kmeans_vs_raw.py --data ../shared/data --k 4 8 16 --model smarties-demo-tiny
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.atomic import write_text  # noqa: E402

IMAGE = "spacenet3_vegas_pan_0.3m.tif"
LABEL = "spacenet3_vegas_road_mask.tif"


def road_scores(classes: np.ndarray, road: np.ndarray, slack_px: int) -> dict[str, float]:
    """Road scores of the best union of clusters, and AMI.

    ``classes`` uint8 ``[H, W]`` (255 = nodata), ``road`` bool ``[H, W]``. Clusters are ranked by their share of road
    pixels and the prefix with the best F1 is kept (all clusters together, "everything is road", is excluded). The
    relaxed scores (Mnih & Hinton 2010, the usual road-extraction metric for centre-line labels) count a predicted
    pixel as correct when a labelled road pixel lies within ``slack_px``, and a labelled pixel as found when a
    predicted one does; they are computed for the prefix ranked by the share of pixels near a road.
    """
    from scipy.ndimage import distance_transform_edt

    valid = classes != 255
    c, r = classes[valid].astype(np.int64), road[valid]
    near = (distance_transform_edt(~road) <= slack_px)[valid]
    n = np.bincount(c, minlength=256)
    out = {"ami": adjusted_mutual_info_score(r, c)}
    for name, target in (("strict", r), ("relaxed", near)):
        hits = np.bincount(c, weights=target, minlength=256)
        order = [i for i in np.argsort(-(hits / np.maximum(n, 1))) if n[i] > 0][:-1]
        best_f1, chosen = 0.0, 0
        for j in range(1, len(order) + 1):
            pred = np.isin(c, order[:j])
            if name == "strict":
                tp = float((pred & r).sum())
                precision, recall = tp / max(pred.sum(), 1), tp / max(r.sum(), 1)
            else:
                full = np.zeros(classes.shape, bool)
                full[valid] = pred
                precision = float(near[pred].mean()) if pred.any() else 0.0
                recall = float((distance_transform_edt(~full)[road] <= slack_px).mean())
            f1 = 2 * precision * recall / max(precision + recall, 1e-12)
            if f1 > best_f1:
                best_f1, chosen = f1, j
        out[f"{name}_f1"] = 100 * best_f1
        out[f"{name}_clusters"] = chosen
    return out


def raw_kmeans(image: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means of the pixel values ``[C, H, W]`` → classes ``[H, W]`` uint8."""
    x = image.reshape(image.shape[0], -1).T.astype(np.float32)
    x = (x - x.mean(0)) / x.std(0).clip(1e-6)
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), size=min(50_000, len(x)), replace=False)]
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(sample)
    return km.predict(x).reshape(image.shape[1:]).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--model", action="append", help="model name or file (repeatable; default smarties-demo-tiny)")
    p.add_argument("--k", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="k-means seeds (the table shows mean ± sd)")
    p.add_argument("--slack-m", type=float, default=5.0, help="relaxed-score slack in metres (≈ a road's half width)")
    p.add_argument("--no-random-init", action="store_true", help="skip the randomly initialised encoder")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)

    import torch

    from engine.maps import ClusterSettings, cluster_raster
    from engine.models import SmartiesEncoder, init_from_scratch, load_model

    data = Path(args.data)
    with rasterio.open(data / IMAGE) as ds:
        image = ds.read()
        gsd_m = abs(ds.res[0]) * (111_320 * np.cos(np.radians((ds.bounds.top + ds.bounds.bottom) / 2))
                                  if ds.crs.is_geographic else 1.0)
    with rasterio.open(data / LABEL) as ds:
        road = ds.read(1) > 127
    slack = max(1, round(args.slack_m / gsd_m))
    print(f"{IMAGE}: {image.shape[2]}×{image.shape[1]} px of ≈ {gsd_m:.2f} m, road = {100 * road.mean():.1f} % of the "
          f"pixels; relaxed slack {slack} px ≈ {slack * gsd_m:.1f} m")

    rows = [{"method": "raw band", "k": k, "seed": seed, **road_scores(raw_kmeans(image, k, seed), road, slack)}
            for k in args.k for seed in args.seeds]
    models = [(name, load_model(name)) for name in args.model or ["smarties-demo-tiny"]]
    if not args.no_random_init and isinstance(models[0][1], SmartiesEncoder):
        fresh = init_from_scratch(copy.deepcopy(models[0][1]), seed=0).eval()
        models.append((f"random init ({Path(models[0][0]).stem} geometry)", fresh))
    with tempfile.TemporaryDirectory() as tmp:
        emb, out = Path(tmp) / "emb.tif", Path(tmp) / "classes.tif"
        for name, model in models:
            first = True
            for k in args.k:
                for seed in args.seeds:
                    with torch.inference_mode():  # the embeddings are computed once per model, then reused
                        res = cluster_raster(data / IMAGE, out, model, clustering=ClusterSettings(k=k, seed=seed), embeddings=None if first else emb, embeddings_output=emb if first else None)
                    first = False
                    with rasterio.open(res.path) as ds:
                        classes = ds.read(1)
                    rows.append({"method": name, "k": k, "seed": seed, **road_scores(classes, road, slack)})
            emb.unlink()

    print(f"mean ± sd over k-means seeds {args.seeds}")
    print(f"{'method':45s} {'k':>3s}  {'road F1':>11s}  {'relaxed F1':>11s}  {'AMI':>13s}")
    for method in dict.fromkeys(r["method"] for r in rows):
        for k in args.k:
            sel = [r for r in rows if r["method"] == method and r["k"] == k]
            cells = [f"{np.mean([r[m] for r in sel]):{w}.{d}f} ± {np.std([r[m] for r in sel]):.{d}f}"
                     for m, w, d in (("strict_f1", 5, 1), ("relaxed_f1", 5, 1), ("ami", 5, 3))]
            print(f"{method[:45]:45s} {k:3d}  " + "  ".join(cells))
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
