"""Tiles without a valid pixel are not encoded; a run over too many tiles is refused before it starts; tile sizes are
bounded.

Real data only: the Sentinel-2 L1C Virginia scene (1024² px, nodata 0) copied into ``tmp_path`` with everything but one
64² block set to nodata.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from engine.errors import SettingsError
from engine.maps import embed_raster
from engine.raster import RasterReader, tile_grid
from engine.segmentation import ClassInfo, build_head, segment_raster
from engine.settings import InferenceSettings

from ..conftest import S2_L1C, shared_file

#: Scale 1 (native pixels: the block's tiles are known exactly), 224-px tiles with 32-px overlap: a 6 × 6 grid.
FAST = InferenceSettings(tile_size_px=224, overlap_px=32, batch_size=4, scale=1.0, threads=2)
#: The block of real data left in the sparse copy: rows, columns (native pixels).
BLOCK = (slice(400, 464), slice(600, 664))


@pytest.fixture(scope="module")
def sparse_s2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the Virginia scene that is nodata (0) everywhere but :data:`BLOCK`."""
    with rasterio.open(shared_file(*S2_L1C)) as src:
        profile, data, descriptions = src.profile, src.read(), src.descriptions
    assert profile["nodata"] == 0
    sparse = np.zeros_like(data)
    sparse[(slice(None), *BLOCK)] = data[(slice(None), *BLOCK)]
    assert (sparse[(slice(None), *BLOCK)] > 0).all()  # the block is all valid in the real scene
    path = tmp_path_factory.mktemp("sparse") / "s2_one_block.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(sparse)
        dst.descriptions = descriptions
    return path


def _block_tiles(settings: InferenceSettings, size_px: int = 1024, patch: int = 16) -> tuple[int, int]:
    """``(tiles of the grid touching BLOCK, tiles of the grid)`` at scale 1."""
    grid = tile_grid(size_px, size_px, settings.tile_size_px, settings.overlap_px, patch)
    t = settings.tile_size_px
    rows, cols = BLOCK
    touching = [(r, c) for r, c in grid
                if r * patch < rows.stop and r * patch + t > rows.start and c * patch < cols.stop
                and c * patch + t > cols.start]
    return len(touching), len(grid)


def _keep_every_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's behaviour before nodata skipping: every tile of the grid is encoded."""
    monkeypatch.setattr("engine.raster.tile_reader.has_valid_pixel", lambda valid: np.ones(len(valid), bool))


def test_only_the_tiles_touching_data_are_encoded_and_their_cells_are_unchanged(
        tmp_path: Path, sparse_s2: Path, demo_model, monkeypatch: pytest.MonkeyPatch) -> None:
    touching, planned = _block_tiles(FAST)
    assert (touching, planned) == (4, 36)  # the block straddles two tile rows and two tile columns
    import engine.maps.embeddings as embeddings

    batches: list[int] = []
    real_encoder = embeddings.grid_encoder

    def counting_encoder(model, settings, bands):
        encode, device = real_encoder(model, settings, bands)
        return (lambda x, projections: batches.append(len(x)) or encode(x, projections)), device

    monkeypatch.setattr(embeddings, "grid_encoder", counting_encoder)
    skipped = embed_raster(sparse_s2, tmp_path / "skipped.tif", demo_model, settings=FAST)
    assert (skipped.tiles, skipped.skipped_tiles) == (touching, planned - touching)
    assert batches == [4]  # the 4 tiles came from two read batches and were regrouped into one full batch

    _keep_every_tile(monkeypatch)
    every = embed_raster(sparse_s2, tmp_path / "every.tif", demo_model, settings=FAST)
    assert (every.tiles, every.skipped_tiles) == (planned, 0)

    with rasterio.open(skipped.path) as a, rasterio.open(every.path) as b:
        ours, theirs = a.read(), b.read()
        assert (a.transform, a.shape) == (b.transform, b.shape)
    valid = np.isfinite(theirs[0])
    assert valid.sum() == 4 * 5  # 16-px cells: rows 25–28, columns 37–41 (the edge columns are half valid)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))  # nodata cells stay nodata, exactly
    np.testing.assert_allclose(ours[:, valid], theirs[:, valid], rtol=0, atol=1e-5)


def test_segmentation_skips_nodata_tiles_with_the_same_class_map(
        tmp_path: Path, sparse_s2: Path, demo_model, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    classes = [ClassInfo(i, f"c{i}", (60 * i, 0, 0, 255), i) for i in range(3)]
    head = build_head("linear", demo_model, classes, encoder={"name": "smarties-demo-tiny"}).eval()
    touching, planned = _block_tiles(FAST)
    skipped = segment_raster(sparse_s2, tmp_path / "skipped.tif", head, demo_model, settings=FAST,
                             probabilities_output=tmp_path / "p_skipped.tif")
    assert (skipped.tiles, skipped.skipped_tiles) == (touching, planned - touching)
    _keep_every_tile(monkeypatch)
    every = segment_raster(sparse_s2, tmp_path / "every.tif", head, demo_model, settings=FAST,
                           probabilities_output=tmp_path / "p_every.tif")
    assert (every.tiles, every.skipped_tiles) == (planned, 0)
    a, b = (rasterio.open(tmp_path / name).read(1) for name in ("skipped.tif", "every.tif"))
    assert (b != 255).sum() == 64 * 64  # exactly the block's pixels are classified
    np.testing.assert_array_equal(a, b)
    pa, pb = (rasterio.open(tmp_path / name).read() for name in ("p_skipped.tif", "p_every.tif"))
    np.testing.assert_array_equal(np.isfinite(pa), np.isfinite(pb))
    np.testing.assert_allclose(pa[:, b != 255], pb[:, b != 255], rtol=0, atol=1e-5)


def test_too_many_tiles_are_refused_before_a_tile_is_read(tmp_path: Path, demo_model,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.maps.embeddings as embeddings

    calls: list[str] = []
    read = RasterReader.read
    monkeypatch.setattr(RasterReader, "read", lambda self, *a: calls.append("read") or read(self, *a))
    monkeypatch.setattr(embeddings, "grid_encoder", lambda *a: calls.append("encoder") or pytest.fail("encoded"))
    src = shared_file(*S2_L1C)
    limited = InferenceSettings(tile_size_px=224, overlap_px=32, scale=1.0, threads=2, max_tiles=35)
    with pytest.raises(SettingsError) as err:
        embed_raster(src, tmp_path / "e.tif", demo_model, settings=limited)
    message = str(err.value)
    assert "\n" not in message and "36 tiles" in message and "1,024×1,024" in message and "limit of 35" in message
    assert "--yes" in message and "max_tiles=None" in message and "--bounds" in message and "--scale" in message
    head = build_head("linear", demo_model, [ClassInfo(i, f"c{i}", (i, i, i, 255), i) for i in range(2)],
                      encoder={"name": "smarties-demo-tiny"})
    with pytest.raises(SettingsError, match="72 tiles .* limit of 35"):  # two shifted passes of 36 tiles
        segment_raster(src, tmp_path / "s.tif", head, demo_model, settings=limited, shifts=2)
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_the_command_line_refuses_a_huge_run_and_goes_ahead_with_yes(tmp_path: Path, capsys,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.cli import main

    src = str(shared_file(*S2_L1C))
    # the real default limit: 16-px tiles at scale 20 are 1280² = 1.6 M tiles; refused at once, nothing written
    assert main(["embed", src, str(tmp_path / "huge.tif"), "--scale", "20", "--tile-size-px", "16",
                 "--overlap-px", "0"]) == 2
    err = capsys.readouterr().err
    assert "1,638,400 tiles" in err and "20,480×20,480" in err and "limit of 100,000" in err and "--yes" in err
    assert not (tmp_path / "huge.tif").exists()
    # --yes lifts the limit (a 2-tile limit stands in for the default, so that the confirmed run is short)
    import engine.cli.options as options

    monkeypatch.setattr(options, "InferenceSettings", functools.partial(InferenceSettings, max_tiles=2))
    with rasterio.open(src) as ds:
        left, top = ds.transform * (256, 256)
        right, bottom = ds.transform * (256 + 448, 256 + 448)
    args = ["embed", src, str(tmp_path / "e.tif"), "--scale", "1", "--overlap-px", "0", "--threads", "2",
            "--bounds", *map(str, (left, bottom, right, top))]
    assert main(args) == 2
    assert "4 tiles" in capsys.readouterr().err
    assert main([*args, "--yes"]) == 0
    assert "4 tiles (0 nodata skipped)" in capsys.readouterr().out
    assert (tmp_path / "e.tif").exists()


def test_tile_size_and_max_tiles_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"at most 1024, got 1040: attention memory .* 4096 tokens"):
        InferenceSettings(tile_size_px=1040)
    assert InferenceSettings(tile_size_px=1024).tile_size_px == 1024
    with pytest.raises(SettingsError, match="max_tiles"):
        InferenceSettings(max_tiles=0)
    assert InferenceSettings(max_tiles=None).max_tiles is None
    from engine.cli import main

    assert main(["embed", str(shared_file(*S2_L1C)), str(tmp_path / "e.tif"), "--tile-size-px", "1040"]) == 2
