"""Similarity maps on real rasters from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from engine.errors import InferenceCancelled, InputRasterError, SettingsError
from engine.maps import embed_raster, similarity_raster
from engine.models import SmartiesEncoder
from engine.raster import Region
from engine.settings import InferenceSettings
from tests.conftest import NAIP, S2_L1C, shared_file

SCALE1 = InferenceSettings(batch_size=4, device="cpu", threads=2, scale=1, overlap_px=0)


def point(transform: Affine, col: float, row: float) -> dict:
    return {"type": "Point", "coordinates": list(transform * (col, row))}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_point_on_water_is_more_similar_to_other_water_than_to_land(
    demo_model: SmartiesEncoder, tmp_path: Path
) -> None:
    src_path = shared_file(*S2_L1C)  # lagoon, barrier island, ocean, farmland
    with rasterio.open(src_path) as ds:
        t = ds.transform
        win = Window(128, 256, 448, 448)  # 40 % water: 4 tiles at scale 1
        green, nir = (ds.read(ds.descriptions.index(b) + 1, window=win).astype(float) for b in ("B03", "B08"))
    water = (green - nir) / np.maximum(green + nir, 1) > 0  # NDWI > 0 (McFeeters 1996)
    assert 0.3 < water.mean() < 0.5
    assert water[192:208, 416:432].all()  # the query point's cell (16 × 16 px from the window origin) is open water
    (left, top), (right, bottom) = t * (128, 256), t * (576, 704)
    seen: list[float] = []
    res = similarity_raster(
        src_path, tmp_path / "sim.tif", demo_model, query=[point(t, 128 + 416, 256 + 200)],
        settings=SCALE1, region=Region(bounds=(left, bottom, right, top)), progress=seen.append,
    )
    assert res.query_cells == 1 and res.resolution == "pixel" and res.embeddings is not None
    assert seen == sorted(seen) and seen[-1] == 1.0
    with rasterio.open(res.path) as sim:
        assert sim.transform == window_transform(win, t) and sim.shape == (448, 448) and sim.count == 1
        assert sim.dtypes[0] == "float32" and np.isnan(sim.nodata) and sim.descriptions == ("cosine_similarity",)
        assert sim.tags()["MSFM_KIND"] == "similarity" and sim.tags()["MSFM_QUERY_CELLS"] == "1"
        s = sim.read(1)
    assert np.isfinite(s).all() and -1 <= s.min() and s.max() <= 1
    assert res.value_range == (pytest.approx(float(s.min())), pytest.approx(float(s.max())))
    water_mean, land_mean = float(s[water].mean()), float(s[~water].mean())
    assert water_mean > land_mean + 0.5, (water_mean, land_mean)  # measured 0.95 vs 0.19
    # Most water pixels are more similar to the query than most land pixels.
    assert np.median(s[water]) > np.percentile(s[~water], 90)
    assert leftovers(tmp_path) == ["sim.qml", "sim.tif"]  # temporary embeddings removed; QGIS's style beside it
    style = res.style.read_text()
    assert res.style == tmp_path / "sim.qml" and 'type="singlebandpseudocolor"' in style
    assert f'minimumValue="{res.value_range[0]:.6g}"' in style and 'color="#fde725"' in style  # Viridis up to max


@pytest.fixture(scope="module")
def naip_embeddings(tmp_path_factory: pytest.TempPathFactory, random_encoder: SmartiesEncoder) -> Path:
    out = tmp_path_factory.mktemp("emb") / "emb.tif"
    return embed_raster(shared_file(*NAIP), out, random_encoder, sensor="naip_rgbn",
                        settings=SCALE1).path


def test_polygon_query_on_existing_embeddings_at_patch_resolution(naip_embeddings: Path, tmp_path: Path) -> None:
    src_path = shared_file(*NAIP)
    with rasterio.open(naip_embeddings) as emb:
        g, gt, crs = emb.read(), emb.transform, emb.crs
    # Cells 2..4 × 5..6 have their centres inside this rectangle; a tiny polygon inside cell (10, 20) is smaller
    # than a cell and takes the one cell it touches; a point in cell (10, 20) adds no new cell.
    rect = {"type": "Polygon", "coordinates": [[list(gt * xy) for xy in
                                                 [(5.2, 2.2), (6.8, 2.2), (6.8, 4.8), (5.2, 4.8), (5.2, 2.2)]]]}
    tiny = {"type": "Polygon", "coordinates": [[list(gt * xy) for xy in
                                                 [(20.1, 10.1), (20.3, 10.1), (20.3, 10.3), (20.1, 10.1)]]]}
    res = similarity_raster(src_path, tmp_path / "sim.tif", query=[rect, tiny, point(gt, 20.6, 10.6)],
                            embeddings=naip_embeddings, resolution="patch")
    assert res.query_cells == 7 and res.embeddings is None
    cells = [(r, c) for r in (2, 3, 4) for c in (5, 6)] + [(10, 20)]
    vectors = np.stack([g[:, r, c] / np.linalg.norm(g[:, r, c]) for r, c in cells])
    q = vectors.mean(axis=0)
    q /= np.linalg.norm(q)
    with rasterio.open(res.path) as sim:
        assert (sim.transform, sim.shape, sim.crs) == (gt, g.shape[1:], crs)
        assert sim.tags()["MSFM_RESOLUTION"] == "patch" and sim.tags()["MSFM_EMBEDDINGS"] == str(naip_embeddings)
        s = sim.read(1)
    expected = np.einsum("dhw,d->hw", g, q) / np.linalg.norm(g, axis=0)
    np.testing.assert_allclose(s, expected, atol=1e-5)


def test_bad_queries_and_cancel_give_clear_errors_and_no_output(naip_embeddings: Path, tmp_path: Path) -> None:
    src_path = shared_file(*NAIP)
    far = {"type": "Point", "coordinates": [0.0, 0.0]}
    with pytest.raises(InputRasterError, match=r"outside the raster or on nodata.*1: Point \[0\.0, 0\.0\].*cover \("):
        similarity_raster(src_path, tmp_path / "a.tif", query=[far], embeddings=naip_embeddings)
    with pytest.raises(InputRasterError, match="LineString"):
        similarity_raster(src_path, tmp_path / "b.tif", embeddings=naip_embeddings,
                          query=[{"type": "LineString", "coordinates": [[0, 0], [1, 1]]}])
    with pytest.raises(InputRasterError, match="query is empty"):
        similarity_raster(src_path, tmp_path / "c.tif", query=[], embeddings=naip_embeddings)
    with pytest.raises(SettingsError, match="resolution"):
        similarity_raster(src_path, tmp_path / "d.tif", query=[far], embeddings=naip_embeddings, resolution="cell")
    with rasterio.open(naip_embeddings) as emb:
        q = [point(emb.transform, 3.5, 3.5)]
    calls: list[int] = []
    with pytest.raises(InferenceCancelled):
        similarity_raster(src_path, tmp_path / "e.tif", query=q, embeddings=naip_embeddings,
                          is_canceled=lambda: calls.append(1) or len(calls) >= 3)
    assert leftovers(tmp_path) == []
