"""Segmentation: labels on the image grid, heads and their files, head fitting, pixel-resolution class maps.

Real rasters only: the Sentinel-2 Virginia scene (water vs vegetation polygons picked from its own NDWI/NDVI) and the
SpaceNet-3 Las Vegas pan image with its road label raster.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_geom
from scipy.ndimage import minimum_filter

from engine.errors import BandResolutionError, CheckpointError, InferenceCancelled, InputRasterError
from engine.models import load_model
from engine.segmentation import (
    IGNORE,
    ClassInfo,
    HeadFitSettings,
    LabelRaster,
    PolygonLabels,
    build_head,
    encoder_source,
    fit_head,
    label_grid,
    load_head,
    read_polygons,
    save_head,
    segment_raster,
    segmentation_scores,
)
from engine.settings import InferenceSettings

from ..conftest import S2_L1C, VEGAS_PAN, VEGAS_ROADS, shared_file

FAST = InferenceSettings(tile_size_px=224, overlap_px=32, batch_size=8, scale=1.0, threads=2)


def _box(transform, row: int, col: int, half: int) -> dict:
    """A pixel-aligned square polygon (GeoJSON) of ``2·half`` pixels around (row, col) in the raster's CRS."""
    x0, y0 = transform * (col - half, row - half)
    x1, y1 = transform * (col + half, row + half)
    return {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]}


@pytest.fixture(scope="module")
def cover_boxes():
    """Water and vegetation boxes of the Virginia scene, chosen from its own indices (4 per class, spread out).

    Returns ``(boxes [(row, col, cover)], water mask, vegetation mask)`` with the masks of *clear* water
    (NDWI > 0.2 over a 9×9 neighbourhood) and *clear* vegetation (NDVI > 0.5 likewise).
    """
    path = shared_file(*S2_L1C)
    with rasterio.open(path) as ds:
        g, r, n = ds.read([3, 4, 8]).astype(np.float64)
    ndwi, ndvi = (g - n) / (g + n + 1e-6), (n - r) / (n + r + 1e-6)
    water, veg = minimum_filter(ndwi, 9) > 0.2, minimum_filter(ndvi, 9) > 0.5
    rng = np.random.default_rng(0)
    boxes = []
    for cover, mask in (("water", water), ("vegetation", veg)):
        rows, cols = np.nonzero(mask[16:-16, 16:-16])
        for quadrant in range(4):  # one box per image quadrant where possible, so the boxes are far apart
            sel = ((rows + 16 >= 512) == (quadrant // 2 == 1)) & ((cols + 16 >= 512) == (quadrant % 2 == 1))
            pool = np.nonzero(sel)[0] if sel.any() else np.arange(len(rows))
            i = rng.choice(pool)
            boxes.append((int(rows[i]) + 16, int(cols[i]) + 16, cover))
    return boxes, water, veg


def _polygons(path: Path, boxes, half: int = 4, crs_out: str | None = None) -> PolygonLabels:
    with rasterio.open(path) as ds:
        geoms = [_box(ds.transform, r, c, half) for r, c, _ in boxes]
        crs = ds.crs
    if crs_out:
        geoms = [transform_geom(crs, crs_out, g) for g in geoms]
    return PolygonLabels(geoms, [cover for _, _, cover in boxes], crs_out or crs.to_wkt(), "cover", "test boxes")


# ---------------------------------------------------------------------------------------------------- labels
def test_polygon_labels_land_on_the_pixels_they_cover_in_any_crs():
    path = shared_file(*S2_L1C)
    boxes = [(100, 200, "a"), (600, 700, "b"), (900, 120, "a")]
    with rasterio.open(path) as ds:
        transform, shape, crs = ds.transform, ds.shape, ds.crs
    native = label_grid(_polygons(path, boxes), crs, transform, shape)
    full = np.full(shape, IGNORE, np.uint8)
    w = native.window
    full[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = native.labels
    for r, c, cover in boxes:  # exactly the 8 × 8 pixels of each box, with its class
        idx = [k.name for k in native.classes].index(cover)
        assert (full[r - 4 : r + 4, c - 4 : c + 4] == idx).all()
        assert (full[r - 5 : r + 5, c - 5 : c + 5] != IGNORE).sum() == 64
    # the same boxes stored in WGS 84 (another CRS) land on the same pixels, up to the curved edges of a reprojected box
    other = label_grid(_polygons(path, boxes, crs_out="EPSG:4326"), crs, transform, shape)
    full2 = np.full(shape, IGNORE, np.uint8)
    w = other.window
    full2[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = other.labels
    labelled = (full != IGNORE) | (full2 != IGNORE)
    assert (full[labelled] == full2[labelled]).mean() > 0.9
    assert abs(int((full2 != IGNORE).sum()) - 3 * 64) <= 12
    assert sorted(set(native.groups[native.groups >= 0].ravel())) == [0, 1, 2]


def test_label_raster_in_another_crs_is_resampled_onto_the_image_grid(tmp_path):
    pan, roads = shared_file(*VEGAS_PAN), shared_file(*VEGAS_ROADS)
    with rasterio.open(roads) as src:
        original = src.read(1)
        transform, width, height = calculate_default_transform(src.crs, "EPSG:32611", src.width, src.height,
                                                               *src.bounds)
        profile = {**src.profile, "crs": "EPSG:32611", "transform": transform, "width": width, "height": height,
                   "nodata": 7}
        utm = tmp_path / "roads_utm.tif"
        with rasterio.open(utm, "w", **profile) as dst:
            reproject(original, rasterio.band(dst, 1), src_transform=src.transform, src_crs=src.crs,
                      dst_transform=transform, dst_crs="EPSG:32611", dst_nodata=7, resampling=Resampling.nearest)
    with rasterio.open(pan) as ds:
        grid = label_grid(LabelRaster(utm, names={"0": "background", "255": "road"}), ds.crs, ds.transform, ds.shape)
    assert [c.name for c in grid.classes] == ["background", "road"]
    road = original == 255
    back = grid.labels == 1
    assert (back & road).sum() / road.sum() > 0.9  # road pixels come back as road after two nearest resamplings
    assert (grid.labels[~road] == 1).mean() < 0.01
    assert grid.groups.max() + 1 == 36  # 1300 px in 224-px blocks: 6 × 6 groups


def test_label_errors_name_the_problem(tmp_path):
    path = shared_file(*S2_L1C)
    with rasterio.open(path) as ds:
        transform, shape, crs = ds.transform, ds.shape, ds.crs
    boxes = [(100, 200, "water"), (600, 700, "forest")]
    good = _polygons(path, boxes)
    empty = PolygonLabels(good.geometries, ["water", ""], good.crs, "cover", "layer")
    with pytest.raises(InputRasterError, match="empty class value"):
        label_grid(empty, crs, transform, shape)
    no_crs = PolygonLabels(good.geometries, good.values, None, "cover", "layer")
    with pytest.raises(InputRasterError, match="no CRS"):
        label_grid(no_crs, crs, transform, shape)
    # UTM coordinates in a layer that says WGS 84 (the classic wrong-CRS layer): no overlap, both CRSs named
    wrong = PolygonLabels(good.geometries, good.values, "EPSG:4326", "cover", "layer")
    with pytest.raises(InputRasterError, match=r"EPSG:4326.*EPSG:32618.*check that the polygon layer's CRS"):
        label_grid(wrong, crs, transform, shape)
    outside = PolygonLabels([good.geometries[0], _box(transform, -500, -500, 4)], ["water", "forest"], good.crs,
                            "cover", "layer")
    with pytest.raises(InputRasterError, match=r"class\(es\) \['forest'\].*cover no pixel"):
        label_grid(outside, crs, transform, shape)
    single = PolygonLabels(good.geometries, ["water", "water"], good.crs, "cover", "layer")
    with pytest.raises(InputRasterError, match="single class"):
        label_grid(single, crs, transform, shape)
    vector = tmp_path / "labels.geojson"
    vector.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"cover": v}, "geometry": transform_geom(crs, "EPSG:4326", g)}
        for g, v in zip(good.geometries, good.values)]}))
    with pytest.raises(InputRasterError, match=r"no field 'class'.*\['cover'\]"):
        read_polygons(vector, "class")
    read = read_polygons(vector, "cover")
    assert read.values == ["water", "forest"] and "4326" in read.crs
    assert label_grid(read, crs, transform, shape).pixel_counts().tolist() == [64, 64]  # forest, water


# ---------------------------------------------------------------------------------------------------- heads
def test_published_linear_head_layout_loads_strictly(tmp_path, demo_model):
    """A SMARTIES checkpoint with the DFC2020 1×1-conv head (encoder keys + head.0.weight [K, D, 1, 1]) loads."""
    from safetensors.torch import load_file, save_file

    encoder = load_file(str(demo_model.provenance.weights_path))
    k = 8
    weight, bias = torch.randn(k, demo_model.embed_dim, 1, 1) * 0.01, torch.randn(k)
    ckpt = tmp_path / "smarties-dfc2020-linprobe.safetensors"
    save_file({**encoder, "head.0.weight": weight, "head.0.bias": bias}, str(ckpt),
              metadata={"config": json.dumps({"num_heads": demo_model.num_heads})})
    head = load_head(ckpt)
    assert head.card.head_type == "linear" and head.card.num_classes == k
    assert head.blocks == [len(demo_model.blocks) - 1]
    torch.testing.assert_close(head.net[0].weight, weight)
    x = torch.randn(1, 3, 64, 64)
    grid = demo_model.encode(x, ["red_2", "green_2", "blue_1"], output="grid")
    expected = torch.nn.functional.conv2d(grid, weight, bias)
    torch.testing.assert_close(head([grid]), expected)
    # our own linear head file holds exactly the published keys
    classes = [ClassInfo(i, f"c{i}", (i, i, i, 255), i) for i in range(3)]
    ours = build_head("linear", demo_model, classes, encoder={"name": "smarties-demo-tiny"})
    path = save_head(ours, tmp_path / "ours.safetensors")
    assert sorted(load_file(str(path))) == ["head.0.bias", "head.0.weight"]
    assert json.loads(path.with_suffix(".json").read_text())["classes"][2]["name"] == "c2"
    # strictness: a wrong shape, or a foreign key, is refused with the key named
    bad = {"head.0.weight": torch.zeros(k, demo_model.embed_dim + 1, 1, 1), "head.0.bias": bias}
    bad_path = tmp_path / "bad.safetensors"
    save_file(bad, str(bad_path), metadata={"msfm_head": ours.card.to_json()})
    with pytest.raises(CheckpointError, match=r"head\.0\.weight"):
        load_head(bad_path)
    save_file({**ours.head_state(), "pos_embed": torch.zeros(1)}, str(bad_path),
              metadata={"msfm_head": ours.card.to_json()})
    with pytest.raises(CheckpointError, match="pos_embed"):
        load_head(bad_path)


def test_upernet_reads_four_blocks_and_round_trips(tmp_path, demo_model):
    classes = [ClassInfo(i, f"c{i}", (i, i, i, 255), i) for i in range(4)]
    head = build_head("upernet", demo_model, classes, encoder={"name": "smarties-demo-tiny"}).eval()
    assert head.blocks == [1, 2, 3, 5]
    grids = demo_model.encode_blocks(torch.randn(2, 3, 224, 224), ["red_2", "green_2", "blue_1"], head.blocks)
    assert head(grids).shape == (2, 4, 56, 56)
    assert head.pixel_logits(grids, (224, 224)).shape == (2, 4, 224, 224)
    again = load_head(save_head(head, tmp_path / "u.safetensors"))
    torch.testing.assert_close(again(grids), head(grids))


def test_segmentation_scores_from_a_confusion_matrix():
    s = segmentation_scores(np.array([[8, 2], [1, 9]]), ["a", "b"])
    assert s["classes"]["a"]["iou"] == pytest.approx(8 / 11) and s["classes"]["b"]["f1"] == pytest.approx(18 / 21)
    assert s["miou"] == pytest.approx((8 / 11 + 9 / 12) / 2) and s["overall_accuracy"] == pytest.approx(17 / 20)


# ---------------------------------------------------------------------------------------------------- fitting
@pytest.fixture(scope="module")
def cover_head(tmp_path_factory, demo_model, cover_boxes):
    boxes, _, _ = cover_boxes
    out = tmp_path_factory.mktemp("head") / "cover.safetensors"
    labels = _polygons(shared_file(*S2_L1C), boxes, crs_out="EPSG:4326")
    return fit_head(shared_file(*S2_L1C), labels, demo_model, fit=HeadFitSettings(head_type="linear", steps=60, seed=0), output=out,
                    settings=FAST)


def test_head_from_a_few_polygons_separates_water_from_vegetation(tmp_path, cover_head, cover_boxes):
    boxes, water, veg = cover_boxes
    res = cover_head
    assert res.path.is_file() and res.path.with_suffix(".json").is_file()
    card = json.loads(res.path.with_suffix(".json").read_text())
    assert [c["name"] for c in card["classes"]] == ["vegetation", "water"]
    assert card["metrics"]["split"].startswith("2 validation / 6 training polygons")
    assert card["metrics"]["miou"] > 0.8  # held-out polygons
    assert res.losses[-1] < res.losses[0]
    out = tmp_path / "cover.tif"
    seg = segment_raster(shared_file(*S2_L1C), out, res.path, settings=FAST, probabilities_output=tmp_path / "p.tif",
                         polygons_output=tmp_path / "cover.gpkg")
    classes = rasterio.open(out).read(1)
    # every clear-water / clear-vegetation pixel of the scene, not only the 8 boxes it was trained on
    assert (classes[water] == 1).mean() > 0.9
    assert (classes[veg] == 0).mean() > 0.9
    with rasterio.open(out) as ds:
        assert ds.colormap(1)[1][:3] == tuple(card["classes"][1]["color"][:3]) and ds.nodata == IGNORE
    probs = rasterio.open(tmp_path / "p.tif").read()
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert (probs.argmax(0) == classes).all()
    assert (tmp_path / "cover.qml").read_text().count("vegetation") == 1
    from osgeo import ogr

    vectors = ogr.Open(str(tmp_path / "cover.gpkg"))  # keep the dataset alive while its layer is read
    layer = vectors.GetLayer(0)
    assert layer.GetFeatureCount() > 0 and {f.GetField("name") for f in layer} == {"vegetation", "water"}
    assert seg.class_names == ("vegetation", "water")


def test_raster_with_other_bands_is_refused_with_a_fix(tmp_path, cover_head):
    with pytest.raises(BandResolutionError, match="trained on bands"):
        segment_raster(shared_file(*VEGAS_PAN), tmp_path / "x.tif", cover_head.path, settings=FAST)
    assert list(tmp_path.iterdir()) == []


def test_cancel_leaves_nothing(tmp_path, demo_model, cover_head, cover_boxes):
    calls = []

    def cancel_second() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(InferenceCancelled):
        segment_raster(shared_file(*S2_L1C), tmp_path / "c.tif", cover_head.path, settings=FAST,
                       probabilities_output=tmp_path / "p.tif", is_canceled=cancel_second)
    calls.clear()
    boxes, _, _ = cover_boxes
    with pytest.raises(InferenceCancelled):
        fit_head(shared_file(*S2_L1C), _polygons(shared_file(*S2_L1C), boxes), demo_model, fit=HeadFitSettings(steps=5), output=tmp_path / "h.safetensors", settings=FAST, is_canceled=cancel_second)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # an UPerNet head fitted through the CLI, then a shifted segmentation pass: ~5 s
def test_label_raster_head_and_shifted_pass_via_the_cli(tmp_path):
    """``msfm train-head`` with a label raster (split by blocks) and ``msfm segment --shifts 2`` end to end."""
    from engine.cli import main

    pan, roads = shared_file(*VEGAS_PAN), shared_file(*VEGAS_ROADS)
    head = tmp_path / "roads.safetensors"
    assert main(["train-head", str(pan), str(head), "--label-raster", str(roads), "--class-name", "0=background",
                 "--class-name", "255=road", "--head", "upernet", "--steps", "4", "--threads", "2"]) == 0
    card = json.loads(head.with_suffix(".json").read_text())
    assert card["head_type"] == "upernet" and card["blocks"] == [1, 2, 3, 5]
    assert card["metrics"]["split"] == "9 validation / 27 training blocks"
    assert card["bands"][0]["description"] == "PAN" and 0.2 < card["gsd_m"] < 0.35
    out = tmp_path / "roads.tif"
    assert main(["segment", str(pan), str(head), str(out), "--shifts", "2", "--overlap-px", "0", "--bounds",
                 *map(str, rasterio.open(pan).xy(700, 100)), *map(str, rasterio.open(pan).xy(400, 500))]) == 0
    with rasterio.open(out) as ds:
        assert ds.tags()["MSFM_SHIFTS"] == "2" and 380 <= ds.width <= 420 and 280 <= ds.height <= 320


@pytest.mark.slow  # fine-tunes the encoder
def test_finetuned_encoder_is_saved_beside_the_head_and_used_to_segment(tmp_path, demo_model_copy, cover_boxes):
    boxes, _, _ = cover_boxes
    before = {k: v.clone() for k, v in demo_model_copy.state_dict().items()}
    res = fit_head(shared_file(*S2_L1C), _polygons(shared_file(*S2_L1C), boxes), demo_model_copy, fit=HeadFitSettings(head_type="linear", steps=3, finetune=True, val_fraction=0), output=tmp_path / "ft.safetensors", settings=FAST)
    encoder_file = tmp_path / "ft.encoder.safetensors"
    assert res.head.card.encoder["file"] == encoder_file.name and encoder_file.is_file()
    assert encoder_source(load_head(res.path).card, res.path) == str(encoder_file)  # what segment_raster loads
    # the caller's encoder is untouched
    assert all(torch.equal(v, demo_model_copy.state_dict()[k]) for k, v in before.items())
    tuned = load_model(encoder_file)
    assert any(not torch.equal(v, tuned.state_dict()[k]) for k, v in before.items() if k != "pos_embed")
    window = rasterio.open(shared_file(*S2_L1C)).xy(300, 300), rasterio.open(shared_file(*S2_L1C)).xy(100, 500)
    from engine.raster import Region

    region = Region(bounds=(window[0][0], window[0][1], window[1][0], window[1][1]))
    out = segment_raster(shared_file(*S2_L1C), tmp_path / "ft.tif", res.path, settings=FAST, region=region)
    assert out.path.is_file() and sum(out.class_fractions) == pytest.approx(1.0)


def test_class_colours_follow_land_cover_names_not_their_order() -> None:
    from engine.raster import class_colors
    from engine.segmentation.labels import class_table

    def hue(rgba: tuple) -> str:
        r, g, b = rgba[:3]
        return "blue" if b > max(r, g) else "green" if g > max(r, b) else "red" if r > max(g, b) + 60 else "other"

    # alphabetical order put land first (blue) and water second (orange) before
    land, water = class_table(["water", "land", "water"])
    assert (land.name, water.name) == ("land", "water")
    assert hue(water.color) == "blue" and hue(land.color) != "blue"
    built, crops, forest, other, snow = class_table(["built-up", "cropland", "forest", "quarry pit 2", "snow"])
    assert hue(built.color) == "red" and hue(forest.color) == "green" and crops.color[:2] == (240, 210)
    assert snow.color[:3] == (232, 244, 250) and other.color[:3] == (181, 146, 107)  # "quarry": bare ground
    # names without land-cover words keep the qualitative palette, in order
    assert [c.color for c in class_table(["a", "b", "c"])] == class_colors(3)
