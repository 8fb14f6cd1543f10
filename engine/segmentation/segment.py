"""Pixel-resolution class maps from a segmentation head: tiled, streamed, blended class probabilities.

:func:`segment_raster` reads the raster tile by tile through the engine's normalising reader
(:func:`engine.models.open_reader`, with the bands, statistics and scale recorded in the head's card), encodes the
tiles (:meth:`encode_blocks`), turns the head's logits into per-pixel class probabilities (logits upsampled
bilinearly to the tile's pixels, then softmax) and blends overlapping tiles with a cosine window at pixel resolution
(:class:`engine.raster.RowBlender` on pixels instead of cells). Finished pixel rows are written as they complete:

- a class GeoTIFF (uint8 class indices, nodata 255, colour table and class names from the card) and its ``.qml``;
- optionally the probabilities (float32, one band per class, NaN = nodata);
- optionally polygons of the classes (GDAL polygonize of the class map into a GeoPackage, fields ``class`` and
  ``name``).

A 16-px-patch ViT sees the image through a 16-px grid, so a head's logits are coarse (one per patch for the linear
head, one per 4 px for UPerNet). Two knobs refine them, at a cost (docs/segmentation.md has the measured trade-off):

- ``overlap_px``: overlapping tiles average several contexts (cost ∝ ``(tile / (tile − overlap))²``);
- ``shifts``: extra passes whose tiles are offset by half a patch diagonally (``shifts=2``: origins +8 px, doubling
  the cost), so patch boundaries fall in different places and the blend has twice the resolution (test-time
  shifting, as in dense-prediction ViT practice).

The head runs on torch (a head file + its encoder) or on ONNX Runtime alone: an encoder and head exported together
(:func:`engine.export.export_segmenter`, :class:`engine.segmentation.OnnxSegmenter`) are passed as the
head, and torch is never imported.

Tiles without a valid pixel (all nodata) are read but not encoded (:class:`engine.raster.TileBatches`): their pixels
stay nodata. A pass over more tiles than ``settings.max_tiles`` is refused before any tile is read.

The maps come out on the input's pixel grid (same CRS, transform, width and height as the raster, or as the region's
window of it) whatever the scale the head reads the raster at: probabilities computed on the model-pixel grid (twice
as fine for the Sentinel-1/-2 and Landsat presets) are area-averaged onto the input's pixels before the argmax
(:class:`engine.raster.RowAreaResampler`). ``grid="model"`` keeps the model-pixel grid.

Memory: the blender holds ``K × tile × width`` float32 probabilities; nothing grows with the raster height. Cancel is
polled every batch; a cancelled or failed run leaves no file behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Union, cast

import numpy as np
import rasterio
from rasterio.windows import transform as window_transform

from ..callbacks import CancelFn, ProgressFn, scaled
from ..errors import BandResolutionError, InputRasterError, ModelMismatchError, SettingsError
from ..models import (
    Encoder,
    PrecisionChoice,
    at_precision,
    check_onnx_model,
    choose_precision,
    load_model,
    onnx_precision,
    open_reader,
    tiles_per_batch,
    torch_device,
)
from ..outputs import GEOTIFF, check_outputs
from ..raster import (
    NODATA_CLASS,
    GeoTiffWriter,
    RasterReader,
    Region,
    RowAreaResampler,
    RowBlender,
    TileBatches,
    gdal_cache_bytes,
    gtiff_profile,
    open_raster,
    polygonize,
    preflight,
    tile_grid,
    write_qml,
)
from ..settings import InferenceSettings
from ..spectral import Averaging, BandMapping, BandStats, Overrides, Projection, resolve_bands
from .card import HeadCard, card_path, check_encoder, encoder_source
from .onnx_segmenter import OnnxSegmenter

#: ``"input"``: the input raster's pixel grid (default); ``"model"``: the grid the head reads (``scale`` × finer).
OutputGrid = Literal["input", "model"]

__all__ = ("SegmentationResult", "segment_raster")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentationResult:
    """What :func:`segment_raster` wrote.

    Attributes:
        path: Class GeoTIFF (uint8 class indices, nodata 255).
        style: Its ``.qml`` style.
        probabilities: Probability GeoTIFF, or None.
        polygons: GeoPackage of class polygons, or None.
        class_names: Names in index order.
        class_fractions: Share of valid pixels per class.
        tiles: Tiles encoded (all passes).
        seconds: Wall time.
        skipped_tiles: Tiles planned but not encoded: without a valid pixel (all nodata) or outside the region's
            polygons; ``tiles + skipped_tiles`` is the plan's count (grid tiles × shifts).
    """

    path: Path
    style: Path
    probabilities: Optional[Path]
    polygons: Optional[Path]
    class_names: tuple[str, ...]
    class_fractions: tuple[float, ...]
    tiles: int
    seconds: float
    skipped_tiles: int = 0


def _head_mapping(dataset: Any, card: HeadCard, averaging: Averaging, sensor: Optional[str],
                  overrides: Optional[Overrides]) -> BandMapping:
    """The raster's bands resolved and checked against the head's: same ranges, same order."""
    mapping = resolve_bands(dataset, sensor=sensor or card.sensor, overrides=overrides, averaging=averaging)
    want = [b["projection"] for b in card.bands]
    got = [b.projection.label for b in mapping.bands]
    if want and got != want:
        if len(got) > len(want) and all(k in got for k in want):  # a raster with extra bands: keep the head's
            keep = [next(b for b in mapping.bands if b.projection.label == k) for k in want]
            return replace(mapping, bands=tuple(keep))
        example = "; ".join(f"{i + 1}={b.get('key') or b.get('wavelength_nm')}" for i, b in enumerate(card.bands))
        raise BandResolutionError(
            f"the head was trained on bands {want} but {dataset.name} maps to {got}; map the bands with overrides "
            f"(e.g. {example}) or use a head trained on this sensor"
        )
    return mapping


def segment_raster(
    source: Union[str, Path],
    output: Union[str, Path],
    head: Any,
    model: Any = None,
    *,
    settings: Optional[InferenceSettings] = None,
    shifts: int = 1,
    sensor: Optional[str] = None,
    overrides: Any = None,
    region: Optional[Region] = None,
    probabilities_output: Optional[Union[str, Path]] = None,
    polygons_output: Optional[Union[str, Path]] = None,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
    overwrite: bool = False,
    grid: OutputGrid = "input",
) -> SegmentationResult:
    """Classify every pixel of a raster with a segmentation head.

    Args:
        source: Input raster with the bands the head was trained on.
        output: Class GeoTIFF (uint8, nodata 255, colour table, class names); a ``.qml`` is written beside it.
        head: A head file (``.safetensors`` + card), a loaded :class:`engine.segmentation.SegmentationHead`, or an
            exported segmenter (``.onnx`` file or :class:`engine.segmentation.OnnxSegmenter`; ONNX Runtime, no torch).
        model: The encoder; default: the one the head's card names (:func:`encoder_source`). Checked against the
            card (:func:`check_encoder`). None for an exported segmenter, which holds its encoder.
        settings: Tiling and device. The scale defaults to the card's (the head was trained at it); an exported
            segmenter fixes the tile size.
        shifts: 1 (plain tiles) or 2 (plus a pass offset by half a patch; 2× the cost, finer boundaries).
        sensor: Sensor preset for the band mapping (default: the card's sensor).
        overrides: Band mapping overrides; the bands must map to the head's ranges.
        region: Process only this :class:`engine.raster.Region` (pixels outside its polygons are nodata).
        probabilities_output: Also write class probabilities (float32, K bands) here.
        polygons_output: Also polygonize the class map into this GeoPackage (``.gpkg``).
        progress: Called with the completed fraction after every batch.
        is_canceled: Polled before every batch; True stops with :class:`InferenceCancelled`, writing nothing.
        overwrite: Replace existing outputs.
        grid: ``"input"`` (default): outputs on the raster's own pixel grid (the region's window of it), the
            model-pixel probabilities area-averaged onto it before the argmax; ``"model"``: on the grid the head
            reads, ``scale`` times finer than the input.

    Returns:
        :class:`SegmentationResult`.

    Raises:
        InputRasterError: Unreadable input, bad settings, no valid pixel, a model passed with an exported segmenter.
        SettingsError: More tiles than ``settings.max_tiles`` (before any tile is read), or other bad settings.
        engine.errors.BandResolutionError: The raster's bands do not match the head's.
        InferenceCancelled: Cancelled.
        engine.errors.OutputError: An output is an input (the raster, the head file or its card) or another output,
            exists (without ``overwrite``), cannot be written or has the wrong suffix
            (:func:`engine.outputs.check_outputs`).
    """
    started = time.perf_counter()
    if shifts not in (1, 2):
        raise SettingsError(f"shifts must be 1 or 2, got {shifts}")
    if grid not in ("input", "model"):
        raise SettingsError(f"grid must be 'input' (the raster's pixels) or 'model' (the head's), got {grid!r}")
    head_file = Path(head) if isinstance(head, (str, Path)) else None
    check_outputs(
        {"output": output, "probabilities output": probabilities_output, "polygons output": polygons_output},
        {"input raster": source, "head file": head_file,
         "head card": card_path(head_file) if head_file is not None and head_file.suffix != ".onnx" else None},
        overwrite=overwrite,
        suffixes={"output": GEOTIFF, "probabilities output": GEOTIFF, "polygons output": (".gpkg",)},
    )
    output = Path(output)
    card, runner, predict = _predictor(head, model, settings)
    settings = settings or InferenceSettings(
        tile_size_px=runner.tile_size_px if isinstance(runner, OnnxSegmenter) else card.tile_size_px
    )
    if settings.scale is None:
        settings = replace(settings, scale=card.scale)
    if isinstance(runner, OnnxSegmenter):
        check_onnx_model(runner, settings)
    dataset = open_raster(source)
    try:
        mapping = _head_mapping(dataset, card, runner.averaging, sensor, overrides)
        # each row is [p1, p99, mean, std] (the card's JSON: the length is not in the type)
        stats = (
            [BandStats(*s, source="head card") for s in card.stats]  # type: ignore[misc, arg-type]
            if card.stats else None
        )
        reader, mapping = open_reader(dataset, runner, settings, mapping=mapping, stats=stats, region=region)
        with reader, rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(dataset)):  # a few block rows, as embed_raster
            run_predict, precision = predict(settings, list(mapping.projections))
            counts, tiles, skipped = _run(run_predict, precision.precision, card, runner.patch_size, reader, settings,
                                          shifts, output, probabilities_output, str(source), progress, is_canceled,
                                          grid)
    finally:
        dataset.close()
    names = tuple(c.name for c in card.classes)
    style = write_qml(output.with_suffix(".qml"), list(names), [c.color for c in card.classes])
    polygons = polygonize(output, Path(polygons_output), names) if polygons_output is not None else None
    total = max(1, int(counts.sum()))
    if progress is not None:
        progress(1.0)
    return SegmentationResult(
        path=output, style=style, probabilities=Path(probabilities_output) if probabilities_output else None,
        polygons=polygons, class_names=names, class_fractions=tuple(float(c) / total for c in counts), tiles=tiles,
        seconds=time.perf_counter() - started, skipped_tiles=skipped,
    )


#: A prediction function: normalised tiles ``[B, C, T, T]`` float32 → class probabilities ``[B, K, T, T]`` float32.
PredictFn = Callable[[np.ndarray], np.ndarray]
#: ``make_predict(settings, projections)`` → the run's :data:`PredictFn` and the precision it runs at.
MakePredict = Callable[[InferenceSettings, list[Projection]], tuple[PredictFn, PrecisionChoice]]


def _predictor(head: Any, model: Optional[Encoder],
               settings: Optional[InferenceSettings]) -> tuple[HeadCard, Union[Encoder, OnnxSegmenter], MakePredict]:
    """What runs a head: ``(card, runner, make_predict)``.

    The head's card, what runs it (the encoder, or the ONNX segmenter), and the factory of the prediction function.
    """
    if isinstance(head, (str, Path)) and Path(head).suffix.lower() == ".onnx":
        device = settings.device if settings else "auto"
        head = OnnxSegmenter(head, device=device, threads=settings.threads if settings else None)
    if isinstance(head, OnnxSegmenter):
        segmenter = head
        if model is not None:
            path = cast(Path, segmenter.provenance.weights_path)  # always the .onnx file of an exported segmenter
            raise ModelMismatchError(f"{path.name} holds its encoder; do not pass a model with it")

        def onnx_predict(settings: InferenceSettings,
                         projections: list[Projection]) -> tuple[PredictFn, PrecisionChoice]:
            choice = choose_precision(settings.precision, segmenter.device, onnx=onnx_precision(segmenter.metadata))
            log.info("segmenting on onnxruntime %s, %s", segmenter.device, choice)
            return segmenter.probabilities, choice

        return segmenter.card, segmenter, onnx_predict
    # A head file or a loaded head runs on torch; imported here so that ONNX segmenters never import torch.
    from .heads import SegmentationHead, load_head

    head_path = None if isinstance(head, SegmentationHead) else Path(head)
    head = head if isinstance(head, SegmentationHead) else load_head(head)
    if model is None:
        model = load_model(encoder_source(head.card, head_path), device="cpu")
    encoder = check_encoder(head.card, model)

    def make_predict(settings: InferenceSettings, projections: list[Projection]) -> tuple[PredictFn, PrecisionChoice]:
        import torch

        device = torch_device(settings)
        choice = choose_precision(settings.precision, device)
        if choice.precision == "int8":
            raise SettingsError(
                "int8 segmentation runs the head and its encoder as one ONNX Runtime graph: export it with "
                "msfm export-onnx OUT.onnx --head HEAD.safetensors --int8 (QGIS: Export model to ONNX) and segment "
                "with OUT.onnx as the head; or use precision auto, fp32 or bf16"
            )
        log.info("segmenting on %s, %s", device, choice)
        # a torch encoder (check_encoder); the head stays in float32 (it is small and sets the argmax)
        runner, dtype = at_precision(encoder.eval(), choice.precision)  # type: ignore[attr-defined]
        runner = runner.to(device)
        net = head.to(device).eval()
        size = (settings.tile_size_px, settings.tile_size_px)

        def predict(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                image = torch.from_numpy(x).to(device)
                grids = [g.float() for g in runner.encode_blocks(image.to(dtype), projections, net.blocks)]
                return torch.softmax(net.pixel_logits(grids, size, image), dim=1).cpu().numpy()

        return predict, choice

    return head.card, model, make_predict


def _origins(reader: RasterReader, settings: InferenceSettings, p: int, shifts: int, what: str,
             output_bytes: int) -> tuple[list[tuple[int, int]], int]:
    """Tile origins in view pixels (the patch-grid plan, plus the half-patch-shifted pass) sorted by row, and the count.

    The count is checked against ``max_tiles`` (:func:`engine.raster.preflight`) before the region's polygons are
    rasterised for every tile.
    """
    grid = tile_grid(reader.height_px, reader.width_px, settings.tile_size_px, settings.overlap_px, p)
    preflight(what, len(grid) * shifts, reader.height_px, reader.width_px, settings.tile_size_px, output_bytes,
              settings.max_tiles)
    base = [(r * p, c * p) for r, c in grid]
    if shifts == 2:
        s = p // 2
        base += [(r + s, c + s) for r, c in base]
    size = settings.tile_size_px
    keep = [(r, c) for r, c in base if (inside := reader.inside(r, c, size)) is None or inside.any()]
    return sorted(keep), len(base)


def _run(predict: Any, precision: str, card: HeadCard, p: int, reader: Any, settings: InferenceSettings, shifts: int,
         output: Path, prob_path: Optional[Union[str, Path]], source: str, progress: Optional[ProgressFn],
         is_canceled: Optional[CancelFn], grid: OutputGrid) -> tuple[np.ndarray, int, int]:
    size, k = settings.tile_size_px, card.num_classes
    pixels = reader.height_px * reader.width_px
    origins, planned = _origins(reader, settings, p, shifts, f"segmenting {source}",
                                pixels * (1 + (4 * k if prob_path is not None else 0)))
    if not origins:
        raise InputRasterError(f"no pixel centre of {source} lies inside the region's polygons")
    height, width = reader.height_px, reader.width_px
    blender = RowBlender(k, size, max(width, max(c for _, c in origins) + size), settings.blend)
    native = (int(reader.window.height), int(reader.window.width))
    resampler = RowAreaResampler(k, (height, width), native) if grid == "input" and native != (height, width) \
        else None
    if resampler is None:
        profile = dict(width=width, height=height, crs=reader.dataset.crs, transform=reader.transform)
    else:
        profile = dict(width=native[1], height=native[0], crs=reader.dataset.crs,
                       transform=window_transform(reader.window, reader.dataset.transform))
    tags = {
        "MSFM_KIND": "segmentation", "MSFM_SOURCE": source, "MSFM_HEAD": card.head_type,
        "MSFM_CLASSES": json.dumps([c.name for c in card.classes]), "MSFM_SCALE": repr(reader.scale),
        "MSFM_SHIFTS": str(shifts), "MSFM_GRID": grid, "MSFM_SETTINGS": json.dumps({"tile_size_px": size,
                                                                  "overlap_px": settings.overlap_px,
                                                                  "precision": precision}),
    }
    colors = {c.index: c.color for c in card.classes}
    counts = np.zeros(k, np.int64)
    stream = TileBatches(origins, tiles_per_batch(settings), lambda t: reader.read(t[0], t[1], size), is_canceled,
                         scaled(progress, 0.0, 0.97))

    def bands(until: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for probs, valid in blender.drain(until, height, width):
            yield from resampler.push(probs, valid) if resampler is not None else ((probs, valid),)

    def finish(until: int, writers: list[GeoTiffWriter]) -> None:
        for probs, valid in bands(until):
            ok = valid >= 0.5
            classes = np.where(ok, probs.argmax(0), NODATA_CLASS).astype(np.uint8)
            counts[:] += np.bincount(classes[ok].ravel(), minlength=k)[:k]
            writers[0].write_rows(classes[None])
            if len(writers) > 1:
                probs = probs.copy()
                probs[:, ~ok] = np.nan
                writers[1].write_rows(probs)

    class_profile = gtiff_profile(count=1, dtype="uint8", nodata=NODATA_CLASS, **profile)
    with GeoTiffWriter(output, class_profile, ["class"], tags, colors) as classes_out, \
            (GeoTiffWriter(Path(prob_path), gtiff_profile(count=k, dtype="float32", nodata=float("nan"), **profile),
                           [f"p_{c.name}" for c in card.classes], tags)
             if prob_path is not None else contextlib.nullcontext()) as probs_out:
        writers = [w for w in (classes_out, probs_out) if w is not None]
        for batch, x, valid in stream:  # tiles without a valid pixel are never added: their pixels stay nodata
            for (r, c), pr, v in zip(batch, predict(x), valid):
                if r > blender.top:
                    finish(r, writers)
                blender.add(pr, v.astype(np.float32), r, c)
        finish(max(height, blender.top + size), writers)
        if counts.sum() == 0:
            raise InputRasterError(f"{source}: no valid pixel to classify (all nodata)")
    log.info("segmented %s: %d tiles encoded, %d of %d planned skipped (nodata or outside the region)", source,
             stream.encoded, planned - stream.encoded, planned)
    return counts, stream.encoded, planned - stream.encoded
