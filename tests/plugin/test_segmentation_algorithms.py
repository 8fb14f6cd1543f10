"""*Train segmentation head* and *Segment with a head*, run through ``processing.run`` on the real Sentinel-2 scene.

Training polygons come from the image itself, never from hard-coded outcomes: NDWI = (B03 − B08) / (B03 + B08) and
NDVI = (B08 − B04) / (B08 + B04) on a decimated read pick 6×6-pixel boxes of clear water and clear vegetation in a
256×256-pixel window that holds both; the boxes are written in EPSG:4326 (the raster is in UTM 18N), so the
reprojection of the polygons to the layer's CRS is exercised. The bundled ``smarties-demo-tiny`` model runs on CPU;
the head trains for a few dozen steps on the default sensor scale (2.0) and segments the window only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import rasterio

from tests.conftest import S2_L1C, shared_file
from tests.plugin.test_algorithms import write_gpkg

pytestmark = pytest.mark.qgis

WINDOW = 256  # native pixels of the window that is segmented
BOX = 6  # native pixels per side of a training box
DECIMATION = 4  # of the read that looks for clear pixels
STEPS = 30
FAST = {"OVERLAP": 0}
CLASSES = ["vegetation", "water"]  # class values of the "cover" field, in the head's (sorted) class order


def run(alg: str, params: dict, feedback: Any = None) -> dict:
    import processing

    return processing.run(f"msfm:{alg}", params, feedback=feedback)


def _box_filter(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k×k neighbourhood (edges: the neighbourhood is cut)."""
    pad = k // 2
    padded = np.pad(a, pad, mode="edge")
    out = np.zeros_like(a)
    for dr in range(k):
        for dc in range(k):
            out += padded[dr : dr + a.shape[0], dc : dc + a.shape[1]]
    return out / (k * k)


def _pick(score: np.ndarray, ok: np.ndarray, n: int, spacing: int) -> list[tuple[int, int]]:
    """Up to ``n`` cells where ``ok``, best ``score`` first, at least ``spacing`` cells apart."""
    chosen: list[tuple[int, int]] = []
    for flat in np.argsort(-np.where(ok, score, -np.inf), axis=None):
        r, c = np.unravel_index(flat, score.shape)
        if not ok[r, c] or len(chosen) == n:
            break
        if all(max(abs(r - r2), abs(c - c2)) >= spacing for r2, c2 in chosen):
            chosen.append((int(r), int(c)))
    return chosen


def find_boxes() -> tuple[tuple[int, int], dict[str, list[tuple[int, int]]]]:
    """A ``WINDOW``² window of the scene holding clear water and clear vegetation, and 6×6 boxes of each class.

    Clear = the index averaged over 7×7 decimated pixels (28 native pixels, more than a 16-px model patch at scale 2)
    is high and the other index low, so a box lies well inside one cover type. Returns the window's (row, col)
    origin and, per class, the boxes' (row, col) origins in native pixels.
    """
    path = shared_file(*S2_L1C)
    with rasterio.open(path) as ds:
        shape = (ds.height // DECIMATION, ds.width // DECIMATION)
        green, red, nir = ds.read([3, 4, 8], out_shape=(3, *shape)).astype(np.float32)
    ndwi = _box_filter((green - nir) / np.maximum(green + nir, 1), 7)
    ndvi = _box_filter((nir - red) / np.maximum(nir + red, 1), 7)
    clear = {"water": (ndwi, (ndwi > 0.4) & (ndvi < 0)), "vegetation": (ndvi, (ndvi > 0.5) & (ndwi < -0.3))}
    w, margin = WINDOW // DECIMATION, 4  # keep boxes off the window's edge
    best, origin = -1, (0, 0)
    for r in range(0, shape[0] - w + 1, w // 4):
        for c in range(0, shape[1] - w + 1, w // 4):
            inner = (slice(r + margin, r + w - margin), slice(c + margin, c + w - margin))
            count = min(int(ok[inner].sum()) for _, ok in clear.values())
            if count > best:
                best, origin = count, (r, c)
    assert best >= 20, "the scene should hold clear water and vegetation side by side"
    r0, c0 = origin
    boxes = {}
    for name, (score, ok) in clear.items():
        inner_ok = np.zeros_like(ok)
        inner_ok[r0 + margin : r0 + w - margin, c0 + margin : c0 + w - margin] = ok[
            r0 + margin : r0 + w - margin, c0 + margin : c0 + w - margin]
        cells = _pick(score, inner_ok, 4, spacing=6)
        assert len(cells) >= 3, name
        boxes[name] = [(r * DECIMATION + DECIMATION // 2 - BOX // 2, c * DECIMATION + DECIMATION // 2 - BOX // 2)
                       for r, c in cells]
    return (r0 * DECIMATION, c0 * DECIMATION), boxes


def box_polygons_4326(boxes: dict[str, list[tuple[int, int]]], values: Any = None) -> Any:
    """A memory polygon layer in EPSG:4326 with a text field ``cover``: one box per feature (``values`` override
    the class values, in feature order)."""
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsField,
        QgsGeometry,
        QgsProject,
        QgsVectorLayer,
    )
    from qgis.PyQt.QtCore import QVariant

    with rasterio.open(shared_file(*S2_L1C)) as ds:
        transform, crs = ds.transform, ds.crs.to_string()
    to_4326 = QgsCoordinateTransform(QgsCoordinateReferenceSystem(crs), QgsCoordinateReferenceSystem("EPSG:4326"),
                                     QgsProject.instance())
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", "training boxes", "memory")
    layer.dataProvider().addAttributes([QgsField("cover", QVariant.String)])
    layer.updateFields()
    features = []
    for name, origins in boxes.items():
        for r, c in origins:
            corners = [transform * (c + dc, r + dr) for dc, dr in ((0, 0), (BOX, 0), (BOX, BOX), (0, BOX), (0, 0))]
            geometry = QgsGeometry.fromWkt("POLYGON((" + ", ".join(f"{x} {y}" for x, y in corners) + "))")
            geometry.transform(to_4326)
            feature = QgsFeature(layer.fields())
            feature.setGeometry(geometry)
            feature["cover"] = name
            features.append(feature)
    for feature, value in zip(features, values or []):
        feature["cover"] = value
    assert layer.dataProvider().addFeatures(features)
    assert layer.crs().authid() == "EPSG:4326" and layer.featureCount() == len(features)
    return layer


def window_extent(origin: tuple[int, int]) -> str:
    with rasterio.open(shared_file(*S2_L1C)) as ds:
        left, top = ds.transform * (origin[1], origin[0])
        right, bottom = ds.transform * (origin[1] + WINDOW, origin[0] + WINDOW)
        return f"{left},{right},{bottom},{top} [{ds.crs.to_string()}]"


@pytest.fixture(scope="module")
def trained(msfm_provider: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A head trained once for the module (``STEPS`` steps on the boxes), with its run's results and the boxes."""
    with pytest.MonkeyPatch.context() as mp:  # the function-scoped offline-Hub fixture does not reach here
        mp.setenv("HF_HUB_OFFLINE", "1")
        origin, boxes = find_boxes()
        polygons = box_polygons_4326(boxes)
        out = tmp_path_factory.mktemp("head") / "cover.safetensors"
        result = run("train_head", {"INPUT": str(shared_file(*S2_L1C)), "POLYGONS": polygons, "CLASS_FIELD": "cover",
                                    "HEAD_TYPE": "linear", "STEPS": STEPS, "OUTPUT": str(out)})
        yield {"result": result, "head": out, "origin": origin, "boxes": boxes}


def test_provider_lists_the_segmentation_algorithms(msfm_provider: Any) -> None:
    from qgis.core import QgsProcessingContext

    algs = {a.id(): a for a in msfm_provider.algorithms()}
    train, segment = algs["msfm:train_head"], algs["msfm:segment"]
    assert {a.group() for a in (train, segment)} == {"Segmentation"}
    assert {p.name() for p in train.parameterDefinitions()} == {
        "INPUT", "SENSOR", "BAND_OVERRIDES", "POLYGONS", "CLASS_FIELD", "HEAD_TYPE", "STEPS", "VAL_FRACTION",
        "FINETUNE", "MODEL", "MODEL_FILE", "DEVICE", "TILE_SIZE", "BATCH_SIZE", "SCALE", "OUTPUT"}
    assert {p.name() for p in segment.parameterDefinitions()} == {
        "INPUT", "SENSOR", "BAND_OVERRIDES", "HEAD", "SHIFTS", "MODEL_FILE", "DEVICE", "PRECISION", "TILE_SIZE", "OVERLAP",
        "BATCH_SIZE", "SCALE", "EXTENT", "MASK", "OUTPUT", "OUTPUT_PROBABILITIES", "OUTPUT_POLYGONS"}
    assert train.parameterDefinition("HEAD_TYPE").options() == ["linear", "upernet", "pixel"]
    assert "*.safetensors" in train.parameterDefinition("OUTPUT").fileFilter()
    assert not segment.parameterDefinition("OUTPUT_POLYGONS").createByDefault()
    # The shared tile checks still apply to both parameter sets (training has no overlap).
    context = QgsProcessingContext()
    path = str(shared_file(*S2_L1C))
    polygons = box_polygons_4326({"water": [(0, 0)]})
    ok, message = train.checkParameterValues({"INPUT": path, "POLYGONS": polygons, "CLASS_FIELD": "cover",
                                              "TILE_SIZE": 200, "OUTPUT": "x.safetensors"}, context)
    assert not ok and "multiples of the 16-pixel patch" in message
    ok, message = segment.checkParameterValues({"INPUT": path, "HEAD": "head.safetensors", "TILE_SIZE": 224,
                                                "OVERLAP": 224, "OUTPUT": "x.tif"}, context)
    assert not ok and "must be smaller than the tile size" in message
    assert train.checkParameterValues({"INPUT": path, "POLYGONS": polygons, "CLASS_FIELD": "cover",
                                       "OUTPUT": "x.safetensors"}, context) == (True, "")
    assert segment.checkParameterValues({"INPUT": path, "HEAD": "head.safetensors", "OUTPUT": "x.tif"},
                                        context) == (True, "")


def test_train_head_writes_head_card_and_metrics(trained: dict) -> None:
    result, head = trained["result"], trained["head"]
    assert result["OUTPUT"] == str(head) and head.is_file()
    card_path = head.with_suffix(".json")
    assert result["CARD"] == str(card_path) and card_path.is_file()
    card = json.loads(card_path.read_text())
    assert [c["name"] for c in card["classes"]] == CLASSES == json.loads(result["CLASSES"])
    assert card["head_type"] == "linear" and card["encoder"]["name"] == "smarties-demo-tiny"
    assert card["training"]["steps"] == STEPS and card["scale"] == 2.0  # the Sentinel-2 preset's scale
    # One box per class is kept for validation (4 boxes, fraction 0.25): metrics exist and are consistent.
    for key in ("MIOU", "MACRO_F1", "OVERALL_ACCURACY"):
        assert 0.0 <= result[key] <= 1.0, key
    metrics = json.loads(result["METRICS"])
    assert metrics["miou"] == pytest.approx(result["MIOU"]) == pytest.approx(card["metrics"]["miou"])
    assert set(metrics["classes"]) == set(CLASSES) and all(metrics["classes"][n]["iou"] is not None for n in CLASSES)
    assert result["VAL_CHIPS"] >= 1 and result["TRAIN_CHIPS"] >= 2 * 3


def test_segment_classifies_the_boxes_and_styles_the_classes(trained: dict, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsPalettedRasterRenderer, QgsProject, QgsVectorLayer

    out, polygons = tmp_path / "cover.tif", tmp_path / "cover.gpkg"
    params = {"INPUT": str(shared_file(*S2_L1C)), "HEAD": str(trained["head"]),
              "EXTENT": window_extent(trained["origin"]), "OUTPUT": str(out), "OUTPUT_POLYGONS": str(polygons), **FAST}
    project = QgsProject.instance()
    project.clear()
    result = processing.runAndLoadResults("msfm:segment", params)
    assert result["CLASS_NAMES"] == CLASSES and abs(sum(result["CLASS_FRACTIONS"]) - 1) < 1e-6
    with rasterio.open(shared_file(*S2_L1C)) as src, rasterio.open(out) as classes:
        assert classes.crs == src.crs
        # the head reads at scale 2 (its card), the class map is on the layer's own grid (the extent's window)
        assert classes.transform.a == src.transform.a and classes.transform.e == src.transform.e
        col, row = ~src.transform * (classes.transform.c, classes.transform.f)
        assert (col, row) == (round(col), round(row))
        labels = classes.read(1)
        assert set(np.unique(labels)) <= {0, 1, 255}
        for index, name in enumerate(CLASSES):
            for r, c in trained["boxes"][name]:
                # The box's corners on the class map's grid.
                c0, r0 = ~classes.transform * (src.transform * (c, r))
                c1, r1 = ~classes.transform * (src.transform * (c + BOX, r + BOX))
                inside = labels[round(r0) : round(r1), round(c0) : round(c1)]
                assert inside.size >= (BOX - 1) ** 2
                share = float((inside == index).mean())
                assert share > 0.8, (name, (r, c), share)
    layer = next(lyr for lyr in project.mapLayers().values() if lyr.source() == str(out))
    renderer = layer.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert [c.label for c in renderer.classes()] == CLASSES
    vector = QgsVectorLayer(str(polygons), "polygons", "ogr")
    assert vector.isValid() and vector.featureCount() > 0
    assert {f["name"] for f in vector.getFeatures()} == set(CLASSES)
    project.clear()


def test_empty_class_value_is_named(msfm_provider: Any, tmp_path: Path) -> None:
    from qgis.core import NULL, QgsProcessingException

    _, boxes = find_boxes()
    values = [NULL] + [name for name, origins in boxes.items() for _ in origins][1:]
    polygons = box_polygons_4326(boxes, values)
    out = tmp_path / "head.safetensors"
    with pytest.raises(QgsProcessingException) as err:
        run("train_head", {"INPUT": str(shared_file(*S2_L1C)), "POLYGONS": polygons, "CLASS_FIELD": "cover",
                           "STEPS": 2, "OUTPUT": str(out)})
    message = str(err.value)
    assert "empty class value" in message and "'cover'" in message
    assert "Feature ids with an empty 'cover': [1]" in message  # the QGIS feature id of the first box
    assert list(tmp_path.iterdir()) == []


def test_an_identifier_as_class_field_is_refused_naming_the_class_field(msfm_provider: Any, tmp_path: Path) -> None:
    from qgis.core import QgsField, QgsProcessingException
    from qgis.PyQt.QtCore import QVariant

    _, boxes = find_boxes()
    polygons = box_polygons_4326(boxes)
    polygons.dataProvider().addAttributes([QgsField("fid", QVariant.Int)])  # what a GeoPackage's first field is
    polygons.updateFields()
    polygons.startEditing()
    for number, feature in enumerate(polygons.getFeatures()):
        polygons.changeAttributeValue(feature.id(), polygons.fields().indexOf("fid"), number + 1)
    assert polygons.commitChanges() and polygons.featureCount() >= 6
    with pytest.raises(QgsProcessingException) as err:
        run("train_head", {"INPUT": str(shared_file(*S2_L1C)), "POLYGONS": polygons, "CLASS_FIELD": "fid",
                           "STEPS": 2, "OUTPUT": str(tmp_path / "head.safetensors")})
    message = str(err.value)
    assert "'fid' has a different value on each of the" in message and "identifier" in message
    assert f"cover ({len(boxes)} classes)" in message and list(tmp_path.iterdir()) == []


def test_cancel_leaves_no_output(trained: dict, tmp_path: Path) -> None:
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    class CancelAfterFirstProgress(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.progressChanged.connect(lambda p: p > 0 and self.cancel())

    polygons = box_polygons_4326(trained["boxes"])
    feedback = CancelAfterFirstProgress()
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("train_head", {"INPUT": str(shared_file(*S2_L1C)), "POLYGONS": polygons, "CLASS_FIELD": "cover",
                           "STEPS": STEPS, "BATCH_SIZE": 1, "OUTPUT": str(tmp_path / "head.safetensors")},
            feedback=feedback)
    assert list(tmp_path.iterdir()) == []
    feedback = CancelAfterFirstProgress()
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("segment", {"INPUT": str(shared_file(*S2_L1C)), "HEAD": str(trained["head"]),
                        "EXTENT": window_extent(trained["origin"]), "BATCH_SIZE": 1, "OUTPUT": str(tmp_path / "c.tif"),
                        "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif"), "OUTPUT_POLYGONS": str(tmp_path / "c.gpkg"),
                        **FAST}, feedback=feedback)
    assert feedback.progress() < 100
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file left behind


def test_graphical_model_trains_then_segments(msfm_provider: Any, tmp_path: Path) -> None:
    """A graphical model: Train segmentation head → Segment with a head (the head file passed on), as one algorithm,
    with the polygons from a GeoPackage."""
    import processing
    from qgis.core import (
        QgsProcessing,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFeatureSource,
        QgsProcessingParameterRasterLayer,
    )

    def static(child: Any, values: dict) -> None:
        for name, value in values.items():
            child.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])

    origin, boxes = find_boxes()
    model = QgsProcessingModelAlgorithm("train then segment", "msfm tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "Raster"),
                            QgsProcessingModelParameter("raster"))
    model.addModelParameter(QgsProcessingParameterFeatureSource("boxes", "Boxes", [QgsProcessing.TypeVectorPolygon]),
                            QgsProcessingModelParameter("boxes"))
    train = QgsProcessingModelChildAlgorithm("msfm:train_head")
    train.setChildId("train")
    train.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("raster")])
    train.addParameterSources("POLYGONS", [QgsProcessingModelChildParameterSource.fromModelParameter("boxes")])
    static(train, {"CLASS_FIELD": "cover", "STEPS": 5})
    segment = QgsProcessingModelChildAlgorithm("msfm:segment")
    segment.setChildId("segment")
    segment.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("raster")])
    segment.addParameterSources("HEAD", [QgsProcessingModelChildParameterSource.fromChildOutput("train", "OUTPUT")])
    static(segment, {"EXTENT": window_extent(origin), "OVERLAP": 0})
    output = QgsProcessingModelOutput("classes", "Classes")
    output.setChildOutputName("OUTPUT")
    segment.setModelOutputs({"classes": output})
    model.addChildAlgorithm(train)
    model.addChildAlgorithm(segment)
    gpkg = write_gpkg(box_polygons_4326(boxes), tmp_path / "boxes.gpkg")
    out = str(tmp_path / "model_classes.tif")
    result = processing.run(model, {"raster": str(shared_file(*S2_L1C)), "boxes": str(gpkg), "segment:classes": out})
    assert result["segment:classes"] == out
    with rasterio.open(out) as classes:
        assert classes.width == classes.height == WINDOW  # the layer's grid, though the head reads at scale 2
        assert set(np.unique(classes.read(1))) == {0, 1}
        assert json.loads(classes.tags()["MSFM_CLASSES"]) == CLASSES
