"""A random forest on each pixel's raw bands ⊕ upsampled embeddings, fitted and applied in one run (no model file).

Like QGIS's classic supervised classifiers, :func:`classify_raster` takes a raster and labelled polygons (or a label
raster) and writes a class map; nothing is saved to reuse. The user always gets at least the classical per-pixel
result (the bands), plus the encoder's spatial context (the embeddings) when asked for.

Procedure:

1. The labels are burnt onto the input's own pixel grid (:func:`engine.segmentation.label_grid` with the raster's
   transform and shape) and their groups (polygons, or blocks of a label raster) split into training and validation
   by group (:func:`engine.segmentation.split_groups`, as :func:`engine.segmentation.fit_head` does).
2. Per-pixel features, at the input's native resolution, in this order:

   - ``"bands"``: the input's bands normalised as the encoder reads them (:func:`engine.spectral.normalize`:
     ``clip((x − p1) / (p99 − p1), 0, 1)`` then ``(x − mean) / std``, docs/smarties.md §3–§4). With embeddings, the
     bands and statistics recorded in the embedding raster (:func:`engine.maps.upsample.source_bands`); without, the
     bands :func:`engine.spectral.resolve_bands` maps and the statistics of :func:`engine.raster.band_statistics`
     (the sensor preset's, else estimated from a sample of the raster): the one mechanism every encoder pass uses.
   - ``"embeddings"``: the patch-grid embedding raster (computed now with :func:`engine.maps.provide_embeddings`, or
     given) interpolated bilinearly at each pixel centre (:class:`engine.maps.GridInterpolator`), projected onto its
     first ``embedding_components`` principal components (:func:`engine.maps.principal_components`, fitted on a
     spread sample of the raster's cells; projection and interpolation commute, both being linear).

3. Training pixels: up to ``max_samples`` labelled pixels of the training groups, drawn per class in a balanced way
   (``max_samples // K`` per class at most, a class with fewer pixels gives all of them), then a scikit-learn
   ``RandomForestClassifier`` (Breiman, "Random Forests", Machine Learning 45, 2001) with class weights
   ``N / (K · n_c)`` (scikit-learn's ``class_weight="balanced"``, as ``fit_head``'s default) so that the remaining
   imbalance does not favour the larger class. The trees grow in ten batches (``warm_start``): cancel is polled
   between them.
4. Prediction streams over windows of the output grid (:func:`engine.maps.pixel_row_bands`): ``predict_proba`` then
   argmax. Pixels whose features are not all finite (input nodata, no embedding nearby, outside a region's polygons)
   are 255 in the class map and NaN in the probabilities.
5. Validation: the forest fitted on the training groups classifies the held-out groups' pixels as part of the map;
   their confusion matrix gives :func:`engine.segmentation.segmentation_scores`. The forest is not refitted on all
   groups afterwards (kept simple: the map is exactly what was validated).

Outputs are on exactly the input's grid (same CRS, transform, width and height; for a region its window; for
embeddings given that cover less, their footprint as :func:`engine.maps.pixel_window` says): a uint8 class GeoTIFF
(nodata 255, colour table and class names from the labels' class table) with its ``.qml`` style, and optionally the
class probabilities (float32, K bands, NaN nodata).

scikit-learn is imported when a forest is fitted; torch only when embeddings are computed (``features="bands"`` or
given ``embeddings`` never import it).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
from rasterio.windows import Window, WindowError
from rasterio.windows import intersection as window_intersection
from rasterio.windows import transform as window_transform

from ..callbacks import CancelFn, ProgressFn, check_canceled, scaled
from ..errors import InputRasterError, LabelError, SettingsError
from ..maps import (
    EmbeddingResult,
    GridInterpolator,
    open_embeddings,
    pixel_row_bands,
    pixel_window,
    principal_components,
    product_tags,
    project,
    provide_embeddings,
)
from ..maps.upsample import check_pixel_grid, source_bands
from ..models import Encoder
from ..outputs import GEOTIFF, check_outputs
from ..raster import (
    NODATA_CLASS,
    GeoTiffWriter,
    Region,
    band_statistics,
    gtiff_profile,
    iter_windows,
    open_raster,
    read_valid,
    write_qml,
)
from ..settings import InferenceSettings
from ..spectral import BandStats, Overrides, normalize, resolve_bands
from .labels import IGNORE, LabelGrid, LabelRaster, PolygonLabels, label_grid
from .validation import segmentation_scores, split_groups

__all__ = ("ClassifyResult", "ForestSettings", "classify_raster")

log = logging.getLogger(__name__)

#: Per-pixel features: ``"bands+embeddings"`` (default), ``"bands"`` (no model) or ``"embeddings"``.
Features = Literal["bands+embeddings", "bands", "embeddings"]
_FEATURES = ("bands+embeddings", "bands", "embeddings")
ClassWeighting = Literal["balanced", "sqrt-balanced", "none"]
_WEIGHTINGS = ("balanced", "sqrt-balanced", "none")
#: Tree batches of the fit (cancel and progress between them).
_FIT_BATCHES = 10
#: Rows of the windows features are computed on.
_ROWS = 64


@dataclass(frozen=True)
class ForestSettings:
    """What :func:`classify_raster` fits: the features, the forest and the validation split.

    Attributes:
        features: ``"bands+embeddings"`` (default), ``"bands"`` (the classical per-pixel classifier; no model, no
            embeddings) or ``"embeddings"``.
        n_estimators: Trees of the forest (≥ 1).
        min_samples_leaf: Fewest training pixels in a leaf (≥ 1; 1 grows full trees, scikit-learn's default).
        max_samples: Most labelled pixels used to fit, drawn per class in a balanced way (``max_samples // K`` per
            class at most; ≥ 2).
        class_weighting: ``"balanced"`` (weight ``N / (K · n_c)``, scikit-learn's ``class_weight="balanced"``),
            ``"sqrt-balanced"`` (its square root) or ``"none"``, as :class:`engine.segmentation.HeadFitSettings`.
        val_fraction: Share of each class's polygons (or of label-raster blocks) held out for validation, in
            [0, 1); 0 = none (:func:`engine.segmentation.split_groups`).
        seed: Random seed of the split, the sampling and the forest.
        embedding_components: The embeddings enter the forest as their first N principal components
            (:func:`engine.maps.principal_components` of the embedding raster; at most D); None keeps all D
            dimensions. With all D, nearly every split of a tree draws among embedding dimensions (the forest tries
            ``√F`` random features per split), which smooths the map at the embeddings' patch scale and lost 0.06–0.08
            water IoU against the bands alone on the India S2 chip; 16 components put bands and embeddings on a par
            (docs/segmentation.md).

    Raises:
        SettingsError: (on creation) an unknown feature set or class weighting, a count below its minimum, a
            validation fraction outside [0, 1) or a seed outside 0..2³²−1.
    """

    features: Features = "bands+embeddings"
    n_estimators: int = 200
    min_samples_leaf: int = 1
    max_samples: int = 200_000
    class_weighting: ClassWeighting = "balanced"
    val_fraction: float = 0.25
    seed: int = 0
    embedding_components: Optional[int] = 16

    def __post_init__(self) -> None:
        if self.features not in _FEATURES:
            raise SettingsError(f"features must be one of {_FEATURES}, got {self.features!r}")
        if self.class_weighting not in _WEIGHTINGS:
            raise SettingsError(f"class_weighting must be one of {_WEIGHTINGS}, got {self.class_weighting!r}")
        for name, low in (("n_estimators", 1), ("min_samples_leaf", 1), ("max_samples", 2)):
            if int(getattr(self, name)) < low:
                raise SettingsError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise SettingsError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.seed < 2**32:
            raise SettingsError(f"seed must be between 0 and 2**32 - 1 (numpy and scikit-learn seeds), got {self.seed}")
        if self.embedding_components is not None and self.embedding_components < 1:
            raise SettingsError(f"embedding_components must be at least 1 (or None: all dimensions), got "
                                f"{self.embedding_components}")


@dataclass(frozen=True)
class ClassifyResult:
    """What :func:`classify_raster` wrote and measured.

    Attributes:
        path: Class GeoTIFF (uint8 class indices 0..K−1, nodata 255) on the input's grid.
        style: Its ``.qml`` style (class names and colours).
        probabilities: Probability GeoTIFF (float32, K bands, NaN nodata), or None.
        class_names: Names in class-index order.
        class_fractions: Share of the classified pixels per class.
        metrics: Validation scores on the held-out groups (:func:`engine.segmentation.segmentation_scores` plus
            ``"split"``); ``{}`` without validation groups.
        train_pixels: Training pixels per class (after the balanced sampling).
        feature_count: Features per pixel (bands + embedding dimensions or principal components).
        seconds: Wall time of the whole run.
        fit_seconds: Time spent fitting the forest.
        predict_seconds: Time spent computing features, predicting and writing the map.
        embeddings: The embedding run (None when existing embeddings were given or none were needed).
        notes: Warnings about the split (classes kept out of validation or absent from training).
    """

    path: Path
    style: Path
    probabilities: Optional[Path]
    class_names: tuple[str, ...]
    class_fractions: tuple[float, ...]
    metrics: dict[str, Any]
    train_pixels: tuple[int, ...]
    feature_count: int
    seconds: float
    fit_seconds: float
    predict_seconds: float
    embeddings: Optional[EmbeddingResult]
    notes: tuple[str, ...] = ()


class _PixelFeatures:
    """The features of every pixel of a window of the input grid: normalised bands, then interpolated embeddings.

    Args:
        source: Open input raster (the output grid).
        grid: Open patch-grid embedding raster of ``source``, or None (bands only).
        kind: The feature set.
        sensor: Sensor preset of the band mapping (bands without embeddings).
        overrides: Band overrides of the band mapping (bands without embeddings).
        components: Principal components the embeddings are reduced to (None: all dimensions).
        seed: Seed of the principal components' cell sample.

    Raises:
        InputRasterError: The embedding raster records no statistics (bands with embeddings), or
            :func:`engine.raster.band_statistics`'s refusals.
        engine.errors.BandResolutionError: A band cannot be mapped (bands without embeddings).
    """

    def __init__(self, source: Any, grid: Any, kind: Features, sensor: Optional[str], overrides: Optional[Overrides],
                 components: Optional[int] = None, seed: int = 0) -> None:
        self.source = source
        self.interp = GridInterpolator(grid, source.transform, source) if kind != "bands" else None
        self.pca: Optional[tuple[np.ndarray, np.ndarray]] = None
        self.dims = 0
        if self.interp is not None:
            self.dims = grid.count
            if components is not None and components < grid.count:
                self.pca = principal_components(grid, components, seed=seed)
                self.dims = components
        self.indexes: list[int] = []
        self.stats: list[BandStats] = []
        if kind != "embeddings":
            if grid is not None:
                indexes, stats = source_bands(grid, source)
                if stats is None:
                    raise InputRasterError(
                        f"{grid.name} records no normalisation statistics (tag MSFM_STATS), which the band features "
                        "need; recompute the embeddings with `msfm embed`, or use features 'embeddings'")
                self.indexes, self.stats = indexes, stats
            else:
                mapping = resolve_bands(source, sensor=sensor, overrides=overrides)
                self.indexes, self.stats = list(mapping.indexes), band_statistics(source, mapping)
        self.count = len(self.indexes) + self.dims

    def __call__(self, window: Window) -> np.ndarray:
        """``float32 [F, h, w]`` features of ``window``; NaN where a pixel's features are not all valid."""
        parts = []
        if self.indexes:
            raw, valid = read_valid(self.source, self.indexes, window)
            bands = normalize(raw, self.stats)
            bands[:, ~valid] = np.nan
            parts.append(bands)
        if self.interp is not None:
            values = self.interp.sample(window)
            parts.append(project(values, *self.pca) if self.pca is not None else values)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def columns(self) -> int:
        """Columns per window of ``_ROWS`` rows for which the features stay near 64 MB."""
        return max(256, (1 << 24) // (self.count * _ROWS) // 256 * 256)


def classify_raster(
    source: Union[str, Path],
    labels: Union[PolygonLabels, LabelRaster],
    output: Union[str, Path],
    model: Optional[Encoder] = None,
    *,
    forest: Optional[ForestSettings] = None,
    embeddings: Optional[Union[str, Path]] = None,
    embedding_format: Optional[str] = None,
    embeddings_output: Optional[Union[str, Path]] = None,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    region: Optional[Region] = None,
    probabilities_output: Optional[Union[str, Path]] = None,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
    overwrite: bool = False,
) -> ClassifyResult:
    """Fit a random forest on the labelled pixels' bands ⊕ embeddings and classify every pixel of the raster.

    Args:
        source: Input raster (north-up for the embedding features).
        labels: :class:`engine.segmentation.PolygonLabels` (any CRS: reprojected) or
            :class:`engine.segmentation.LabelRaster`, burnt on the input's native grid.
        output: Class GeoTIFF (uint8, nodata 255, colour table, class names); a ``.qml`` is written beside it.
        model: Loaded encoder; needed for the embedding features unless ``embeddings`` is given; unused with
            ``features="bands"``.
        forest: Features, trees, sampling, class weighting, validation split and seed (:class:`ForestSettings`).
        embeddings: An existing patch-grid embedding raster of ``source`` (not with ``features="bands"``): ours, or
            one made elsewhere (AlphaEarth, TESSERA, any float raster; :func:`engine.maps.open_embeddings`). Those
            record no normalisation statistics, so they go with ``features="embeddings"``.
        embedding_format: The format of ``embeddings`` (``"msfm"``, ``"alphaearth"``, ``"tessera"``, ``"float"``);
            None: detected from the file (a file that cannot tell, or is not in the format named, is refused).
        embeddings_output: Keep the embeddings computed on the way here (else a temporary file).
        settings: Inference settings of the embedding run; ``threads`` also sets the forest's ``n_jobs`` (None: all
            cores).
        sensor: Sensor preset of the band mapping, as :func:`engine.spectral.resolve_bands`.
        overrides: Band overrides, as :func:`engine.spectral.resolve_bands`.
        region: Process only this :class:`engine.raster.Region`: the output is its window of the input grid, pixels
            outside its polygons are nodata, and only labels inside it are used (to fit and to validate).
        probabilities_output: Also write the class probabilities (float32, K bands, NaN nodata) here.
        progress: Called with the completed fraction 0..1.
        is_canceled: Polled every batch of the embedding run, every batch of trees and every window; True stops
            with :class:`engine.errors.InferenceCancelled`, writing nothing.
        overwrite: Replace existing outputs.

    Returns:
        :class:`ClassifyResult`.

    Raises:
        SettingsError: The embedding features without a model or embeddings, embeddings with ``features="bands"``, or
            an unknown ``embedding_format``.
        engine.errors.LabelError: As :func:`engine.segmentation.label_grid` (a single class, a class without pixels,
            no overlap…), no labelled pixel inside the region, or fewer than two classes with training pixels.
        InputRasterError: A raster that is not north-up (embedding features), embeddings of another raster, embeddings
            not in the format named or whose format cannot be told (:func:`engine.maps.quantized.detect_encoding`),
            embeddings without normalisation statistics with the band features, a region outside the raster, no valid
            pixel.
        engine.errors.BandResolutionError: A band cannot be mapped.
        engine.errors.InferenceCancelled: Cancelled.
        engine.errors.OutputError: An output is an input or another output, exists (without ``overwrite``) or has
            the wrong suffix (:func:`engine.outputs.check_outputs`).
    """
    started = time.perf_counter()
    forest = forest or ForestSettings()
    settings = settings or InferenceSettings()
    check_outputs(
        {"output": output, "probabilities output": probabilities_output, "embeddings output": embeddings_output},
        {"input raster": source, "labels": labels.source if isinstance(labels, PolygonLabels) else labels.path,
         "embeddings": embeddings},
        overwrite=overwrite,
        suffixes={"output": GEOTIFF, "probabilities output": GEOTIFF, "embeddings output": GEOTIFF},
    )
    uses_embeddings = forest.features != "bands"
    if not uses_embeddings and (embeddings is not None or embeddings_output is not None):
        raise SettingsError("features='bands' uses no embeddings; leave out embeddings/embeddings_output, or choose "
                            "features 'bands+embeddings'")
    if uses_embeddings and model is None and embeddings is None:
        raise SettingsError(f"features={forest.features!r} needs a model (or existing embeddings of the raster) to "
                            "compute embeddings with; give one, or use features='bands'")
    if uses_embeddings:
        check_pixel_grid(source)

    output = Path(output)
    report = progress or (lambda f: None)
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(open_raster(source))
        grid_labels = label_grid(labels, src.crs, src.transform, (src.height, src.width))  # label errors first
        train_g, val_g, notes = split_groups(grid_labels, forest.val_fraction, forest.seed)
        grid, result = None, None
        if uses_embeddings:
            path, result = stack.enter_context(provide_embeddings(
                source, output, model, embeddings, embeddings_output, settings=settings, sensor=sensor,
                overrides=overrides, region=region, progress=report, is_canceled=is_canceled, overwrite=overwrite))
            grid = stack.enter_context(open_embeddings(path, embedding_format if embeddings is not None else None))
        start = 0.8 if result is not None else 0.0
        features = _PixelFeatures(src, grid, forest.features, sensor, overrides, forest.embedding_components,
                                  forest.seed)
        if grid is not None:
            target = pixel_window(grid, src, region)
        else:
            target = region.window(src) if region else Window(0, 0, src.width, src.height)
        rng = np.random.default_rng(forest.seed)
        rows, cols, y = _training_pixels(grid_labels, train_g, target, region, src.transform, forest.max_samples, rng)
        x = _gather(features, rows, cols)
        finite = np.isfinite(x).all(axis=1)
        x, y = x[finite], y[finite]
        k = len(grid_labels.classes)
        counts = np.bincount(y, minlength=k)[:k]
        missing = [c.name for c in grid_labels.classes if counts[c.index] == 0]
        if len(missing) > k - 2:
            raise LabelError(
                f"only {k - len(missing)} class(es) of {grid_labels.source} have training pixels with valid features "
                f"(none for {missing}: nodata, outside the region, or all their groups went to validation); draw "
                "more polygons of those classes inside the valid area, or lower val_fraction")
        if missing:
            notes.append(f"class(es) {missing} have no training pixel (all their groups went to validation or are "
                         "nodata): the forest never predicts them")
        for note in notes:
            log.warning(note)
        check_canceled(is_canceled, "before fitting the forest")
        fit_started = time.perf_counter()
        rf = _fit(x, y, forest, settings.threads, is_canceled, scaled(report, start, start + 0.1 * (1 - start)))
        fit_seconds = time.perf_counter() - fit_started
        predict_started = time.perf_counter()
        names = tuple(c.name for c in grid_labels.classes)
        tags = product_tags(grid.tags() if grid is not None else {}, "forest-classes", source=str(source),
                            features=forest.features, classes=list(names), trees=forest.n_estimators,
                            min_samples_leaf=forest.min_samples_leaf, train_pixels=[int(c) for c in counts],
                            embedding_components=features.dims if features.pca is not None else None)
        confusion, class_counts = _write_maps(
            src, target, features, rf, grid_labels, val_g, region, output, probabilities_output, tags,
            scaled(report, start + 0.1 * (1 - start), 1.0), is_canceled)
        predict_seconds = time.perf_counter() - predict_started
    metrics: dict[str, Any] = {}
    if val_g and confusion.sum():
        metrics = segmentation_scores(confusion, list(names))
        metrics["split"] = (f"{len(val_g)} validation / {len(train_g)} training "
                            f"{'polygons' if grid_labels.group_class else 'blocks'}")
    elif val_g:
        notes.append("no validation pixel was classified (the validation groups lie outside the output or on "
                     "nodata): no validation scores")
    style = write_qml(output.with_suffix(".qml"), list(names), [c.color for c in grid_labels.classes])
    total = max(1, int(class_counts.sum()))
    report(1.0)
    return ClassifyResult(
        path=output, style=style, probabilities=Path(probabilities_output) if probabilities_output else None,
        class_names=names, class_fractions=tuple(float(c) / total for c in class_counts), metrics=metrics,
        train_pixels=tuple(int(c) for c in counts), feature_count=features.count,
        seconds=time.perf_counter() - started, fit_seconds=fit_seconds, predict_seconds=predict_seconds,
        embeddings=result, notes=tuple(notes),
    )


def _group_lookup(groups: set[int], n_groups: int) -> np.ndarray:
    """``keep[group + 1]``: True for the groups in ``groups`` (index 0 is group −1, unlabelled)."""
    keep = np.zeros(n_groups + 2, bool)
    keep[[g + 1 for g in groups]] = True
    return keep


def _label_part(grid: LabelGrid, window: Window) -> Optional[tuple[Window, np.ndarray, np.ndarray]]:
    """The labels and groups of ``grid`` inside ``window`` (input pixels): ``(intersection, labels, groups)``."""
    try:
        inter = window_intersection(grid.window, window)
    except WindowError:
        return None
    if inter.width <= 0 or inter.height <= 0:
        return None
    r0, c0 = int(inter.row_off - grid.window.row_off), int(inter.col_off - grid.window.col_off)
    part = (slice(r0, r0 + int(inter.height)), slice(c0, c0 + int(inter.width)))
    return inter, grid.labels[part], grid.groups[part]


def _training_pixels(grid: LabelGrid, train: set[int], target: Window, region: Optional[Region], transform: Any,
                     max_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced sample of the training groups' labelled pixels inside the output window (and the region's polygons).

    Returns:
        ``(rows, cols, classes)`` int64 arrays; rows and columns in input pixels.

    Raises:
        LabelError: No training pixel lies inside the output window / region.
    """
    part = _label_part(grid, target)
    if part is None:
        raise LabelError(f"no label of {grid.source} lies inside the processed area (the region, or the embeddings' "
                         "footprint); draw the region around the labels, or leave it out")
    inter, labels, groups = part
    keep = _group_lookup(train, int(grid.groups.max()) + 1)[groups + 1] & (labels != IGNORE)
    shape = (int(inter.height), int(inter.width))
    inside = region.pixel_mask(window_transform(inter, transform), shape) if region else None
    if inside is not None:
        keep &= inside
    if not keep.any():
        raise LabelError(f"no training label of {grid.source} lies inside the processed area (the region, or the "
                         "embeddings' footprint); draw the region around the labels, or leave it out")
    quota = max(1, max_samples // len(grid.classes))
    chosen = []
    for c in grid.classes:
        idx = np.flatnonzero(keep & (labels == c.index))
        chosen.append(rng.choice(idx, size=quota, replace=False) if len(idx) > quota else idx)
    flat = np.sort(np.concatenate(chosen))
    rows, cols = np.divmod(flat, labels.shape[1])
    return rows + int(inter.row_off), cols + int(inter.col_off), labels.ravel()[flat].astype(np.int64)


def _gather(features: _PixelFeatures, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``float32 [N, F]`` features of the pixels ``(rows, cols)`` (input pixels), computed window by window."""
    out = np.full((len(rows), features.count), np.nan, np.float32)
    r0, c0 = int(rows.min()), int(cols.min())
    height, width = int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1
    for part in iter_windows(height, width, _ROWS, features.columns()):
        sel = np.flatnonzero((rows >= r0 + part.row_off) & (rows < r0 + part.row_off + part.height)
                             & (cols >= c0 + part.col_off) & (cols < c0 + part.col_off + part.width))
        if not sel.size:
            continue
        win = Window(c0 + int(part.col_off), r0 + int(part.row_off), int(part.width), int(part.height))
        values = features(win)
        out[sel] = values[:, rows[sel] - int(win.row_off), cols[sel] - int(win.col_off)].T
    return out


def _fit(x: np.ndarray, y: np.ndarray, forest: ForestSettings, threads: Optional[int],
         is_canceled: Optional[CancelFn], report: ProgressFn) -> Any:
    """A ``RandomForestClassifier`` fitted on ``x [N, F]``, ``y [N]`` in tree batches (cancel between them)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    if forest.class_weighting == "sqrt-balanced":
        weights = np.sqrt(weights)
    elif forest.class_weighting == "none":
        weights = np.ones_like(weights)
    rf = RandomForestClassifier(
        n_estimators=1, min_samples_leaf=forest.min_samples_leaf, n_jobs=threads or -1, random_state=forest.seed,
        class_weight={int(c): float(w) for c, w in zip(present, weights)}, warm_start=True,
    )
    steps = sorted({max(1, round(forest.n_estimators * (i + 1) / _FIT_BATCHES)) for i in range(_FIT_BATCHES)})
    for n in steps:
        check_canceled(is_canceled, f"while fitting the forest ({rf.n_estimators} of {forest.n_estimators} trees)")
        rf.set_params(n_estimators=n)
        rf.fit(x, y)
        report(n / forest.n_estimators)
    return rf


def _write_maps(src: Any, target: Window, features: _PixelFeatures, rf: Any, grid: LabelGrid, val: set[int],
                region: Optional[Region], output: Path, prob_path: Optional[Union[str, Path]], tags: dict[str, str],
                report: ProgressFn, is_canceled: Optional[CancelFn]) -> tuple[np.ndarray, np.ndarray]:
    """Predict every pixel of ``target`` and write the class map (and the probabilities).

    Returns:
        ``(confusion int64 [K, K] of the validation groups' pixels, rows = label; classified pixels per class [K])``.
    """
    k = len(grid.classes)
    known = np.asarray(rf.classes_, np.int64)
    keep_val = _group_lookup(val, int(grid.groups.max()) + 1)

    def probabilities(win: Window) -> np.ndarray:
        x = features(win).reshape(features.count, -1).T
        ok = np.flatnonzero(np.isfinite(x).all(axis=1))
        out = np.full((k, x.shape[0]), np.nan, np.float32)
        if ok.size:
            out[:, ok] = 0.0
            out[known[:, None], ok[None, :]] = rf.predict_proba(x[ok]).T
        return out.reshape(k, int(win.height), int(win.width))

    profile = dict(width=int(target.width), height=int(target.height), crs=src.crs,
                   transform=window_transform(target, src.transform))
    colors = {c.index: c.color for c in grid.classes}
    confusion = np.zeros((k, k), np.int64)
    counts = np.zeros(k, np.int64)
    bands = pixel_row_bands(src, target, k, _ROWS, features.columns(), probabilities, region, np.nan)
    with GeoTiffWriter(output, gtiff_profile(count=1, dtype="uint8", nodata=NODATA_CLASS, **profile), ["class"],
                       tags, colors) as classes_out, \
            (GeoTiffWriter(Path(prob_path), gtiff_profile(count=k, dtype="float32", nodata=float("nan"), **profile),
                           [f"p_{c.name}" for c in grid.classes], {**tags, "MSFM_KIND": "forest-probabilities"})
             if prob_path is not None else contextlib.nullcontext()) as probs_out:
        for window, probs in bands:
            check_canceled(is_canceled, "while classifying")
            ok = np.isfinite(probs).all(axis=0)
            classes = np.where(ok, np.nan_to_num(probs, nan=-1.0).argmax(axis=0), NODATA_CLASS).astype(np.uint8)
            counts += np.bincount(classes[ok].ravel(), minlength=k)[:k]
            classes_out.write_rows(classes[None])
            if probs_out is not None:
                probs_out.write_rows(probs)
            part = _label_part(grid, window) if val else None
            if part is not None:
                inter, labels, groups = part
                r, c = int(inter.row_off - window.row_off), int(inter.col_off - window.col_off)
                pred = classes[r : r + int(inter.height), c : c + int(inter.width)]
                scored = keep_val[groups + 1] & (labels != IGNORE) & (pred != NODATA_CLASS)
                confusion += np.bincount(labels[scored].astype(np.int64) * k + pred[scored],
                                         minlength=k * k).reshape(k, k)
            report((window.row_off + window.height - target.row_off) / target.height)
        if counts.sum() == 0:
            raise InputRasterError(f"{src.name}: no valid pixel to classify (all nodata)")
    return confusion, counts
