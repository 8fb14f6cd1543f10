"""The spine of the engine on the committed tiny raster, with the bundled model: runs in a clone without ../shared.

Raster: ``tests/data/s2_l1c_virginia_13band_10m_96x128.tif`` (tests/data/README.md), 96 × 128 px of the demo scene,
13 Sentinel-2 L1C bands, a lagoon shore with ~42 % open water. Reference for water: the raster's own NDWI > 0
(McFeeters 1996), never a hard-coded outcome. Model: ``smarties-demo-tiny`` (D = 192) on the CPU, at the sensor's
default scale 2 (8 native pixels per 16-px patch, so a 12 × 16-cell grid and two 224-px tiles).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from scipy.ndimage import minimum_filter

from engine.errors import InferenceCancelled
from engine.maps import ClusterSettings, cluster_raster, embed_raster, similarity_raster
from engine.models import export_encoder, load_model
from engine.segmentation import HeadFitSettings, PolygonLabels, fit_head, segment_raster
from engine.settings import InferenceSettings
from engine.spectral import resolve_bands
from tests.conftest import TINY_S2, ndwi_water, water_iou

CPU = InferenceSettings(device="cpu", threads=2, precision="fp32")  # fp32: compared with the ONNX export below
S2_NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
#: Native pixels per embedding cell at the Sentinel-2 default scale 2.
CELL = 8


def leftovers(folder: Path) -> list[str]:
    """Every file in ``folder`` (hidden ones too: a ``.name.msfm-partial-…`` folder would show here)."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def scene() -> dict[str, Any]:
    """The tiny raster's grid and its NDWI water mask."""
    with rasterio.open(TINY_S2) as src:
        bands = list(src.descriptions)
        green, red, nir = (src.read(bands.index(b) + 1).astype(np.float64) for b in ("B03", "B04", "B08"))
        grid = {"crs": src.crs, "transform": src.transform, "shape": src.shape}
    ndwi = (green - nir) / np.maximum(green + nir, 1)
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    return {**grid, "water": ndwi_water(green, nir), "ndwi": ndwi, "ndvi": ndvi}


@pytest.fixture(scope="module")
def embeddings(demo_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Embeddings of the tiny raster (``EmbeddingResult``), in a folder of their own."""
    return embed_raster(TINY_S2, tmp_path_factory.mktemp("emb") / "emb.tif", demo_model, settings=CPU)


def test_tiny_raster_is_the_documented_crop_of_the_demo_scene(scene: dict) -> None:
    """tests/data/make_data.py's window of demo/: same pixels, bands, tags, CRS; the transform moved to the window."""
    from tests.data.make_data import SOURCE, WINDOW

    with rasterio.open(SOURCE) as demo, rasterio.open(TINY_S2) as tiny:
        assert (tiny.height, tiny.width, tiny.count, tiny.dtypes[0], tiny.nodata) == (96, 128, 13, "uint16", 0)
        np.testing.assert_array_equal(tiny.read(), demo.read(window=WINDOW))
        assert tiny.crs == demo.crs and tiny.transform == demo.transform * Affine.translation(512, 176)
        assert list(tiny.descriptions) == list(demo.descriptions) == S2_NAMES
        assert [tiny.tags(i) for i in range(1, 14)] == [demo.tags(i) for i in range(1, 14)]
        assert tiny.tags()["source"].startswith(demo.tags()["source"])
    assert 0.35 < scene["water"].mean() < 0.5  # water and land


def test_bands_resolve_to_the_sentinel2_l1c_preset() -> None:
    mapping = resolve_bands(TINY_S2)
    assert mapping.sensor == "sentinel2_l1c"
    assert mapping.indexes == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13]
    assert [b.description for b in mapping.bands] == [n for n in S2_NAMES if n != "B10"]
    assert [d.description for d in mapping.dropped] == ["B10"]


def test_embeddings_are_georeferenced_like_the_input(embeddings: Any, scene: dict) -> None:
    assert (embeddings.scale, embeddings.tiles, embeddings.embed_dim) == (2.0, 2, 192)
    with rasterio.open(embeddings.path) as emb:
        assert emb.crs == scene["crs"] and emb.transform == scene["transform"] * Affine.scale(CELL)
        assert emb.shape == (96 // CELL, 128 // CELL) and emb.count == 192
        assert np.isfinite(emb.read()).all()
        assert emb.tags()["MSFM_SENSOR"] == "sentinel2_l1c" and emb.tags()["MSFM_MODEL"] == "smarties-demo-tiny"
    assert leftovers(embeddings.path.parent) == ["emb.tif"]


def test_kmeans_class_map_separates_water_from_land(embeddings: Any, scene: dict, tmp_path: Path) -> None:
    res = cluster_raster(TINY_S2, tmp_path / "classes.tif", clustering=ClusterSettings(k=3, resolution="pixel"),
                         embeddings=embeddings.path)
    with rasterio.open(res.path) as cls:
        assert (cls.crs, cls.transform, cls.shape) == (scene["crs"], scene["transform"], scene["shape"])
        assert cls.dtypes[0] == "uint8" and cls.nodata == 255
        labels = cls.read(1)
    assert set(np.unique(labels)) == {0, 1, 2}  # no nodata in the crop
    assert sum(res.class_fractions) == pytest.approx(1.0)
    # Every unsupervised class, named water or land by majority, agrees with the NDWI water mask (measured 0.98).
    assert water_iou(labels, scene["water"]) > 0.9
    assert leftovers(tmp_path) == ["classes.qml", "classes.tif"]


def test_similarity_to_a_water_point_is_high_on_water_only(embeddings: Any, scene: dict, tmp_path: Path) -> None:
    clear = minimum_filter(scene["ndwi"], 9)  # open water well away from the shore
    row, col = np.unravel_index(np.argmax(clear), clear.shape)
    x, y = scene["transform"] * (col + 0.5, row + 0.5)
    res = similarity_raster(TINY_S2, tmp_path / "sim.tif", query=[{"type": "Point", "coordinates": [x, y]}],
                            embeddings=embeddings.path)
    assert res.query_cells == 1 and res.resolution == "pixel"
    with rasterio.open(res.path) as sim:
        assert (sim.crs, sim.transform, sim.shape) == (scene["crs"], scene["transform"], scene["shape"])
        assert sim.tags()["MSFM_KIND"] == "similarity"
        s = sim.read(1)
    water = scene["water"]
    assert np.isfinite(s).all() and -1 - 1e-5 <= s.min() and s.max() <= 1 + 1e-5
    assert s[water].mean() > s[~water].mean() + 0.5  # measured 0.98 vs −0.23
    assert np.median(s[water]) > np.percentile(s[~water], 95)
    assert leftovers(tmp_path) == ["sim.qml", "sim.tif"]


def test_nodata_pixels_stay_nodata_and_their_cells_empty(demo_model: Any, scene: dict, tmp_path: Path) -> None:
    """A 40 × 56-px nodata block (5 × 7 whole cells) in the top-left corner: NaN cells, class 255, nothing else."""
    holed = tmp_path / "holed.tif"
    with rasterio.open(TINY_S2) as src:
        data = src.read()
        data[:, :40, :56] = 0
        with rasterio.open(holed, "w", **src.profile) as dst:
            dst.write(data)
            dst.descriptions = src.descriptions
            for i in range(1, src.count + 1):
                dst.update_tags(i, **src.tags(i))
    out = tmp_path / "out"
    out.mkdir()
    res = cluster_raster(holed, out / "classes.tif", demo_model, clustering=ClusterSettings(k=3, resolution="pixel"),
                         embeddings_output=out / "emb.tif", settings=CPU)
    hole = np.zeros(scene["shape"], bool)
    hole[:40, :56] = True
    with rasterio.open(res.path) as cls, rasterio.open(out / "emb.tif") as emb:
        labels = cls.read(1)
        cells = np.isfinite(emb.read()).all(axis=0)
    assert (labels[hole] == 255).all() and (labels[~hole] != 255).all()
    expected = np.ones((96 // CELL, 128 // CELL), bool)
    expected[: 40 // CELL, : 56 // CELL] = False
    np.testing.assert_array_equal(cells, expected)
    assert water_iou(labels, scene["water"]) > 0.9  # nodata is left out of the classes, not a class of its own
    assert leftovers(out) == ["classes.qml", "classes.tif", "emb.tif"]


def test_cancelled_run_leaves_no_file(demo_model: Any, tmp_path: Path) -> None:
    calls: list[int] = []

    def cancel_on_second_batch() -> bool:
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(InferenceCancelled):
        cluster_raster(TINY_S2, tmp_path / "classes.tif", demo_model, clustering=ClusterSettings(k=3),
                       embeddings_output=tmp_path / "emb.tif", settings=InferenceSettings(device="cpu", batch_size=1),
                       is_canceled=cancel_on_second_batch)
    assert len(calls) == 2
    assert leftovers(tmp_path) == []  # neither output nor a temporary file


def test_linear_head_from_ndwi_boxes_segments_water_and_land(demo_model: Any, scene: dict, tmp_path: Path) -> None:
    """Four 6 × 6-px boxes of clear water and four of clear vegetation train a linear head that maps every clear
    pixel of the crop to its class."""
    water, land = minimum_filter(scene["ndwi"], 9) > 0.2, minimum_filter(scene["ndvi"], 9) > 0.3
    assert water.mean() > 0.2 and land.mean() > 0.2
    t, rng = scene["transform"], np.random.default_rng(0)
    geometries, values = [], []
    for name, mask in (("water", water), ("land", land)):
        rows, cols = np.nonzero(mask[8:-8, 8:-8])
        for i in rng.choice(len(rows), 4, replace=False):
            (x0, y0), (x1, y1) = t * (cols[i] + 5, rows[i] + 5), t * (cols[i] + 11, rows[i] + 11)
            geometries.append({"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]})
            values.append(name)
    labels = PolygonLabels(geometries, values, scene["crs"].to_wkt(), "cover", "boxes")
    res = fit_head(TINY_S2, labels, demo_model, fit=HeadFitSettings(head_type="linear", steps=30, seed=0),
                   output=tmp_path / "head.safetensors", settings=CPU)
    card = json.loads(res.path.with_suffix(".json").read_text())
    assert card["head_type"] == "linear" and [c["name"] for c in card["classes"]] == ["land", "water"]
    assert card["metrics"]["split"].startswith("2 validation / 6 training polygons")
    assert res.losses[-1] < res.losses[0]
    seg = segment_raster(TINY_S2, tmp_path / "cover.tif", res.path, settings=CPU)
    with rasterio.open(seg.path) as cls:
        # the raster's own grid, though the head reads it at the scale (2) recorded in the card
        assert cls.crs == scene["crs"] and cls.transform == scene["transform"]
        assert cls.shape == (96, 128)
        classes = cls.read(1)
    assert (classes[water] == 1).mean() > 0.95 and (classes[land] == 0).mean() > 0.95
    assert seg.class_names == ("land", "water")
    assert leftovers(tmp_path) == ["cover.qml", "cover.tif", "head.json", "head.safetensors"]


def test_onnx_export_embeds_like_torch(demo_model: Any, embeddings: Any, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = export_encoder(demo_model, tmp_path / "demo.onnx")
    onnx_model = load_model(path)
    assert onnx_model.backend == "onnx"
    res = embed_raster(TINY_S2, tmp_path / "emb.tif", onnx_model, settings=CPU)
    with rasterio.open(embeddings.path) as a, rasterio.open(res.path) as b:
        assert (b.transform, b.shape, b.count) == (a.transform, a.shape, a.count)
        torch_grid, onnx_grid = a.read(), b.read()
    assert np.abs(onnx_grid - torch_grid).max() <= 1e-4 * np.abs(torch_grid).max()
    assert leftovers(tmp_path) == ["demo.onnx", "emb.tif"]


@pytest.mark.gpu
def test_cuda_embeddings_match_the_cpu(demo_model_copy: Any, embeddings: Any, tmp_path: Path) -> None:
    res = embed_raster(TINY_S2, tmp_path / "emb.tif", demo_model_copy, settings=InferenceSettings(device="cuda"))
    with rasterio.open(embeddings.path) as a, rasterio.open(res.path) as b:
        cpu, cuda = a.read(), b.read()
        used = json.loads(b.tags()["MSFM_SETTINGS"])
        assert used["device"] == "cuda" and used["batch_size"] > 8  # automatic: sized from the GPU's free memory
    assert cuda.shape == cpu.shape and np.abs(cuda - cpu).max() <= 1e-2 * np.abs(cpu).max()

