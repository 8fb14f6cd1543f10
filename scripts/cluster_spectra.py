"""Does adding the raw spectra to the embeddings help pixel-resolution k-means find flood water? (issue 15)

Chips: the hand-labelled Sen1Floods11 chips of ``../shared/data`` (SOURCES.md): India 900498 Sentinel-2 L1C
(13 bands), India 900498 Sentinel-1 (VV, VH dB) and USA 905409 Sentinel-1, each 512 × 512 px with its water label
(−1 no data, 0 not water, 1 water).

Score: the **best single-cluster water IoU**, max over clusters c of IoU(class == c, water) on the pixels that are
labelled and classified — how well one cluster alone traces the water, as an analyst picking "the water class" would.

Methods, for each k:

- ``raw bands``: :class:`sklearn.cluster.KMeans` (``n_init=4``) on the pixels' bands normalised with the statistics
  the embedding raster records (:func:`engine.spectral.normalize`), fitted on the same spread sample of pixels
  (same positions, same size) as the spectral clustering, then applied to every pixel;
- ``w = 0``: :func:`engine.cluster_raster` as it is by default (embeddings only, pixel resolution, guided upsampling);
- ``w > 0``: :func:`engine.cluster_raster` with ``spectral_weight=w`` (embedding ⊕ w-weighted spectra per pixel).

The embeddings are computed once per chip with the default inference settings (sensor preset's scale, 224-px tiles,
112-px overlap) and reused.

Usage::

    .venv/bin/python scripts/cluster_spectra.py --model smarties-demo-tiny --k 3 4 6 --weights 0 0.5 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.atomic import write_text  # noqa: E402

INDIA_LABEL = "sen1floods11_india_900498_water_label.tif"
CHIPS = (
    ("India S2", "sen1floods11_india_900498_s2_l1c.tif", "sentinel2_l1c", INDIA_LABEL),
    ("India S1", "sen1floods11_india_900498_s1_db.tif", "sentinel1_grd_db", INDIA_LABEL),
    ("USA S1", "sen1floods11_usa_905409_s1_db.tif", "sentinel1_grd_db", "sen1floods11_usa_905409_water_label.tif"),
)


def best_cluster_iou(classes: np.ndarray, label: np.ndarray) -> float:
    """Max over clusters of the water IoU of one cluster; ``classes`` uint8 (255 = nodata), ``label`` −1/0/1."""
    valid = (label >= 0) & (classes != 255)
    water = (label == 1) & valid
    best = 0.0
    for c in np.unique(classes[valid]):
        pred = (classes == c) & valid
        best = max(best, float((pred & water).sum() / (pred | water).sum()))
    return best


def raw_classes(source: Path, embeddings: Path, k: int, seed: int, max_samples: int) -> tuple[np.ndarray, int]:
    """k-means on the normalised raw bands, fitted on the spectral clustering's pixel sample → classes, sample size."""
    from sklearn.cluster import KMeans

    from engine.maps import PixelFeatures, pixel_window

    with rasterio.open(embeddings) as grid, rasterio.open(source) as src:
        features = PixelFeatures(grid, src, 1.0)
        target = pixel_window(grid, src)
        d = grid.count
        sample = features.sample(target, max_samples, seed)[:, d:]  # z / √C: the same positions and size
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(sample)
        full = features.features(target)[d:]
    flat = full.reshape(full.shape[0], -1).T
    ok = np.isfinite(flat).all(axis=1)
    out = np.full(len(flat), 255, np.uint8)
    out[ok] = km.predict(flat[ok]).astype(np.uint8)
    return out.reshape(full.shape[1:]), len(sample)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--model", default="smarties-demo-tiny")
    p.add_argument("--k", type=int, nargs="+", default=[3, 4, 6])
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="k-means seeds (the table shows their mean)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-samples", type=int, default=50000)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)

    from engine import InferenceSettings, load_model
    from engine.maps import ClusterSettings, cluster_raster, embed_raster

    data = Path(args.data)
    model = load_model(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, image, sensor, label_file in CHIPS:
            with rasterio.open(data / label_file) as ds:
                label = ds.read(1)
            emb = Path(tmp) / f"{Path(image).stem}_emb.tif"
            embed_raster(data / image, emb, model, settings=InferenceSettings(threads=args.threads), sensor=sensor)
            for k in args.k:
                for seed in args.seeds:
                    classes, n = raw_classes(data / image, emb, k, seed, args.max_samples)
                    rows.append({"chip": name, "method": "raw bands", "k": k, "seed": seed, "samples": n,
                                 "iou": best_cluster_iou(classes, label)})
                    for w in args.weights:
                        out = Path(tmp) / "classes.tif"
                        res = cluster_raster(
                            data / image, out, embeddings=emb, overwrite=True,
                            clustering=ClusterSettings(k=k, seed=seed, spectral_weight=w,
                                                       max_samples=args.max_samples))
                        with rasterio.open(res.path) as ds:
                            classes = ds.read(1)
                        rows.append({"chip": name, "method": f"w = {w:g}", "k": k, "seed": seed,
                                     "samples": res.samples, "iou": best_cluster_iou(classes, label)})
                        print(rows[-1], flush=True)

    methods = list(dict.fromkeys(r["method"] for r in rows))
    print(f"best single-cluster water IoU (mean over seeds {args.seeds}), model {args.model}")
    print("| chip | k | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for name, *_ in CHIPS:
        for k in args.k:
            cells = [np.mean([r["iou"] for r in rows if (r["chip"], r["k"], r["method"]) == (name, k, m)])
                     for m in methods]
            print(f"| {name} | {k} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
