"""``classify_raster``: a random forest on raw bands ⊕ upsampled embeddings, on the Sen1Floods11 India S2 chip.

Training polygons are drawn from the chip's hand label (−1 no data, 0 land, 1 water): 10 water and 10 land squares of
9 × 9 pixels whose 81 pixels all hold one class, at seeded random places, as polygons in the raster's CRS
(EPSG:4326). The water IoU is scored on every valid label pixel outside the squares. The embeddings of the bundled
``smarties-demo-tiny`` are computed once for the module and reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import rasterio

from tests.conftest import shared_file, write_alphaearth

INDIA_S2 = ("data", "sen1floods11_india_900498_s2_l1c.tif")
INDIA_LABEL = ("data", "sen1floods11_india_900498_water_label.tif")
SQUARE = 9  # pixels per side of a training square
PER_CLASS = 10
#: Trees of the test runs (fast; the default is 200).
TREES = 60


def draw_squares(seed: int = 0) -> dict[int, list[tuple[int, int]]]:
    """``{class value: [(row, col) of the top-left pixel]}``: ``PER_CLASS`` non-overlapping squares per class whose
    ``SQUARE`` × ``SQUARE`` pixels all carry that class value in the hand label."""
    with rasterio.open(shared_file(*INDIA_LABEL)) as ds:
        label = ds.read(1)
    rng = np.random.default_rng(seed)
    taken = np.zeros(label.shape, bool)
    squares: dict[int, list[tuple[int, int]]] = {}
    for value in (0, 1):
        inside = np.pad((label == value).astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        s = SQUARE
        full = (inside[s:, s:] - inside[:-s, s:] - inside[s:, :-s] + inside[:-s, :-s]) == s * s  # [H−s+1, W−s+1]
        candidates = np.flatnonzero(full)
        squares[value] = []
        for flat in rng.permutation(candidates):
            r, c = divmod(int(flat), full.shape[1])
            if taken[max(0, r - 2) : r + s + 2, max(0, c - 2) : c + s + 2].any():
                continue
            taken[r : r + s, c : c + s] = True
            squares[value].append((r, c))
            if len(squares[value]) == PER_CLASS:
                break
        assert len(squares[value]) == PER_CLASS, value
    return squares


def square_polygons(squares: dict[int, list[tuple[int, int]]]) -> Any:
    """The squares as :class:`engine.segmentation.PolygonLabels` in the raster's CRS (field ``water``)."""
    from engine.segmentation import PolygonLabels

    with rasterio.open(shared_file(*INDIA_S2)) as ds:
        t, crs = ds.transform, ds.crs.to_wkt()
    geometries, values = [], []
    for value, origins in squares.items():
        for r, c in origins:
            ring = [t * (c + dc, r + dr) for dc, dr in ((0, 0), (SQUARE, 0), (SQUARE, SQUARE), (0, SQUARE), (0, 0))]
            geometries.append({"type": "Polygon", "coordinates": [ring]})
            values.append(value)
    return PolygonLabels(geometries, values, crs, field="water", source="label squares",
                         names={0: "land", 1: "water"})


def squares_geojson(squares: dict[int, list[tuple[int, int]]], path: Path) -> Path:
    """The squares as a GeoJSON file of polygons with the field ``water`` (what ``msfm classify --polygons`` reads)."""
    import json

    labels = square_polygons(squares)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": g, "properties": {"water": v}} for g, v in zip(labels.geometries, labels.values)
    ]}))
    return path


def water_iou(classes_path: Path, squares: dict[int, list[tuple[int, int]]]) -> float:
    """Water IoU of a class map (class 1 = water) on the valid label pixels outside the squares."""
    with rasterio.open(shared_file(*INDIA_LABEL)) as ds:
        label = ds.read(1)
    with rasterio.open(classes_path) as ds:
        classes = ds.read(1)
    scored = label >= 0
    for origins in squares.values():
        for r, c in origins:
            scored[r : r + SQUARE, c : c + SQUARE] = False
    pred, truth = (classes == 1) & scored, (label == 1) & scored
    return float((pred & truth).sum() / (pred | truth).sum())


@pytest.fixture(scope="module")
def squares() -> dict[int, list[tuple[int, int]]]:
    return draw_squares(seed=0)


@pytest.fixture(scope="module")
def bands_only(squares: dict, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A ``features="bands"`` run (no model)."""
    from engine import InferenceSettings
    from engine.segmentation import ForestSettings, classify_raster

    return classify_raster(shared_file(*INDIA_S2), square_polygons(squares),
                           tmp_path_factory.mktemp("forest-bands") / "bands.tif",
                           forest=ForestSettings(features="bands", n_estimators=TREES),
                           settings=InferenceSettings(threads=2))


@pytest.fixture(scope="module")
def embedded(demo_model: Any, squares: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A bands+embeddings run with the bundled model (its embeddings kept for the other tests; tiles without overlap,
    four times faster than the default half-tile overlap)."""
    from engine import InferenceSettings
    from engine.segmentation import ForestSettings, classify_raster

    folder = tmp_path_factory.mktemp("forest")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = classify_raster(
            shared_file(*INDIA_S2), square_polygons(squares), folder / "classes.tif", demo_model,
            forest=ForestSettings(n_estimators=TREES), settings=InferenceSettings(overlap_px=0, threads=2),
            embeddings_output=folder / "embeddings.tif", probabilities_output=folder / "probabilities.tif")
    yield {"result": result, "embeddings": folder / "embeddings.tif", "folder": folder}


def _check_grid(res: Any) -> None:
    """The class map lies exactly on the input's grid, uint8 with nodata 255 and the classes' colours."""
    from engine.raster import colors_for_names

    with rasterio.open(shared_file(*INDIA_S2)) as src, rasterio.open(res.path) as out:
        assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
        assert out.dtypes[0] == "uint8" and out.nodata == 255
        assert [out.colormap(1)[i] for i in (0, 1)] == colors_for_names(["land", "water"])  # water in blue
    assert res.class_names == ("land", "water")
    assert 'label="water"' in res.style.read_text()
    # Two squares of each class are held out (round(10 × 0.25)): the validation scores exist and are sane.
    assert res.metrics["split"] == "4 validation / 16 training polygons"
    assert res.metrics["classes"]["water"]["iou"] > 0.8, res.metrics
    assert sum(res.train_pixels) == 16 * SQUARE * SQUARE  # every training square's pixels (below max_samples)


def test_bands_find_the_water_on_the_input_grid(bands_only: Any, squares: dict) -> None:
    _check_grid(bands_only)
    assert bands_only.feature_count == 12  # B10 (cirrus) has no SMARTIES range: the 12 mapped bands
    assert bands_only.embeddings is None and abs(sum(bands_only.class_fractions) - 1) < 1e-9
    iou = water_iou(bands_only.path, squares)
    assert iou > 0.5, iou  # measured 0.93 with 200 trees (docs/segmentation.md)


def test_region_writes_the_window_grid(squares: dict, tmp_path: Path) -> None:
    from engine.raster import Region
    from engine.segmentation import ForestSettings, classify_raster

    source = shared_file(*INDIA_S2)
    with rasterio.open(source) as src:
        left, top = src.transform * (64, 32)
        right, bottom = src.transform * (64 + 300, 32 + 400)
        res = classify_raster(source, square_polygons(squares), tmp_path / "window.tif",
                              forest=ForestSettings(features="bands", n_estimators=20),
                              region=Region(bounds=(left, bottom, right, top)),
                              probabilities_output=tmp_path / "p.tif")
        for path in (res.path, tmp_path / "p.tif"):
            with rasterio.open(path) as out:
                assert (out.width, out.height) == (300, 400)
                assert out.crs == src.crs and out.transform == src.transform * src.transform.translation(64, 32)
        with rasterio.open(res.path) as out:
            assert set(np.unique(out.read(1))) <= {0, 1}
    assert sum(res.train_pixels) < 16 * SQUARE * SQUARE  # only the squares inside the window


@pytest.mark.slow
def test_bands_plus_embeddings_is_not_below_bands(embedded: dict, bands_only: Any, squares: dict,
                                                  tmp_path: Path) -> None:
    both = embedded["result"]
    _check_grid(both)
    assert both.feature_count == 12 + 16  # + 16 principal components of the demo model's D = 192
    assert both.embeddings is not None and both.embeddings.embed_dim == 192
    iou_bands, iou_both = water_iou(bands_only.path, squares), water_iou(both.path, squares)
    print(f"water IoU outside the squares: bands {iou_bands:.3f}, bands+embeddings {iou_both:.3f}")
    assert iou_both > 0.5
    assert iou_both >= iou_bands - 0.03  # measured 0.93 / 0.92 with 200 trees, seed 0 (docs/segmentation.md)
    with rasterio.open(embedded["folder"] / "probabilities.tif") as probs:
        p = probs.read()
        assert probs.count == 2 and probs.dtypes[0] == "float32"
        ok = np.isfinite(p).all(axis=0)
        assert ok.mean() > 0.99 and np.allclose(p[:, ok].sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.slow
def test_embeddings_given_with_a_region(embedded: dict, squares: dict, tmp_path: Path) -> None:
    from engine.raster import Region
    from engine.segmentation import ForestSettings, classify_raster

    source = shared_file(*INDIA_S2)
    with rasterio.open(source) as src:
        left, top = src.transform * (64, 32)
        right, bottom = src.transform * (64 + 300, 32 + 400)
        res = classify_raster(source, square_polygons(squares), tmp_path / "window.tif",
                              forest=ForestSettings(features="embeddings", n_estimators=20, embedding_components=None),
                              embeddings=embedded["embeddings"], region=Region(bounds=(left, bottom, right, top)))
        with rasterio.open(res.path) as out:
            assert (out.width, out.height) == (300, 400)
            assert out.transform == src.transform * src.transform.translation(64, 32)
    assert res.feature_count == 192 and res.embeddings is None


def test_bad_input_gives_the_engines_errors(squares: dict, tmp_path: Path) -> None:
    from engine.errors import InferenceCancelled, LabelError, OutputError, SettingsError
    from engine.segmentation import ForestSettings, classify_raster

    source = shared_file(*INDIA_S2)
    water_only = square_polygons({1: squares[1]})
    with pytest.raises(LabelError, match="single class"):
        classify_raster(source, water_only, tmp_path / "a.tif", forest=ForestSettings(features="bands"))
    with pytest.raises(SettingsError, match="needs a model"):
        classify_raster(source, square_polygons(squares), tmp_path / "b.tif",
                        forest=ForestSettings(features="embeddings"))
    with pytest.raises(SettingsError, match="uses no embeddings"):
        classify_raster(source, square_polygons(squares), tmp_path / "c.tif", forest=ForestSettings(features="bands"),
                        embeddings=tmp_path / "e.tif")
    with pytest.raises(OutputError):
        classify_raster(source, square_polygons(squares), source, forest=ForestSettings(features="bands"))
    calls: list[float] = []
    with pytest.raises(InferenceCancelled):  # stops within one batch of trees, leaving nothing
        classify_raster(source, square_polygons(squares), tmp_path / "d.tif", forest=ForestSettings(features="bands"),
                        probabilities_output=tmp_path / "p.tif", progress=calls.append, is_canceled=lambda: bool(calls))
    assert len(calls) == 1
    for bad in ({"features": "pixels"}, {"n_estimators": 0}, {"val_fraction": 1.0}, {"class_weighting": "x"}):
        with pytest.raises(SettingsError):
            ForestSettings(**bad)
    assert list(tmp_path.iterdir()) == []


def test_cli_classify_prints_the_validation(squares: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.cli import main

    polygons = squares_geojson(squares, tmp_path / "squares.geojson")
    out = tmp_path / "classes.tif"
    args = ["classify", str(shared_file(*INDIA_S2)), str(out), "--polygons", str(polygons), "--class-field", "water",
            "--class-name", "0=land", "--class-name", "1=water", "--features", "bands", "--trees", "30",
            "--threads", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "validation (4 validation / 16 training polygons): mIoU" in printed and "water IoU" in printed
    assert water_iou(out, squares) > 0.5 and out.with_suffix(".qml").is_file()
    assert main(args) == 2  # the output exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args[:5], "--features", "bands"]) == 2  # polygons without their class field


def test_int8_embeddings_give_the_float32_map(embedded: dict, squares: dict, demo_model: Any, tmp_path: Path) -> None:
    """The forest reads an int8 embedding raster (engine.maps.quantized) as the float32 one it was made from."""
    from engine import InferenceSettings
    from engine.maps import embed_raster
    from engine.segmentation import ForestSettings, classify_raster

    int8 = embed_raster(shared_file(*INDIA_S2), tmp_path / "emb8.tif", demo_model,
                        settings=InferenceSettings(overlap_px=0, threads=2, output_dtype="int8")).path
    res = classify_raster(shared_file(*INDIA_S2), square_polygons(squares), tmp_path / "classes8.tif",
                          forest=ForestSettings(n_estimators=TREES), embeddings=int8)
    with rasterio.open(res.path) as a, rasterio.open(embedded["result"].path) as b:
        same = (a.read(1) == b.read(1)).mean()
    assert same > 0.99, same


def test_embeddings_made_elsewhere_are_read_in_the_format_named(embedded: dict, squares: dict, tmp_path: Path) -> None:
    """An AlphaEarth int8 export of the chip's embeddings, without the band names that would give its format away:
    refused with the engine's reason unless the format is named (a wrong one is refused too), then the forest maps the
    water on its embedding features; the same from the command line."""
    from engine.cli import main
    from engine.errors import InputRasterError
    from engine.segmentation import ForestSettings, classify_raster

    with rasterio.open(embedded["embeddings"]) as ds:
        values, profile = ds.read().astype(np.float32), ds.profile
    path = tmp_path / "alphaearth.tif"
    write_alphaearth(path, values, profile, names=False)
    source, labels = shared_file(*INDIA_S2), square_polygons(squares)
    forest = ForestSettings(features="embeddings", n_estimators=20)
    with pytest.raises(InputRasterError, match="64 int8 band.*do not say how they encode an embedding"):
        classify_raster(source, labels, tmp_path / "auto.tif", forest=forest, embeddings=path)
    with pytest.raises(InputRasterError, match=r"not a TESSERA embedding raster.*alphaearth_scales.tif beside it"):
        classify_raster(source, labels, tmp_path / "tessera.tif", forest=forest, embeddings=path,
                        embedding_format="tessera")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alphaearth.tif"]  # nothing written
    res = classify_raster(source, labels, tmp_path / "classes.tif", forest=forest, embeddings=path,
                          embedding_format="alphaearth")
    assert res.embeddings is None and res.feature_count == 16  # 16 principal components of the 64 dimensions
    ours = classify_raster(source, labels, tmp_path / "ours.tif", forest=forest, embeddings=embedded["embeddings"])
    iou, iou_ours = water_iou(res.path, squares), water_iou(ours.path, squares)
    print(f"water IoU, embedding features: AlphaEarth layout {iou:.3f}, ours (float32) {iou_ours:.3f}")
    assert iou > 0.7 and iou > iou_ours - 0.1  # the same information in 64 int8 dimensions
    out = tmp_path / "cli.tif"
    polygons = squares_geojson(squares, tmp_path / "squares.geojson")
    assert main(["classify", str(source), str(out), "--polygons", str(polygons), "--class-field", "water",
                 "--features", "embeddings", "--trees", "20", "--embeddings", str(path),
                 "--embedding-format", "alphaearth"]) == 0
    with rasterio.open(out) as a, rasterio.open(res.path) as b:
        assert (a.read(1) == b.read(1)).mean() > 0.99
