"""The normalising tile reader every pass of a model over a raster uses, and the batch loop around it.

:class:`RasterReader` views a raster through one virtual raster — scaled (``scale`` model-input pixels per native
pixel) and/or cut to a region's window — and reads ``size_px`` squares of the mapped bands, normalised
(:func:`engine.spectral.normalize`), with their validity (nodata, NaN, outside the region's polygons). Tiles are
read in batches (:func:`batched`) in a background thread while the model encodes the previous batch
(:func:`prefetched`), which also polls the caller's cancel callback once per batch. :class:`TileBatches` puts the
two together for a pass over a raster: tiles without a valid pixel are dropped after reading and the others
regrouped into full batches for the model.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from ..callbacks import CancelFn, ProgressFn
from ..errors import InferenceCancelled
from ..spectral import BandMapping, BandStats, normalize
from .readers import read_valid
from .region import Region

__all__ = ("RasterReader", "TileBatches", "batched", "has_valid_pixel", "prefetched")

log = logging.getLogger(__name__)


class RasterReader:
    """Reads normalised tiles of the resolved bands, optionally through a scaled and/or windowed virtual raster.

    Args:
        dataset: An open rasterio dataset.
        mapping: Band mapping from :func:`engine.spectral.resolve_bands`.
        stats: One :class:`BandStats` per mapped band.
        scale: Model-input pixels per native pixel.
        resampling: rasterio resampling name for ``scale != 1``.
        region: Optional :class:`engine.raster.Region`: the view covers only its window (native pixels, rounded
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
        """Pixels of a square of the view whose centre is inside the region's geometries.

        Args:
            row_px: First row of the square in the view (model-input pixels).
            col_px: First column of the square.
            size_px: Side of the square; it is clipped to the view.

        Returns:
            ``bool [h, w]`` (h, w: the clipped size), or None when there are no geometries.
        """
        if self.region is None or not self.region.geometries:
            return None
        h = max(0, min(size_px, self.height_px - row_px))
        w = max(0, min(size_px, self.width_px - col_px))
        return self.region.pixel_mask(window_transform(Window(col_px, row_px, w, h), self.transform), (h, w))

    def close(self) -> None:
        """Close the virtual raster (the dataset stays open: it is the caller's)."""
        if self.view is not self.dataset:
            self.view.close()

    def __enter__(self) -> "RasterReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def has_valid_pixel(valid: np.ndarray) -> np.ndarray:
    """Which tiles of a batch hold at least one valid pixel: ``valid [B, H, W]`` bool → ``[B]`` bool."""
    return valid.reshape(len(valid), -1).any(axis=1)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


class TileBatches:
    """The tiles of one pass over a raster, read in the background, as full batches of the tiles worth encoding.

    Tiles are read in batches of ``batch_size`` (:func:`prefetched`, which polls ``is_canceled`` before each). A tile
    without a valid pixel (nodata, NaN, outside a region's polygons; :func:`has_valid_pixel`) is dropped: it is never
    encoded and its cells stay nodata, as the blender leaves cells that no tile was added to. The other tiles are
    regrouped, in their order, so that every batch sent to the model is full (the last one excepted). After the first
    batch the projected remaining time is logged.

    Args:
        tiles: Tile keys (origins), in the row-major order the blender needs.
        batch_size: Tiles per forward pass.
        read: ``read(tile)`` → ``(x [C, T, T] float32, valid [T, T] bool)`` (:meth:`RasterReader.read`).
        is_canceled: Polled before every batch is read.
        progress: Called with the fraction of tiles read, after each batch read (once its tiles are handled).

    Attributes:
        total: Tiles planned.
        read_tiles: Tiles read so far.
        encoded: Tiles yielded for encoding so far.
    """

    def __init__(self, tiles: Sequence[Any], batch_size: int,
                 read: Callable[[Any], tuple[np.ndarray, np.ndarray]], is_canceled: Optional[CancelFn] = None,
                 progress: Optional[ProgressFn] = None) -> None:
        self.tiles = tiles
        self.batch_size = max(1, batch_size)
        self.read = read
        self.is_canceled = is_canceled
        self.progress = progress
        self.total = len(tiles)
        self.read_tiles = 0
        self.encoded = 0

    @property
    def skipped(self) -> int:
        """Tiles read and not encoded (no valid pixel)."""
        return self.read_tiles - self.encoded

    def _load(self, batch: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        reads = [self.read(tile) for tile in batch]
        return np.stack([x for x, _ in reads]), np.stack([v for _, v in reads])

    def __iter__(self) -> Iterator[tuple[list[Any], np.ndarray, np.ndarray]]:
        """Yield ``(tiles, x [B, C, T, T], valid [B, T, T])`` batches of tiles with at least one valid pixel."""
        started = time.perf_counter()
        pending: list[tuple[Any, np.ndarray, np.ndarray]] = []
        size = self.batch_size

        def take(n: int) -> tuple[list[Any], np.ndarray, np.ndarray]:
            chunk, pending[:] = pending[:n], pending[n:]
            self.encoded += len(chunk)
            return [t for t, _, _ in chunk], np.stack([x for _, x, _ in chunk]), np.stack([v for _, _, v in chunk])

        for batch, (x, valid) in prefetched(batched(self.tiles, size), self._load, self.is_canceled):
            self.read_tiles += len(batch)
            keep = has_valid_pixel(valid)
            first = self.encoded == 0
            if not pending and keep.all():  # the common case: a whole batch of tiles with data, passed as read
                self.encoded += len(batch)
                yield batch, x, valid
            else:
                pending += [(t, x[i], valid[i]) for i, t in enumerate(batch) if keep[i]]
                while len(pending) >= size:
                    yield take(size)
            if first and self.encoded:
                seconds = time.perf_counter() - started
                rate = self.read_tiles / max(seconds, 1e-9)
                log.info("first batch: %d tiles read (%d encoded) in %.1f s, %.1f tiles/s: ~%s left for %d tiles",
                         self.read_tiles, self.encoded, seconds, rate, _duration((self.total - self.read_tiles) / rate),
                         self.total - self.read_tiles)
            if self.progress is not None:
                self.progress(self.read_tiles / max(self.total, 1))
        if pending:
            yield take(len(pending))
