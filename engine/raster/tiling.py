"""Tile grid over a raster, in units of ViT patches (pure functions, no I/O).

Vocabulary (docs/glossary.md): a *tile* is what the model sees (``tile_size_px`` model-input pixels, 224 by default);
a *patch* is one ViT token (``patch_size_px`` pixels, 16); a *cell* is one pixel of the patch-grid output raster and
covers exactly one patch. Tiles start on multiples of the patch size, so every tile's tokens land on the same cell
grid and overlapping tiles can be blended cell by cell without resampling.

The last tile row/column is shifted back so it ends on the last cell (TorchGeo-style ceil coverage) — no tile reads far
outside the raster. A raster smaller than one tile gets a single tile whose outside part is padded by the reader.

Before a pass reads its first tile, :func:`preflight` logs what it will cost and refuses a pass over more tiles than
``InferenceSettings.max_tiles``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Optional

from rasterio.windows import Window

from ..errors import SettingsError

__all__ = ("TileGrid", "iter_windows", "preflight", "tile_grid")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileGrid:
    """Tile origins on the cell grid of a raster.

    Attributes:
        height_cells: Rows of the output cell grid (``ceil(height_px / patch_size_px)``).
        width_cells: Columns of the output cell grid.
        tile_cells: Tile side in cells (``tile_size_px / patch_size_px``).
        stride_cells: Distance between neighbouring tile origins in cells.
        row_origins: First cell row of each tile row (increasing).
        col_origins: First cell column of each tile column (increasing).
    """

    height_cells: int
    width_cells: int
    tile_cells: int
    stride_cells: int
    row_origins: tuple[int, ...]
    col_origins: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.row_origins) * len(self.col_origins)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Yield ``(row_origin, col_origin)`` in cells, row-major."""
        for r in self.row_origins:
            for c in self.col_origins:
                yield r, c


def _origins(size_cells: int, tile_cells: int, stride_cells: int) -> tuple[int, ...]:
    last = max(size_cells - tile_cells, 0)
    origins = list(range(0, last + 1, stride_cells))
    if origins[-1] != last:
        origins.append(last)
    return tuple(origins)


def tile_grid(height_px: int, width_px: int, tile_size_px: int, overlap_px: int, patch_size_px: int) -> TileGrid:
    """Plan the tiles covering a ``height_px × width_px`` raster (model-input pixels, i.e. after scaling).

    Args:
        height_px: Raster height in model-input pixels.
        width_px: Raster width in model-input pixels.
        tile_size_px: Tile side in model-input pixels; a multiple of ``patch_size_px``.
        overlap_px: Overlap between neighbouring tiles in model-input pixels; a multiple of ``patch_size_px`` and
            smaller than ``tile_size_px``.
        patch_size_px: ViT patch side in pixels (16).

    Returns:
        The :class:`TileGrid`; ``len(grid)`` is the number of tiles.

    Raises:
        SettingsError: Sizes that are not positive multiples of the patch size, or an overlap ≥ the tile size.
    """
    if height_px <= 0 or width_px <= 0:
        raise SettingsError(f"raster size must be positive, got {height_px}×{width_px} px")
    if tile_size_px <= 0 or tile_size_px % patch_size_px:
        raise SettingsError(
            f"tile_size_px must be a positive multiple of the patch size {patch_size_px}, got {tile_size_px}"
        )
    if overlap_px < 0 or overlap_px % patch_size_px:
        raise SettingsError(
            f"overlap_px must be a multiple of the patch size {patch_size_px} (0 allowed), got {overlap_px}"
        )
    if overlap_px >= tile_size_px:
        raise SettingsError(f"overlap_px ({overlap_px}) must be smaller than tile_size_px ({tile_size_px})")
    tile_cells = tile_size_px // patch_size_px
    stride_cells = tile_cells - overlap_px // patch_size_px
    height_cells = math.ceil(height_px / patch_size_px)
    width_cells = math.ceil(width_px / patch_size_px)
    return TileGrid(
        height_cells=height_cells,
        width_cells=width_cells,
        tile_cells=tile_cells,
        stride_cells=stride_cells,
        row_origins=_origins(height_cells, tile_cells, stride_cells),
        col_origins=_origins(width_cells, tile_cells, stride_cells),
    )


def iter_windows(height: int, width: int, rows: int, cols: int) -> Iterator[Window]:
    """Windows of at most ``rows × cols`` pixels covering a raster, row-major (rows of windows top to bottom)."""
    for r in range(0, height, rows):
        for c in range(0, width, cols):
            yield Window(c, r, min(cols, width - c), min(rows, height - r))


def preflight(
    what: str,
    tiles: int,
    height_px: int,
    width_px: int,
    tile_size_px: int,
    output_bytes: int,
    max_tiles: Optional[int],
) -> None:
    """Log the estimate of a pass over a raster and refuse one with more tiles than ``max_tiles``.

    Called with the tile grid's count, before any tile is read (tiles without a valid pixel, skipped later, are
    counted: the estimate is cheap and an upper bound).

    Args:
        what: The pass and its raster, for the messages (``"embedding scene.tif"``).
        tiles: Tiles the pass plans.
        height_px: Height of the raster in model-input pixels (after scaling).
        width_px: Width in model-input pixels.
        tile_size_px: Tile side.
        output_bytes: Size of the uncompressed outputs (cells × bands × bytes per value).
        max_tiles: The limit (:attr:`engine.InferenceSettings.max_tiles`); None: no limit.

    Raises:
        SettingsError: More tiles than ``max_tiles``; the one-line message names the count, the raster size, the
            limit and how to go ahead.
    """
    log.info(
        "pre-flight of %s: %d tiles of %d px to read over %d×%d px, outputs ≈ %s uncompressed",
        what, tiles, tile_size_px, width_px, height_px,
        f"{output_bytes / 1e9:.1f} GB" if output_bytes >= 1e9 else f"{output_bytes / 1e6:.1f} MB",
    )
    if max_tiles is not None and tiles > max_tiles:
        raise SettingsError(
            f"{what}: {tiles:,} tiles of {tile_size_px} px over {width_px:,}×{height_px:,} model-input px exceed the "
            f"limit of {max_tiles:,} tiles (about {max_tiles / 30 / 3600:.1g} h at 30 tiles/s); confirm with --yes on "
            "the command line, or max_tiles=None in Python, or process a --bounds region / a coarser --scale"
        )
