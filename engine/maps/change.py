"""Change maps: how far apart the embeddings of two rasters of one place are, cell by cell, on one grid.

Both rasters are embedded (or their embedding rasters are given: ours or made elsewhere,
:func:`engine.maps.open_embeddings`). The BEFORE embeddings are put on the AFTER raster's cell grid: read through a
GDAL warped view with bilinear resampling when the grids differ (another CRS, resolution or extent; never silently:
it is logged and recorded in the output's tags), as they are when the grids are the same. Every cell's change is the
cosine distance ``1 − cos(e_before, e_after)`` in [0, 2] (0: same embedding direction), NaN where either side is
nodata. At ``"pixel"`` resolution the cell distances are interpolated bilinearly onto the AFTER raster's pixels, its
nodata carried over (:func:`engine.maps.upsample.write_pixel_values`); at ``"patch"`` resolution the cell grid is the
output. A QGIS style (``.qml``, Viridis over the map's range) is written beside it.

Calibration and thresholds: the distances of a scene are summarised by its no-change distribution, estimated robustly
as if most of the scene did not change: the median and σ = 1.4826 × the median absolute deviation (a robust z-score
``(d − median) / σ`` then reads the same for any sensor pair). A threshold — a value, ``"robust"`` (median + 3σ) or
``"otsu"`` (Otsu 1979 on the distances' histogram) — writes a change mask (uint8: 0 unchanged, 1 changed, 255 nodata,
with its ``.qml``) and, optionally, the changed areas as polygons (GeoPackage).

Not yet here: "changed towards what" (the nearest class of the AFTER scene), and batch pairs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from ..atomic import scratch_folder
from ..callbacks import CancelFn, ProgressFn, check_canceled
from ..errors import InputRasterError, SettingsError
from ..models import Encoder
from ..outputs import GEOTIFF, check_outputs
from ..raster import (
    NODATA_CLASS,
    GeoTiffWriter,
    gtiff_profile,
    iter_windows,
    polygonize,
    write_qml,
    write_ramp_qml,
)
from ..settings import InferenceSettings
from ..spectral import Overrides
from .clustering import Resolution, l2_normalize
from .embeddings import EmbeddingResult, provide_embeddings
from .quantized import EmbeddingRaster, open_embeddings
from .tags import product_tags
from .upsample import check_pixel_grid, pixel_window, value_range, write_pixel_values

__all__ = ("ChangeResult", "change_raster", "otsu_threshold")

log = logging.getLogger(__name__)

#: Embedding values read per row band (float32: 4 bytes each).
_BAND_VALUES = 1 << 24


@dataclass(frozen=True)
class ChangeResult:
    """What :func:`change_raster` wrote.

    Attributes:
        path: The change GeoTIFF: one float32 band ``cosine_distance`` in [0, 2], NaN = nodata.
        resolution: ``"patch"`` or ``"pixel"``.
        value_range: ``(min, max)`` of the written distances (NaN, NaN when nothing is valid).
        reprojected: Whether the BEFORE embeddings were resampled onto the AFTER grid.
        before: The BEFORE embedding run (None when its embeddings were given).
        after: The AFTER embedding run (None when its embeddings were given).
        seconds: Wall time.
        style: The QGIS style beside it (``.qml``).
        no_change: ``(median, σ)`` of the scene's distances: σ = 1.4826 × their median absolute deviation.
        threshold: The distance above which a cell is changed (None without a threshold).
        changed_fraction: Share of the valid mask pixels that changed (None without a threshold).
        mask: The change mask (None without ``mask_output``).
        polygons: The changed areas as polygons (None without ``polygons_output``).
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
    threshold: Optional[Union[float, str]] = None,
    mask_output: Optional[Union[str, Path]] = None,
    polygons_output: Optional[Union[str, Path]] = None,
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
        after: The later raster; its grid is the output's.
        output: Change GeoTIFF to write (atomically), with its ``.qml`` beside it: one float32 band
            ``cosine_distance`` in [0, 2], NaN nodata, tags ``MSFM_KIND=change``, ``MSFM_BEFORE``, ``MSFM_AFTER``,
            ``MSFM_REPROJECTED``.
        model: Loaded encoder; needed unless both embeddings are given.
        before_embeddings: An existing embedding raster of ``before`` (ours, or made elsewhere).
        after_embeddings: An existing embedding raster of ``after``.
        embedding_format: The format of the given embeddings (:data:`engine.maps.quantized.ENCODINGS`; None:
            detected from each file).
        resolution: ``"pixel"`` (the AFTER raster's pixels) or ``"patch"`` (its embedding cells).
        threshold: A cosine distance, ``"robust"`` (the no-change median + 3σ) or ``"otsu"``; needed by the mask and
            polygon outputs (default ``"otsu"`` when one of them is asked for).
        mask_output: Write the change mask here (uint8 GeoTIFF: 0 unchanged, 1 changed, 255 nodata; ``.qml``).
        polygons_output: Write the changed areas here as polygons (GeoPackage, layer ``classes``).
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
        SettingsError: An unknown resolution, or neither a model nor the embeddings of a side.
        InputRasterError: Embeddings of different dimensions (different models), grids that do not overlap, int8
            BEFORE embeddings on another grid (give float ones), or what reading either raster raises.
        engine.errors.InferenceCancelled: Cancelled by the caller.
        engine.errors.OutputError: An output that is an input, or exists (without ``overwrite``).
    """
    if resolution not in ("patch", "pixel"):
        raise SettingsError(f"resolution must be 'patch' or 'pixel', got {resolution!r}")
    if threshold is not None and not isinstance(threshold, (int, float)) and threshold not in ("otsu", "robust"):
        raise SettingsError(f"threshold must be a distance (0..2), 'otsu' or 'robust', got {threshold!r}")
    if threshold is None and (mask_output is not None or polygons_output is not None):
        threshold = "otsu"
    check_outputs({"output": output, "mask output": mask_output, "polygons output": polygons_output},
                  {"BEFORE raster": before, "AFTER raster": after,
                                       "BEFORE embeddings": before_embeddings, "AFTER embeddings": after_embeddings},
                  overwrite=overwrite, suffixes={"output": GEOTIFF, "mask output": GEOTIFF,
                                                 "polygons output": (".gpkg",)})
    if resolution == "pixel":
        check_pixel_grid(after)
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
        grid = stack.enter_context(open_embeddings(after_path, embedding_format if after_embeddings else None))
        other = stack.enter_context(open_embeddings(before_path, embedding_format if before_embeddings else None))
        if other.count != grid.count:
            raise InputRasterError(f"the BEFORE embeddings have {other.count} dimensions and the AFTER ones "
                                   f"{grid.count}: embed both with the same model")
        aligned, reprojected = _on_grid(other, grid)
        if reprojected:
            stack.enter_context(aligned.dataset)  # the warped view (the BEFORE raster stays open by its own)
            log.info("BEFORE embeddings %s resampled (bilinear) onto the AFTER grid of %s", before_path, after_path)
        tags = product_tags({}, "change", before=str(before), after=str(after), resolution=resolution,
                            reprojected=str(reprojected).lower())
        check_canceled(is_canceled, "before comparing the embeddings")
        if resolution == "patch":
            values = _write_distances(grid, aligned, output, tags, lambda f: report(0.9 + 0.1 * f), is_canceled)
        else:
            with scratch_folder(output) as tmp:
                cells = tmp / "change_cells.tif"
                _write_distances(grid, aligned, cells, tags, lambda f: report(0.9 + 0.05 * f), is_canceled)
                with rasterio.open(cells) as distances, rasterio.open(after) as src:
                    values = write_pixel_values(distances, src, pixel_window(grid, src, None), None, output, tags,
                                                "cosine_distance", lambda f: report(0.95 + 0.05 * f), is_canceled)
    low, high = (0.0, 2.0) if math.isnan(values[0]) else values
    style = write_ramp_qml(output.with_suffix(".qml"), low, high, label="cosine distance (change)")
    sample = _sample(output)
    median = float(np.median(sample)) if sample.size else math.nan
    sigma = 1.4826 * float(np.median(np.abs(sample - median))) if sample.size else math.nan
    cut, fraction, mask, polygons = None, None, None, None
    if threshold is not None:
        cut = (float(threshold) if isinstance(threshold, (int, float)) else
               median + 3 * sigma if threshold == "robust" else otsu_threshold(sample))
        mask_path = Path(mask_output) if mask_output is not None else None
        with contextlib.ExitStack() as stack:
            if mask_path is None:  # the polygons only: the mask in a scratch folder
                mask_path = stack.enter_context(scratch_folder(Path(str(polygons_output)))) / "change_mask.tif"
            fraction = _write_mask(output, mask_path, cut, tags)
            if polygons_output is not None:
                polygons = polygonize(mask_path, Path(polygons_output), ("unchanged", "changed"), keep={1})
            mask = mask_path if mask_output is not None else None
        log.info("change threshold %.4f (%s): %.1f %% of the valid pixels changed", cut, threshold, 100 * fraction)
    report(1.0)
    return ChangeResult(path=output, resolution=resolution, value_range=values, reprojected=reprojected,
                        before=before_run, after=after_run, seconds=time.perf_counter() - started, style=style,
                        no_change=(median, sigma), threshold=cut, changed_fraction=fraction, mask=mask,
                        polygons=polygons)


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


def _on_grid(other: EmbeddingRaster, grid: EmbeddingRaster) -> tuple[Any, bool]:
    """``other`` as it reads on ``grid``'s cells: itself on the same grid, else a bilinear warped view (floats only).

    Returns:
        ``(a reader with ``read(window=)`` → float32 [D, h, w], whether it was resampled)``.
    """
    same = (other.crs == grid.crs and other.transform.almost_equals(grid.transform)
            and (other.width, other.height) == (grid.width, grid.height))
    if same:
        return other, False
    if other.encoding not in ("msfm", "float"):
        raise InputRasterError(f"the BEFORE embeddings {other.name} are {other.encoding} on another grid than the "
                               "AFTER ones: resampling quantised values would mix scales; give float embeddings "
                               "(msfm embed --dtype float32) or embeddings on the AFTER grid")
    bounds = transform_bounds(other.crs, grid.crs, *other.bounds)
    if bounds[0] >= grid.bounds.right or bounds[2] <= grid.bounds.left or bounds[1] >= grid.bounds.top \
            or bounds[3] <= grid.bounds.bottom:
        raise InputRasterError(f"the BEFORE raster does not overlap the AFTER raster ({other.crs} bounds {bounds} "
                               f"in the AFTER CRS vs {tuple(grid.bounds)}): give two rasters of one place")
    warped = WarpedVRT(other.dataset, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                       resampling=Resampling.bilinear, src_nodata=other.dataset.nodata, nodata=float("nan"),
                       dtype="float32")
    return EmbeddingRaster(warped, "float"), True


def _write_distances(grid: Any, other: Any, output: Path, tags: dict[str, str], report: ProgressFn,
                     is_canceled: Optional[CancelFn]) -> tuple[float, float]:
    """Cosine distance of every cell of ``grid`` to the same cell of ``other``, row band by row band."""
    profile = gtiff_profile(width=grid.width, height=grid.height, count=1, dtype="float32", crs=grid.crs,
                            transform=grid.transform, nodata=float("nan"))
    lo = hi = float("nan")
    rows = max(1, _BAND_VALUES // (grid.count * grid.width))
    with GeoTiffWriter(output, profile, ["cosine_distance"], tags) as writer:
        for window in iter_windows(grid.height, grid.width, rows, grid.width):
            a = grid.read(window=window).reshape(grid.count, -1).T
            b = other.read(window=window).reshape(grid.count, -1).T
            ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
            distance = np.full(a.shape[0], np.nan, np.float32)
            distance[ok] = np.clip(1.0 - (l2_normalize(a[ok]) * l2_normalize(b[ok])).sum(axis=1), 0.0, 2.0)
            distance = distance.reshape(1, int(window.height), int(window.width))
            writer.write_rows(distance)
            lo, hi = value_range(lo, hi, distance)
            report((window.row_off + window.height) / grid.height)
            check_canceled(is_canceled, "while comparing the embeddings")
    return lo, hi
