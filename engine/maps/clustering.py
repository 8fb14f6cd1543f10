"""Unsupervised class maps: k-means on embeddings, fitted on a spatially spread sample, applied in streaming.

Embeddings are L2-normalised before k-means (cosine geometry, as used by SMARTIES' kNN protocol, docs/smarties.md §6).
The fit uses scikit-learn's ``KMeans`` (``MiniBatchKMeans`` above ``minibatch_above`` samples) on a regular grid of
cells with a random offset, so every part of the raster is represented. Clusters are renumbered by decreasing size
(class 0 is the most common) so colours are stable. Prediction streams over windows:

- ``resolution="patch"``: one class per cell of the patch-grid embedding raster;
- ``resolution="pixel"``: one class per input pixel. By default the cell classes are upsampled by joint bilateral
  upsampling guided by the input's own pixels, so boundaries follow image edges (:class:`GuidedClassUpsampler`);
  ``pixel_method="bilinear"`` classifies bilinearly interpolated embeddings instead. The input's nodata is carried
  over either way. The output covers the embeddings' footprint on the input (the region's window for a region run);
  pixels outside a region's polygons are nodata.

With ``spectral_weight`` w > 0 (pixel resolution only) the k-means runs on pixels instead of cells: every pixel's
feature is its bilinearly interpolated, L2-normalised embedding followed by its own normalised bands scaled by
``w / √C`` (:class:`~engine.maps.pixel_features.PixelFeatures`); k-means is fitted on a spatially spread sample of
pixels and applied per pixel in streaming windows.

``suggest_k=True`` scores k = 2..10 (and the k used) by the silhouette (Rousseeuw 1987,
:func:`sklearn.metrics.silhouette_score`) of k-means on a subsample of the same features (:func:`suggest_k`). The
scores are reported (:attr:`ClusterResult.k_scores`, the log, ``msfm cluster --suggest-k``), never applied: the class
map always has the k asked for.

Outputs: a uint8 GeoTIFF (nodata 255, colour table, class names as category names) and a QGIS ``.qml`` style beside it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from ..callbacks import CancelFn, ProgressFn, check_canceled
from ..errors import InputRasterError, SettingsError
from ..models import Encoder
from ..outputs import GEOTIFF, check_outputs
from ..raster import (
    NODATA_CLASS,
    GeoTiffWriter,
    Region,
    class_colors,
    gdal_cache_bytes,
    gtiff_profile,
    iter_windows,
    write_qml,
)
from ..settings import InferenceSettings
from ..spectral import Overrides
from .embeddings import EmbeddingResult, provide_embeddings
from .pixel_features import PixelFeatures
from .quantized import open_embeddings
from .tags import product_tags
from .upsample import (
    GridInterpolator,
    GuidedClassUpsampler,
    check_pixel_grid,
    interpolation_cols,
    pixel_row_bands,
    pixel_window,
    source_bands,
)

__all__ = (
    "ClusterResult",
    "ClusterSettings",
    "cluster_raster",
    "fit_kmeans",
    "l2_normalize",
    "sample_embeddings",
    "suggest_k",
)

log = logging.getLogger(__name__)

#: ``"patch"``: one value per cell of the embedding raster; ``"pixel"``: one per pixel of the input.
Resolution = Literal["patch", "pixel"]
PixelMethod = Literal["guided", "bilinear"]
#: Candidate k of :func:`suggest_k` when ``ClusterSettings.suggest_k`` is set (the k used is always added).
SUGGEST_KS = range(2, 11)
#: Most points :func:`suggest_k` scores (the silhouette needs all pairwise distances: N² values).
SUGGEST_MAX_POINTS = 5000


@dataclass(frozen=True)
class ClusterSettings:
    """How :func:`cluster_raster` clusters and at which resolution it writes the class map.

    Attributes:
        k: Number of clusters, 2..254 (uint8 classes, 255 = nodata).
        resolution: ``"patch"`` (one class per cell of the embedding raster) or ``"pixel"`` (one class per input
            pixel, over the embeddings' footprint on the input: the region's window, or the whole raster).
        pixel_method: For pixel resolution: ``"guided"`` (joint bilateral upsampling of cell classes guided by
            the input pixels; boundaries follow image edges) or ``"bilinear"`` (embeddings interpolated bilinearly,
            then classified; smooth boundaries). Not used when ``spectral_weight`` > 0.
        max_samples: Embeddings (pixels, with ``spectral_weight`` > 0) used to fit k-means.
        seed: Random seed of sampling and k-means.
        spectral_weight: w ≥ 0. 0 (default): k-means on the embeddings alone. w > 0 (pixel resolution only): k-means
            on per-pixel features ``[e / ‖e‖, w · z / √C]``, the interpolated embedding and the pixel's C bands
            normalised with the embeddings' statistics, fitted on a sample of pixels; w = 1 gives the spectra the
            same total weight as the embedding (:mod:`engine.maps.pixel_features`).
        suggest_k: Also score k = 2..10 and the k used by the silhouette on a subsample of the clustering's features
            (:func:`suggest_k`), reported in :attr:`ClusterResult.k_scores` and the log, never applied.

    Raises:
        SettingsError: (on creation) ``k`` outside 2..254, an unknown resolution or pixel method, ``max_samples``
            below 1, a negative or non-finite ``spectral_weight``, or ``spectral_weight`` > 0 at patch resolution.
    """

    k: int = 8
    resolution: Resolution = "pixel"
    pixel_method: PixelMethod = "guided"
    max_samples: int = 50000
    seed: int = 0
    spectral_weight: float = 0.0
    suggest_k: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.k <= 254:
            raise SettingsError(f"k must be between 2 and 254 (uint8 classes, 255 = nodata), got {self.k}")
        if self.resolution not in ("patch", "pixel"):
            raise SettingsError(f"resolution must be 'patch' or 'pixel', got {self.resolution!r}")
        if self.pixel_method not in ("guided", "bilinear"):
            raise SettingsError(f"pixel_method must be 'guided' or 'bilinear', got {self.pixel_method!r}")
        if self.max_samples < 1:
            raise SettingsError(f"max_samples must be at least 1, got {self.max_samples}")
        if not 0 <= self.seed < 2**32:
            raise SettingsError(f"seed must be between 0 and 2**32 - 1 (numpy and scikit-learn seeds), got {self.seed}")
        if not (math.isfinite(self.spectral_weight) and self.spectral_weight >= 0):
            raise SettingsError(f"spectral_weight must be a finite number ≥ 0 (0 = embeddings only), got "
                                f"{self.spectral_weight}")
        if self.spectral_weight > 0 and self.resolution != "pixel":
            raise SettingsError(
                f"spectral_weight {self.spectral_weight} needs pixel resolution (the spectra are per pixel); use "
                "resolution='pixel' (--resolution pixel, Resolution: pixel in QGIS) or spectral_weight 0"
            )


@dataclass(frozen=True)
class ClusterResult:
    """What :func:`cluster_raster` wrote.

    Attributes:
        path: Class GeoTIFF (uint8, 0..k−1, nodata 255).
        style: The ``.qml`` style beside it.
        k: Number of clusters.
        resolution: ``"patch"`` or ``"pixel"``.
        class_fractions: Share of valid output pixels per class.
        samples: Number of embeddings (pixels, with a spectral weight) the k-means was fitted on.
        embeddings: The embedding run (None when existing embeddings were given).
        seconds: Wall time.
        spectral_weight: The spectral weight used (0 = embeddings only).
        k_scores: With ``suggest_k``: silhouette (−1..1, higher is better) per k, from :func:`suggest_k`; else None.
        suggested_k: The k with the highest silhouette (reported only: the map has ``k`` classes); None without
            ``suggest_k``.
    """

    path: Path
    style: Path
    k: int
    resolution: str
    class_fractions: tuple[float, ...]
    samples: int
    embeddings: Optional[EmbeddingResult]
    seconds: float
    spectral_weight: float = 0.0
    k_scores: Optional[dict[int, float]] = None
    suggested_k: Optional[int] = None

    def k_report(self) -> str:
        """One line on the k used and the silhouette's suggestion (empty without ``k_scores``).

        Example: ``"k = 8 was used; the silhouette on the sample suggests k = 3 (0.41 vs 0.22)"``.
        """
        return k_report(self.k, self.k_scores) if self.k_scores else ""


def k_report(k: int, scores: dict[int, float]) -> str:
    """The sentence :meth:`ClusterResult.k_report` returns, from the k used and :func:`suggest_k`'s scores."""
    best = max(scores, key=lambda c: (scores[c], -c))
    used = f"{scores[k]:.2f}" if k in scores else "not scored"
    if best == k:
        return f"k = {k} was used; the silhouette on the sample also suggests k = {k} ({used})"
    return f"k = {k} was used; the silhouette on the sample suggests k = {best} ({scores[best]:.2f} vs {used})"


def suggest_k(samples: np.ndarray, ks: Iterable[int] = SUGGEST_KS, seed: int = 0) -> dict[int, float]:
    """Silhouette of k-means for each candidate k, on a subsample of clustering features (a report, not a choice).

    For each k, :class:`sklearn.cluster.KMeans` (``n_init=2``) is fitted on a random subsample of at most
    :data:`SUGGEST_MAX_POINTS` (5000) rows of ``samples`` and scored with the mean silhouette
    ``s = (b − a) / max(a, b)`` (a: mean distance to the own cluster, b: to the nearest other cluster; Rousseeuw,
    "Silhouettes", J. Comput. Appl. Math. 1987) by :func:`sklearn.metrics.silhouette_score` on Euclidean distances,
    computed once for all k. Pass the features the clustering uses: L2-normalised embeddings
    (:func:`l2_normalize`), or :class:`~engine.maps.pixel_features.PixelFeatures` samples.

    Args:
        samples: ``[N, D]`` float features (finite).
        ks: Candidate numbers of clusters, each ≥ 2 (default 2..10).
        seed: Seed of the subsample and of k-means; equal inputs and seed give equal scores.

    Returns:
        ``{k: silhouette in −1..1}`` in increasing k (higher is better).

    Raises:
        SettingsError: No candidate, or a candidate below 2.
        InputRasterError: Too few samples: the subsample must hold more points than the largest k.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import pairwise_distances, silhouette_score
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # scikit-learn's own dependency

    candidates = sorted({int(k) for k in ks})
    if not candidates or candidates[0] < 2:
        raise SettingsError(f"suggest_k needs candidate k values of at least 2, got {candidates}")
    rng = np.random.default_rng(seed)
    x = np.asarray(samples, np.float32)
    if len(x) > SUGGEST_MAX_POINTS:
        x = x[np.sort(rng.choice(len(x), SUGGEST_MAX_POINTS, replace=False))]
    if len(x) <= candidates[-1]:
        raise InputRasterError(
            f"only {len(x)} samples to score k up to {candidates[-1]}; use a larger area or smaller k candidates"
        )
    scores = {}
    # One thread: on a few thousand points OpenMP's threads only add waiting, and on a busy CPU they spin (measured on
    # 2 shared cores: 9 fits of k = 2..10 on 4096 points took 11.8 s with the default threads, 0.5 s with one).
    with threadpool_limits(limits=1):
        distances = pairwise_distances(x)
        for k in candidates:
            labels = KMeans(n_clusters=k, random_state=seed, n_init=2).fit_predict(x)
            if len(np.unique(labels)) < 2:  # identical points: the silhouette is undefined
                scores[k] = -1.0
                continue
            scores[k] = float(silhouette_score(distances, labels, metric="precomputed"))
    return scores


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (``[..., D]``) scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def sample_embeddings(grid: Any, max_samples: int, seed: int) -> np.ndarray:
    """Spatially spread sample of valid embeddings ``[N, D]`` (every s-th cell in both axes, random offset)."""
    step = max(1, math.ceil(math.sqrt(grid.width * grid.height / max_samples)))
    rng = np.random.default_rng(seed)
    r_off, c_off = (int(v) for v in rng.integers(0, step, size=2))
    out = []
    for window in iter_windows(grid.height, grid.width, 256, grid.width):
        block = grid.read(window=window)
        rows = np.arange(window.row_off, window.row_off + window.height)
        sel = block[:, (rows - r_off) % step == 0][:, :, c_off::step]
        vec = sel.reshape(sel.shape[0], -1).T
        out.append(vec[np.isfinite(vec).all(axis=1)])
    return np.concatenate(out) if out else np.zeros((0, grid.count), np.float32)


def fit_kmeans(
    samples: np.ndarray, k: int, seed: int = 0, minibatch_above: int = 20000, normalize: bool = True
) -> Any:
    """Fit k-means on ``[N, D]`` samples; centroids renumbered by decreasing cluster size.

    Args:
        samples: ``[N, D]`` float features.
        k: Number of clusters.
        seed: Seed of k-means.
        minibatch_above: Above this many samples ``MiniBatchKMeans`` (batches of 4096) replaces ``KMeans``.
        normalize: L2-normalise the rows first (embeddings); False for features that are already scaled
            (:class:`~engine.maps.pixel_features.PixelFeatures`).

    Returns:
        The fitted scikit-learn estimator (``cluster_centers_`` in decreasing cluster size).

    Raises:
        InputRasterError: Fewer valid samples than clusters.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(samples) < k:
        raise InputRasterError(f"only {len(samples)} valid embeddings for k={k} clusters; lower k or use a larger area")
    x = l2_normalize(samples.astype(np.float32)) if normalize else samples.astype(np.float32)
    if len(x) > minibatch_above:
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3).fit(x)
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=4).fit(x)
    counts = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-counts, kind="stable")
    km.cluster_centers_ = km.cluster_centers_[order]
    return km


def _predict(centers: np.ndarray, vectors: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Class (the nearest of the ``[k, D]`` centres) per row of ``[N, D]``; NaN rows → 255.

    Rows are L2-normalised first unless ``normalize`` is False.
    """
    labels = np.full(len(vectors), NODATA_CLASS, np.uint8)
    ok = np.isfinite(vectors).all(axis=1)
    if ok.any():
        x = vectors[ok].astype(np.float32)
        x = l2_normalize(x) if normalize else x
        labels[ok] = np.argmax(x @ centers.T - 0.5 * (centers * centers).sum(1), axis=1).astype(np.uint8)
    return labels


def cluster_raster(
    source: Union[str, Path],
    output: Union[str, Path],
    model: Optional[Encoder] = None,
    *,
    clustering: Optional[ClusterSettings] = None,
    embeddings: Optional[Union[str, Path]] = None,
    embedding_format: Optional[str] = None,
    embeddings_output: Optional[Union[str, Path]] = None,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    region: Optional[Region] = None,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
    overwrite: bool = False,
    centers: Optional[np.ndarray] = None,
) -> ClusterResult:
    """Cluster a raster's embeddings into ``k`` classes and write a styled class GeoTIFF.

    Args:
        source: Input raster.
        output: Class GeoTIFF to write (uint8, nodata 255); a ``.qml`` style is written beside it.
        model: Loaded encoder; needed unless ``embeddings`` is given.
        clustering: ``k``, resolution, pixel method, sample size, seed, spectral weight and whether to score k
            (:class:`ClusterSettings`; defaults: k = 8 at pixel resolution, guided, embeddings only, no scores).
        embeddings: Reuse an existing embedding raster of ``source`` instead of running the model: ours, or one
            made elsewhere (AlphaEarth, TESSERA, any float raster; :func:`engine.maps.open_embeddings`).
        embedding_format: The format of ``embeddings`` (``"msfm"``, ``"alphaearth"``, ``"tessera"``, ``"float"``);
            None: detected from the file (a file that cannot tell, or is not in the format named, is refused).
        embeddings_output: Keep the embeddings computed on the way at this path (else a temporary file).
        settings: Inference settings (tiles, device, scale…).
        sensor: Sensor preset id for band mapping; guessed when None.
        overrides: Band overrides, see :func:`engine.spectral.resolve_bands`.
        region: Process only this :class:`engine.raster.Region` (bounds and/or polygons in the raster's CRS): the
            embeddings are computed for it (:func:`engine.maps.embed_raster`), and at pixel resolution the
            output covers its window at native resolution with pixels outside its polygons set to 255. With existing
            ``embeddings``, the pixel output is their footprint intersected with the region; the patch output is
            the embedding grid as it is.
        progress: Called with the completed fraction 0..1.
        is_canceled: Polled every batch/window; True stops with :class:`engine.errors.InferenceCancelled`, writing
            nothing.
        overwrite: Replace ``output`` (and ``embeddings_output``) when they exist.
        centers: ``[k, D]`` float k-means centres fitted elsewhere on L2-normalised embeddings (e.g. across the
            scenes of a batch run, :func:`engine.batch.batch_cluster`, so that class i is the same in every scene):
            the raster is only classified with them (no sampling, no fit; ``clustering.k`` must equal k). Not with a
            spectral weight (its features depend on each raster's statistics) or ``suggest_k``.

    Returns:
        :class:`ClusterResult` (``samples`` 0 with ``centers``).

    Raises:
        InputRasterError: No valid pixel, unreadable input, a region outside the raster/embeddings, embeddings
            without normalisation statistics with ``spectral_weight`` > 0, too few samples for ``suggest_k``.
        SettingsError: Neither a model nor embeddings; ``centers`` whose shape is not ``[k, D]`` for these
            embeddings, or given with a spectral weight or ``suggest_k``.
        engine.errors.InferenceCancelled: Cancelled by the caller.
        engine.errors.OutputError: An output is an input or exists (without ``overwrite``), as
            :func:`engine.outputs.check_outputs`.
    """
    check_outputs({"output": output, "embeddings output": embeddings_output},
                  {"input raster": source, "embeddings": embeddings}, overwrite=overwrite,
                  suffixes={"output": GEOTIFF, "embeddings output": GEOTIFF})
    clustering = clustering or ClusterSettings()
    if centers is not None and (clustering.spectral_weight > 0 or clustering.suggest_k):
        raise SettingsError("given k-means centres classify embeddings only: use spectral_weight 0 and no suggest_k")
    if clustering.resolution == "pixel":
        check_pixel_grid(source)
    k = clustering.k
    started = time.perf_counter()
    output = Path(output)
    report = progress or (lambda f: None)
    with provide_embeddings(
        source, output, model, embeddings, embeddings_output, settings=settings, sensor=sensor, overrides=overrides,
        region=region, progress=report, is_canceled=is_canceled, overwrite=overwrite,
    ) as (path, result), open_embeddings(path, embedding_format if embeddings else None) as grid:
        if clustering.spectral_weight > 0:
            with rasterio.open(source) as src:
                features = PixelFeatures(grid, src, clustering.spectral_weight)
                samples = features.sample(pixel_window(grid, src, region), clustering.max_samples, clustering.seed,
                                          region, is_canceled)
                km = fit_kmeans(samples, k, clustering.seed, normalize=False)
                scores = _k_scores(samples, k, clustering, is_canceled)
                check_canceled(is_canceled, "after fitting k-means")
                counts = _write_classes(grid, source, output, km.cluster_centers_, k, clustering.resolution,
                                        clustering.pixel_method, region, report, is_canceled, features)
        else:
            if centers is None:
                samples = sample_embeddings(grid, clustering.max_samples, clustering.seed)
                centers = fit_kmeans(samples, k, clustering.seed).cluster_centers_
                scores = _k_scores(l2_normalize(samples.astype(np.float32)), k, clustering, is_canceled)
                check_canceled(is_canceled, "after fitting k-means")
            elif np.shape(centers) == (k, grid.count):
                samples, scores = np.zeros((0, grid.count), np.float32), None
            else:
                raise SettingsError(f"the k-means centres have shape {np.shape(centers)}, the embeddings {grid.name} "
                                    f"need [k={k}, D={grid.count}]: fit them on embeddings of the same model")
            counts = _write_classes(grid, source, output, np.asarray(centers, np.float32), k, clustering.resolution,
                                    clustering.pixel_method, region, report, is_canceled)
    labels = [f"class {i}" for i in range(k)]
    style = write_qml(output.with_suffix(".qml"), labels, class_colors(k))
    total = max(1, int(counts.sum()))
    report(1.0)
    return ClusterResult(
        path=output,
        style=style,
        k=k,
        resolution=clustering.resolution,
        class_fractions=tuple(float(c) / total for c in counts),
        samples=len(samples),
        embeddings=result,
        seconds=time.perf_counter() - started,
        spectral_weight=clustering.spectral_weight,
        k_scores=scores,
        suggested_k=None if scores is None else max(scores, key=lambda c: (scores[c], -c)),
    )


def _k_scores(
    features: np.ndarray, k: int, clustering: ClusterSettings, is_canceled: Optional[CancelFn]
) -> Optional[dict[int, float]]:
    """:func:`suggest_k` on the clustering's features when ``clustering.suggest_k`` (logged), else None."""
    if not clustering.suggest_k:
        return None
    check_canceled(is_canceled, "before scoring k")
    n = min(len(features), SUGGEST_MAX_POINTS)
    ks = [c for c in sorted({*SUGGEST_KS, k}) if c < n]
    scores = suggest_k(features, ks, clustering.seed)
    log.info("%s", k_report(k, scores))
    return scores


def _write_classes(
    grid: Any,
    source: Union[str, Path],
    output: Path,
    centers: np.ndarray,
    k: int,
    resolution: Resolution,
    pixel_method: PixelMethod,
    region: Optional[Region],
    report: ProgressFn,
    is_canceled: Optional[CancelFn],
    features: Optional[PixelFeatures] = None,
) -> np.ndarray:
    colors = {i: c for i, c in enumerate(class_colors(k))}
    counts = np.zeros(k, np.int64)
    extra = {} if features is None else {"spectral_weight": str(features.spectral_weight)}
    tags = product_tags({}, "classes", k=str(k), resolution=resolution, embeddings=grid.name, **extra)
    d = grid.count
    src = grid if resolution == "patch" else features.source if features else rasterio.open(source)
    try:
        if resolution == "patch":
            target, band_rows, cols = Window(0, 0, grid.width, grid.height), 16, grid.width
            region = None  # the embedding grid as it is: cells outside the region's polygons are NaN already

            def labels_of(win: Window) -> np.ndarray:
                vectors = grid.read(window=win).reshape(d, -1).T
                return _predict(centers, vectors).reshape(1, int(win.height), int(win.width))

        elif features is not None:
            target = pixel_window(grid, src, region)
            band_rows, cols = 16, features.window_cols()

            def labels_of(win: Window) -> np.ndarray:
                vec = features.features(win)
                return _predict(centers, vec.reshape(features.dim, -1).T, normalize=False).reshape(
                    1, int(win.height), int(win.width))

        else:
            target = pixel_window(grid, src, region)
            if pixel_method == "guided" and source_bands(grid, src)[1] is None:
                log.info("%s records no band statistics (embeddings made elsewhere): the pixel classes come from "
                         "bilinearly interpolated embeddings, not guided by the input's pixels", grid.name)
                pixel_method = "bilinear"
            if pixel_method == "guided":
                guided = GuidedClassUpsampler(grid, src, lambda v: _predict(centers, v), k, limit=target)
                band_rows, cols = 64, 2048

                def labels_of(win: Window) -> np.ndarray:
                    return guided.labels(win)[None]

            else:
                interp = GridInterpolator(grid, src.transform, src)
                band_rows, cols = 16, interpolation_cols(d)

                def labels_of(win: Window) -> np.ndarray:
                    vec = interp.sample(win)
                    return _predict(centers, vec.reshape(d, -1).T).reshape(1, int(win.height), int(win.width))

        profile = gtiff_profile(
            width=int(target.width), height=int(target.height), count=1, dtype="uint8",
            crs=src.crs, transform=window_transform(target, src.transform), nodata=NODATA_CLASS,
        )
        bands = pixel_row_bands(src, target, 1, band_rows, cols, labels_of, region, NODATA_CLASS, np.uint8)
        cache = gdal_cache_bytes(src) if src is not grid else None  # as write_pixel_values: a few block rows
        with rasterio.Env(**({} if cache is None else {"GDAL_CACHEMAX": cache})), \
                GeoTiffWriter(output, profile, ["class"], tags, colors) as writer:
            for band, out in bands:
                writer.write_rows(out)
                counts += np.bincount(out[out != NODATA_CLASS].ravel(), minlength=k)[:k]
                report(0.8 + 0.2 * (band.row_off + band.height - target.row_off) / target.height)
                check_canceled(is_canceled, "while writing classes")
            if counts.sum() == 0:
                raise InputRasterError("no valid pixel to classify (all nodata)")
    finally:
        if src is not grid and features is None:
            src.close()
    return counts
