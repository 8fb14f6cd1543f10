"""How good are pixel-resolution class maps? Water mapping on the demo Sentinel-2 scene.

Reference: a physical water mask from the scene itself, NDWI = (B03 − B08) / (B03 + B08) > 0 (McFeeters 1996) — the
kind of "flood-like" target where a 16-px patch map is at a disadvantage against plain per-pixel k-means on raw bands.
Each method clusters the scene into k classes; every class is then labelled water or land by majority vote against
the reference (the best any user could do by naming classes), and the water IoU and overall accuracy are reported:

- ``raw-kmeans``: per-pixel k-means on the normalised raw bands (the baseline everyone would try first);
- ``patch``: one class per 16-px patch (``msfm cluster --resolution patch``), resampled to pixels (nearest);
- ``bilinear``: embeddings interpolated bilinearly to pixels, then classified;
- ``guided``: cell classes upsampled by joint bilateral upsampling guided by the pixels (the default).

Run: ``.venv/bin/python bench/pixel_resolution.py [--model NAME] [--k 8]``. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCENE = REPO / "demo" / "s2_l1c_virginia_13band_10m.tif"


def water_reference(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        names = list(ds.descriptions)
        green = ds.read(names.index("B03") + 1).astype(np.float64)
        nir = ds.read(names.index("B08") + 1).astype(np.float64)
    return (green - nir) / np.maximum(green + nir, 1e-9) > 0


def score(labels: np.ndarray, water: np.ndarray) -> dict:
    valid = labels != 255
    pred = np.zeros(water.shape, bool)
    for c in np.unique(labels[valid]):
        sel = labels == c
        pred[sel] = water[sel].mean() > 0.5
    inter = (pred & water & valid).sum()
    union = ((pred | water) & valid).sum()
    return {"water_iou": float(inter / union), "accuracy": float((pred == water)[valid].mean())}


def raw_kmeans(path: Path, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    from engine.raster import band_statistics
    from engine.spectral import normalize, resolve_bands

    with rasterio.open(path) as ds:
        mapping = resolve_bands(ds)
        x = normalize(ds.read(mapping.indexes), band_statistics(ds, mapping))
    flat = x.reshape(x.shape[0], -1).T
    sample = flat[np.random.default_rng(seed).choice(len(flat), 50000, replace=False)]
    km = KMeans(n_clusters=k, random_state=seed, n_init=4).fit(sample)
    return km.predict(flat).reshape(x.shape[1:]).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smarties-demo-tiny")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from engine.maps import ClusterSettings, cluster_raster
    from engine.models import load_model

    water = water_reference(SCENE)
    results = {"model": args.model, "k": args.k, "water_fraction": float(water.mean())}
    t = time.perf_counter()
    results["raw-kmeans"] = score(raw_kmeans(SCENE, args.k, args.seed), water) | {"seconds": time.perf_counter() - t}
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        emb = Path(tmp) / "emb.tif"
        for name, kwargs in (
            ("patch", dict(resolution="patch")),
            ("bilinear", dict(resolution="pixel", pixel_method="bilinear")),
            ("guided", dict(resolution="pixel", pixel_method="guided")),
        ):
            t = time.perf_counter()
            out = Path(tmp) / f"{name}.tif"
            if emb.exists():
                res = cluster_raster(SCENE, out, clustering=ClusterSettings(k=args.k, seed=args.seed), embeddings=emb, **kwargs)
            else:
                res = cluster_raster(SCENE, out, model, clustering=ClusterSettings(k=args.k, seed=args.seed), embeddings_output=emb, **kwargs)
            with rasterio.open(out) as ds:
                labels = ds.read(1, out_shape=water.shape, resampling=rasterio.enums.Resampling.nearest)
            results[name] = score(labels, water) | {"seconds": time.perf_counter() - t}
    for name in ("raw-kmeans", "patch", "bilinear", "guided"):
        r = results[name]
        print(f"{name:<11} water IoU {r['water_iou']:.3f}  accuracy {r['accuracy']:.3f}  ({r['seconds']:.1f} s)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
