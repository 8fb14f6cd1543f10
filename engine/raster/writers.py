"""GeoTIFF output written row band by row band, atomically.

:class:`GeoTiffWriter` writes through :func:`engine.atomic.atomic_output`: a hidden temporary file beside the
destination, renamed onto it only when the ``with`` block ends without an exception, deleted on any error (including
cancellation), so a failed run never leaves a half-written raster. Rows must arrive top to bottom; they are buffered
up to the GeoTIFF block height so every internal block is compressed exactly once, and each full band of blocks is
compressed and written by a background thread while the caller computes the next rows (one write in flight at a
time, so memory stays flat; GDAL releases the GIL while it compresses). :func:`gtiff_profile` is the one creation
profile of our outputs.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping, Optional, Sequence, cast

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from ..atomic import atomic_output

__all__ = ("GeoTiffWriter", "gtiff_profile")

_BLOCK_ROWS = 16


def gtiff_profile(
    *, width: int, height: int, count: int, dtype: str, crs: Any, transform: Affine, nodata: Optional[float]
) -> dict[str, Any]:
    """Creation profile for our outputs: tiled 256 × 16 blocks, ZSTD level 1, pixel-interleaved, BigTIFF if needed.

    Rasters narrower than 256 px get blocks of their width rounded up to 16 px, since a block is compressed whole.

    ZSTD level 1 with the floating-point predictor wrote a 768-band float32 block 2.4× faster than DEFLATE level 1
    (0.39 vs 0.94 s for 256 × 128 cells) at the same size (85 MB); GDAL reads it since 2.3 (QGIS 3.22's GDAL 3.6 and
    every current QGIS build); docs/performance.md, "End to end".

    Float data of dtype ``"float16"`` is stored as 16-bit IEEE floats (GDAL ``NBITS=16`` on Float32), which GDAL and
    QGIS read back as float32.
    """
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": "float32" if dtype == "float16" else dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        # a block is compressed whole, padding included: narrower rasters get narrower blocks (multiple of 16)
        "blockxsize": min(256, 16 * -(-width // 16)),
        "blockysize": _BLOCK_ROWS,
        "compress": "zstd",
        "zstd_level": 1,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    if dtype == "float16":
        profile["nbits"] = 16
    if np.dtype(profile["dtype"]).kind == "f":
        profile["predictor"] = 3
    elif np.dtype(profile["dtype"]).itemsize > 1:
        profile["predictor"] = 2
    return profile


class GeoTiffWriter:
    """Atomic, row-ordered GeoTIFF writer.

    Args:
        path: Destination file (``.tif``); its folder must exist (else :class:`engine.errors.SettingsError`).
        profile: rasterio creation profile, e.g. from :func:`gtiff_profile`.
        descriptions: Optional per-band descriptions.
        tags: Optional dataset tags (provenance: model, bands, settings).
        colormap: Optional ``{value: (r, g, b, a)}`` for band 1 (uint8 class maps).

    Example::

        with GeoTiffWriter(out, profile) as w:
            w.write_rows(block)  # [count, rows, width], top to bottom
    """

    def __init__(
        self,
        path: Path,
        profile: Mapping[str, Any],
        descriptions: Optional[Sequence[str]] = None,
        tags: Optional[Mapping[str, str]] = None,
        colormap: Optional[Mapping[int, tuple[int, int, int, int]]] = None,
    ) -> None:
        self.path = Path(path)
        self.profile = dict(profile)
        self.descriptions = descriptions
        self.tags = tags
        self.colormap = colormap
        self.row = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._ds: Any = None
        self._output = contextlib.ExitStack()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._writing: Optional[Future[None]] = None

    def __enter__(self) -> "GeoTiffWriter":
        tmp = self._output.enter_context(atomic_output(self.path))
        self._ds = self._output.enter_context(rasterio.open(tmp, "w", **self.profile))
        if self.descriptions:
            for i, d in enumerate(self.descriptions, start=1):
                self._ds.set_band_description(i, d)
        if self.tags:
            self._ds.update_tags(**{k: str(v) for k, v in self.tags.items()})
        if self.colormap:
            self._ds.write_colormap(1, dict(self.colormap))
        self._pool = self._output.enter_context(ThreadPoolExecutor(1, thread_name_prefix="msfm-writer"))
        return self

    def write_rows(self, rows: np.ndarray) -> None:
        """Append ``[count, k, width]`` rows below those already written."""
        if rows.shape[1] == 0:
            return
        self._pending.append(rows)
        self._pending_rows += rows.shape[1]
        if self._pending_rows >= _BLOCK_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        data = np.concatenate(self._pending, axis=1)
        n = data.shape[1] if final else (data.shape[1] // _BLOCK_ROWS) * _BLOCK_ROWS
        if n:
            out = data[:, :n].astype(self.profile["dtype"], copy=False)  # data is our own copy: safe to hand over
            self._wait()  # one write in flight: raises the previous write's error here
            window = Window(0, self.row, data.shape[2], n)
            self._writing = cast(ThreadPoolExecutor, self._pool).submit(self._ds.write, out, window=window)
            self.row += n
        rest = data[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        self._pending_rows = rest.shape[1]

    def _wait(self) -> None:
        """Wait for the write in flight, if any, and raise its error."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        """Flush the last rows and rename the file into place, or remove it when the block (or the flush) failed."""
        if exc_type is None:
            try:
                self._flush(final=True)
                self._wait()
                if self.row != self.profile["height"]:
                    raise RuntimeError(f"wrote {self.row} of {self.profile['height']} rows of {self.path}")
            except BaseException as err:
                self._output.__exit__(type(err), err, err.__traceback__)
                raise
        # Waits for the write in flight (its own error is moot then), closes the dataset, then renames the file
        # (success) or removes it (an exception is passed on).
        self._output.__exit__(exc_type, exc, tb)
