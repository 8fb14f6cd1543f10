"""Streaming tiled inference: a raster of any size → a georeferenced patch-grid embedding raster.

Pipeline (one pass, constant memory in the raster height):

1. Resolve the raster's bands to SMARTIES projections (:func:`engine.spectral.resolve_bands`) and their
   normalisation statistics (the sensor preset's, or estimated from a sample of the raster). A model with a
   fixed input stem declares the range families it takes (``model.band_families``, e.g. red, green, blue for the
   X-STARS ViT): the mapping is reduced to one band of each, in that order
   (:func:`engine.spectral.select_band_families`), and its ``model.input_norm`` replaces the mean/std after the p1/p99
   stretch to [0, 1] (:func:`engine.models.open_reader`).
2. Optionally view the raster through a resampling :class:`rasterio.vrt.WarpedVRT` scaled by ``scale`` (SMARTIES
   saw 10 m imagery upsampled ~2×: BigEarthNet 120→224 px, EuroSAT 64→224 px; presets carry the default).
3. Plan tiles of ``tile_size_px`` on the patch grid (:mod:`engine.raster.tiling`; more than
   ``settings.max_tiles`` is refused before any tile is read), read them with rasterio windows in a background thread
   (edge tiles padded by replication, nodata/NaN masked), normalise (docs/smarties.md §3–§4), encode in batches
   (``output="grid"``) the tiles that hold a valid pixel (:class:`engine.raster.TileBatches`: tiles of nodata only are
   skipped, their cells stay NaN), blend overlaps with window weights (:mod:`engine.raster.blending`).
4. Write finished cell rows to a tiled, compressed GeoTIFF (one pixel per patch, D bands) through an atomic writer
   (:mod:`engine.raster.writers`), with its provenance tags (:class:`engine.maps.EmbeddingTags`): cancelling or
   failing leaves nothing behind.

A cell is nodata (NaN) when less than ``min_valid_fraction`` of its pixels hold data.

With a :class:`engine.raster.Region`, the reader covers only the region's window (one ``WarpedVRT`` on the window's
grid: at scale 1 it reproduces the native pixels exactly), pixels outside the region's polygons count as nodata, and
tiles without a pixel inside them are not encoded (their cells are NaN). The output grid starts at the window origin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import rasterio
from affine import Affine

from ..atomic import scratch_folder
from ..callbacks import CancelFn, ProgressFn, scaled
from ..errors import InputRasterError, SettingsError
from ..models import (
    Encoder,
    OnnxEncoder,
    PrecisionChoice,
    at_precision,
    check_onnx_model,
    choose_precision,
    onnx_precision,
    onnx_twin,
    open_reader,
    tiles_per_batch,
    torch_device,
)
from ..outputs import GEOTIFF, check_outputs
from ..raster import (
    GeoTiffWriter,
    RasterReader,
    Region,
    RowBlender,
    TileBatches,
    TileGrid,
    gdal_cache_bytes,
    gtiff_profile,
    open_raster,
    preflight,
    tile_grid,
)
from ..settings import InferenceSettings
from ..spectral import BandMapping, Overrides, Projection
from .quantized import EmbeddingStorage
from .tags import EmbeddingTags

__all__ = ("EmbeddingResult", "RunsOn", "embed_raster", "grid_encoder", "provide_embeddings")

log = logging.getLogger(__name__)

#: A model as a function of normalised tiles: ``(x [B, C, H, W] float32, projections)`` → ``[B, D, H/p, W/p]``.
GridEncodeFn = Callable[[np.ndarray, list[Projection]], np.ndarray]


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
        skipped_tiles: Tiles of the grid not encoded: without a valid pixel (all nodata), or outside the region's
            polygons. ``tiles + skipped_tiles`` is the grid's tile count.
        tile_seconds: The part of ``seconds`` spent on the tiles (reading, encoding, blending, writing), which grows
            with their number; the rest (opening, statistics, model set-up) is fixed. Time estimates use both.
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
    skipped_tiles: int = 0
    tile_seconds: float = 0.0


@dataclass(frozen=True)
class RunsOn:
    """Where and at what precision a model runs: ``"cpu, bf16 (auto: the CPU has AVX-512 BF16)"`` as a string.

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or ``"onnxruntime cpu"`` / ``"onnxruntime cuda"``.
        precision: The resolved precision and why (:func:`engine.models.choose_precision`).
        batch_size: Tiles per forward pass (:func:`engine.models.tiles_per_batch`).
    """

    device: str
    precision: PrecisionChoice
    batch_size: int

    def __str__(self) -> str:
        return f"{self.device}, {self.precision}, batch {self.batch_size}"


def grid_encoder(model: Encoder, settings: InferenceSettings, bands: int) -> tuple[GridEncodeFn, RunsOn]:
    """The model as a function of normalised numpy tiles, and where and at what precision it runs.

    A torch encoder is moved to ``settings.device`` (:func:`engine.models.torch_device`) with ``settings.threads`` and
    runs at ``settings.precision`` (:func:`engine.models.choose_precision`: fp32, or a bf16 copy of it from
    :func:`engine.models.at_precision`); int8 runs its ONNX Runtime twin with int8 weights
    (:func:`engine.models.onnx_twin`, exported once and cached). An ONNX Runtime encoder runs as loaded and exported,
    and torch is never imported.

    Args:
        model: The encoder.
        settings: Device, threads, precision, tile size and batch size of the run.
        bands: Bands per tile (C), for the automatic batch size on CUDA (:func:`engine.models.tiles_per_batch`).

    Returns:
        ``(encode, runs_on)``: ``encode(x [B, C, H, W] float32, projections)`` → patch-grid embeddings
        ``[B, D, H/p, W/p]`` float32 numpy; :class:`RunsOn`.

    Raises:
        engine.errors.ModelMismatchError: An ONNX encoder exported for another tile size, or loaded for another
            device (:func:`engine.models.check_onnx_model`).
        engine.errors.DeviceError: CUDA asked for but not available; bf16 asked for on a GPU without it.
        engine.errors.SettingsError: A precision the model or device cannot run
            (:func:`engine.models.choose_precision`); int8 for a model not loaded from a file
            (:func:`engine.models.onnx_twin`).
    """
    if isinstance(model, OnnxEncoder):
        check_onnx_model(model, settings)
        choice = choose_precision(settings.precision, model.device, onnx=onnx_precision(model.metadata))
        onnx = model
        runs_on = RunsOn(f"onnxruntime {onnx.device}", choice, tiles_per_batch(settings))
        return (lambda x, projections: onnx.encode(x, projections, "grid")), runs_on
    import torch  # a torch encoder: torch is installed (the ONNX path above never imports it)

    device = torch_device(settings)
    choice = choose_precision(settings.precision, device)
    if choice.precision == "int8":
        twin = onnx_twin(model, tile_size_px=settings.tile_size_px, precision="int8", device="cpu",
                         threads=settings.threads)
        runs_on = RunsOn("onnxruntime cpu", choice, tiles_per_batch(settings))
        return (lambda x, projections: twin.encode(x, projections, "grid")), runs_on
    module, dtype = at_precision(model.eval(), choice.precision)  # type: ignore[attr-defined]
    module = module.to(device)
    cuda = device.startswith("cuda")
    batch_size = tiles_per_batch(settings, device, bands=bands, patch_size=model.patch_size,
                                 embed_dim=model.embed_dim, value_bytes=dtype.itemsize)

    def encode(x: np.ndarray, projections: list[Projection]) -> np.ndarray:
        with torch.inference_mode():
            tiles = torch.from_numpy(x)
            # CUDA: a page-locked copy goes to the GPU by DMA while the reader thread prepares the next batch
            tiles = tiles.pin_memory().to(device, non_blocking=True) if cuda else tiles
            return module.encode(tiles.to(dtype), projections, output="grid").float().cpu().numpy()

    return encode, RunsOn(device, choice, batch_size)


def embed_raster(
    source: Union[str, Path],
    output: Union[str, Path],
    model: Encoder,
    *,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    mapping: Optional[BandMapping] = None,
    region: Optional[Region] = None,
    rows: Optional[tuple[int, int]] = None,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
    overwrite: bool = False,
) -> EmbeddingResult:
    """Encode a raster tile by tile and write its patch-grid embeddings as a GeoTIFF.

    Args:
        source: Input raster path (any GDAL-readable raster with a CRS, e.g. GeoTIFF).
        output: Destination GeoTIFF; written atomically (nothing is left on failure or cancel).
        model: A loaded encoder (:func:`engine.load_model`), used with ``output="grid"``.
        settings: Tiling/device options; defaults to :class:`engine.InferenceSettings()`.
        sensor: Sensor preset id (``"sentinel2_l1c"``…) for band mapping and statistics; guessed when None.
        overrides: Band overrides, see :func:`engine.spectral.resolve_bands`.
        mapping: A precomputed band mapping (then ``sensor``/``overrides`` are ignored).
        region: Embed only this :class:`engine.raster.Region` (bounds and/or polygons in the raster's CRS): the
            output grid starts at the region window's origin, pixels outside the polygons are nodata, tiles with no
            pixel inside them are skipped (NaN cells), and the region is recorded in the tag ``MSFM_REGION``.
            Normalisation statistics are still those of the whole raster, so the embeddings match a full run's.
        rows: Write only cell rows ``[first, end)`` of the whole raster's output grid (a block of a raster split
            across workers, :func:`engine.batch.batch_embed`): the tiles that touch them are encoded and blended as
            in a full run, so the block equals those rows of a full run (up to float rounding); the output grid
            starts at row ``first``, and the tag ``MSFM_ROWS`` records ``[first, end, rows of the full grid]``.
            Not with ``region``.
        progress: Called with the completed fraction (0..1) after every batch.
        is_canceled: Polled before every batch; returning True stops within one batch.
        overwrite: Replace ``output`` when it exists (else :class:`~engine.errors.OutputError`).

    Returns:
        :class:`EmbeddingResult`. The raster has D float bands named ``emb_000``…, one pixel per patch
        (``patch_size / scale`` native pixels), the input's CRS, and NaN for nodata cells.

    Raises:
        InputRasterError: Unreadable raster, all-nodata raster (or region), a region outside the raster.
        engine.errors.SettingsError: ``rows`` outside the output grid, empty, or given with ``region``.
        engine.errors.BandResolutionError: A band cannot be mapped (the message says which and how to fix it).
        engine.errors.SettingsError: Tile size or overlap that is not a multiple of the patch size, an overlap as
            large as the tile, or more tiles than ``settings.max_tiles`` (raised before any tile is read).
        engine.errors.ModelMismatchError, engine.errors.DeviceError: As :func:`grid_encoder`.
        engine.errors.InferenceCancelled: ``is_canceled`` returned True.
        engine.errors.OutputError: ``output`` is the input, exists (without ``overwrite``) or cannot be written
            (:func:`engine.outputs.check_outputs`).
    """
    check_outputs({"output": output}, {"input raster": source}, overwrite=overwrite, suffixes={"output": GEOTIFF})
    settings = settings or InferenceSettings()
    started = time.perf_counter()
    output = Path(output)
    dataset = open_raster(source)
    try:
        with rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(dataset)):
            return _embed(dataset, output, model, settings, sensor, overrides, mapping, region, rows, progress,
                          is_canceled, started)
    finally:
        dataset.close()


def _embed(
    dataset: Any,
    output: Path,
    model: Encoder,
    settings: InferenceSettings,
    sensor: Optional[str],
    overrides: Optional[Overrides],
    mapping: Optional[BandMapping],
    region: Optional[Region],
    rows: Optional[tuple[int, int]],
    progress: Optional[ProgressFn],
    is_canceled: Optional[CancelFn],
    started: float,
) -> EmbeddingResult:
    if rows is not None and region is not None:
        raise SettingsError("embed either a region or a block of rows of the raster, not both")
    reader, mapping = open_reader(dataset, model, settings, sensor=sensor, overrides=overrides, mapping=mapping,
                                  region=region)
    with reader:
        return _run(model, reader, mapping, settings, output, dataset.name, rows, progress, is_canceled, started)


def _run(
    model: Encoder,
    reader: RasterReader,
    mapping: BandMapping,
    settings: InferenceSettings,
    output: Path,
    source: Union[str, Path],
    rows: Optional[tuple[int, int]],
    progress: Optional[ProgressFn],
    is_canceled: Optional[CancelFn],
    started: float,
) -> EmbeddingResult:
    p = model.patch_size
    grid: TileGrid = tile_grid(reader.height_px, reader.width_px, settings.tile_size_px, settings.overlap_px, p)
    first, end = rows or (0, grid.height_cells)
    if not 0 <= first < end <= grid.height_cells:
        raise SettingsError(f"rows {first}–{end} are not a block of the {grid.height_cells} cell rows of {source}")
    storage = EmbeddingStorage(settings.output_dtype, model.embed_dim)
    itemsize = np.dtype(settings.output_dtype).itemsize
    preflight(f"embedding {source}", len(grid), reader.height_px, reader.width_px, settings.tile_size_px,
              grid.width_cells * grid.height_cells * model.embed_dim * itemsize, settings.max_tiles)
    projections = list(mapping.projections)
    encode, runs_on = grid_encoder(model, settings, len(projections))
    n, size = grid.tile_cells, settings.tile_size_px
    padded_width = max(grid.width_cells, n)
    blender = RowBlender(model.embed_dim, n, padded_width, settings.blend)
    transform = reader.transform * Affine.scale(p) * Affine.translation(0, first)
    profile = gtiff_profile(
        width=grid.width_cells,
        height=end - first,
        count=storage.bands,
        dtype=settings.output_dtype,
        crs=reader.dataset.crs,
        transform=transform,
        nodata=storage.nodata,
    )
    region_record = None
    if reader.region is not None:
        w = reader.window
        region_record = {**reader.region.record(),
                         "window": [int(w.col_off), int(w.row_off), int(w.width), int(w.height)]}
    tags = EmbeddingTags(
        model=model.provenance.label,
        source=str(source),
        output="grid: " + model.grid_output,
        band_indexes=tuple(mapping.indexes),
        bands=tuple(b.projection.label for b in mapping.bands),
        sensor=mapping.sensor,
        scale=reader.scale,
        patch_size_px=p,
        settings={**asdict(settings), "precision": runs_on.precision.precision, "batch_size": runs_on.batch_size},
        stats=tuple(reader.stats),
        region=region_record,
    ).to_tags() | storage.tags
    if rows is not None:
        tags["MSFM_ROWS"] = json.dumps([first, end, grid.height_cells])
    descriptions = [f"emb_{i:03d}" for i in range(model.embed_dim)] + storage.extra_descriptions
    # Tiles without a pixel inside the region's geometries are never encoded: their cells stay NaN.
    block = [(r, c) for r, c in grid if first - n < r < end]  # every tile touching the rows written
    tiles = [(r, c) for r, c in block if (inside := reader.inside(r * p, c * p, size)) is None or inside.any()]
    if not tiles:
        raise InputRasterError(
            f"no pixel centre of {source} (window {reader.window} of the raster) lies inside the region's polygons; "
            "draw polygons that cover at least one pixel centre"
        )
    stream = TileBatches(tiles, runs_on.batch_size, lambda t: reader.read(t[0] * p, t[1] * p, size), is_canceled,
                         progress)
    valid_cells = 0

    if rows is not None:  # rows above the block are never written: start the blender at the first tile
        blender.top = tiles[0][0]

    def finish_rows(writer: GeoTiffWriter, until_row: int) -> None:
        nonlocal valid_cells
        row = blender.top
        for values, valid in blender.drain(until_row, grid.height_cells, grid.width_cells):
            band, row = row, min(until_row, row + n)  # the rows drain released: [band, row), cropped to the grid
            keep = slice(max(first - band, 0), max(min(end - band, values.shape[1]), 0))
            values, valid = values[:, keep], valid[keep]
            if not values.shape[1]:
                continue
            values[:, valid < settings.min_valid_fraction] = np.nan
            valid_cells += int((valid >= settings.min_valid_fraction).sum())
            writer.write_rows(storage.encode(values))

    log.info(
        "embedding %s: %d×%d px at scale %g → %d×%d cells, %d tiles of %d px on %s",
        source, reader.width_px, reader.height_px, reader.scale, grid.width_cells, grid.height_cells,
        len(tiles), size, runs_on,
    )
    loop_started = time.perf_counter()
    with GeoTiffWriter(output, profile, descriptions, tags) as writer:
        for batch, x, valid in stream:  # tiles without a valid pixel are never added: their cells stay NaN
            emb = encode(x, projections)
            cell_valid = valid.reshape(len(batch), n, p, n, p).mean(axis=(2, 4))
            for (r, c), e, v in zip(batch, emb, cell_valid):
                if r > blender.top:
                    finish_rows(writer, r)
                blender.add(e, v, r, c)
        finish_rows(writer, end if rows is not None else max(grid.height_cells, blender.top + n))
        if reader.region is not None and valid_cells == 0:
            raise InputRasterError(
                f"the region of {source} holds no valid pixel (all nodata, or outside the polygons); nothing written"
            )
    tile_seconds = time.perf_counter() - loop_started
    seconds = time.perf_counter() - started
    log.info("wrote %s in %.1f s: %d tiles encoded, %d of the grid's %d skipped (nodata or outside the region)",
             output, seconds, stream.encoded, len(block) - stream.encoded, len(block))
    return EmbeddingResult(
        path=output,
        width=grid.width_cells,
        height=end - first,
        embed_dim=model.embed_dim,
        transform=transform,
        crs=reader.dataset.crs.to_wkt() if reader.dataset.crs else None,
        tiles=stream.encoded,
        seconds=seconds,
        tile_seconds=tile_seconds,
        scale=reader.scale,
        cell_size_px=p / reader.scale,
        mapping=mapping,
        skipped_tiles=len(block) - stream.encoded,
    )


@contextlib.contextmanager
def provide_embeddings(
    source: Union[str, Path],
    output: Union[str, Path],
    model: Optional[Encoder] = None,
    embeddings: Optional[Union[str, Path]] = None,
    embeddings_output: Optional[Union[str, Path]] = None,
    *,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    region: Optional[Region] = None,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
    overwrite: bool = False,
) -> Iterator[tuple[Path, Optional[EmbeddingResult]]]:
    """The embedding raster a derived product (class map, similarity map) reads, as a context manager.

    ``embeddings`` when given (then nothing is computed); otherwise :func:`embed_raster` runs now (progress reported as
    0..0.8) into ``embeddings_output``, or into a scratch folder beside ``output`` that is removed on exit
    (:func:`engine.atomic.scratch_folder`). The caller has checked the outputs (:func:`engine.outputs.check_outputs`).

    Args:
        source: Input raster.
        output: The derived product's path (its folder holds the temporary embeddings).
        model: Loaded encoder; needed unless ``embeddings`` is given.
        embeddings: An existing embedding raster of ``source``.
        embeddings_output: Keep computed embeddings at this path.
        settings: Tiling and device of :func:`embed_raster`.
        sensor: Sensor preset for the band mapping, as :func:`embed_raster`.
        overrides: Band mapping overrides, as :func:`embed_raster`.
        region: Embed only this region, as :func:`embed_raster`.
        is_canceled: Passed to :func:`embed_raster`.
        progress: Called with 0.8 × the embedding progress.
        overwrite: Replace an existing ``embeddings_output``.

    Yields:
        ``(embedding raster path, EmbeddingResult or None when existing embeddings were given)``.

    Raises:
        SettingsError: Neither a model nor embeddings.
        engine.errors.EngineError: Whatever :func:`embed_raster` raises.
    """
    if embeddings is not None:
        yield Path(embeddings), None
        return
    if model is None:
        raise SettingsError("give a model (or existing embeddings of the raster) to compute embeddings with")
    with contextlib.ExitStack() as stack:
        if embeddings_output is None:
            embeddings_output = stack.enter_context(scratch_folder(output)) / "embeddings.tif"
        result = embed_raster(
            source, embeddings_output, model, settings=settings, sensor=sensor, overrides=overrides, region=region,
            progress=scaled(progress, 0.0, 0.8), is_canceled=is_canceled, overwrite=overwrite,
        )
        yield result.path, result
