"""Tile planning and overlap blending (pure functions, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.raster import RowBlender, tile_grid, window_weights


def coverage(grid) -> np.ndarray:
    cover = np.zeros((max(grid.height_cells, grid.tile_cells), max(grid.width_cells, grid.tile_cells)), int)
    for r, c in grid:
        cover[r : r + grid.tile_cells, c : c + grid.tile_cells] += 1
    return cover


@pytest.mark.parametrize(
    "height,width,overlap", [(1024, 1024, 32), (627, 603, 0), (603, 627, 64), (100, 300, 32), (224, 224, 32), (16, 16, 0)]
)
def test_every_cell_is_covered_and_tiles_stay_on_the_grid(height: int, width: int, overlap: int) -> None:
    grid = tile_grid(height, width, 224, overlap, 16)
    assert grid.height_cells == -(-height // 16) and grid.width_cells == -(-width // 16)
    cover = coverage(grid)
    assert cover[: grid.height_cells, : grid.width_cells].min() >= 1
    # Last tiles end exactly on the last cell (or the single tile covers a small raster).
    assert grid.row_origins[-1] == max(grid.height_cells - 14, 0)
    assert grid.col_origins[-1] == max(grid.width_cells - 14, 0)
    assert all(b - a <= grid.stride_cells for a, b in zip(grid.row_origins, grid.row_origins[1:]))


def test_tile_count_for_the_demo_scene() -> None:
    # 1024 px at scale 2 → 2048 model px → 128 cells; stride 12 cells → 11 tile rows/cols.
    grid = tile_grid(2048, 2048, 224, 32, 16)
    assert (grid.height_cells, grid.tile_cells, grid.stride_cells) == (128, 14, 12)
    assert len(grid) == 11 * 11


@pytest.mark.parametrize("kwargs", [dict(tile_size_px=200), dict(overlap_px=20), dict(overlap_px=224), dict(tile_size_px=0)])
def test_invalid_settings_are_rejected(kwargs: dict) -> None:
    args = dict(height_px=500, width_px=500, tile_size_px=224, overlap_px=32, patch_size_px=16) | kwargs
    with pytest.raises(ValueError):
        tile_grid(**args)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_window_weights_are_positive_symmetric_and_peak_in_the_centre(kind: str) -> None:
    w = window_weights(14, kind)
    assert w.min() > 0 and np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    assert w[7, 7] == w.max() and w[0, 0] == w.min()


def blend_all(grid, tile_values) -> np.ndarray:
    """Run the blender over a grid, collecting released rows."""
    n = grid.tile_cells
    blender = RowBlender(tile_values(0, 0).shape[0], n, max(grid.width_cells, n))
    rows = []
    for r, c in grid:
        if r > blender.top:
            rows.append(blender.release(r)[0])
        blender.add(tile_values(r, c), np.ones((n, n), np.float32), r, c)
    rows.append(blender.release(blender.top + n)[0])
    return np.concatenate(rows, axis=1)[:, : grid.height_cells, : grid.width_cells]


def test_blending_a_constant_field_leaves_no_seams() -> None:
    grid = tile_grid(1000, 700, 224, 64, 16)
    out = blend_all(grid, lambda r, c: np.full((3, 14, 14), 2.5, np.float32))
    assert out.shape == (3, grid.height_cells, grid.width_cells)
    np.testing.assert_allclose(out, 2.5, rtol=1e-6)


def test_blending_reproduces_a_smooth_field_seen_identically_by_every_tile() -> None:
    grid = tile_grid(900, 900, 224, 96, 16)
    field = np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)
    out = blend_all(grid, lambda r, c: field[:, r : r + 14, c : c + 14])
    np.testing.assert_allclose(out, field[:, : grid.height_cells, : grid.width_cells], rtol=1e-5, atol=1e-6)


def test_blending_weights_the_tile_centre_more_than_its_border() -> None:
    grid = tile_grid(16 * 26, 16 * 14, 224, 32, 16)  # two tile rows overlapping by 2 cells
    out = blend_all(grid, lambda r, c: np.full((1, 14, 14), float(r), np.float32))
    # Cells 12..13 are seen by tile row 0 (its border) and tile row 12 (its border): a mix, never a hard cut.
    assert out[0, 11, 0] == 0 and out[0, 14, 0] == 12
    assert 0 < out[0, 12, 0] < 12 and 0 < out[0, 13, 0] < 12
