"""Quality benchmark: our maps against the classical methods, few-shot, on every labelled raster of ../shared/data.

Issue 15: the product must give a better map than the classical tools with the same effort. This script prints one
markdown table (rows = method, columns = raster, cells = mean ± std over seeds of the metric) with the mean fit and
predict seconds of each method. It supersedes the one-raster comparisons ``scripts/segmentation_vs_rf.py`` and
``scripts/kmeans_vs_raw.py`` for the ranking (those keep their extra metrics: relaxed road F1, AMI, tile settings).

Rasters (``--data``, SOURCES.md there):

- Sen1Floods11 hand-labelled flood chips (label int16: −1 no data, 0 not water, 1 water): India S2 (13 bands L1C),
  India S1 and USA S1 (VV/VH dB, NaN nodata). Metric: water IoU.
- SpaceNet-3 Las Vegas WorldView-3 pan (0.3 m) with its road mask (255 = road; incomplete, so scores are lower
  bounds). Metrics: road IoU and mIoU (road, background).
- BigEarthNet patches are left out: they carry patch-level CORINE multi-labels only, which give no pixel reference
  (a line in the output says so).

Few-shot protocol, per raster and seed: ``N`` squares of ``s × s`` pixels per class (flood chips 10 of 9 × 9, roads
20 of 5 × 5), every pixel valid (image and label) and of that class, non-overlapping, drawn at random with the seed.
They are given to every supervised method as :class:`engine.segmentation.PolygonLabels` in the raster's CRS (pixel
edges through the raster's transform, so exactly the square's pixel centres are inside). Every method is scored on
all valid label pixels outside the squares (IoU = TP / (TP + FP + FN), :func:`engine.segmentation.segmentation_scores`;
a method's nodata pixel counts as "no class").

Methods (:data:`METHODS`, one registry entry each):

- ``k-means, raw bands``: :class:`sklearn.cluster.KMeans` on the bands standardised per band, fitted on as many
  sampled pixels as :class:`engine.maps.ClusterSettings` samples (50 000), applied to every pixel;
- ``k-means, embeddings``: :func:`engine.cluster_raster` at pixel resolution (defaults), on embeddings computed once
  per raster with :func:`engine.embed_raster`;
- both unsupervised (no squares): the best single cluster's IoU with the target class (chosen with the reference
  itself, so an optimistic bound of what an analyst picking one cluster gets), max over k ∈ {3, 4, 6}, the chosen k
  is reported;
- ``random forest, raw bands``: :class:`sklearn.ensemble.RandomForestClassifier` (200 trees, balanced class weights)
  on the squares' pixels;
- ``linear head`` / ``UPerNet head``: :func:`engine.fit_head` (``val_fraction=0``: all squares train) then
  :func:`engine.segment_raster`;
- ``pixel head``: the same with ``head_type="pixel"`` (two blocks ⊕ the input bands at full resolution);
- ``random forest, bands + embeddings``: :func:`engine.segmentation.classify_raster` (200 trees, bands ⊕ 16
  principal components of the embeddings, no validation split) on the squares;
- ``k-means, embeddings + spectra (weight 1)``: :func:`engine.cluster_raster` with ``spectral_weight=1``;
- every encoder method also runs with a randomly initialised encoder of the same geometry
  (:func:`engine.models.init_from_scratch`, seed 0): "… (random init)". Is pretraining worth anything?

Timings: fit = fitting on the squares (k-means: fitting the clusters); predict = producing the map of the whole
raster (embedding k-means: the embeddings, counted once per raster, plus clustering and writing the map of the chosen
k). Run with ``--threads 1`` on a shared machine; seconds are comparable within one run only.

Usage::

    .venv/bin/python bench/quality.py [--data ../shared/data] [--seeds 0 1 2] [--datasets "India S2" ...]
        [--methods "linear head" ...] [--method-seeds "UPerNet head" 1] [--threads 1] [--json numbers.json] [--quick]

Ctrl-C (SIGINT) stops the run and prints the table of what was measured so far, marked as partial.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import rasterio
from rasterio.enums import Resampling

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "smarties-demo-tiny"
K_VALUES = (3, 4, 6)
KMEANS_SAMPLES = 50_000  # engine.maps.ClusterSettings().max_samples: the same sample size as ours


@dataclass(frozen=True)
class Dataset:
    """A labelled raster: the image, its label (same grid), the class values and the square protocol.

    ``values`` maps label value → class index (0 = background, 1 = target); other label values are invalid.
    """

    image: str
    label: str
    values: dict[int, int]
    names: tuple[str, str]
    squares: int
    size: int
    miou: bool = False


DATASETS = {
    "India S2": Dataset("sen1floods11_india_900498_s2_l1c.tif", "sen1floods11_india_900498_water_label.tif",
                        {0: 0, 1: 1}, ("not water", "water"), 10, 9),
    "India S1": Dataset("sen1floods11_india_900498_s1_db.tif", "sen1floods11_india_900498_water_label.tif",
                        {0: 0, 1: 1}, ("not water", "water"), 10, 9),
    "USA S1": Dataset("sen1floods11_usa_905409_s1_db.tif", "sen1floods11_usa_905409_water_label.tif",
                      {0: 0, 1: 1}, ("not water", "water"), 10, 9),
    "Vegas roads": Dataset("spacenet3_vegas_pan_0.3m.tif", "spacenet3_vegas_road_mask.tif",
                           {0: 0, 255: 1}, ("background", "road"), 20, 5, miou=True),
}
QUICK_DATASETS = ("India S2", "India S1")
BIGEARTHNET_NOTE = ("BigEarthNet patches (bigearthnet_mm/) left out: their labels are patch-level CORINE multi-labels "
                    "(which classes occur somewhere in the 120 × 120 px patch), so there is no pixel reference to "
                    "draw squares from or to score a map against.")


@dataclass
class Task:
    """One raster and seed as the methods see it.

    Attributes:
        image: The image raster path.
        labels: ``uint8 [H, W]`` class index (0 background, 1 target), 255 where invalid.
        valid: ``bool [H, W]`` valid image and label pixels.
        train: ``bool [H, W]`` the squares' pixels.
        polygons: The squares as :class:`engine.segmentation.PolygonLabels`.
        seed: The seed.
        threads: CPU threads.
        tmp: A scratch folder for this raster (kept across seeds: embeddings are reused).
        encoders: ``{"pretrained": model, "random": random-init model}``.
        cache: Per-raster cache shared by the seeds (embedding rasters and their seconds).
    """

    image: Path
    labels: np.ndarray
    valid: np.ndarray
    train: np.ndarray
    polygons: Any
    seed: int
    threads: int
    tmp: Path
    encoders: dict[str, Any]
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class Output:
    """What a method returns.

    Supervised: ``classes`` ``uint8 [H, W]`` in label class indices (255 = nodata). Unsupervised: ``clusters``
    ``{k: uint8 [H, W] cluster map}`` and per-k ``predict_s``; the harness keeps the best cluster of the best k.
    """

    classes: Optional[np.ndarray] = None
    clusters: Optional[dict[int, np.ndarray]] = None
    fit_s: Any = None  # seconds, or {k: seconds} for unsupervised methods
    predict_s: Any = None


# ---------------------------------------------------------------- methods


def _standardised_pixels(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32 [N, C] of the valid image pixels standardised per band, flat indices of those pixels)``."""
    with rasterio.open(task.image) as ds:
        image = ds.read().astype(np.float32)
        ok = (ds.dataset_mask() > 0) & np.isfinite(image).all(0)
    idx = np.flatnonzero(ok)
    x = image.reshape(image.shape[0], -1)[:, idx].T
    return (x - x.mean(0)) / x.std(0).clip(1e-6), idx


def kmeans_raw(task: Task) -> Output:
    """sklearn KMeans on the standardised bands, for each k of K_VALUES (unsupervised)."""
    from sklearn.cluster import KMeans

    x, idx = _standardised_pixels(task)
    rng = np.random.default_rng(task.seed)
    sample = x[rng.choice(len(x), size=min(KMEANS_SAMPLES, len(x)), replace=False)]
    clusters, fit_s, predict_s = {}, {}, {}
    for k in K_VALUES:
        t0 = time.perf_counter()
        km = KMeans(n_clusters=k, n_init=4, random_state=task.seed).fit(sample)
        t1 = time.perf_counter()
        out = np.full(task.labels.size, 255, np.uint8)
        out[idx] = km.predict(x)
        clusters[k] = out.reshape(task.labels.shape)
        fit_s[k], predict_s[k] = t1 - t0, time.perf_counter() - t1
    return Output(clusters=clusters, fit_s=fit_s, predict_s=predict_s)


def _embeddings(task: Task, encoder: str) -> tuple[Path, float]:
    """The embedding raster of ``task.image`` by ``encoder`` (computed once per raster) and its seconds."""
    from engine import InferenceSettings, embed_raster

    key = f"embeddings {encoder}"
    if key not in task.cache:
        path = task.tmp / f"embeddings-{encoder}.tif"
        t0 = time.perf_counter()
        embed_raster(task.image, path, task.encoders[encoder], settings=InferenceSettings(threads=task.threads))
        task.cache[key] = (path, time.perf_counter() - t0)
    return task.cache[key]


def kmeans_embeddings(task: Task, encoder: str = "pretrained", **cluster: Any) -> Output:
    """engine.cluster_raster (pixel resolution, defaults + ``cluster`` settings) for each k (unsupervised)."""
    from engine import ClusterSettings, InferenceSettings, cluster_raster

    emb, emb_s = _embeddings(task, encoder)
    clusters, predict_s = {}, {}
    for k in K_VALUES:
        out = task.tmp / f"clusters-{encoder}-{k}-{task.seed}.tif"
        t0 = time.perf_counter()
        res = cluster_raster(task.image, out, clustering=ClusterSettings(k=k, seed=task.seed, **cluster),
                             embeddings=emb, settings=InferenceSettings(threads=task.threads), overwrite=True)
        predict_s[k] = emb_s + time.perf_counter() - t0
        clusters[k] = _on_label_grid(res.path, task.labels.shape)
    return Output(clusters=clusters, predict_s=predict_s)


def random_forest(task: Task) -> Output:
    """sklearn RandomForestClassifier (200 trees, balanced) on the squares' raw band values."""
    from sklearn.ensemble import RandomForestClassifier

    with rasterio.open(task.image) as ds:
        image = ds.read().astype(np.float32)
        ok = (ds.dataset_mask() > 0) & np.isfinite(image).all(0)
    x = image.reshape(image.shape[0], -1).T
    train = np.flatnonzero(task.train.ravel())
    t0 = time.perf_counter()
    rf = RandomForestClassifier(n_estimators=200, class_weight="balanced", n_jobs=task.threads,
                                random_state=task.seed).fit(x[train], task.labels.ravel()[train])
    t1 = time.perf_counter()
    idx = np.flatnonzero(ok)
    out = np.full(task.labels.size, 255, np.uint8)
    out[idx] = rf.predict(x[idx])
    return Output(classes=out.reshape(task.labels.shape), fit_s=t1 - t0, predict_s=time.perf_counter() - t1)


def head(task: Task, head_type: str, encoder: str = "pretrained", **fit: Any) -> Output:
    """engine.fit_head on the squares (no validation split), then engine.segment_raster."""
    from engine import HeadFitSettings, InferenceSettings, fit_head, segment_raster

    settings = InferenceSettings(threads=task.threads)
    model = task.encoders[encoder]
    path = task.tmp / f"head-{head_type}-{encoder}-{task.seed}.safetensors"
    t0 = time.perf_counter()
    fit_head(task.image, task.polygons, model, output=path, settings=settings, overwrite=True,
             fit=HeadFitSettings(head_type=head_type, val_fraction=0, seed=task.seed, **fit))  # type: ignore[arg-type]
    t1 = time.perf_counter()
    out = task.tmp / f"classes-{head_type}-{encoder}-{task.seed}.tif"
    res = segment_raster(task.image, out, path, model, settings=settings, overwrite=True)
    t2 = time.perf_counter()
    return Output(classes=_on_label_grid(res.path, task.labels.shape), fit_s=t1 - t0, predict_s=t2 - t1)


def forest_with_embeddings(task: Task, encoder: str = "pretrained") -> Output:
    """engine.segmentation.classify_raster: a random forest on bands ⊕ embeddings (computed once per raster)."""
    from engine import InferenceSettings
    from engine.segmentation import ForestSettings, classify_raster

    emb, emb_s = _embeddings(task, encoder)
    out = task.tmp / f"forest-{encoder}-{task.seed}.tif"
    res = classify_raster(task.image, task.polygons, out, embeddings=emb, overwrite=True,
                          forest=ForestSettings(val_fraction=0, seed=task.seed),
                          settings=InferenceSettings(threads=task.threads))
    return Output(classes=_on_label_grid(res.path, task.labels.shape), fit_s=res.fit_seconds,
                  predict_s=emb_s + res.predict_seconds)


def _on_label_grid(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A class map read onto the label grid: as it is when it is on it, else nearest resampling (same bounds).

    segment_raster wrote on the model-pixel grid (``scale`` times finer) before it wrote on the input grid; both work.
    """
    with rasterio.open(path) as ds:
        if ds.shape == tuple(shape):
            return ds.read(1)
        return ds.read(1, out_shape=tuple(shape), resampling=Resampling.nearest)


@dataclass(frozen=True)
class Method:
    """A registry entry: the function and whether it learns from the squares."""

    run: Callable[[Task], Output]
    supervised: bool


# The registry: one line per method. Encoder methods are registered twice, with the bundled model and random init.
METHODS: dict[str, Method] = {
    "k-means, raw bands": Method(kmeans_raw, False),
    "k-means, embeddings": Method(kmeans_embeddings, False),
    "k-means, embeddings (random init)": Method(partial(kmeans_embeddings, encoder="random"), False),
    "random forest, raw bands": Method(random_forest, True),
    "linear head": Method(partial(head, head_type="linear"), True),
    "linear head (random init)": Method(partial(head, head_type="linear", encoder="random"), True),
    "UPerNet head": Method(partial(head, head_type="upernet"), True),
    "UPerNet head (random init)": Method(partial(head, head_type="upernet", encoder="random"), True),
    "pixel head": Method(partial(head, head_type="pixel"), True),
    "pixel head (random init)": Method(partial(head, head_type="pixel", encoder="random"), True),
    "random forest, bands + embeddings": Method(forest_with_embeddings, True),
    "random forest, bands + embeddings (random init)": Method(partial(forest_with_embeddings, encoder="random"), True),
    "k-means, embeddings + spectra (weight 1)": Method(partial(kmeans_embeddings, spectral_weight=1.0), False),
}


# ---------------------------------------------------------------- protocol


def load_labels(data: Path, ds_spec: Dataset) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """``(labels uint8 [H, W] class index / 255, valid bool [H, W], crs, transform)`` of a dataset.

    Valid = a label value of ``ds_spec.values`` and a valid image pixel (the dataset mask: nodata, NaN, alpha).

    Raises:
        ValueError: The label raster is not on the image's grid.
    """
    with rasterio.open(data / ds_spec.image) as img, rasterio.open(data / ds_spec.label) as lab:
        if img.shape != lab.shape or not img.transform.almost_equals(lab.transform):
            raise ValueError(f"{ds_spec.label} is not on the grid of {ds_spec.image}")
        raw = lab.read(1)
        image_ok = (img.dataset_mask() > 0) & np.isfinite(img.read()).all(0)
        crs, transform = img.crs, img.transform
    labels = np.full(raw.shape, 255, np.uint8)
    for value, index in ds_spec.values.items():
        labels[raw == value] = index
    valid = (labels != 255) & image_ok
    labels[~valid] = 255
    return labels, valid, crs, transform


def draw_squares(labels: np.ndarray, n: int, size: int, seed: int) -> list[tuple[int, int, int]]:
    """``n`` non-overlapping ``size × size`` squares per class, all pixels of that class, seeded.

    Args:
        labels: ``uint8 [H, W]`` class indices (255 = invalid).
        n: Squares per class.
        size: Side in pixels (odd: squares are centred on a pixel).
        seed: Random seed.

    Returns:
        ``[(row0, col0, class)]`` top-left corners.

    Raises:
        ValueError: A class has room for fewer than ``n`` squares.
    """
    from scipy.ndimage import binary_erosion

    rng = np.random.default_rng(seed)
    taken = np.zeros(labels.shape, bool)
    out = []
    half = size // 2
    for c in sorted(set(np.unique(labels).tolist()) - {255}):
        # centres whose whole square is of class c (erosion by the square; outside the raster counts as not c)
        centres = np.flatnonzero(binary_erosion(labels == c, np.ones((size, size), bool), border_value=0))
        rng.shuffle(centres)
        got = 0
        for flat in centres:
            r, col = divmod(int(flat), labels.shape[1])
            r0, c0 = r - half, col - half
            if taken[r0 : r0 + size, c0 : c0 + size].any():
                continue
            taken[r0 : r0 + size, c0 : c0 + size] = True
            out.append((r0, c0, c))
            got += 1
            if got == n:
                break
        if got < n:
            raise ValueError(f"class {c} has room for only {got} squares of {size} px, {n} asked")
    return out


def squares_to_polygons(squares: list[tuple[int, int, int]], size: int, crs: Any, transform: Any,
                        ds_spec: Dataset) -> Any:
    """The squares as PolygonLabels in the raster's CRS (pixel edges through ``transform``), values = label values."""
    from engine.segmentation import PolygonLabels

    value_of = {index: value for value, index in ds_spec.values.items()}
    geometries, values = [], []
    for r0, c0, c in squares:
        ring = [transform * (c0 + dc, r0 + dr) for dc, dr in ((0, 0), (size, 0), (size, size), (0, size), (0, 0))]
        geometries.append({"type": "Polygon", "coordinates": [[list(p) for p in ring]]})
        values.append(value_of[c])
    names = {value_of[i]: name for i, name in enumerate(ds_spec.names)}
    return PolygonLabels(geometries, values, crs.to_wkt(), field="class", source="benchmark squares", names=names)


def scores(classes: np.ndarray, labels: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Target IoU and mIoU of a class map (255 = no class) on the ``test`` pixels."""
    from engine.segmentation import segmentation_scores

    pred = np.where(classes[test] > 1, 2, classes[test]).astype(np.int64)  # 2 = no class (nodata)
    cm = np.bincount(labels[test].astype(np.int64) * 3 + pred, minlength=9).reshape(3, 3)
    s = segmentation_scores(cm, ["0", "1", "none"])
    return {"iou": s["classes"]["1"]["iou"], "miou": s["miou"]}


def best_cluster(clusters: np.ndarray, labels: np.ndarray, test: np.ndarray) -> tuple[dict[str, float], int]:
    """Scores of the single cluster with the best target IoU (as the target class, all others background)."""
    best: Optional[tuple[dict[str, float], int]] = None
    for j in np.unique(clusters[test]):
        if j == 255:
            continue
        classes = np.where(clusters == 255, 255, (clusters == j).astype(np.uint8))
        s = scores(classes, labels, test)
        if best is None or s["iou"] > best[0]["iou"]:
            best = (s, int(j))
    assert best is not None
    return best


def run_one(name: str, method: Method, task: Task, test: np.ndarray) -> dict[str, Any]:
    """Run a method on a task and score it: ``{"iou", "miou", "fit_s", "predict_s"[, "k"]}``."""
    out = method.run(task)
    if not method.supervised:
        assert out.clusters is not None
        per_k = {k: best_cluster(c, task.labels, test)[0] for k, c in out.clusters.items()}
        k = max(per_k, key=lambda kk: per_k[kk]["iou"])
        fit_s = out.fit_s[k] if isinstance(out.fit_s, dict) else out.fit_s
        return {**per_k[k], "k": k, "fit_s": fit_s, "predict_s": out.predict_s[k],
                "iou_per_k": {kk: v["iou"] for kk, v in per_k.items()}}
    assert out.classes is not None
    return {**scores(out.classes, task.labels, test), "fit_s": out.fit_s, "predict_s": out.predict_s}


# ---------------------------------------------------------------- report


def machine() -> str:
    """CPU model and cores (lscpu), torch version."""
    model, cores = platform.processor() or "unknown CPU", "?"
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout  # noqa: S603,S607
        info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        model, cores = info.get("Model name", model).strip(), info.get("CPU(s)", cores).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import torch

    return f"{model}, {cores} cores, torch {torch.__version__}"


def _cell(values: list[float]) -> str:
    v = 100 * np.asarray(values, np.float64)
    return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def table(results: dict[str, dict[str, list[dict[str, Any]]]], datasets: list[str]) -> str:
    """The markdown table: rows = methods, columns = rasters (metric %), then mean fit / predict seconds."""
    cols = []
    for d in datasets:
        cols += [f"{d} road IoU %", f"{d} mIoU %"] if DATASETS[d].miou else [f"{d} water IoU %"]
    lines = ["| method | " + " | ".join(cols) + " | fit s | predict s |", "|---" * (len(cols) + 3) + "|"]
    for name, per in results.items():
        cells, fit, pred = [], [], []
        for d in datasets:
            rows = per.get(d, [])
            keys = ["iou", "miou"] if DATASETS[d].miou else ["iou"]
            for key in keys:
                if not rows:
                    cells.append("—")
                    continue
                cell = _cell([r[key] for r in rows])
                if "k" in rows[0] and key == "iou":
                    ks = sorted({r["k"] for r in rows})
                    cell += f" (k {'/'.join(map(str, ks))})"
                cells.append(cell)
            fit += [r["fit_s"] for r in rows if r["fit_s"] is not None]
            pred += [r["predict_s"] for r in rows if r["predict_s"] is not None]
        f = f"{np.mean(fit):.1f}" if fit else "—"
        p = f"{np.mean(pred):.1f}" if pred else "—"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {f} | {p} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), help="subset of the rasters (default: all)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), help="subset of the methods (default: all)")
    p.add_argument("--method-seeds", nargs=2, action="append", metavar=("METHOD", "N"), default=[],
                   help="run METHOD on the first N seeds only (for slow methods; repeatable)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch, k-means and the forest")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--quick", action="store_true", help="1 seed, the two India chips (a fast check)")
    args = p.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    from engine import load_model
    from engine.models import init_from_scratch

    seeds = args.seeds[:1] if args.quick else args.seeds
    datasets = list(args.datasets or (QUICK_DATASETS if args.quick else DATASETS))
    methods = {n: METHODS[n] for n in (args.methods or METHODS)}
    limit = {m: int(n) for m, n in args.method_seeds}
    for m in limit:
        if m not in METHODS:
            p.error(f"--method-seeds: unknown method {m!r}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = load_model(MODEL)
    encoders = {"pretrained": model, "random": init_from_scratch(copy.deepcopy(model), seed=0).eval()}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {n: {} for n in methods}
    meta: dict[str, Any] = {}
    interrupted = False
    with threadpool_limits(args.threads), tempfile.TemporaryDirectory(prefix="msfm-quality-") as tmp:
        try:
            for d in datasets:
                spec = DATASETS[d]
                labels, valid, crs, transform = load_labels(args.data, spec)
                folder = Path(tmp) / d.replace(" ", "_")
                folder.mkdir()
                cache: dict[str, Any] = {}
                meta[d] = {"pixels": int(valid.sum()), "target_share": float((labels[valid] == 1).mean())}
                for seed in seeds:
                    squares = draw_squares(labels, spec.squares, spec.size, seed)
                    train = np.zeros(labels.shape, bool)
                    for r0, c0, _ in squares:
                        train[r0 : r0 + spec.size, c0 : c0 + spec.size] = True
                    test = valid & ~train
                    task = Task(args.data / spec.image, labels, valid, train,
                                squares_to_polygons(squares, spec.size, crs, transform, spec), seed, args.threads,
                                folder, encoders, cache)
                    for name, method in methods.items():
                        if seed not in seeds[: limit.get(name, len(seeds))]:
                            continue
                        r = run_one(name, method, task, test)
                        results[name].setdefault(d, []).append({"seed": seed, **r})
                        print(f"{d} seed {seed} {name}: iou {100 * r['iou']:.1f} miou {100 * r['miou']:.1f}"
                              f"{' k ' + str(r['k']) if 'k' in r else ''} fit {r['fit_s'] or 0:.1f} s predict "
                              f"{r['predict_s']:.1f} s", file=sys.stderr, flush=True)
        except KeyboardInterrupt:  # Ctrl-C: report what was measured so far
            interrupted = True
    total = time.perf_counter() - started
    print(f"# Quality benchmark — {machine()}; model {MODEL}; {datetime.date.today().isoformat()}; threads "
          f"{args.threads}; seeds {seeds}; total {total / 60:.1f} min"
          + (" (INTERRUPTED: partial results)" if interrupted else ""))
    print()
    print(table(results, datasets))
    print()
    print("Cells: mean ± std over seeds (%) on all valid label pixels outside the training squares. k-means rows: "
          "the best single cluster (picked with the reference: an optimistic bound), max over k ∈ {3, 4, 6}, the k "
          "chosen in parentheses; they use no squares. Squares per class: "
          + "; ".join(f"{d} {DATASETS[d].squares} × {DATASETS[d].size}² px" for d in datasets) + ".")
    short = {m: n for m, n in limit.items() if m in methods and n < len(seeds)}
    if short:
        print("Fewer seeds: " + ", ".join(f"{m} on {n}" for m, n in short.items()) + ".")
    print(BIGEARTHNET_NOTE)
    if args.json:
        numbers = {"machine": machine(), "model": MODEL, "seeds": seeds, "threads": args.threads, "total_s": total,
                   "interrupted": interrupted, "datasets": meta, "results": results}
        args.json.write_text(json.dumps(numbers, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
