"""Change maps: how far apart the embeddings of two rasters of one place are, cell by cell, on one grid.

Both rasters are embedded (or their embedding rasters are given: ours or made elsewhere,
:func:`engine.maps.open_embeddings`). The BEFORE embeddings are put on the AFTER raster's cell grid (or the AFTER ones
on the BEFORE grid, ``on_grid="before"``): read through a GDAL warped view with bilinear resampling when the grids
differ (another CRS, resolution or extent; never silently: it is logged and recorded in the output's tags), as they
are when the grids are the same. Every cell's change is the cosine distance ``1 − cos(e_before, e_after)`` in [0, 2]
(0: same embedding direction), NaN where either side is nodata. At ``"pixel"`` resolution the cell distances are
interpolated bilinearly onto that raster's pixels, its nodata carried over
(:func:`engine.maps.upsample.write_pixel_values`); at ``"patch"`` resolution the cell grid is the
output. A QGIS style (``.qml``, Viridis over the map's range) is written beside it.

Calibration and thresholds: the distances of a scene are summarised by its no-change distribution, estimated robustly
as if most of the scene did not change: the median and σ = 1.4826 × the median absolute deviation (a robust z-score
``(d − median) / σ`` then reads the same for any sensor pair). A threshold — a value, ``"robust"`` (median + 3σ) or
``"otsu"`` (Otsu 1979 on the distances' histogram) — writes a change mask (uint8: 0 unchanged, 1 changed, 255 nodata,
with its ``.qml``) and, optionally, the changed areas as polygons (GeoPackage).

Values: the cosine distance, or its robust z-score ``(d − median) / σ`` (``calibration``; the default for two
different sensors, said in a notice that recommends a model aligned on the pair, docs/change.md). "Changed towards
what": the changed pixels' classes in a class map of the AFTER scene, or k-means classes of its embeddings. Pairs of
many scenes, with one calibration pooled over them: :func:`engine.batch.batch_change`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ..atomic import scratch_folder
from ..callbacks import CancelFn, ProgressFn, check_canceled
from ..errors import InputRasterError, SettingsError
from ..models import Encoder
from ..outputs import GEOTIFF, check_outputs
from ..raster import (
    NODATA_CLASS,
    GeoTiffWriter,
    colors_for_names,
    gtiff_profile,
    iter_windows,
    polygonize,
    read_qml_labels,
    write_qml,
    write_ramp_qml,
)
from ..settings import InferenceSettings
from ..spectral import Overrides
from .clustering import ClusterSettings, Resolution, cluster_raster, l2_normalize
from .embeddings import EmbeddingResult, provide_embeddings
from .quantized import EmbeddingRaster, open_embeddings
from .tags import product_tags, read_tag
from .upsample import check_pixel_grid, pixel_window, value_range, write_pixel_values

__all__ = ("CALIBRATIONS", "MIN_SIGMA", "Calibration", "ChangeResult", "change_raster", "check_change_options",
           "otsu_threshold", "robust_spread", "sample_distances")

log = logging.getLogger(__name__)

#: Embedding values read per row band (float32: 4 bytes each).
_BAND_VALUES = 1 << 22


#: What a change map's values are: ``"auto"`` (a robust z-score when the two sides are different sensors, the cosine
#: distance otherwise), ``"distance"`` or ``"zscore"``.
Calibration = Literal["auto", "distance", "zscore"]
CALIBRATIONS = ("auto", "distance", "zscore")
#: The smallest σ a z-score divides by: below it the distances are rounding noise (a scene against itself: ≤ 2.4e-7).
MIN_SIGMA = 1e-4


@dataclass(frozen=True)
class ChangeResult:
    """What :func:`change_raster` wrote.

    Attributes:
        path: The change GeoTIFF: one float32 band, ``cosine_distance`` in [0, 2] or ``robust_z`` (``units``), NaN =
            nodata.
        resolution: ``"patch"`` or ``"pixel"``.
        value_range: ``(min, max)`` of the written values (NaN, NaN when nothing is valid).
        reprojected: Whether one side's embeddings were resampled onto the other's grid (``on_grid``).
        before: The BEFORE embedding run (None when its embeddings were given).
        after: The AFTER embedding run (None when its embeddings were given).
        seconds: Wall time.
        style: The QGIS style beside it (``.qml``).
        no_change: ``(median, σ)`` of the no-change cosine distances: the scene's own (σ = 1.4826 × their median
            absolute deviation), or the calibration given.
        threshold: The value (in ``units``) above which a cell is changed (None without a threshold).
        changed_fraction: Share of the valid mask pixels that changed (None without a threshold).
        mask: The change mask (None without ``mask_output``).
        polygons: The changed areas as polygons (None without ``polygons_output``).
        units: ``"cosine_distance"`` or ``"robust_z"`` (``(d − median) / σ``).
        sensors: What each side's embeddings were made from (``(before, after)``: the sensor preset, else the band
            projections; None for embeddings that do not say, made elsewhere).
        cross_sensor: Whether the two sides were embedded from different bands (different sensors).
        notice: What the run said about the sensors (logged too), or None.
        towards: The "changed towards" class map (None without ``towards``).
        towards_fractions: Share of the changed pixels per class they changed towards, by class name.
        towards_classes: The names of the towards map's classes 0, 1, … (its legend).
    """

    path: Path
    resolution: str
    value_range: tuple[float, float]
    reprojected: bool
    before: Optional[EmbeddingResult]
    after: Optional[EmbeddingResult]
    seconds: float
    style: Path
    no_change: tuple[float, float] = (math.nan, math.nan)
    threshold: Optional[float] = None
    changed_fraction: Optional[float] = None
    mask: Optional[Path] = None
    polygons: Optional[Path] = None
    units: str = "cosine_distance"
    sensors: tuple[Optional[str], Optional[str]] = (None, None)
    cross_sensor: bool = False
    notice: Optional[str] = None
    towards: Optional[Path] = None
    towards_fractions: Mapping[str, float] = field(default_factory=dict)
    towards_classes: tuple[str, ...] = ()


def change_raster(
    before: Union[str, Path],
    after: Union[str, Path],
    output: Union[str, Path],
    model: Optional[Encoder] = None,
    *,
    before_embeddings: Optional[Union[str, Path]] = None,
    after_embeddings: Optional[Union[str, Path]] = None,
    embedding_format: Optional[str] = None,
    resolution: Resolution = "pixel",
    on_grid: Literal["after", "before"] = "after",
    calibration: Calibration = "auto",
    no_change: Optional[tuple[float, float]] = None,
    threshold: Optional[Union[float, str]] = None,
    mask_output: Optional[Union[str, Path]] = None,
    polygons_output: Optional[Union[str, Path]] = None,
    towards: Optional[Union[int, str, Path, np.ndarray]] = None,
    towards_output: Optional[Union[str, Path]] = None,
    settings: Optional[InferenceSettings] = None,
    before_sensor: Optional[str] = None,
    after_sensor: Optional[str] = None,
    before_overrides: Optional[Overrides] = None,
    after_overrides: Optional[Overrides] = None,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
    overwrite: bool = False,
) -> ChangeResult:
    """Map the change between two rasters of one place: the cosine distance of their embeddings, per cell.

    Args:
        before: The earlier raster (any sensor the model maps).
        after: The later raster; its grid is the output's (unless ``on_grid="before"``).
        output: Change GeoTIFF to write (atomically), with its ``.qml`` beside it: one float32 band
            ``cosine_distance`` in [0, 2] or ``robust_z``, NaN nodata, tags ``MSFM_KIND=change``, ``MSFM_BEFORE``,
            ``MSFM_AFTER``, ``MSFM_REPROJECTED``, ``MSFM_UNITS``, ``MSFM_NO_CHANGE`` (median, σ).
        model: Loaded encoder; needed unless both embeddings are given.
        before_embeddings: An existing embedding raster of ``before`` (ours, or made elsewhere).
        after_embeddings: An existing embedding raster of ``after``.
        embedding_format: The format of the given embeddings (:data:`engine.maps.quantized.ENCODINGS`; None:
            detected from each file).
        resolution: ``"pixel"`` (the output grid's raster's pixels) or ``"patch"`` (its embedding cells).
        on_grid: Whose grid the map is on: ``"after"`` (default; the BEFORE embeddings are resampled onto it when
            the grids differ) or ``"before"`` (the AFTER embeddings are resampled; e.g. to keep the finer of two
            sensors' grids). The distance is symmetric: only the grid and the resampled side change.
        calibration: ``"distance"`` (the cosine distance), ``"zscore"`` (the robust z-score ``(d − median) / σ``
            against the no-change distribution, docs/change.md) or ``"auto"`` (z-score when the two sides were
            embedded from different bands, i.e. different sensors; distance otherwise).
        no_change: ``(median, σ)`` of the cosine distances where nothing changed, for this sensor pair (e.g. learned
            over many scenes by :func:`engine.batch.batch_change`); None: estimated from this scene, as if most of
            it did not change.
        threshold: In the map's units: a value, ``"robust"`` (the no-change median + 3σ, i.e. z = 3; σ at least
            :data:`MIN_SIGMA`) or
            ``"otsu"``; needed by the mask, polygon and towards outputs (default ``"otsu"`` when one is asked for).
        mask_output: Write the change mask here (uint8 GeoTIFF: 0 unchanged, 1 changed, 255 nodata; ``.qml``).
        polygons_output: Write the changed areas here as polygons (GeoPackage, layer ``classes``; with ``towards``,
            each area named after the class it changed towards).
        towards: What the changed cells became: ``k`` (an int: k-means classes of the AFTER embeddings, as
            :func:`engine.cluster_raster`), ``[k, D]`` k-means centres fitted elsewhere (e.g. over every AFTER
            scene of :func:`engine.batch.batch_change`, so class i is the same in every pair), or a class raster of
            the AFTER scene (uint8 classes, 255 = nodata: a
            class map of ``msfm cluster`` / ``segment`` / ``classify``; names from its ``.qml``, read on the
            output's grid, nearest).
        towards_output: Write the changed cells' classes here (uint8 GeoTIFF, 255 where unchanged or nodata, colour
            table and ``.qml``); needs ``towards``.
        settings: Inference settings of both embedding runs.
        before_sensor: Sensor preset of ``before`` (None: guessed).
        after_sensor: Sensor preset of ``after`` (None: guessed).
        before_overrides: Band overrides of ``before``.
        after_overrides: Band overrides of ``after``.
        progress: Called with the completed fraction 0..1.
        is_canceled: Polled every batch / row band; True stops with :class:`engine.errors.InferenceCancelled`,
            writing nothing.
        overwrite: Replace ``output`` when it exists.

    Returns:
        :class:`ChangeResult`.

    Raises:
        SettingsError: An unknown resolution, calibration or threshold, a ``no_change`` that is not two finite
            numbers with σ > 0, ``towards_output`` without ``towards``, a ``towards`` k outside 2..254, or neither
            a model nor the embeddings of a side.
        InputRasterError: Embeddings of different dimensions (different models), grids that do not overlap, int8
            embeddings of the resampled side (give float ones), a ``towards`` class raster that does not overlap,
            or what reading either raster raises.
        engine.errors.InferenceCancelled: Cancelled by the caller.
        engine.errors.OutputError: An output that is an input, or exists (without ``overwrite``).
    """
    check_change_options(resolution, calibration, threshold)
    if on_grid not in ("after", "before"):
        raise SettingsError(f"on_grid must be 'after' or 'before', got {on_grid!r}")
    if no_change is not None and not (len(no_change) == 2 and all(math.isfinite(v) for v in no_change)
                                      and no_change[1] > 0):
        raise SettingsError(f"no_change must be (median, σ) of the no-change distances with σ > 0, got {no_change!r}")
    if towards_output is not None and towards is None:
        raise SettingsError("towards_output needs towards: a k (k-means classes of the AFTER scene) or its class map")
    if isinstance(towards, int) and not 2 <= towards <= 254:
        raise SettingsError(f"towards k must be 2..254 (uint8 classes), got {towards}")
    if isinstance(towards, np.ndarray) and not (towards.ndim == 2 and 2 <= len(towards) <= 254):
        raise SettingsError(f"towards centres must be [k, D] with k 2..254, got shape {towards.shape}")
    if threshold is None and (mask_output is not None or polygons_output is not None or towards_output is not None):
        threshold = "otsu"
    towards_file = Path(towards) if isinstance(towards, (str, Path)) else None
    check_outputs({"output": output, "mask output": mask_output, "polygons output": polygons_output,
                   "towards output": towards_output},
                  {"BEFORE raster": before, "AFTER raster": after, "BEFORE embeddings": before_embeddings,
                   "AFTER embeddings": after_embeddings, "towards class map": towards_file},
                  overwrite=overwrite, suffixes={"output": GEOTIFF, "mask output": GEOTIFF, "towards output": GEOTIFF,
                                                 "polygons output": (".gpkg",)})
    if towards_file is not None:
        _check_class_map(towards_file)
    pixels = after if on_grid == "after" else before  # the raster whose pixels a pixel-resolution map covers
    if resolution == "pixel":
        check_pixel_grid(pixels)
    started = time.perf_counter()
    output = Path(output)
    report = progress or (lambda f: None)
    with contextlib.ExitStack() as stack:
        after_path, after_run = stack.enter_context(provide_embeddings(
            after, output, model, after_embeddings, None, settings=settings, sensor=after_sensor,
            overrides=after_overrides, progress=lambda f: report(0.5 * f / 0.8), is_canceled=is_canceled))
        before_path, before_run = stack.enter_context(provide_embeddings(
            before, output.with_name(f"{output.stem}.before{output.suffix}"), model, before_embeddings, None,
            settings=settings, sensor=before_sensor, overrides=before_overrides,
            progress=lambda f: report(0.5 + 0.4 * f / 0.8), is_canceled=is_canceled))
        after_grid = stack.enter_context(open_embeddings(after_path, embedding_format if after_embeddings else None))
        before_grid = stack.enter_context(open_embeddings(before_path,
                                                          embedding_format if before_embeddings else None))
        if before_grid.count != after_grid.count:
            raise InputRasterError(f"the BEFORE embeddings have {before_grid.count} dimensions and the AFTER ones "
                                   f"{after_grid.count}: embed both with the same model")
        (before_made, before_bands), (after_made, after_bands) = _made_from(before_grid), _made_from(after_grid)
        cross = before_bands is not None and after_bands is not None and before_bands != after_bands
        units = "robust_z" if calibration == "zscore" or (calibration == "auto" and cross) else "cosine_distance"
        notice = _sensor_notice(before_made, after_made, model) if cross else None
        grid, other = (after_grid, before_grid) if on_grid == "after" else (before_grid, after_grid)
        moved, kept = ("BEFORE", "AFTER") if on_grid == "after" else ("AFTER", "BEFORE")
        aligned, reprojected = _on_grid(other, grid, moved, kept)
        if reprojected:
            stack.enter_context(aligned.dataset)  # the warped view (the resampled raster stays open by its own)
            log.info("%s embeddings %s resampled (bilinear) onto the %s grid of %s", moved, other.name, kept,
                     grid.name)
        tags = product_tags({}, "change", before=str(before), after=str(after), grid=on_grid, resolution=resolution,
                            reprojected=str(reprojected).lower(), units=units, before_made_from=str(before_made),
                            after_made_from=str(after_made))
        check_canceled(is_canceled, "before comparing the embeddings")
        tmp = stack.enter_context(scratch_folder(output))
        direct = resolution == "patch" and units == "cosine_distance"  # the cell distances are the output
        cells = output if direct else tmp / "change_cells.tif"
        values = _write_distances(grid, aligned, cells, tags, lambda f: report(0.9 + 0.05 * f), is_canceled)
        median, sigma = no_change if no_change is not None else robust_spread(_sample(cells))
        if units == "robust_z":
            if sigma < MIN_SIGMA:
                log.info("no-change σ %.2g is below %.0e (hardly anything differs): z-scores divide by %.0e",
                         sigma, MIN_SIGMA, MIN_SIGMA)
            z_cells = output if resolution == "patch" else tmp / "change_z.tif"
            values = _rescale(cells, z_cells, median, max(sigma, MIN_SIGMA), tags)
            cells = z_cells
        if resolution == "pixel":
            with rasterio.open(cells) as cell_values, rasterio.open(pixels) as src:
                values = write_pixel_values(cell_values, src, pixel_window(grid, src, None), None, output,
                                            {**tags, "MSFM_NO_CHANGE": f"{median:.6g} {sigma:.6g}"}, units,
                                            lambda f: report(0.95 + 0.04 * f), is_canceled)
        else:
            with rasterio.open(output, "r+") as ds:
                ds.update_tags(MSFM_NO_CHANGE=f"{median:.6g} {sigma:.6g}")
        low, high = (0.0, 2.0) if math.isnan(values[0]) else values
        style = write_ramp_qml(output.with_suffix(".qml"), low, high, label=_LABELS[units])
        cut, fraction, mask, polygons, towards_map = None, None, None, None, None
        shares: dict[str, float] = {}
        if threshold is not None:
            z = units == "robust_z"
            cut = (float(threshold) if isinstance(threshold, (int, float)) else
                   (3.0 if z else median + 3 * max(sigma, MIN_SIGMA)) if threshold == "robust"
                   else otsu_threshold(_sample(output)))
            mask_path = Path(mask_output) if mask_output is not None else tmp / "change_mask.tif"
            fraction = _write_mask(output, mask_path, cut, tags)
            log.info("change threshold %.4f (%s, %s): %.1f %% of the valid pixels changed", cut, threshold, units,
                     100 * fraction)
            names: tuple[str, ...] = ("unchanged", "changed")
            areas: Path = mask_path
            keep: Optional[set[int]] = {1}
            if towards is not None:
                classes, class_names = _towards_classes(towards, after, after_path, resolution, tmp,
                                                        embedding_format if after_embeddings else None, is_canceled)
                target = Path(towards_output) if towards_output is not None else tmp / "change_towards.tif"
                names, shares = _write_towards(mask_path, classes, class_names, target, tags)
                areas, keep = target, None
                towards_map = target if towards_output is not None else None
                log.info("changed towards: %s", ", ".join(f"{n} {100 * f:.1f} %" for n, f in shares.items()))
            if polygons_output is not None:
                polygons = polygonize(areas, Path(polygons_output), names, keep=keep)
            mask = mask_path if mask_output is not None else None
    report(1.0)
    return ChangeResult(path=output, resolution=resolution, value_range=values, reprojected=reprojected,
                        before=before_run, after=after_run, seconds=time.perf_counter() - started, style=style,
                        no_change=(median, sigma), threshold=cut, changed_fraction=fraction, mask=mask,
                        polygons=polygons, units=units, sensors=(before_made, after_made), cross_sensor=cross,
                        notice=notice, towards=towards_map, towards_fractions=shares,
                        towards_classes=names if towards is not None and threshold is not None else ())


def check_change_options(resolution: str, calibration: str, threshold: Optional[Union[float, str]]) -> None:
    """Refuse an unknown resolution, calibration or threshold of :func:`change_raster` before any work.

    Args:
        resolution: ``"patch"`` or ``"pixel"``.
        calibration: One of :data:`CALIBRATIONS`.
        threshold: None, a value (in the map's units), ``"otsu"`` or ``"robust"``.

    Raises:
        SettingsError: Naming the option and its choices.
    """
    if resolution not in ("patch", "pixel"):
        raise SettingsError(f"resolution must be 'patch' or 'pixel', got {resolution!r}")
    if calibration not in CALIBRATIONS:
        raise SettingsError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    if threshold is not None and not isinstance(threshold, (int, float)) and threshold not in ("otsu", "robust"):
        raise SettingsError(f"threshold must be a value, 'otsu' or 'robust', got {threshold!r}")


def robust_spread(distances: np.ndarray) -> tuple[float, float]:
    """The no-change distribution of a scene's distances, estimated as if most of it did not change.

    Args:
        distances: Finite cosine distances, any shape.

    Returns:
        ``(median, σ)`` with σ = 1.4826 × the median absolute deviation (the standard deviation of a normal
        distribution with that MAD; Rousseeuw & Croux 1993); ``(nan, nan)`` when ``distances`` is empty.
    """
    if not distances.size:
        return math.nan, math.nan
    median = float(np.median(distances))
    return median, 1.4826 * float(np.median(np.abs(distances - median)))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (Otsu 1979): the value that maximises the between-class variance of ``values``' histogram.

    Args:
        values: Finite values (e.g. cosine distances).
        bins: Histogram bins over their range.

    Returns:
        The threshold (the upper edge of the last bin of the lower class); the single value for constant ``values``.
    """
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    total = weight[-1]
    if total == 0 or edges[0] == edges[-1]:
        return float(edges[0])
    mean = np.cumsum(counts * centres)
    between = (mean[-1] * weight / total - mean) ** 2 / np.maximum(weight * (total - weight), 1e-12) * total
    return float(edges[int(np.argmax(between[:-1])) + 1])


_LABELS = {"cosine_distance": "cosine distance (change)", "robust_z": "robust z-score of the change"}


def _made_from(embeddings: EmbeddingRaster) -> tuple[Optional[str], Optional[tuple[str, ...]]]:
    """What an embedding raster was made from, by its tags: ``(sensor preset or bands as text, band projections)``.

    Both are None for embeddings made elsewhere (they do not record it).
    """
    tags = embeddings.dataset.tags()
    bands = read_tag(tags, "bands")
    if not isinstance(bands, list):
        return None, None
    sensor = read_tag(tags, "sensor")
    return (str(sensor) if sensor not in (None, "None") else "bands " + ", ".join(map(str, bands))), \
        tuple(map(str, bands))


def _sensor_notice(before: Optional[str], after: Optional[str], model: Optional[Encoder]) -> str:
    """What :func:`change_raster` says when the two sides were embedded from different bands.

    Logged as a warning, unless the model was aligned on two sensors (``smarties-align``).
    """
    aligned = model.provenance.aligned if model is not None else ()
    head = f"BEFORE ({before}) and AFTER ({after}) are different sensors"
    if aligned:
        text = (f"{head}; the model was aligned on {' and '.join(aligned)} (smarties-align): distances between them "
                "are comparable where it was trained for this pair")
        log.info(text)
        return text
    text = (f"{head}: their embeddings differ even where nothing changed, so the map is calibrated against the "
            "scene's no-change distribution (robust z-score). For cross-sensor change use a model aligned on this "
            "pair (msfm train smarties-align, docs/training.md)")
    log.warning(text)
    return text


def _rescale(cells: Path, output: Path, median: float, sigma: float, tags: dict[str, str]) -> tuple[float, float]:
    """``(d − median) / σ`` of a one-band distance raster, written as ``robust_z`` (float32, NaN nodata)."""
    lo = hi = float("nan")
    with rasterio.open(cells) as ds:
        profile = gtiff_profile(width=ds.width, height=ds.height, count=1, dtype="float32", crs=ds.crs,
                                transform=ds.transform, nodata=float("nan"))
        with GeoTiffWriter(output, profile, ["robust_z"], {**tags, "MSFM_NO_CHANGE": f"{median:.6g} {sigma:.6g}"}) \
                as writer:
            for window in iter_windows(ds.height, ds.width, max(1, _BAND_VALUES // ds.width), ds.width):
                z = (ds.read(1, window=window) - np.float32(median)) / np.float32(sigma)
                writer.write_rows(z[None].astype(np.float32))
                lo, hi = value_range(lo, hi, z)
    return lo, hi


def _towards_classes(towards: Union[int, str, Path, np.ndarray], after: Union[str, Path], after_embeddings: Path,
                     resolution: Resolution, tmp: Path, embedding_format: Optional[str],
                     is_canceled: Optional[CancelFn]) -> tuple[Path, dict[int, str]]:
    """The class raster "changed towards" reads, and its class names (``{value: name}``).

    k-means classes of the AFTER embeddings (fitted now, or the centres given; written in ``tmp``; ``class i``), or
    the class raster given (names from the ``.qml`` beside it, where there is one).
    """
    if isinstance(towards, (int, np.ndarray)):
        k = towards if isinstance(towards, int) else len(towards)
        classes = tmp / "towards_classes.tif"
        cluster_raster(after, classes, embeddings=after_embeddings, embedding_format=embedding_format,
                       clustering=ClusterSettings(k=k, resolution=resolution), is_canceled=is_canceled,
                       centers=None if isinstance(towards, int) else towards)
        return classes, {i: f"class {i}" for i in range(k)}
    path = Path(towards)
    return path, read_qml_labels(path.with_suffix(".qml")) or {}


def _check_class_map(path: Path) -> None:
    """Refuse a towards class map that is not one band of integer classes, before any work.

    Raises:
        InputRasterError: Naming what the file holds, or why it cannot be read.
    """
    try:
        with rasterio.open(path) as c:
            count, dtype = c.count, np.dtype(c.dtypes[0])
    except RasterioIOError as exc:
        raise InputRasterError(f"cannot read the towards class map {path}: {exc}") from exc
    if count != 1 or not np.issubdtype(dtype, np.integer):
        raise InputRasterError(f"the towards class map {path} must be one band of integer classes (a class map of "
                               f"msfm cluster / segment / classify), got {count} {dtype} band(s)")


def _write_towards(mask: Path, classes: Path, names: Mapping[int, str], output: Path,
                   tags: dict[str, str]) -> tuple[tuple[str, ...], dict[str, float]]:
    """The class of ``classes`` at every changed pixel of ``mask`` (255 elsewhere), on the mask's grid.

    ``classes`` is read through a nearest-neighbour warped view when its grid differs. The output gets the class
    raster's colour table (else colours from the class names, :func:`engine.raster.colors_for_names`) and a ``.qml``.

    Returns:
        ``(names of classes 0..max, share of the changed pixels per class name)``.

    """
    counts = np.zeros(NODATA_CLASS, np.int64)
    with rasterio.open(mask) as m, rasterio.open(classes) as c:
        try:
            colors = {i: tuple(rgba) for i, rgba in c.colormap(1).items() if i < NODATA_CLASS}
        except ValueError:  # no colour table: colours from the names
            known = tuple(names.get(i, f"class {i}") for i in range(max(names, default=NODATA_CLASS - 1) + 1))
            colors = dict(enumerate(colors_for_names(known)))
        same = c.crs == m.crs and c.transform.almost_equals(m.transform) and c.shape == m.shape
        with contextlib.ExitStack() as stack:
            view = c if same else stack.enter_context(WarpedVRT(
                c, crs=m.crs, transform=m.transform, width=m.width, height=m.height, resampling=Resampling.nearest,
                src_nodata=c.nodata if c.nodata is not None else NODATA_CLASS, nodata=NODATA_CLASS))
            profile = gtiff_profile(width=m.width, height=m.height, count=1, dtype="uint8", crs=m.crs,
                                    transform=m.transform, nodata=NODATA_CLASS)
            with GeoTiffWriter(output, profile, ["changed_towards"],
                               {**tags, "MSFM_KIND": "change-towards", "MSFM_TOWARDS": str(classes)},
                               colormap=colors) as writer:
                for window in iter_windows(m.height, m.width, 256, m.width):
                    cls = view.read(1, window=window).astype(np.int64)
                    keep = (m.read(1, window=window) == 1) & (cls >= 0) & (cls < NODATA_CLASS)
                    if c.nodata is not None:
                        keep &= cls != c.nodata
                    out = np.full(cls.shape, NODATA_CLASS, np.uint8)
                    out[keep] = cls[keep]
                    counts += np.bincount(cls[keep], minlength=NODATA_CLASS)
                    writer.write_rows(out[None])
    present = np.flatnonzero(counts)
    labels = tuple(names.get(i, f"class {i}") for i in range(int(present.max()) + 1 if present.size else 1))
    write_qml(output.with_suffix(".qml"), list(labels),
              [colors.get(i, (128, 128, 128, 255)) for i in range(len(labels))])
    total = max(1, int(counts.sum()))
    return labels, {labels[i]: float(counts[i]) / total for i in present}


def _sample(path: Path, max_values: int = 1 << 20) -> np.ndarray:
    """The finite values of a one-band raster, read decimated to at most ``max_values`` pixels."""
    with rasterio.open(path) as ds:
        step = max(1, math.ceil(math.sqrt(ds.width * ds.height / max_values)))
        values = ds.read(1, out_shape=(max(1, ds.height // step), max(1, ds.width // step)),
                         resampling=Resampling.nearest)
    return values[np.isfinite(values)]


def _write_mask(distances: Path, output: Path, threshold: float, tags: dict[str, str]) -> float:
    """The change mask of a distance raster (1 where the distance exceeds ``threshold``), with its ``.qml``.

    Returns:
        The share of valid pixels that changed.
    """
    changed = valid = 0
    with rasterio.open(distances) as ds:
        profile = gtiff_profile(width=ds.width, height=ds.height, count=1, dtype="uint8", crs=ds.crs,
                                transform=ds.transform, nodata=NODATA_CLASS)
        colors = {0: (200, 200, 200, 255), 1: (214, 39, 40, 255)}
        with GeoTiffWriter(output, profile, ["change"], {**tags, "MSFM_KIND": "change-mask",
                                                         "MSFM_THRESHOLD": f"{threshold:.6g}"},
                           colormap=colors) as writer:
            for window in iter_windows(ds.height, ds.width, 256, ds.width):
                d = ds.read(1, window=window)
                mask = np.full(d.shape, NODATA_CLASS, np.uint8)
                ok = np.isfinite(d)
                mask[ok] = d[ok] > threshold
                changed += int(mask[ok].sum())
                valid += int(ok.sum())
                writer.write_rows(mask[None])
    write_qml(output.with_suffix(".qml"), ["unchanged", "changed"], [colors[0], colors[1]])
    return changed / max(valid, 1)


def _on_grid(other: EmbeddingRaster, grid: EmbeddingRaster, moved: str = "BEFORE", kept: str = "AFTER",
             ) -> tuple[Any, bool]:
    """``other`` as it reads on ``grid``'s cells: itself on the same grid, else a bilinear warped view (floats only).

    ``moved`` and ``kept`` name the two sides in messages (``"BEFORE"`` resampled onto ``"AFTER"``, or the reverse).

    Returns:
        ``(a reader with ``read(window=)`` → float32 [D, h, w], whether it was resampled)``.
    """
    same = (other.crs == grid.crs and other.transform.almost_equals(grid.transform)
            and (other.width, other.height) == (grid.width, grid.height))
    if same:
        return other, False
    if other.encoding not in ("msfm", "float"):
        raise InputRasterError(f"the {moved} embeddings {other.name} are {other.encoding} on another grid than the "
                               "AFTER ones: resampling quantised values would mix scales; give float embeddings "
                               f"(msfm embed --dtype float32) or embeddings on the {kept} grid")
    bounds = transform_bounds(other.crs, grid.crs, *other.bounds)
    if bounds[0] >= grid.bounds.right or bounds[2] <= grid.bounds.left or bounds[1] >= grid.bounds.top \
            or bounds[3] <= grid.bounds.bottom:
        raise InputRasterError(f"the {moved} raster does not overlap the {kept} raster ({other.crs} bounds {bounds} "
                               f"in the {kept} CRS vs {tuple(grid.bounds)}): give two rasters of one place")
    warped = WarpedVRT(other.dataset, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                       resampling=Resampling.bilinear, src_nodata=other.dataset.nodata, nodata=float("nan"),
                       dtype="float32")
    return EmbeddingRaster(warped, "float"), True


def _distances(grid: Any, other: Any, window: Window) -> np.ndarray:
    """``1 − cos`` of the embeddings of ``grid`` and ``other`` in ``window``: float32 [h, w], NaN where either is."""
    a = grid.read(window=window).reshape(grid.count, -1).T
    b = other.read(window=window).reshape(grid.count, -1).T
    ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    distance = np.full(a.shape[0], np.nan, np.float32)
    distance[ok] = np.clip(1.0 - (l2_normalize(a[ok]) * l2_normalize(b[ok])).sum(axis=1), 0.0, 2.0)
    return distance.reshape(int(window.height), int(window.width))


def sample_distances(before_embeddings: Union[str, Path], after_embeddings: Union[str, Path],
                     max_values: int = 100_000, embedding_format: Optional[str] = None) -> np.ndarray:
    """Cosine distances of two embedding rasters of one place, on the AFTER grid, from rows spread over it.

    What :func:`change_raster` maps, without writing it: for a calibration of a sensor pair over many scenes
    (:func:`engine.batch.batch_change` pools the samples of every pair into one ``(median, σ)``).

    Args:
        before_embeddings: The BEFORE embedding raster (resampled onto the AFTER grid when the grids differ).
        after_embeddings: The AFTER embedding raster.
        max_values: At most about this many cells (whole rows, evenly spaced).
        embedding_format: As :func:`change_raster`.

    Returns:
        float32 [N] finite distances in [0, 2].

    Raises:
        InputRasterError: As :func:`change_raster` (dimensions, overlap, int8 on another grid).
    """
    with open_embeddings(after_embeddings, embedding_format) as grid, \
            open_embeddings(before_embeddings, embedding_format) as other:
        if other.count != grid.count:
            raise InputRasterError(f"the BEFORE embeddings have {other.count} dimensions and the AFTER ones "
                                   f"{grid.count}: embed both with the same model")
        aligned, reprojected = _on_grid(other, grid)
        with aligned.dataset if reprojected else contextlib.nullcontext():
            step = max(1, math.ceil(grid.height * grid.width / max(max_values, 1)))
            rows = [_distances(grid, aligned, Window(0, r, grid.width, 1)) for r in range(0, grid.height, step)]
    values = np.concatenate(rows, axis=None)
    return values[np.isfinite(values)]


def _write_distances(grid: Any, other: Any, output: Path, tags: dict[str, str], report: ProgressFn,
                     is_canceled: Optional[CancelFn]) -> tuple[float, float]:
    """Cosine distance of every cell of ``grid`` to the same cell of ``other``, row band by row band."""
    profile = gtiff_profile(width=grid.width, height=grid.height, count=1, dtype="float32", crs=grid.crs,
                            transform=grid.transform, nodata=float("nan"))
    lo = hi = float("nan")
    rows = max(1, _BAND_VALUES // (grid.count * grid.width))
    with GeoTiffWriter(output, profile, ["cosine_distance"], tags) as writer:
        for window in iter_windows(grid.height, grid.width, rows, grid.width):
            distance = _distances(grid, other, window)[None]
            writer.write_rows(distance)
            lo, hi = value_range(lo, hi, distance)
            report((window.row_off + window.height) / grid.height)
            check_canceled(is_canceled, "while comparing the embeddings")
    return lo, hi
