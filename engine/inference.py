"""Streaming tiled inference: a raster of any size → a georeferenced patch-grid embedding raster.

Pipeline (one pass, constant memory in the raster height):

1. Resolve the raster's bands to SMARTIES projections (:func:`engine.bands.resolve_bands`) and their
   normalisation statistics (the sensor preset's, or estimated from a decimated read of the raster). A model with a
   fixed input stem declares the range families it takes (``model.band_families``, e.g. red, green, blue for the
   X-STARS ViT): the mapping is reduced to one band of each, in that order
   (:func:`engine.bands.select_band_families`), and its ``model.input_norm`` replaces the mean/std after the p1/p99
   stretch to [0, 1] (:func:`model_statistics`).
2. Optionally view the raster through a resampling :class:`rasterio.vrt.WarpedVRT` scaled by ``scale`` (SMARTIES
   saw 10 m imagery upsampled ~2×: BigEarthNet 120→224 px, EuroSAT 64→224 px; presets carry the default).
3. Plan tiles of ``tile_size_px`` on the patch grid (:mod:`engine.tiling`), read them with rasterio windows in a
   background thread (edge tiles padded by replication, nodata/NaN masked and set to the band mean), normalise
   (spec §3–§4), encode in batches (``output="grid"``), blend overlaps with window weights (:mod:`engine.blending`).
4. Write finished cell rows to a tiled, compressed GeoTIFF (one pixel per patch, D bands) through an atomic writer
   (:mod:`engine.writers`): cancelling or failing leaves nothing behind.

A cell is nodata (NaN) when less than ``min_valid_fraction`` of its pixels hold data.

With a :class:`engine.region.Region`, the reader covers only the region's window (one ``WarpedVRT`` on the window's
grid: at scale 1 it reproduces the native pixels exactly), pixels outside the region's polygons count as nodata, and
tiles without a pixel inside them are not encoded (their cells are NaN). The output grid starts at the window origin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from .bands import BandMapping, resolve_bands, select_band_families
from .blending import BlendKind, RowBlender
from .errors import InferenceCancelled, InputRasterError
from .normalize import BandStats, estimate_stats, normalize
from .readers import open_raster, read_valid
from .region import Region
from .tiling import TileGrid, tile_grid
from .writers import GeoTiffWriter, gtiff_profile

__all__ = (
    "EmbeddingResult",
    "InferenceSettings",
    "RasterReader",
    "band_statistics",
    "batched",
    "default_scale",
    "embed_raster",
    "grid_encoder",
    "model_statistics",
    "open_reader",
    "prefetched",
    "provide_embeddings",
    "select_device",
    "torch_device",
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]

#: Pixels read (at most) to estimate statistics of bands without preset statistics.
_STATS_SAMPLE_PX = 1_000_000


def gdal_cache_bytes(dataset: Any) -> int:
    """GDAL block-cache size for reading ``dataset`` tile row by tile row: three block rows, at least 32 MB.

    GDAL's default (5 % of RAM) keeps every block read so far, so memory would grow with the raster's height; tiles
    are read row band by row band, so a few block rows suffice. (Passed to GDAL in bytes: rasterio hands small
    ``GDAL_CACHEMAX`` values over as bytes, not MB.)
    """
    block_h = dataset.block_shapes[0][0] if dataset.block_shapes else 1
    itemsize = max(np.dtype(d).itemsize for d in dataset.dtypes)
    block_row = dataset.width * max(block_h, 1) * dataset.count * itemsize
    return int(max(32 * 1024 * 1024, 3 * block_row))


@dataclass(frozen=True)
class InferenceSettings:
    """How a raster is tiled and encoded.

    Attributes:
        tile_size_px: Tile side in model-input pixels (after scaling); multiple of the patch size. 224 matches the
            checkpoints' 14×14 position grid; other sizes use a resized grid.
        overlap_px: Overlap between neighbouring tiles in model-input pixels; multiple of the patch size. Overlaps
            are blended, never cut. Cost grows as ``(tile / (tile − overlap))²``: 4× at the default 112 px (half a
            tile), 1.36× at 32 px. A ViT's patch tokens depend on the whole tile's content, so with small overlaps
            k-means boundaries in homogeneous areas can snap to tile borders; half-tile overlaps average that out
            (docs/inference.md).
        batch_size: Tiles per forward pass. Memory ∝ ``batch_size · tile_size_px²``.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
        threads: CPU threads for torch (None keeps torch's default).
        scale: Resampling factor from native to model-input pixels (2.0 = each native pixel becomes 2×2); None
            uses the sensor preset's default (1.0 if no preset).
        resampling: rasterio resampling used when ``scale != 1`` (``"bilinear"``, ``"cubic"``, ``"nearest"``…).
        blend: Window of the overlap blending, ``"cosine"`` or ``"linear"``.
        output_dtype: ``"float32"`` or ``"float16"`` (stored as 16-bit floats; half the disk).
        min_valid_fraction: A cell with a smaller share of valid pixels is written as nodata.
    """

    tile_size_px: int = 224
    overlap_px: int = 112
    batch_size: int = 8
    device: str = "auto"
    threads: Optional[int] = None
    scale: Optional[float] = None
    resampling: str = "bilinear"
    blend: BlendKind = "cosine"
    output_dtype: str = "float32"
    min_valid_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.scale is not None and not 0.05 <= self.scale <= 20:
            raise ValueError(f"scale must be between 0.05 and 20 (model pixels per native pixel), got {self.scale}")
        if self.output_dtype not in ("float32", "float16"):
            raise ValueError(f"output_dtype must be 'float32' or 'float16', got {self.output_dtype!r}")
        if self.resampling not in Resampling.__members__:
            raise ValueError(f"unknown resampling {self.resampling!r}; use one of {', '.join(Resampling.__members__)}")


@dataclass(frozen=True)
class EmbeddingResult:
    """What :func:`embed_raster` wrote.

    Attributes:
        path: The embedding GeoTIFF (``embed_dim`` bands, one pixel per patch, NaN = nodata).
        width: Columns (cells).
        height: Rows (cells).
        embed_dim: Number of bands D.
        transform: Affine transform of the cell grid (same CRS as the input).
        crs: CRS of the input, as WKT.
        tiles: Number of tiles encoded.
        seconds: Wall time.
        scale: Resampling factor used.
        cell_size_px: Native pixels per cell side (patch size / scale).
        mapping: The band mapping used.
    """

    path: Path
    width: int
    height: int
    embed_dim: int
    transform: Affine
    crs: Optional[str]
    tiles: int
    seconds: float
    scale: float
    cell_size_px: float
    mapping: BandMapping = field(repr=False)


def select_device(device: str) -> str:
    """Resolve ``"auto"`` to ``"cuda"`` when torch sees a GPU, else ``"cpu"``; validate explicit CUDA requests."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputRasterError(
            f"device {device!r} was requested but torch sees no CUDA GPU (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}); use device='cpu' or install a CUDA build of torch"
        )
    return device


def torch_device(settings: InferenceSettings) -> str:
    """The torch device of ``settings.device`` (:func:`select_device`), after applying ``settings.threads`` to torch's
    intra-op pool; what every torch pass (embeddings, head fitting, segmentation) starts with."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    return select_device(settings.device)


def check_onnx_model(model: Any, settings: InferenceSettings) -> None:
    """Raise :class:`InputRasterError` unless an ONNX Runtime model (encoder or segmenter) was exported for
    ``settings.tile_size_px`` and loaded for ``settings.device`` (its execution provider is chosen at load time)."""
    name = model.weights_path.name
    if settings.tile_size_px != model.tile_size_px:
        raise InputRasterError(
            f"{name} was exported for {model.tile_size_px}-px tiles; use tile_size_px={model.tile_size_px} or export "
            f"it again with --tile-size-px {settings.tile_size_px}"
        )
    wanted = settings.device.split(":")[0]
    if wanted != "auto" and wanted != model.device:
        raise InputRasterError(f"{name} was loaded on {model.device} but device {settings.device!r} was asked for; "
                               f"load it with device={settings.device!r}")


def grid_encoder(model: Any, settings: InferenceSettings) -> tuple[Callable[[np.ndarray, list], np.ndarray], str]:
    """The model as a function of normalised numpy tiles: ``(x [B, C, H, W] float32, projections)`` → patch-grid
    embeddings ``[B, D, H/p, W/p]`` float32 numpy, and the device it runs on.

    A torch encoder is moved to ``settings.device`` (:func:`select_device`) with ``settings.threads``; an ONNX Runtime
    encoder (``model.backend == "onnx"``, :class:`engine.models.onnx_encoder.OnnxEncoder`) runs as loaded and torch is
    never imported.

    Raises:
        InputRasterError: An ONNX encoder exported for another tile size, or loaded for another device
            (:func:`check_onnx_model`).
    """
    if getattr(model, "backend", "torch") == "onnx":
        check_onnx_model(model, settings)
        return (lambda x, projections: model.encode(x, projections, "grid")), f"onnxruntime {model.device}"
    import torch

    device = torch_device(settings)
    model = model.to(device).eval()

    def encode(x: np.ndarray, projections: list) -> np.ndarray:
        with torch.inference_mode():
            return model.encode(torch.from_numpy(x).to(device), projections, output="grid").float().cpu().numpy()

    return encode, device


class RasterReader:
    """Reads normalised tiles of the resolved bands, optionally through a scaled and/or windowed virtual raster.

    Args:
        dataset: An open rasterio dataset.
        mapping: Band mapping from :func:`engine.bands.resolve_bands`.
        stats: One :class:`BandStats` per mapped band.
        scale: Model-input pixels per native pixel.
        resampling: rasterio resampling name for ``scale != 1``.
        region: Optional :class:`engine.region.Region`: the view covers only its window (native pixels, rounded
            outward) and pixels whose centre is outside its geometries are invalid.

    Attributes:
        height_px: Height of the (scaled) view in model-input pixels.
        width_px: Width of the (scaled) view.
        transform: Affine transform of the (scaled) view; its origin is the region window's.
        window: The native-pixel window of ``dataset`` the view covers (the whole raster without a region).
    """

    def __init__(
        self,
        dataset: Any,
        mapping: BandMapping,
        stats: Sequence[BandStats],
        scale: float,
        resampling: str,
        region: Optional[Region] = None,
    ) -> None:
        self.dataset = dataset
        self.indexes = list(mapping.indexes)
        self.stats = list(stats)
        self.scale = scale
        self.region = region if region else None
        self.window = self.region.window(dataset) if self.region else Window(0, 0, dataset.width, dataset.height)
        if scale == 1.0 and self.region is None:
            self.view = dataset
        else:
            # One virtual raster on the window's grid, scaled; at scale 1 it is the window's native pixels exactly.
            win = self.window
            width = max(1, round(win.width * scale))
            height = max(1, round(win.height * scale))
            transform = window_transform(win, dataset.transform) * Affine.scale(win.width / width, win.height / height)
            self.view = WarpedVRT(
                dataset,
                crs=dataset.crs,
                transform=transform,
                width=width,
                height=height,
                resampling=Resampling[resampling],
            )
        self.height_px = self.view.height
        self.width_px = self.view.width
        self.transform = self.view.transform

    def read(self, row_px: int, col_px: int, size_px: int) -> tuple[np.ndarray, np.ndarray]:
        """Read a ``size_px`` square starting at (row_px, col_px) of the view; the part outside is edge-padded.

        Edge padding (rather than zeros) keeps the statistics of partial edge tiles close to the real content.

        Returns:
            ``(x [C, size, size] float32 normalised, invalid pixels set to 0; valid [size, size] bool)``.
        """
        h = max(0, min(size_px, self.height_px - row_px))
        w = max(0, min(size_px, self.width_px - col_px))
        raw, valid = read_valid(self.view, self.indexes, Window(col_px, row_px, w, h))
        inside = self.inside(row_px, col_px, size_px)
        if inside is not None:
            valid &= inside
        x = normalize(raw, self.stats)
        x[:, ~valid] = 0.0
        if h < size_px or w < size_px:
            pad = ((0, 0), (0, size_px - h), (0, size_px - w))
            x = np.pad(x, pad, mode="edge") if h and w else np.zeros((len(self.indexes), size_px, size_px), np.float32)
            # Padding pixels inherit the validity of the edge pixels they replicate, so a partial edge cell is
            # judged on its real pixels only.
            valid = np.pad(valid, pad[1:], mode="edge") if h and w else np.zeros((size_px, size_px), bool)
        return x, valid

    def inside(self, row_px: int, col_px: int, size_px: int) -> Optional[np.ndarray]:
        """Pixels of the view's square at (row_px, col_px) (clipped to the view) whose centre is inside the region's
        geometries: ``bool [h, w]``, or None when there are no geometries."""
        if self.region is None or not self.region.geometries:
            return None
        h = max(0, min(size_px, self.height_px - row_px))
        w = max(0, min(size_px, self.width_px - col_px))
        return self.region.pixel_mask(window_transform(Window(col_px, row_px, w, h), self.transform), (h, w))

    def close(self) -> None:
        if self.view is not self.dataset:
            self.view.close()


def _sample_windows(dataset: Any, budget_px: int = _STATS_SAMPLE_PX, size_px: int = 256) -> list[Window]:
    """A 4 × 4 grid of ``size_px`` windows spread over the raster (the whole raster when it is small).

    Reading a few windows decodes only their blocks, unlike a decimated read of the whole file.
    """
    if dataset.width * dataset.height <= budget_px:
        return [Window(0, 0, dataset.width, dataset.height)]
    n = max(1, min(4, int(math.sqrt(budget_px / size_px**2))))
    windows = []
    for i in range(n):
        for j in range(n):
            row = int((i + 0.5) * dataset.height / n - size_px / 2)
            col = int((j + 0.5) * dataset.width / n - size_px / 2)
            row, col = max(0, row), max(0, col)
            windows.append(Window(col, row, min(size_px, dataset.width - col), min(size_px, dataset.height - row)))
    return windows


def _read_sample(dataset: Any, indexes: list[int], windows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    values, valid = [], []
    for window in windows:
        if isinstance(window, Window):
            v, ok = read_valid(dataset, indexes, window)
        else:  # an out_shape for a decimated read of the whole raster
            v, ok = read_valid(dataset, indexes, out_shape=window)
        values.append(v.reshape(len(indexes), -1))
        valid.append(ok.reshape(-1))
    return np.concatenate(values, axis=1)[:, :, None], np.concatenate(valid)[:, None]


def band_statistics(dataset: Any, mapping: BandMapping) -> list[BandStats]:
    """Statistics for every mapped band: the preset's where known, else estimated from a sample of the raster.

    The sample is up to 16 windows of 256 px spread over the raster (:func:`_sample_windows`); when none of them holds
    data, a decimated read of the whole raster settles whether the raster is empty.

    Raises:
        InputRasterError: The raster holds no valid pixel.
    """
    indexes = list(mapping.indexes)
    values, valid = _read_sample(dataset, indexes, _sample_windows(dataset))
    if not valid.any():
        factor = max(1.0, math.sqrt(dataset.width * dataset.height / _STATS_SAMPLE_PX))
        shape = (max(1, int(dataset.height / factor)), max(1, int(dataset.width / factor)))
        values, valid = _read_sample(dataset, indexes, [shape])
    if not valid.any():
        raise InputRasterError(
            f"{dataset.name}: every pixel is nodata (or NaN) in the selected bands; nothing to embed. "
            "Check the nodata value (gdalinfo) or choose other bands."
        )
    missing = [i for i, b in enumerate(mapping.bands) if b.stats is None]
    estimated = estimate_stats(values[missing], valid) if missing else []
    return [band.stats if band.stats is not None else estimated[missing.index(i)] for i, band in enumerate(mapping.bands)]


def model_statistics(model: Any, stats: Sequence[BandStats]) -> list[BandStats]:
    """The statistics a model normalises with: the bands' own, or their p1/p99 with the model's mean/std.

    The engine's first step, ``clip((x − p1) / (p99 − p1), 0, 1)``, puts every band on [0, 1] from the preset's or the
    raster's percentiles. A model trained on images already on [0, 1] with fixed per-channel statistics (X-STARS: 8-bit
    PNGs divided by 255, then ``Normalize(args.mean, args.std)``, spec xstars.md §2, §5) declares them as
    ``model.input_norm`` (:class:`engine.models.dino_vit.ChannelNorm`); the percentile stretch stands in for the PNG
    rendering, and the model's mean/std replace the bands'.

    Args:
        model: A loaded model; ``input_norm`` is optional (SMARTIES encoders have none).
        stats: One :class:`BandStats` per selected band, in channel order.

    Returns:
        ``stats`` unchanged, or with ``mean``/``std`` from ``model.input_norm`` and ``source`` extended.

    Raises:
        InputRasterError: The model's normalisation has another channel count than the selected bands.
    """
    norm = getattr(model, "input_norm", None)
    if norm is None:
        return list(stats)
    if len(norm.mean) != len(stats):
        raise InputRasterError(
            f"the model normalises {len(norm.mean)} channels but {len(stats)} bands are selected; select "
            f"{len(norm.mean)} bands (model.band_families)"
        )
    return [
        replace(s, mean=float(m), std=float(d), source=f"{s.source} p1/p99; mean/std {norm.source}")
        for s, m, d in zip(stats, norm.mean, norm.std)
    ]


def open_reader(
    dataset: Any,
    model: Any,
    settings: InferenceSettings,
    *,
    sensor: Optional[str] = None,
    overrides: Any = None,
    mapping: Optional[BandMapping] = None,
    stats: Optional[Sequence[BandStats]] = None,
    region: Optional[Region] = None,
) -> tuple[RasterReader, BandMapping]:
    """The normalising tile reader every model pass over a raster uses (embeddings, head training, segmentation).

    Resolves the bands (or takes ``mapping``), reduces them to a fixed-stem model's families, takes ``stats`` or
    computes them (:func:`band_statistics`, :func:`model_statistics`) and the scale (``settings.scale`` or the preset's).

    Returns:
        ``(reader, mapping)``; close the reader when done.

    Raises:
        engine.errors.BandResolutionError, InputRasterError: As :func:`embed_raster`.
    """
    if dataset.crs is None:
        log.warning("%s has no CRS: the output will not be georeferenced either", dataset.name)
    mapping = mapping or resolve_bands(dataset, sensor=sensor, overrides=overrides, averaging=model.averaging)
    families = getattr(model, "band_families", None)
    if families:
        mapping = select_band_families(mapping, families)
    if stats is None:
        stats = model_statistics(model, band_statistics(dataset, mapping))
    scale = settings.scale if settings.scale is not None else default_scale(mapping)
    return RasterReader(dataset, mapping, stats, scale, settings.resampling, region), mapping


def default_scale(mapping: BandMapping) -> float:
    """The sensor preset's resampling factor, or 1.0 when no preset is known."""
    if mapping.sensor is None:
        return 1.0
    from .sensors import get_sensor

    return float(get_sensor(mapping.sensor).default_scale)


def batched(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` cut into consecutive lists of at most ``size`` (≥ 1) — the batches of every tile loop."""
    size = max(1, size)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def prefetched(
    batches: Sequence[Any], load: Callable[[Any], Any], is_canceled: Optional[CancelFn] = None
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(batch, load(batch))`` while the next batch loads in a background thread (reading overlaps compute).

    ``is_canceled`` is polled before every batch; when it returns True the pending read is dropped and
    :class:`InferenceCancelled` is raised, so the caller's atomic writers remove their partial files.
    """
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, batches[0])
        for b, batch in enumerate(batches):
            if is_canceled is not None and is_canceled():
                pending.cancel()
                raise InferenceCancelled(f"cancelled after {b} of {len(batches)} batches; no output written")
            data = pending.result()
            if b + 1 < len(batches):
                pending = pool.submit(load, batches[b + 1])
            yield batch, data


def embed_raster(
    source: Union[str, Path],
    output: Union[str, Path],
    model: Any,
    *,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Union[Mapping[Union[int, str], Union[str, float]], Sequence[str]]] = None,
    mapping: Optional[BandMapping] = None,
    region: Optional[Region] = None,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
) -> EmbeddingResult:
    """Encode a raster tile by tile and write its patch-grid embeddings as a GeoTIFF.

    Args:
        source: Input raster path (any GDAL-readable raster with a CRS, e.g. GeoTIFF).
        output: Destination GeoTIFF; written atomically (nothing is left on failure or cancel).
        model: A loaded encoder (:func:`engine.load_model`), used with ``output="grid"``.
        settings: Tiling/device options; defaults to :class:`InferenceSettings()`.
        sensor: Sensor preset id (``"sentinel2_l1c"``…) for band mapping and statistics; guessed when None.
        overrides: Band overrides, see :func:`engine.bands.resolve_bands`.
        mapping: A precomputed band mapping (then ``sensor``/``overrides`` are ignored).
        region: Embed only this :class:`engine.region.Region` (bounds and/or polygons in the raster's CRS): the
            output grid starts at the region window's origin, pixels outside the polygons are nodata, tiles with no
            pixel inside them are skipped (NaN cells), and the region is recorded in the tag ``MSFM_REGION``.
            Normalisation statistics are still those of the whole raster, so the embeddings match a full run's.
        progress: Called with the completed fraction (0..1) after every batch.
        is_canceled: Polled before every batch; returning True stops within one batch.

    Returns:
        :class:`EmbeddingResult`. The raster has D float bands named ``emb_000``…, one pixel per patch
        (``patch_size / scale`` native pixels), the input's CRS, and NaN for nodata cells.

    Raises:
        InputRasterError: Unreadable raster, all-nodata raster (or region), a region outside the raster, bad settings.
        engine.errors.BandResolutionError: A band cannot be mapped (the message says which and how to fix it).
        InferenceCancelled: ``is_canceled`` returned True.
    """
    settings = settings or InferenceSettings()
    started = time.perf_counter()
    output = Path(output)
    dataset = open_raster(source)
    try:
        with rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(dataset)):
            return _embed(dataset, output, model, settings, sensor, overrides, mapping, region, progress, is_canceled,
                          started)
    finally:
        dataset.close()


def _embed(
    dataset: Any,
    output: Path,
    model: Any,
    settings: InferenceSettings,
    sensor: Optional[str],
    overrides: Any,
    mapping: Optional[BandMapping],
    region: Optional[Region],
    progress: Optional[ProgressFn],
    is_canceled: Optional[CancelFn],
    started: float,
) -> EmbeddingResult:
    reader, mapping = open_reader(dataset, model, settings, sensor=sensor, overrides=overrides, mapping=mapping,
                                  region=region)
    try:
        return _run(model, reader, mapping, settings, output, dataset.name, progress, is_canceled, started)
    finally:
        reader.close()


def _run(
    model: Any,
    reader: RasterReader,
    mapping: BandMapping,
    settings: InferenceSettings,
    output: Path,
    source: Union[str, Path],
    progress: Optional[ProgressFn],
    is_canceled: Optional[CancelFn],
    started: float,
) -> EmbeddingResult:
    p = model.patch_size
    grid: TileGrid = tile_grid(reader.height_px, reader.width_px, settings.tile_size_px, settings.overlap_px, p)
    encode, device = grid_encoder(model, settings)
    projections = list(mapping.projections)
    n, size = grid.tile_cells, settings.tile_size_px
    padded_width = max(grid.width_cells, n)
    blender = RowBlender(model.embed_dim, n, padded_width, settings.blend)
    transform = reader.transform * Affine.scale(p)
    profile = gtiff_profile(
        width=grid.width_cells,
        height=grid.height_cells,
        count=model.embed_dim,
        dtype=settings.output_dtype,
        crs=reader.dataset.crs,
        transform=transform,
        nodata=float("nan"),
    )
    tags = {
        "MSFM_KIND": "embeddings",
        "MSFM_MODEL": str(getattr(model, "model_name", None) or getattr(model, "weights_path", "unknown")),
        "MSFM_SOURCE": str(source),
        "MSFM_OUTPUT": "grid: " + getattr(model, "grid_output", "last-block patch tokens before the final norm"),
        "MSFM_BAND_INDEXES": json.dumps(list(mapping.indexes)),
        "MSFM_BANDS": json.dumps([b.projection.label for b in mapping.bands]),
        "MSFM_SENSOR": str(mapping.sensor),
        "MSFM_SCALE": repr(reader.scale),
        "MSFM_PATCH_SIZE_PX": str(p),
        "MSFM_SETTINGS": json.dumps(asdict(settings)),
        "MSFM_STATS": json.dumps([[s.p1, s.p99, s.mean, s.std] for s in reader.stats]),
    }
    if reader.region is not None:
        w = reader.window
        tags["MSFM_REGION"] = json.dumps(
            {**reader.region.record(), "window": [int(w.col_off), int(w.row_off), int(w.width), int(w.height)]}
        )
    descriptions = [f"emb_{i:03d}" for i in range(model.embed_dim)]
    # Tiles without a pixel inside the region's geometries are never encoded: their cells stay NaN.
    tiles = [(r, c) for r, c in grid if (inside := reader.inside(r * p, c * p, size)) is None or inside.any()]
    if not tiles:
        raise InputRasterError(
            f"no pixel centre of {source} (window {reader.window} of the raster) lies inside the region's polygons; "
            "draw polygons that cover at least one pixel centre"
        )
    batches = batched(tiles, settings.batch_size)
    valid_cells = 0

    def load(batch: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        reads = [reader.read(r * p, c * p, size) for r, c in batch]
        return np.stack([x for x, _ in reads]), np.stack([v for _, v in reads])

    def finish_rows(writer: GeoTiffWriter, until_row: int) -> None:
        nonlocal valid_cells
        for values, valid in blender.drain(until_row, grid.height_cells, grid.width_cells):
            values[:, valid < settings.min_valid_fraction] = np.nan
            valid_cells += int((valid >= settings.min_valid_fraction).sum())
            writer.write_rows(values)

    log.info(
        "embedding %s: %d×%d px at scale %g → %d×%d cells, %d tiles of %d px on %s",
        source, reader.width_px, reader.height_px, reader.scale, grid.width_cells, grid.height_cells,
        len(tiles), size, device,
    )
    with GeoTiffWriter(output, profile, descriptions, tags) as writer:
        for b, (batch, (x, valid)) in enumerate(prefetched(batches, load, is_canceled)):
            emb = encode(x, projections)
            cell_valid = valid.reshape(len(batch), n, p, n, p).mean(axis=(2, 4))
            for (r, c), e, v in zip(batch, emb, cell_valid):
                if r > blender.top:
                    finish_rows(writer, r)
                blender.add(e, v, r, c)
            if progress is not None:
                progress((b + 1) / len(batches))
        finish_rows(writer, max(grid.height_cells, blender.top + n))
        if reader.region is not None and valid_cells == 0:
            raise InputRasterError(
                f"the region of {source} holds no valid pixel (all nodata, or outside the polygons); nothing written"
            )
    seconds = time.perf_counter() - started
    log.info("wrote %s in %.1f s", output, seconds)
    return EmbeddingResult(
        path=output,
        width=grid.width_cells,
        height=grid.height_cells,
        embed_dim=model.embed_dim,
        transform=transform,
        crs=reader.dataset.crs.to_wkt() if reader.dataset.crs else None,
        tiles=len(tiles),
        seconds=seconds,
        scale=reader.scale,
        cell_size_px=p / reader.scale,
        mapping=mapping,
    )


@contextlib.contextmanager
def provide_embeddings(
    source: Union[str, Path],
    output: Union[str, Path],
    model: Any = None,
    embeddings: Optional[Union[str, Path]] = None,
    embeddings_output: Optional[Union[str, Path]] = None,
    *,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Any = None,
    region: Optional[Region] = None,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
) -> Iterator[tuple[Path, Optional[EmbeddingResult]]]:
    """The embedding raster a derived product (class map, similarity map) reads, as a context manager.

    ``embeddings`` when given (then nothing is computed); otherwise :func:`embed_raster` runs now (progress reported as
    0..0.8) into ``embeddings_output``, or into a temporary folder beside ``output`` that is removed on exit.

    Args:
        source: Input raster.
        output: The derived product's path (its folder holds the temporary embeddings).
        model: Loaded encoder; needed unless ``embeddings`` is given.
        embeddings: An existing embedding raster of ``source``.
        embeddings_output: Keep computed embeddings at this path.
        settings, sensor, overrides, region, is_canceled: Passed to :func:`embed_raster`.
        progress: Called with 0.8 × the embedding progress.

    Yields:
        ``(embedding raster path, EmbeddingResult or None when existing embeddings were given)``.

    Raises:
        InputRasterError: Neither a model nor embeddings; whatever :func:`embed_raster` raises.
    """
    if embeddings is not None:
        yield Path(embeddings), None
        return
    if model is None:
        raise InputRasterError("give a model (or existing embeddings of the raster) to compute embeddings with")
    report = progress or (lambda f: None)
    with contextlib.ExitStack() as stack:
        if embeddings_output is None:
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=".msfm-", dir=Path(output).parent))
            embeddings_output = Path(tmpdir) / "embeddings.tif"
        result = embed_raster(
            source, embeddings_output, model, settings=settings, sensor=sensor, overrides=overrides, region=region,
            progress=lambda f: report(0.8 * f), is_canceled=is_canceled,
        )
        yield result.path, result
