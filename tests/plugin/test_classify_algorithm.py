"""*Classify pixels (random forest on bands + embeddings)* through ``processing.run`` on the Sen1Floods11 India S2 chip.

The training polygons are the squares of :func:`tests.engine.test_forest.draw_squares` (10 water, 10 land, 9 × 9 pixels
of one class in the hand label), in a memory layer in EPSG:3857 with a text field ``cover`` (the raster is in
EPSG:4326, so the polygons are reprojected on the way).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from tests.conftest import shared_file
from tests.engine.test_forest import INDIA_S2, SQUARE, draw_squares, water_iou

pytestmark = pytest.mark.qgis

NAMES = {0: "land", 1: "water"}


def square_layer(squares: dict[int, list[tuple[int, int]]]) -> Any:
    """A memory polygon layer in EPSG:3857 with the squares, field ``cover`` = ``land`` / ``water``."""
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

    with rasterio.open(shared_file(*INDIA_S2)) as ds:
        t = ds.transform
    to_3857 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"),
                                     QgsCoordinateReferenceSystem("EPSG:3857"), QgsProject.instance())
    layer = QgsVectorLayer("Polygon?crs=EPSG:3857", "squares", "memory")
    layer.dataProvider().addAttributes([QgsField("cover", QVariant.String)])
    layer.updateFields()
    features = []
    for value, origins in squares.items():
        for r, c in origins:
            ring = [t * (c + dc, r + dr) for dc, dr in ((0, 0), (SQUARE, 0), (SQUARE, SQUARE), (0, SQUARE), (0, 0))]
            geometry = QgsGeometry.fromWkt("POLYGON((" + ", ".join(f"{x} {y}" for x, y in ring) + "))")
            geometry.transform(to_3857)
            feature = QgsFeature(layer.fields())
            feature.setGeometry(geometry)
            feature["cover"] = NAMES[value]
            features.append(feature)
    assert layer.dataProvider().addFeatures(features)
    return layer


def test_classify_is_listed_with_its_parameters(msfm_provider: Any) -> None:
    alg = {a.id(): a for a in msfm_provider.algorithms()}["msfm:classify"]
    assert alg.group() == "Segmentation" and "random forest" in alg.displayName()
    assert {p.name() for p in alg.parameterDefinitions()} == {
        "INPUT", "SENSOR", "BAND_OVERRIDES", "POLYGONS", "CLASS_FIELD", "FEATURES", "TREES", "VAL_FRACTION",
        "COMPONENTS", "EMBEDDINGS", "EMBEDDING_FORMAT", "MODEL", "MODEL_FILE", "DEVICE", "PRECISION", "TILE_SIZE",
        "OVERLAP", "BATCH_SIZE", "SCALE", "EXTENT", "MASK", "OUTPUT", "OUTPUT_PROBABILITIES"}
    assert alg.parameterDefinition("FEATURES").options() == ["bands+embeddings", "bands", "embeddings"]
    assert "head" in alg.shortHelpString()  # says when to use it rather than a segmentation head


def test_classify_bands_writes_a_styled_map_on_the_layer_grid(msfm_provider: Any, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsPalettedRasterRenderer, QgsProject

    squares = draw_squares(seed=0)
    out, probs = tmp_path / "classes.tif", tmp_path / "probabilities.tif"
    project = QgsProject.instance()
    project.clear()
    result = processing.runAndLoadResults("msfm:classify", {
        "INPUT": str(shared_file(*INDIA_S2)), "POLYGONS": square_layer(squares), "CLASS_FIELD": "cover",
        "FEATURES": "bands", "TREES": 30, "OUTPUT": str(out), "OUTPUT_PROBABILITIES": str(probs)})
    assert result["CLASS_NAMES"] == ["land", "water"] == json.loads(result["CLASSES"])
    assert result["MIOU"] > 0.8 and json.loads(result["METRICS"])["split"] == "4 validation / 16 training polygons"
    assert sum(result["TRAIN_PIXELS"]) == 16 * SQUARE * SQUARE  # the polygons were reprojected onto the squares
    with rasterio.open(shared_file(*INDIA_S2)) as src, rasterio.open(out) as classes, rasterio.open(probs) as p:
        for ds in (classes, p):
            assert (ds.crs, ds.transform, ds.width, ds.height) == (src.crs, src.transform, src.width, src.height)
        assert p.count == 2 and set(np.unique(classes.read(1))) <= {0, 1, 255}
    assert water_iou(out, squares) > 0.5
    layer = next(lyr for lyr in project.mapLayers().values() if lyr.source() == str(out))
    assert isinstance(layer.renderer(), QgsPalettedRasterRenderer)
    assert [c.label for c in layer.renderer().classes()] == ["land", "water"]
    project.clear()


@pytest.mark.slow
def test_classify_bands_plus_embeddings_with_the_bundled_model(msfm_provider: Any, tmp_path: Path) -> None:
    import processing

    squares = draw_squares(seed=0)
    out = tmp_path / "classes.tif"
    result = processing.run("msfm:classify", {
        "INPUT": str(shared_file(*INDIA_S2)), "POLYGONS": square_layer(squares), "CLASS_FIELD": "cover",
        "TREES": 30, "OVERLAP": 0, "OUTPUT": str(out)})
    assert result["MIOU"] > 0.8
    assert water_iou(out, squares) > 0.5


def test_classify_on_embeddings_made_elsewhere_in_the_format_named(msfm_provider: Any, demo_model: Any,
                                                                    tmp_path: Path) -> None:
    """EMBEDDINGS an AlphaEarth int8 export of the chip's embeddings (without the band names that would tell its
    layout): FEATURES embeddings with EMBEDDING_FORMAT alphaearth maps the water; a wrong format is refused with the
    engine's reason."""
    import processing
    from qgis.core import QgsProcessingException

    from engine import InferenceSettings
    from engine.maps import embed_raster
    from tests.conftest import write_alphaearth

    squares = draw_squares(seed=0)
    ours = embed_raster(shared_file(*INDIA_S2), tmp_path / "ours.tif", demo_model,
                        settings=InferenceSettings(overlap_px=0, scale=1.0, threads=2)).path
    with rasterio.open(ours) as ds:
        values, profile = ds.read().astype(np.float32), ds.profile
    alphaearth = tmp_path / "alphaearth.tif"
    write_alphaearth(alphaearth, values, profile, names=False)
    params = {"INPUT": str(shared_file(*INDIA_S2)), "POLYGONS": square_layer(squares), "CLASS_FIELD": "cover",
              "FEATURES": "embeddings", "TREES": 20, "EMBEDDINGS": str(alphaearth)}
    with pytest.raises(QgsProcessingException, match="is not a TESSERA embedding raster"):
        processing.run("msfm:classify", {**params, "EMBEDDING_FORMAT": "tessera", "OUTPUT": str(tmp_path / "t.tif")})
    out = tmp_path / "classes.tif"
    result = processing.run("msfm:classify", {**params, "EMBEDDING_FORMAT": "alphaearth", "OUTPUT": str(out)})
    assert result["CLASS_NAMES"] == ["land", "water"]
    with rasterio.open(shared_file(*INDIA_S2)) as src, rasterio.open(out) as classes:
        assert (classes.crs, classes.transform, classes.shape) == (src.crs, src.transform, src.shape)
    assert water_iou(out, squares) > 0.6
