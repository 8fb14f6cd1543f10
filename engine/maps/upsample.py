"""Pixel-resolution outputs from the patch-grid embedding raster.

Embeddings: bilinear interpolation of the patch-grid raster onto the input's pixel grid (:class:`GridInterpolator`).
Class maps: joint bilateral upsampling of cell labels guided by the input's pixels (:class:`GuidedClassUpsampler`).

The patch-grid raster (:func:`engine.maps.embed_raster`) holds one embedding per cell (``patch / scale`` native
pixels). A native pixel's embedding is interpolated bilinearly from the four nearest cell centres, located through
the two rasters' georeferencing. NaN (nodata) cells are excluded by normalised interpolation
(``Σ w·v·m / Σ w·m`` with m the validity mask), so nodata never bleeds into valid pixels; pixels with no valid
neighbouring cell, or nodata in the input itself, come out as NaN.

Work proceeds in windows of the *input* grid, so memory is ``D × window pixels`` whatever the raster size. Pixel
outputs cover the embedding grid's footprint on the input, intersected with a region if one is given
(:func:`pixel_window`), and are assembled row band by row band (:func:`pixel_row_bands`).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window, WindowError
from rasterio.windows import intersection as window_intersection
from rasterio.windows import transform as window_transform

from ..callbacks import check_canceled
from ..errors import InputRasterError
from ..outputs import GEOTIFF, check_outputs
from ..raster import (
    NODATA_CLASS,
    GeoTiffWriter,
    Region,
    gdal_cache_bytes,
    gtiff_profile,
    iter_windows,
    open_raster,
    read_valid,
)
from ..spectral import BandStats, normalize
from .quantized import EmbeddingStorage, open_embeddings
from .tags import product_tags, recorded_bands

__all__ = (
    "GridInterpolator",
    "GuidedClassUpsampler",
    "check_pixel_grid",
    "pixel_row_bands",
    "pixel_window",
    "value_range",
    "write_pixel_embeddings",
    "write_pixel_values",
)


def check_pixel_grid(source: Union[str, Path]) -> None:
    """Refuse, before any work, a raster whose pixel grid a pixel-resolution product cannot follow.

    Pixel-resolution class and similarity maps interpolate the patch grid onto the input's pixels by their map
    coordinates, which needs a north-up geotransform (no rotation or shear terms; x growing east, y south). Rasters
    with a rotated or sheared transform, or with none at all (an image without georeferencing), work at patch
    resolution.

    Args:
        source: The input raster.

    Raises:
        InputRasterError: The raster is rotated, sheared, flipped or not georeferenced; the message says to use patch
            resolution or to warp the raster north-up.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(source) as ds:
            t, crs = ds.transform, ds.crs
    if crs is None and t.is_identity:
        problem = "is not georeferenced (no CRS, no geotransform)"
    elif t.b or t.d:
        problem = f"has a rotated or sheared geotransform {tuple(t)[:6]}"
    elif t.a <= 0 or t.e >= 0:
        problem = f"has a flipped geotransform {tuple(t)[:6]} (pixel size x {t.a:g}, y {t.e:g})"
    else:
        return
    raise InputRasterError(
        f"{source} {problem}; pixel-resolution outputs need a north-up raster: use patch resolution "
        "(--resolution patch on the command line, resolution='patch' in Python, Resolution: patch in QGIS), or warp "
        "the raster north-up first (gdalwarp, or Raster ▸ Projections ▸ Warp in QGIS)"
    )


def pixel_window(grid: Any, source: Any, region: Optional[Region] = None) -> Window:
    """Window of ``source`` (native pixels) that a pixel-resolution output of the embedding raster ``grid`` covers.

    It is the grid's footprint on the source, rounded outward to whole pixels and clipped to the source, intersected
    with ``region``'s window when given (for embeddings computed with that region, the region's window itself).

    Args:
        grid: Open patch-grid embedding raster.
        source: Open input raster (the raster the embeddings were computed from).
        region: Optional :class:`engine.raster.Region` in the source's CRS.

    Returns:
        An integer :class:`Window` of ``source``.

    Raises:
        InputRasterError: Different CRSs, or the embeddings (or the region) do not overlap the source.
    """
    if grid.crs != source.crs:
        raise InputRasterError(
            f"the embeddings {grid.name} (CRS {grid.crs}) and the raster {source.name} (CRS {source.crs}) differ in "
            "CRS; use the embeddings computed from this raster"
        )
    try:
        window = Region(bounds=tuple(grid.bounds)).window(source)
    except InputRasterError as exc:
        raise InputRasterError(
            f"the embeddings {grid.name} {tuple(grid.bounds)} do not cover the raster {source.name} "
            f"{tuple(source.bounds)}; use the embeddings computed from this raster"
        ) from exc
    if region:
        try:
            window = window_intersection(window, region.window(source))
        except WindowError:
            raise InputRasterError(
                f"the region {region.extent()} lies outside the embeddings' footprint {tuple(grid.bounds)} on "
                f"{source.name}; choose a region inside the embeddings or recompute them"
            ) from None
    return window


def pixel_row_bands(
    source: Any,
    target: Window,
    count: int,
    rows: int,
    cols: int,
    compute: Callable[[Window], np.ndarray],
    region: Optional[Region] = None,
    fill: Any = None,
    dtype: Any = np.float32,
) -> Iterator[tuple[Window, np.ndarray]]:
    """Assemble a pixel-resolution output of ``target`` row band by row band, top to bottom.

    Args:
        source: Open input raster (its transform places the region's polygons).
        target: Window of ``source`` to cover (:func:`pixel_window`).
        count: Bands of the output.
        rows: Rows per band.
        cols: Columns per call of ``compute`` (bounds memory for wide rasters).
        compute: Maps a window of ``source`` (at most ``rows × cols``) to ``[count, h, w]`` values.
        region: Optional region; pixels whose centre is outside its polygons are set to ``fill``.
        fill: Value outside the polygons (nodata of the output).
        dtype: dtype of the assembled bands.

    Yields:
        ``(band window of source, values [count, h, target.width])``.
    """
    for band in iter_windows(int(target.height), int(target.width), rows, int(target.width)):
        h, row = int(band.height), int(target.row_off + band.row_off)
        out = np.empty((count, h, int(target.width)), dtype)
        for part in iter_windows(h, int(target.width), h, cols):
            win = Window(int(target.col_off + part.col_off), row, int(part.width), h)
            out[:, :, int(part.col_off) : int(part.col_off + part.width)] = compute(win)
        band_window = Window(int(target.col_off), row, int(target.width), h)
        shape = (h, int(target.width))
        inside = region.pixel_mask(window_transform(band_window, source.transform), shape) if region else None
        if inside is not None:
            out[:, ~inside] = fill
        yield band_window, out


def _axis_weights(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    coords = np.clip(coords, 0.0, size - 1.0)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    return lo, hi, (coords - lo).astype(np.float32)


class GridInterpolator:
    """Samples a patch-grid embedding raster at the pixel centres of a target grid.

    Args:
        grid: Open rasterio dataset of the embedding raster (NaN = nodata).
        target_transform: Affine transform of the target pixel grid (same CRS, north-up).
        source: Optional open input raster on the target grid: its invalid pixels (of the bands the embeddings were
            computed from, :func:`source_bands`) come out as NaN.

    Raises:
        ValueError: Rotated/sheared transforms (not supported).
    """

    def __init__(self, grid: Any, target_transform: Affine, source: Any = None) -> None:
        self.grid = grid
        self.source = source
        self.indexes = source_bands(grid, source)[0] if source is not None else []
        m = ~grid.transform * target_transform  # target pixel (col, row) → grid (col, row)
        if abs(m.b) > 1e-9 or abs(m.d) > 1e-9:
            raise ValueError("rotated or sheared rasters are not supported for pixel-resolution output")
        self.m = m

    def sample(self, window: Window) -> np.ndarray:
        """Embeddings at the pixel centres of ``window`` of the target grid.

        Returns:
            ``[D, window.height, window.width]`` float32, NaN where no valid cell is near (and, with a ``source``,
            where the input pixel is invalid).
        """
        m = self.m
        cols = (np.arange(window.col_off, window.col_off + window.width) + 0.5) * m.a + m.c - 0.5
        rows = (np.arange(window.row_off, window.row_off + window.height) + 0.5) * m.e + m.f - 0.5
        r0 = max(0, int(math.floor(rows.min())))
        r1 = min(self.grid.height, int(math.floor(rows.max())) + 2)
        c0 = max(0, int(math.floor(cols.min())))
        c1 = min(self.grid.width, int(math.floor(cols.max())) + 2)
        if r0 >= r1 or c0 >= c1:
            return np.full((self.grid.count, int(window.height), int(window.width)), np.nan, np.float32)
        cells = self.grid.read(window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32)
        valid = np.isfinite(cells).all(axis=0).astype(np.float32)
        cells = np.where(valid[None] > 0, cells, 0.0)
        rlo, rhi, rt = _axis_weights(rows - r0, r1 - r0)
        clo, chi, ct = _axis_weights(cols - c0, c1 - c0)

        def interp(a: np.ndarray) -> np.ndarray:
            a = a[..., rlo, :] * (1 - rt)[:, None] + a[..., rhi, :] * rt[:, None]
            return a[..., clo] * (1 - ct) + a[..., chi] * ct

        weight = interp(valid)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = interp(cells) / weight
        out[:, weight < 1e-6] = np.nan
        if self.source is not None:
            out[:, ~read_valid(self.source, self.indexes, window)[1]] = np.nan
        return out.astype(np.float32, copy=False)


def write_pixel_embeddings(
    source: Union[str, Path], embeddings: Union[str, Path], output: Union[str, Path], output_dtype: str = "float32",
    *, overwrite: bool = False,
) -> Path:
    """Write embeddings at the input's pixel resolution (the input's grid and CRS over the embeddings' footprint).

    Args:
        source: The raster the embeddings were computed from (its grid and nodata masks are used).
        embeddings: Patch-grid embedding raster of ``source``; for embeddings of a region, only the region's window
            is written (:func:`pixel_window`).
        output: Destination GeoTIFF (D bands; ``D × height × width`` values — can be large).
        output_dtype: ``"float32"``, ``"float16"`` or ``"int8"`` (:mod:`engine.maps.quantized`).
        overwrite: Replace ``output`` when it exists.

    Returns:
        ``output``.

    Raises:
        InputRasterError: The embeddings do not belong to ``source`` (other CRS, no overlap), or ``source`` is not
            north-up (:func:`check_pixel_grid`).
        engine.errors.OutputError: As :func:`engine.outputs.check_outputs`.
    """
    check_outputs({"output": output}, {"input raster": source, "embeddings": embeddings}, overwrite=overwrite,
                  suffixes={"output": GEOTIFF})
    check_pixel_grid(source)
    with rasterio.open(source) as src, open_embeddings(embeddings) as grid:
        interp = GridInterpolator(grid, src.transform, src)
        target = pixel_window(grid, src)
        storage = EmbeddingStorage(output_dtype, grid.count)
        profile = gtiff_profile(
            width=int(target.width), height=int(target.height), count=storage.bands, dtype=output_dtype,
            crs=src.crs, transform=window_transform(target, src.transform), nodata=storage.nodata,
        )
        tags = product_tags(grid.tags(), "embeddings-pixel") | storage.tags
        descriptions = [d or f"emb_{i:03d}" for i, d in enumerate(grid.descriptions)] + storage.extra_descriptions
        with GeoTiffWriter(Path(output), profile, descriptions, tags) as writer:
            for _, out in pixel_row_bands(src, target, grid.count, 16, interpolation_cols(grid.count), interp.sample):
                writer.write_rows(storage.encode(out))
    return Path(output)


def interpolation_cols(count: int) -> int:
    """Columns per window of 16 rows for which interpolated ``count``-band float32 values stay near 64 MB."""
    return max(256, (1 << 24) // (count * 16) // 256 * 256)


def source_bands(grid: Any, source: Any) -> tuple[list[int], Optional[list[BandStats]]]:
    """The input bands an embedding raster was computed from, and their statistics (:func:`recorded_bands`).

    Returns:
        ``(1-based source band indexes — every band of ``source`` when not recorded, stats or None)``.
    """
    indexes, stats = recorded_bands(grid.tags())
    return (indexes if indexes is not None else list(range(1, source.count + 1))), stats


class GuidedClassUpsampler:
    """Pixel-resolution class map from a patch-grid class map, guided by the input's own pixels.

    Joint bilateral upsampling (Kopf et al., "Joint Bilateral Upsampling", SIGGRAPH 2007) of cell labels: every pixel
    takes the class with the largest vote among the 3 × 3 cells around it, each cell voting with

    ``w = exp(−d² / 2σ_s²) · exp(−‖g_pixel − ḡ_cell‖² / (2σ_r² C))``

    where d is the distance (in cells) from the pixel centre to the cell centre, g the pixel's normalised band values,
    ḡ_cell the mean of g over the cell's pixels and C the number of bands. Class boundaries therefore follow edges of
    the image (field borders, shorelines) at pixel precision instead of the smooth, cell-sized transitions of bilinear
    interpolation, while the classes themselves still come from the embeddings.

    Args:
        grid: Open patch-grid embedding raster.
        source: Open input raster (same CRS; its grid is the output grid).
        classify: Function mapping ``[N, D]`` embeddings to ``[N]`` uint8 labels (255 = nodata).
        num_classes: Number of classes k (labels 0..k−1).
        sigma_spatial: σ_s in cells.
        sigma_range: σ_r in normalised (z-score) units.
        radius: Neighbourhood radius in cells (1 → 3 × 3 cells).
        limit: Window of ``source`` outside which pixels are ignored (e.g. the region the embeddings cover), so
            cells at its border are not guided by pixels the embeddings never saw; None = the whole source.
    """

    def __init__(
        self,
        grid: Any,
        source: Any,
        classify: Callable[[np.ndarray], np.ndarray],
        num_classes: int,
        sigma_spatial: float = 1.0,
        sigma_range: float = 0.2,
        radius: int = 1,
        limit: Optional[Window] = None,
    ) -> None:
        self.grid, self.source, self.classify, self.num_classes = grid, source, classify, num_classes
        self.limit = limit or Window(0, 0, source.width, source.height)
        self.interp = GridInterpolator(grid, source.transform)
        self.indexes, stats = source_bands(grid, source)
        if stats is None:
            raise InputRasterError(
                f"{grid.name} records no normalisation statistics (tag MSFM_STATS), which guided upsampling needs; "
                "recompute it with `msfm embed`, or use --resolution patch"
            )
        self.stats = stats
        self.sigma_spatial, self.sigma_range, self.radius = sigma_spatial, sigma_range, radius
        m = self.interp.m
        self.margin_px = int(math.ceil((radius + 1) / min(abs(m.a), abs(m.e)))) + 1  # radius + 1 cells of pixels

    def _guide(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        raw, valid = read_valid(self.source, self.indexes, window)
        return normalize(raw, self.stats), valid

    def labels(self, window: Window) -> np.ndarray:
        """uint8 labels ``[window.height, window.width]`` (255 = nodata) for a window of the source grid."""
        lim = self.limit
        row0 = max(int(lim.row_off), int(window.row_off) - self.margin_px)
        col0 = max(int(lim.col_off), int(window.col_off) - self.margin_px)
        row1 = min(int(lim.row_off + lim.height), int(window.row_off + window.height) + self.margin_px)
        col1 = min(int(lim.col_off + lim.width), int(window.col_off + window.width) + self.margin_px)
        outer = Window(col0, row0, col1 - col0, row1 - row0)
        guide, valid = self._guide(outer)
        m = self.interp.m
        rows = (np.arange(row0, row1) + 0.5) * m.e + m.f - 0.5  # cell-centre coordinates of pixel centres
        cols = (np.arange(col0, col1) + 0.5) * m.a + m.c - 0.5
        cell_r = np.clip(np.floor(rows + 0.5).astype(np.int64), 0, self.grid.height - 1)
        cell_c = np.clip(np.floor(cols + 0.5).astype(np.int64), 0, self.grid.width - 1)
        r0, c0 = int(cell_r.min()), int(cell_c.min())
        hc, wc = int(cell_r.max()) - r0 + 1, int(cell_c.max()) - c0 + 1
        cells = self.grid.read(window=Window(c0, r0, wc, hc))
        cell_labels = self.classify(cells.reshape(cells.shape[0], -1).T).reshape(hc, wc)
        cell_guide = _cell_means(guide, valid, cell_r - r0, cell_c - c0, hc, wc)

        # Pixels of the requested window inside the outer window.
        ir = slice(int(window.row_off) - row0, int(window.row_off + window.height) - row0)
        ic = slice(int(window.col_off) - col0, int(window.col_off + window.width) - col0)
        g, ok = guide[:, ir, ic], valid[ir, ic]
        pr, pc = rows[ir] - r0, cols[ic] - c0
        near_r, near_c = cell_r[ir] - r0, cell_c[ic] - c0
        h, w = ok.shape
        k = self.num_classes
        votes = np.zeros((k + 1, h * w), np.float32)  # row k collects nodata cells' (zero) votes
        flat = np.arange(h * w)
        two_ss = 2.0 * self.sigma_spatial**2
        two_sr = 2.0 * self.sigma_range**2 * g.shape[0]
        offsets = range(-self.radius, self.radius + 1)
        for dr in offsets:
            qr = np.clip(near_r + dr, 0, hc - 1)
            for dc in offsets:
                qc = np.clip(near_c + dc, 0, wc - 1)
                lab = np.minimum(cell_labels[qr[:, None], qc[None, :]], k)
                diff = g - cell_guide[:, qr[:, None], qc[None, :]]
                dist2 = (pr - qr)[:, None] ** 2 + (pc - qc)[None, :] ** 2
                # The small floor keeps a vote (the spatially nearest valid cell wins) when every range weight
                # underflows, i.e. the pixel differs strongly from all neighbouring cells.
                range_w = np.exp(-np.nan_to_num((diff * diff).sum(0), nan=np.inf) / two_sr) + 1e-12
                weight = np.exp(-dist2 / two_ss) * range_w
                weight = np.where(lab == k, 0.0, weight).astype(np.float32)
                votes[lab.ravel(), flat] += weight.ravel()
        votes = votes[:k]
        out = votes.argmax(axis=0).astype(np.uint8).reshape(h, w)
        out[(votes.max(axis=0).reshape(h, w) <= 0) | ~ok] = NODATA_CLASS
        return out


def _cell_means(
    values: np.ndarray, valid: np.ndarray, cell_r: np.ndarray, cell_c: np.ndarray, hc: int, wc: int
) -> np.ndarray:
    """Mean of ``values [C, H, W]`` over the valid pixels of each cell → ``[C, hc, wc]`` (NaN for empty cells)."""
    index = (cell_r[:, None] * wc + cell_c[None, :])[valid]
    counts = np.bincount(index, minlength=hc * wc).astype(np.float32)
    out = np.full((values.shape[0], hc * wc), np.nan, np.float32)
    has = counts > 0
    for c in range(values.shape[0]):
        sums = np.bincount(index, weights=values[c][valid], minlength=hc * wc)
        out[c, has] = sums[has] / counts[has]
    return out.reshape(values.shape[0], hc, wc)


def value_range(lo: float, hi: float, values: np.ndarray) -> tuple[float, float]:
    """``(lo, hi)`` widened to the finite ``values`` (NaN, NaN: none seen yet)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return lo, hi
    return (float(finite.min()) if math.isnan(lo) else min(lo, float(finite.min())),
            float(finite.max()) if math.isnan(hi) else max(hi, float(finite.max())))


def write_pixel_values(cells: Any, src: Any, target: Window, region: Optional[Region], output: Path,
                       tags: dict[str, str], description: str, report: Callable[[float], None],
                       is_canceled: Optional[Callable[[], bool]]) -> tuple[float, float]:
    """Write one value per cell, interpolated bilinearly onto the input's pixels, as a float32 GeoTIFF.

    ``cells`` is a one-band float raster on the embedding grid; the output covers ``target`` of the input ``src``,
    with the input's nodata and the region carried over (NaN). Similarity and change maps at pixel resolution
    interpolate their one value per cell rather than the D embedding dimensions (docs/inference.md, "Similarity
    maps").

    Args:
        cells: Open one-band raster of the cell values (NaN = nodata).
        src: The open input raster.
        target: Its window to cover.
        region: Pixels outside its polygons are NaN.
        output: The GeoTIFF to write (atomically).
        tags: Its tags.
        description: Its band's description.
        report: Called with the fraction of rows written.
        is_canceled: Polled every row band.

    Returns:
        ``(min, max)`` of the written values.
    """
    interp = GridInterpolator(cells, src.transform, src)
    profile = gtiff_profile(width=int(target.width), height=int(target.height), count=1, dtype="float32",
                            crs=src.crs, transform=window_transform(target, src.transform), nodata=float("nan"))
    lo = hi = float("nan")
    bands = pixel_row_bands(src, target, 1, 64, interpolation_cols(1), interp.sample, region, np.nan)
    # the input is read row band by row band: a few block rows of GDAL cache, not 5 % of RAM (as embed_raster)
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(src)), GeoTiffWriter(output, profile, [description], tags) \
            as writer:
        for band, out in bands:
            writer.write_rows(out)
            lo, hi = value_range(lo, hi, out)
            report((band.row_off + band.height - target.row_off) / target.height)
            check_canceled(is_canceled, f"while writing pixel values ({description})")
    return lo, hi
