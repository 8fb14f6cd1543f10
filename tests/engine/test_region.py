"""Processing regions (bounds and polygons) for embeddings and class maps, on real rasters from ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from engine.errors import InputRasterError
from engine.maps import ClusterSettings, cluster_raster, embed_raster
from engine.models import SmartiesEncoder
from engine.raster import RasterReader, Region, band_statistics
from engine.settings import InferenceSettings
from engine.spectral import resolve_bands
from tests.conftest import LANDSAT7, NAIP, S2_L1C, shared_file

# Scale 1, abutting tiles: a region starting on a tile boundary of the full run sees exactly the same tiles.
SCALE1 = InferenceSettings(batch_size=4, device="cpu", threads=2, scale=1, overlap_px=0)


def pixel_polygon(transform: Affine, corners: list[tuple[float, float]]) -> dict:
    """A Polygon from (col, row) pixel coordinates of a grid, in CRS coordinates."""
    ring = [list(transform * (c, r)) for c, r in corners]
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}


def test_region_window_mask_and_validation() -> None:
    with rasterio.open(shared_file(*S2_L1C)) as ds:  # 10 m pixels, 1024 × 1024
        t, (left, bottom, right, top) = ds.transform, ds.bounds
        # Bounds inside pixels are rounded outward; bounds on pixel edges are kept.
        assert Region(bounds=(left + 15, top - 2995, left + 2001, top - 995)).window(ds) == Window(1, 99, 200, 201)
        assert Region(bounds=(left + 10, top - 3000, left + 2000, top - 1000)).window(ds) == Window(1, 100, 199, 200)
        # Clipped to the raster; an empty region is the whole raster and falsy.
        assert Region(bounds=(left - 500, bottom - 500, left + 100, top + 50)).window(ds) == Window(0, 0, 10, 1024)
        assert Region().window(ds) == Window(0, 0, 1024, 1024) and not Region() and Region(bounds=(0, 0, 1, 1))
        # Geometries' union bounds are intersected with the bounds.
        tri = pixel_polygon(t, [(300, 400), (400.25, 400), (300, 500.25)])  # right triangle, legs 100.25 px
        both = Region(bounds=(left, bottom, left + 3500, top), geometries=[tri])
        assert both.window(ds) == Window(300, 400, 50, 101) and isinstance(both.geometries, tuple)
        # pixel_mask: True where the pixel centre is inside (c + ½ + r + ½ < 100.25 in the triangle's pixel frame).
        win = Region(geometries=[tri]).window(ds)
        mask = both.pixel_mask(window_transform(win, t), (int(win.height), int(win.width)))
        r, c = np.mgrid[0 : int(win.height), 0 : int(win.width)]
        np.testing.assert_array_equal(mask, r + c <= 99)
        assert Region(bounds=(left, bottom, right, top)).pixel_mask(t, (4, 4)) is None
        # Errors name the problem.
        extents = r"does not overlap the raster .*\(440230, 4164720, 450470, 4174960\)"
        with pytest.raises(InputRasterError, match=extents):
            Region(bounds=(0, 0, 100, 100)).window(ds)
    with pytest.raises(InputRasterError, match="left < right"):
        Region(bounds=(10, 0, 5, 100))
    with pytest.raises(InputRasterError, match="four"):
        Region(bounds=(1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(InputRasterError, match="LineString; only Polygon, MultiPolygon"):
        Region(geometries=[{"type": "LineString", "coordinates": [[0, 0], [1, 1]]}])
    with pytest.raises(InputRasterError, match="non-finite"):
        Region(geometries=[{"type": "Polygon", "coordinates": [[[0, 0], [1, float("nan")], [1, 1], [0, 0]]]}])
    with pytest.raises(InputRasterError, match="do not overlap"):
        away = {"type": "Polygon", "coordinates": [[[5, 5], [6, 5], [6, 6], [5, 5]]]}
        Region(bounds=(0, 0, 1, 1), geometries=[away]).extent()


def test_region_embeddings_read_the_window_exactly_and_skip_tiles_outside_polygons(
    random_encoder: SmartiesEncoder, tmp_path: Path
) -> None:
    src_path = shared_file(*S2_L1C)
    with rasterio.open(src_path) as ds:
        t = ds.transform
        left, top = t * (224, 224)
        right, bottom = t * (672, 672)
        box = Region(bounds=(left, bottom, right, top))  # pixels 224..672: tiles 1 and 2 of the full run
        # The reader's virtual raster on the window reproduces the native pixels exactly (scale 1).
        mapping = resolve_bands(ds)
        reader = RasterReader(ds, mapping, band_statistics(ds, mapping), 1.0, "bilinear", box)
        try:
            assert reader.window == Window(224, 224, 448, 448) and reader.transform == t * Affine.translation(224, 224)
            direct = ds.read(mapping.indexes, window=reader.window)
            np.testing.assert_array_equal(reader.view.read(mapping.indexes), direct)
            np.testing.assert_array_equal(reader.view.read_masks(1), ds.read_masks(1, window=reader.window))
        finally:
            reader.close()
    full = embed_raster(src_path, tmp_path / "full.tif", random_encoder, settings=SCALE1)
    part = embed_raster(src_path, tmp_path / "part.tif", random_encoder, settings=SCALE1, region=box)
    assert (part.width, part.height, part.tiles) == (28, 28, 4)
    assert part.transform == t * Affine.translation(224, 224) * Affine.scale(16)
    with rasterio.open(full.path) as f, rasterio.open(part.path) as p:
        np.testing.assert_allclose(p.read(), f.read(window=Window(14, 14, 28, 28)), rtol=1e-4, atol=1e-4)
        tag = json.loads(p.tags()["MSFM_REGION"])
        assert tag["window"] == [224, 224, 448, 448] and tag["bounds"] == list(box.bounds) and tag["geometries"] == []

    # Polygons in the top-left tile (a triangle) and the bottom-right tile (a square) of the box: the two other tiles
    # hold no pixel inside them and are not encoded (NaN cells); pixels outside the polygons are nodata, so cells with
    # < 50 % of their pixels inside are NaN.
    tri = pixel_polygon(t, [(224, 224), (224 + 150.5, 224), (224, 224 + 150.5)])
    square = pixel_polygon(t, [(524.25, 524.25), (672, 524.25), (672, 672), (524.25, 672)])
    both = {"type": "MultiPolygon", "coordinates": [tri["coordinates"], square["coordinates"]]}
    shaped = embed_raster(src_path, tmp_path / "tri.tif", random_encoder, settings=SCALE1,
                          region=Region(geometries=[both]))
    assert shaped.tiles == 2 and (shaped.width, shaped.height) == (28, 28) and shaped.transform == part.transform
    with rasterio.open(shaped.path) as s:
        cells = np.isfinite(s.read()).all(axis=0)
    r, c = np.mgrid[0:28, 0:28]
    in_square = (r >= 19) & (c >= 19)  # pixel centres ≥ 300.5 from the box origin
    assert cells[(16 * (r + c) + 31 < 150.5) | in_square].all()  # cells wholly inside a polygon
    assert not cells[(16 * (r + c) + 1 > 150.5) & ~in_square].any()  # wholly outside (incl. the skipped tiles)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["full.tif", "part.tif", "tri.tif"]


def test_region_errors_leave_nothing(random_encoder: SmartiesEncoder, tmp_path: Path) -> None:
    src_path = shared_file(*LANDSAT7)  # nodata collar in the corners
    with rasterio.open(src_path) as ds:
        t = ds.transform
        left, top = t * (0, 0)
        right, bottom = t * (40, 40)
    with pytest.raises(InputRasterError, match="does not overlap the raster"):
        embed_raster(src_path, tmp_path / "a.tif", random_encoder, settings=SCALE1,
                     region=Region(bounds=(0, 0, 10, 10)))
    with pytest.raises(InputRasterError, match="holds no valid pixel"):
        embed_raster(src_path, tmp_path / "b.tif", random_encoder, settings=SCALE1,
                     region=Region(bounds=(left, bottom, right, top)))
    assert list(tmp_path.iterdir()) == []


def test_cluster_region_covers_the_window_and_masks_outside_polygons(
    random_encoder: SmartiesEncoder, tmp_path: Path
) -> None:
    src_path = shared_file(*NAIP)  # 934 × 723, 5 m
    with rasterio.open(src_path) as ds:
        t = ds.transform
    # A quadrilateral well inside the box; the box's window is 300 × 260 pixels from (100, 50).
    quad = pixel_polygon(t, [(120.3, 60.2), (380.7, 90.1), (360.2, 300.4), (140.6, 280.9)])
    left, top = t * (100, 50)
    right, bottom = t * (400, 310)
    region = Region(bounds=(left, bottom, right, top), geometries=[quad])
    res = cluster_raster(src_path, tmp_path / "c.tif", random_encoder, clustering=ClusterSettings(k=3), sensor="naip_rgbn", settings=SCALE1, region=region, embeddings_output=tmp_path / "emb.tif")
    win = Window(120, 60, 261, 241)  # the quadrilateral's bounds, rounded outward, inside the box
    with rasterio.open(res.path) as cls, rasterio.open(src_path) as src:
        assert (cls.width, cls.height) == (win.width, win.height)
        assert cls.transform == window_transform(win, t) and cls.crs == src.crs
        labels = cls.read(1)
        inside = region.pixel_mask(cls.transform, labels.shape)
        assert (labels[~inside] == 255).all()
        assert (labels[inside] != 255).mean() > 0.95 and set(np.unique(labels[inside])) <= {0, 1, 2, 255}
    # Existing embeddings of the whole raster + the same region → the same output grid; existing region embeddings
    # without a region → their footprint.
    whole = embed_raster(src_path, tmp_path / "whole.tif", random_encoder, sensor="naip_rgbn", settings=SCALE1)
    again = cluster_raster(src_path, tmp_path / "c2.tif", clustering=ClusterSettings(k=3, pixel_method="bilinear"), embeddings=whole.path, region=region)
    footprint = cluster_raster(src_path, tmp_path / "c3.tif", clustering=ClusterSettings(k=3), embeddings=tmp_path / "emb.tif")
    with rasterio.open(again.path) as a, rasterio.open(footprint.path) as f, rasterio.open(tmp_path / "emb.tif") as e:
        assert (a.transform, a.shape) == (window_transform(win, t), (win.height, win.width))
        assert (a.read(1)[~inside] == 255).all()
        # The region embeddings start at the window origin and cover it up to whole cells (clipped to the raster).
        assert e.transform == window_transform(win, t) * Affine.scale(16)
        assert f.transform == window_transform(win, t)
        assert f.shape == (min(e.height * 16, 723 - 60), min(e.width * 16, 934 - 120))
