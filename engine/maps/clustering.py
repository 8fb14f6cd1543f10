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

Outputs: a uint8 GeoTIFF (nodata 255, colour table, class names as category names) and a QGIS ``.qml`` style beside it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from ..callbacks import CancelFn, ProgressFn, check_canceled
from ..errors import InputRasterError, SettingsError
from ..models import Encoder
from ..outputs import GEOTIFF, check_outputs
from ..raster import NODATA_CLASS, GeoTiffWriter, Region, class_colors, gtiff_profile, iter_windows, write_qml
from ..settings import InferenceSettings
from ..spectral import Overrides
from .embeddings import EmbeddingResult, provide_embeddings
from .tags import product_tags
from .upsample import (
    GridInterpolator,
    GuidedClassUpsampler,
    check_pixel_grid,
    interpolation_cols,
    pixel_row_bands,
    pixel_window,
)

__all__ = ("ClusterResult", "ClusterSettings", "cluster_raster", "fit_kmeans", "l2_normalize", "sample_embeddings")

log = logging.getLogger(__name__)

#: ``"patch"``: one value per cell of the embedding raster; ``"pixel"``: one per pixel of the input.
Resolution = Literal["patch", "pixel"]
PixelMethod = Literal["guided", "bilinear"]


@dataclass(frozen=True)
class ClusterSettings:
    """How :func:`cluster_raster` clusters and at which resolution it writes the class map.

    Attributes:
        k: Number of clusters, 2..254 (uint8 classes, 255 = nodata).
        resolution: ``"patch"`` (one class per cell of the embedding raster) or ``"pixel"`` (one class per input
            pixel, over the embeddings' footprint on the input: the region's window, or the whole raster).
        pixel_method: For pixel resolution: ``"guided"`` (joint bilateral upsampling of cell classes guided by
            the input pixels; boundaries follow image edges) or ``"bilinear"`` (embeddings interpolated bilinearly,
            then classified; smooth boundaries).
        max_samples: Embeddings used to fit k-means.
        seed: Random seed of sampling and k-means.

    Raises:
        SettingsError: (on creation) ``k`` outside 2..254, an unknown resolution or pixel method, ``max_samples``
            below 1.
    """

    k: int = 8
    resolution: Resolution = "pixel"
    pixel_method: PixelMethod = "guided"
    max_samples: int = 50000
    seed: int = 0

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

@dataclass(frozen=True)
class ClusterResult:
    """What :func:`cluster_raster` wrote.

    Attributes:
        path: Class GeoTIFF (uint8, 0..k−1, nodata 255).
        style: The ``.qml`` style beside it.
        k: Number of clusters.
        resolution: ``"patch"`` or ``"pixel"``.
        class_fractions: Share of valid output pixels per class.
        samples: Number of embeddings the k-means was fitted on.
        embeddings: The embedding run (None when existing embeddings were given).
        seconds: Wall time.
    """

    path: Path
    style: Path
    k: int
    resolution: str
    class_fractions: tuple[float, ...]
    samples: int
    embeddings: Optional[EmbeddingResult]
    seconds: float


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


def fit_kmeans(samples: np.ndarray, k: int, seed: int = 0, minibatch_above: int = 20000) -> Any:
    """Fit k-means on L2-normalised ``[N, D]`` samples; centroids renumbered by decreasing cluster size.

    Raises:
        InputRasterError: Fewer valid samples than clusters.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(samples) < k:
        raise InputRasterError(f"only {len(samples)} valid embeddings for k={k} clusters; lower k or use a larger area")
    x = l2_normalize(samples.astype(np.float32))
    if len(x) > minibatch_above:
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3).fit(x)
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=4).fit(x)
    counts = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-counts, kind="stable")
    km.cluster_centers_ = km.cluster_centers_[order]
    return km


def _predict(km: Any, vectors: np.ndarray) -> np.ndarray:
    """Class per row of ``[N, D]`` (NaN rows → 255)."""
    labels = np.full(len(vectors), NODATA_CLASS, np.uint8)
    ok = np.isfinite(vectors).all(axis=1)
    if ok.any():
        centers = km.cluster_centers_.astype(np.float32)
        x = l2_normalize(vectors[ok].astype(np.float32))
        labels[ok] = np.argmax(x @ centers.T - 0.5 * (centers * centers).sum(1), axis=1).astype(np.uint8)
    return labels


def cluster_raster(
    source: Union[str, Path],
    output: Union[str, Path],
    model: Optional[Encoder] = None,
    *,
    clustering: Optional[ClusterSettings] = None,
    embeddings: Optional[Union[str, Path]] = None,
    embeddings_output: Optional[Union[str, Path]] = None,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    region: Optional[Region] = None,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
    overwrite: bool = False,
) -> ClusterResult:
    """Cluster a raster's embeddings into ``k`` classes and write a styled class GeoTIFF.

    Args:
        source: Input raster.
        output: Class GeoTIFF to write (uint8, nodata 255); a ``.qml`` style is written beside it.
        model: Loaded encoder; needed unless ``embeddings`` is given.
        clustering: ``k``, resolution, pixel method, sample size and seed (:class:`ClusterSettings`; defaults: k = 8
            at pixel resolution, guided).
        embeddings: Reuse an existing embedding raster of ``source`` instead of running the model.
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

    Returns:
        :class:`ClusterResult`.

    Raises:
        InputRasterError: No valid pixel, unreadable input, a region outside the raster/embeddings.
        SettingsError: Neither a model nor embeddings.
        engine.errors.InferenceCancelled: Cancelled by the caller.
        engine.errors.OutputError: An output is an input or exists (without ``overwrite``), as
            :func:`engine.outputs.check_outputs`.
    """
    check_outputs({"output": output, "embeddings output": embeddings_output},
                  {"input raster": source, "embeddings": embeddings}, overwrite=overwrite,
                  suffixes={"output": GEOTIFF, "embeddings output": GEOTIFF})
    clustering = clustering or ClusterSettings()
    if clustering.resolution == "pixel":
        check_pixel_grid(source)
    k = clustering.k
    started = time.perf_counter()
    output = Path(output)
    report = progress or (lambda f: None)
    with provide_embeddings(
        source, output, model, embeddings, embeddings_output, settings=settings, sensor=sensor, overrides=overrides,
        region=region, progress=report, is_canceled=is_canceled, overwrite=overwrite,
    ) as (path, result), rasterio.open(path) as grid:
        samples = sample_embeddings(grid, clustering.max_samples, clustering.seed)
        km = fit_kmeans(samples, k, clustering.seed)
        check_canceled(is_canceled, "after fitting k-means")
        counts = _write_classes(grid, source, output, km, k, clustering.resolution, clustering.pixel_method, region,
                                report, is_canceled)
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
    )


def _write_classes(
    grid: Any,
    source: Union[str, Path],
    output: Path,
    km: Any,
    k: int,
    resolution: Resolution,
    pixel_method: PixelMethod,
    region: Optional[Region],
    report: ProgressFn,
    is_canceled: Optional[CancelFn],
) -> np.ndarray:
    colors = {i: c for i, c in enumerate(class_colors(k))}
    counts = np.zeros(k, np.int64)
    tags = product_tags({}, "classes", k=str(k), resolution=resolution, embeddings=grid.name)
    d = grid.count
    src = grid if resolution == "patch" else rasterio.open(source)
    try:
        if resolution == "patch":
            target, band_rows, cols = Window(0, 0, grid.width, grid.height), 16, grid.width
            region = None  # the embedding grid as it is: cells outside the region's polygons are NaN already

            def labels_of(win: Window) -> np.ndarray:
                return _predict(km, grid.read(window=win).reshape(d, -1).T).reshape(1, int(win.height), int(win.width))

        else:
            target = pixel_window(grid, src, region)
            if pixel_method == "guided":
                guided = GuidedClassUpsampler(grid, src, lambda v: _predict(km, v), k, limit=target)
                band_rows, cols = 64, 2048

                def labels_of(win: Window) -> np.ndarray:
                    return guided.labels(win)[None]

            else:
                interp = GridInterpolator(grid, src.transform, src)
                band_rows, cols = 16, interpolation_cols(d)

                def labels_of(win: Window) -> np.ndarray:
                    vec = interp.sample(win)
                    return _predict(km, vec.reshape(d, -1).T).reshape(1, int(win.height), int(win.width))

        profile = gtiff_profile(
            width=int(target.width), height=int(target.height), count=1, dtype="uint8",
            crs=src.crs, transform=window_transform(target, src.transform), nodata=NODATA_CLASS,
        )
        bands = pixel_row_bands(src, target, 1, band_rows, cols, labels_of, region, NODATA_CLASS, np.uint8)
        with GeoTiffWriter(output, profile, ["class"], tags, colors) as writer:
            for band, out in bands:
                writer.write_rows(out)
                counts += np.bincount(out[out != NODATA_CLASS].ravel(), minlength=k)[:k]
                report(0.8 + 0.2 * (band.row_off + band.height - target.row_off) / target.height)
                check_canceled(is_canceled, "while writing classes")
            if counts.sum() == 0:
                raise InputRasterError("no valid pixel to classify (all nodata)")
    finally:
        if src is not grid:
            src.close()
    return counts
