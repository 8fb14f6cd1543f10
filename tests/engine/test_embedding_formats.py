"""Embedding rasters made elsewhere, read by every tool: AlphaEarth's int8 export and TESSERA's int8 + per-pixel scale
layout, written here from our own embeddings of a real raster (nothing can be downloaded), detected from the file,
read back within the layouts' rounding, clustered and searched; a file in another layout than the one named is
refused with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from engine.errors import InputRasterError, SettingsError
from engine.maps import ClusterSettings, cluster_raster, embed_raster, open_embeddings, similarity_raster
from engine.maps.quantized import decode_alphaearth, detect_encoding
from engine.settings import InferenceSettings
from tests.conftest import TINY_S2, unit_projection, write_alphaearth, write_geotiff

FAST = InferenceSettings(tile_size_px=224, overlap_px=32, scale=1.0, precision="fp32")


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory, demo_model: Any) -> dict[str, Any]:
    """The demo model's embeddings of the committed Sentinel-2 crop, as float32 [D, h, w] and the file's profile."""
    path = embed_raster(TINY_S2, tmp_path_factory.mktemp("ours") / "emb.tif", demo_model, settings=FAST).path
    with rasterio.open(path) as ds:
        return {"values": ds.read().astype(np.float32), "profile": ds.profile, "path": path}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


def test_alphaearth_int8_is_read_as_unit_vectors_and_clustered(ours: dict[str, Any], tmp_path: Path) -> None:
    assert np.allclose(decode_alphaearth(np.array([[[127]], [[-64]], [[0]]], np.int8))[:, 0, 0],
                       [(127 / 127.5) ** 2, -(64 / 127.5) ** 2, 0.0])
    path = tmp_path / "alphaearth.tif"
    unit = write_alphaearth(path, ours["values"], ours["profile"], nodata_cells=((0, 0),))  # one nodata cell
    with open_embeddings(path) as grid:
        assert grid.encoding == "alphaearth" and grid.count == 64
        values = grid.read()
    assert np.isnan(values[:, 0, 0]).all() and np.isfinite(values[:, 1:, :]).all()
    cos = _cosines(values[:, 1:, :], unit[:, 1:, :])
    norms = np.linalg.norm(values[:, 1:, :], axis=0)
    assert cos.min() > 0.99 and abs(norms.mean() - 1) < 0.02, (cos.min(), norms.mean())
    res = cluster_raster(TINY_S2, tmp_path / "classes.tif", embeddings=path, embedding_format="alphaearth",
                         clustering=ClusterSettings(k=3, resolution="patch"))
    with rasterio.open(res.path) as classes:
        labels = classes.read(1)
    assert labels[0, 0] == 255 and set(np.unique(labels[labels != 255])) == {0, 1, 2}
    # the same from the command line, the format named
    from engine.cli import main

    assert main(["cluster", str(TINY_S2), str(tmp_path / "cli.tif"), "--embeddings", str(path), "--k", "3",
                 "--resolution", "patch", "--embedding-format", "alphaearth"]) == 0
    with rasterio.open(tmp_path / "cli.tif") as classes:
        assert np.array_equal(classes.read(1), labels)
    # at pixel resolution: no band statistics to guide the classes by the image, so interpolated embeddings
    pixel = cluster_raster(TINY_S2, tmp_path / "pixel.tif", embeddings=path, embedding_format="alphaearth",
                           clustering=ClusterSettings(k=3))
    with rasterio.open(pixel.path) as classes, rasterio.open(TINY_S2) as src:
        assert classes.shape == src.shape and set(np.unique(classes.read(1))) <= {0, 1, 2, 255}


def test_tessera_int8_with_per_pixel_scales_is_read_back_and_searched(ours: dict[str, Any], tmp_path: Path) -> None:
    x = unit_projection(ours["values"], 128) * 3.0  # TESSERA's vectors are not unit length
    scale = np.abs(x).max(axis=0) / 127.0
    q = np.rint(x / scale).astype(np.int8)
    path = write_geotiff(tmp_path / "tessera.tif", q, ours["profile"], nodata=None)
    scale[0, :] = np.nan  # the first row is nodata
    write_geotiff(tmp_path / "tessera_scales.tif", scale[None].astype(np.float32), ours["profile"], nodata=float("nan"))
    with open_embeddings(path) as grid:
        assert grid.encoding == "tessera" and grid.count == 128
        values = grid.read()
        half = grid.read(out_shape=(128, grid.height // 2, grid.width // 2))
    assert np.isnan(values[:, 0, :]).all() and half.shape[1:] == (grid.height // 2, grid.width // 2)
    assert _cosines(values[:, 1:, :], x[:, 1:, :]).min() > 0.999
    assert np.abs(values[:, 1:, :] - x[:, 1:, :]).max() <= scale[1:].max() / 2 + 1e-6
    with rasterio.open(path) as ds:
        x0, y0 = ds.xy(3, 4)
    res = similarity_raster(TINY_S2, tmp_path / "sim.tif", embeddings=path, resolution="patch",
                            query=[{"type": "Point", "coordinates": [x0, y0]}])
    with rasterio.open(res.path) as sim:
        assert sim.read(1)[3, 4] == pytest.approx(1.0, abs=1e-5)


def test_a_file_in_another_layout_is_refused_with_the_reason(ours: dict[str, Any], tmp_path: Path) -> None:
    q = np.zeros((128, 4, 4), np.int8)
    profile = {**ours["profile"], "width": 4, "height": 4}
    bare = write_geotiff(tmp_path / "bare.tif", q, profile, nodata=None)
    with rasterio.open(bare) as ds:
        with pytest.raises(InputRasterError, match="do not say how they encode.*embedding format alphaearth"):
            detect_encoding(ds)
        with pytest.raises(InputRasterError, match="not an AlphaEarth int8 export: it has 128 int8 band"):
            detect_encoding(ds, "alphaearth")
        with pytest.raises(InputRasterError, match=r"its per-pixel scales in bare_scales.tif beside it \(missing\)"):
            detect_encoding(ds, "tessera")
        with pytest.raises(InputRasterError, match="not an msfm embedding raster"):
            detect_encoding(ds, "msfm")
        with pytest.raises(SettingsError, match="unknown embedding format 'satlas'"):
            detect_encoding(ds, "satlas")
    with rasterio.open(ours["path"]) as ds:
        assert detect_encoding(ds) == "msfm" and detect_encoding(ds, "float") == "float"
