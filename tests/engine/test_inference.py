"""Streaming tiled inference and clustering on real rasters from ../shared/data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from engine.errors import BandResolutionError, InferenceCancelled, InputRasterError, SettingsError
from engine.maps import ClusterSettings, cluster_raster, embed_raster
from engine.models import SmartiesEncoder
from engine.settings import InferenceSettings
from tests.conftest import L8, LANDSAT7, NAIP, S2_L1C, VEGAS_PAN, WV2_BGRN, shared_file

FAST = InferenceSettings(batch_size=4, device="cpu", threads=2)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_embeddings_are_georeferenced_like_the_input(random_encoder: SmartiesEncoder, tmp_path: Path) -> None:
    src_path = shared_file(*L8)  # 627 × 603: no multiple of anything
    res = embed_raster(src_path, tmp_path / "emb.tif", random_encoder, settings=FAST)
    with rasterio.open(src_path) as src, rasterio.open(res.path) as emb:
        assert emb.crs == src.crs
        cell = 16 / res.scale  # native pixels per cell (scale 2 for Landsat → 8)
        assert emb.transform == src.transform * Affine.scale(cell)
        assert (emb.width, emb.height) == (math.ceil(src.width * res.scale / 16), math.ceil(src.height * res.scale / 16))
        assert emb.count == 64 and emb.descriptions[0] == "emb_000"
        # The cell grid covers the input exactly (up to the last partial cell).
        assert emb.bounds.left == src.bounds.left and emb.bounds.top == src.bounds.top
        assert 0 <= emb.bounds.right - src.bounds.right < cell * src.res[0]
        data = emb.read()
        assert np.isfinite(data).all()
        assert emb.tags()["MSFM_SENSOR"] == "landsat8_oli_tirs"
    assert leftovers(tmp_path) == ["emb.tif"]


def test_nodata_collar_is_carried_to_embeddings_and_classes(random_encoder: SmartiesEncoder, tmp_path: Path) -> None:
    src_path = shared_file(*LANDSAT7)  # rotated footprint, nodata 0 collar
    res = cluster_raster(src_path, tmp_path / "classes.tif", random_encoder, clustering=ClusterSettings(k=4, resolution="pixel"), embeddings_output=tmp_path / "emb.tif", settings=FAST)
    with rasterio.open(src_path) as src, rasterio.open(res.path) as cls, rasterio.open(tmp_path / "emb.tif") as emb:
        nodata = ~(src.read_masks() > 0).all(axis=0)
        labels = cls.read(1)
        assert (cls.width, cls.height, cls.crs, cls.transform) == (src.width, src.height, src.crs, src.transform)
        assert cls.nodata == 255 and cls.dtypes[0] == "uint8"
        assert (labels[nodata] == 255).all()
        assert set(np.unique(labels[~nodata])) <= set(range(4)) and len(np.unique(labels[~nodata])) == 4
        assert len(cls.colormap(1)) >= 4
        grid = emb.read(1)
        assert np.isnan(grid[0, 0]) and np.isnan(grid[-1, -1])  # corners are collar
        assert np.isfinite(grid[grid.shape[0] // 2, grid.shape[1] // 2])
    assert (tmp_path / "classes.qml").read_text().count("paletteEntry") == 4
    assert sum(res.class_fractions) == pytest.approx(1.0)


def test_geographic_crs_input_and_patch_resolution(random_encoder: SmartiesEncoder, tmp_path: Path) -> None:
    src_path = shared_file(*VEGAS_PAN)  # EPSG:4326, 1300 × 1300, single pan band
    res = cluster_raster(src_path, tmp_path / "classes.tif", random_encoder, clustering=ClusterSettings(k=3, resolution="patch"), settings=FAST)
    with rasterio.open(src_path) as src, rasterio.open(res.path) as cls:
        assert cls.crs == src.crs and cls.crs.is_geographic
        assert cls.width == math.ceil(src.width / 16)
        assert cls.transform == src.transform * Affine.scale(16)
    assert res.embeddings is not None and not res.embeddings.path.exists()  # temporary embeddings removed
    assert leftovers(tmp_path) == ["classes.qml", "classes.tif"]


def constant_raster(path: Path, value: int, size: int = 400) -> Path:
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(1, 0, 500000, 0, -1, 5000000))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((3, size, size), value, np.uint8))
        dst.descriptions = ("red", "green", "blue")
    return path


def boundary_jump_ratio(grid: np.ndarray, boundaries: list[int]) -> float:
    """Mean |Δ| between neighbouring cell columns across tile borders ÷ the same inside tiles."""
    diffs = np.abs(np.diff(grid, axis=2)).mean(axis=(0, 1))  # per column gap
    at = np.zeros(diffs.shape, bool)
    at[[b - 1 for b in boundaries]] = True
    return float(diffs[at].mean() / diffs[~at].mean())


def test_blending_leaves_no_seams_on_a_constant_input(random_encoder: SmartiesEncoder, tmp_path: Path) -> None:
    src = constant_raster(tmp_path / "const.tif", 120, size=448)  # 28 cells: tiles at 0 and 14 abut
    # A constant raster is refused (nothing to map, issue 14): the bottom half is 121, so the content still does not
    # change along x, the direction the seams are measured in (and each tile of the hard cut is still constant).
    with rasterio.open(src, "r+") as ds:
        ds.write(np.full((3, 224, 448), 121, np.uint8), window=Window(0, 224, 448, 224))
    # Position embeddings make tokens vary inside a tile; a tile border must not add a jump on top of that.
    blended = embed_raster(src, tmp_path / "blend.tif", random_encoder,
                           settings=InferenceSettings(overlap_px=96, device="cpu"))
    cut = embed_raster(src, tmp_path / "cut.tif", random_encoder, settings=InferenceSettings(overlap_px=0, device="cpu"))
    with rasterio.open(blended.path) as b, rasterio.open(cut.path) as c:
        ratio_blend = boundary_jump_ratio(b.read(), [8, 14, 22])  # tiles at 0, 8, 14 (96 px overlap)
        ratio_cut = boundary_jump_ratio(c.read(), [14])  # abutting tiles
    assert ratio_cut > 3.0  # a hard cut is a visible seam …
    assert ratio_blend < 1.5  # … blending removes it


def test_raster_smaller_than_a_tile_is_padded(random_encoder: SmartiesEncoder, tmp_path: Path) -> None:
    src_path = shared_file(*WV2_BGRN)  # 300 × 300 at scale 1 < …
    small = tmp_path / "small.tif"
    with rasterio.open(src_path) as src:
        profile = src.profile | dict(width=100, height=70, tiled=False)
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(small, "w", **profile) as dst:
            dst.write(src.read(window=((0, 70), (0, 100))))
            dst.descriptions = src.descriptions
            for i in range(1, src.count + 1):
                dst.update_tags(i, **src.tags(i))
    res = embed_raster(small, tmp_path / "emb.tif", random_encoder, settings=FAST)
    assert (res.width, res.height, res.tiles) == (7, 5, 1)
    with rasterio.open(res.path) as emb:
        assert np.isfinite(emb.read()).all()


def test_cancel_mid_run_leaves_nothing(random_encoder: SmartiesEncoder, tmp_path: Path) -> None:
    src_path = shared_file(*S2_L1C)
    calls = []

    def cancel_on_third_batch() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(InferenceCancelled):
        cluster_raster(src_path, tmp_path / "classes.tif", random_encoder, clustering=ClusterSettings(k=4), embeddings_output=tmp_path / "emb.tif", settings=FAST, is_canceled=cancel_on_third_batch)
    assert len(calls) == 3
    assert leftovers(tmp_path) == []


def test_progress_reaches_one_and_is_monotonic(random_encoder: SmartiesEncoder, tmp_path: Path) -> None:
    seen: list[float] = []
    embed_raster(shared_file(*NAIP), tmp_path / "e.tif", random_encoder,
                 sensor="naip_rgbn", settings=FAST, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 1


def test_bad_inputs_give_clear_errors_and_no_output(random_encoder: SmartiesEncoder, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # Unresolvable bands (NAIP has no descriptions or wavelengths): the message names the band and the fix.
    with pytest.raises(BandResolutionError, match=r"band 1.*--sensor naip_rgbn"):
        embed_raster(shared_file(*NAIP), out / "a.tif", random_encoder, settings=FAST)
    # All nodata.
    empty = constant_raster(tmp_path / "empty.tif", 0, 64)
    with rasterio.open(empty, "r+") as ds:
        ds.nodata = 0
    with pytest.raises(InputRasterError, match="nodata"):
        embed_raster(empty, out / "b.tif", random_encoder, settings=FAST)
    # Corrupt file.
    corrupt = tmp_path / "corrupt.tif"
    whole = shared_file(*S2_L1C).read_bytes()
    corrupt.write_bytes(whole[: len(whole) // 2])  # truncated download
    with pytest.raises(InputRasterError, match="cannot read"):
        embed_raster(corrupt, out / "c.tif", random_encoder, settings=FAST)
    # Bad k.
    with pytest.raises(SettingsError, match="k must be"):
        cluster_raster(empty, out / "d.tif", random_encoder, clustering=ClusterSettings(k=1))
    assert leftovers(out) == []


@pytest.mark.slow  # pixel-resolution embeddings and two class maps of the Landsat-7 scene: ~3 s
def test_pixel_resolution_outputs_follow_the_input_grid(random_encoder: SmartiesEncoder, tmp_path: Path) -> None:
    from engine.maps import write_pixel_embeddings

    src_path = shared_file(*LANDSAT7)
    emb = embed_raster(src_path, tmp_path / "emb.tif", random_encoder, settings=FAST)
    pix = write_pixel_embeddings(src_path, emb.path, tmp_path / "pix.tif", output_dtype="float16")
    patch = cluster_raster(src_path, tmp_path / "patch.tif", clustering=ClusterSettings(k=5, resolution="patch"), embeddings=emb.path)
    guided = cluster_raster(src_path, tmp_path / "guided.tif", clustering=ClusterSettings(k=5, resolution="pixel"), embeddings=emb.path)
    with rasterio.open(src_path) as src, rasterio.open(pix) as p, rasterio.open(patch.path) as pc, \
            rasterio.open(guided.path) as gc, rasterio.open(emb.path) as e:
        nodata = ~(src.read_masks() > 0).all(axis=0)
        assert (p.shape, p.transform, p.count) == (src.shape, src.transform, 64)
        values = p.read()
        assert np.isnan(values[:, nodata]).all() and np.isfinite(values[:, ~nodata]).mean() > 0.99
        # Bilinear interpolation between cell centres: pixel (8 r + 8, 8 c + 8) of a 16-px cell lies 1/32 cell right
        # of and below the centre of cell (r, c).
        cell = int(16 / emb.scale)
        r, c, t = 30, 40, 0.5 / cell
        g = e.read()
        expected = (1 - t) ** 2 * g[:, r, c] + t * (1 - t) * (g[:, r, c + 1] + g[:, r + 1, c]) + t * t * g[:, r + 1, c + 1]
        np.testing.assert_allclose(values[:, r * cell + cell // 2, c * cell + cell // 2], expected,
                                   rtol=2e-3, atol=2e-2)  # float16 storage
        # Joint bilateral upsampling only picks classes present in the 3 × 3 cells around a pixel.
        cells, pixels = pc.read(1), gc.read(1)
        for y, x in np.random.default_rng(0).integers(0, [src.height, src.width], size=(300, 2)):
            if pixels[y, x] == 255:
                assert nodata[y, x] or cells[y // cell, x // cell] == 255
                continue
            cy, cx = int((y + 0.5) / cell), int((x + 0.5) / cell)
            around = cells[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2]
            assert pixels[y, x] in around
        assert (pixels[nodata] == 255).all()
