"""int8 embedding rasters (engine.maps.quantized): the scheme's precision, and every tool reading them as float32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from sklearn.metrics import adjusted_rand_score

from engine.cli.options import DEMO_RASTER
from engine.maps import (
    ClusterSettings,
    cluster_raster,
    dequantize,
    embed_raster,
    open_embeddings,
    quantize,
    similarity_raster,
    write_pca_raster,
    write_pixel_embeddings,
)
from engine.settings import InferenceSettings

RUN = dict(overlap_px=0, scale=1.0, threads=2, precision="fp32")  # the demo scene: 25 tiles, 64 × 64 cells


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    ok = np.isfinite(a).all(0)
    assert np.array_equal(ok, np.isfinite(b).all(0))  # the same nodata cells
    a, b = a[:, ok], b[:, ok]
    return (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


def test_the_scheme_keeps_every_cell_to_its_own_precision() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((64, 20, 30)).astype(np.float32)
    values *= np.exp2(rng.uniform(-8, 20, (1, 20, 30))).astype(np.float32)  # norms over 8 decades
    values[:, 3, 4] = np.nan
    values[:, 5, 6] = 0.0
    q = quantize(values)
    assert q.dtype == np.int8 and q.shape == (65, 20, 30)
    assert (q[:, 3, 4] == -128).all() and (q[:-1] != -128).sum() == 64 * (600 - 1)
    back = dequantize(q)
    assert np.isnan(back[:, 3, 4]).all() and (back[:, 5, 6] == 0).all()
    ok = np.isfinite(values).all(0) & (np.abs(values).max(0) > 0)
    step = np.exp2(q[-1].astype(np.float32) / 8)
    assert (np.abs(back - values)[:, ok] <= step[ok] / 2 + 1e-6 * np.abs(values)[:, ok]).all()
    assert _cosine(values[:, ok][:, None], back[:, ok][:, None]).min() > 0.9999
    with pytest.raises(ValueError, match="float16 or float32"):
        quantize(np.full((4, 1, 1), 1e7, np.float32))


@pytest.fixture(scope="module")
def stored(demo_model: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("quantized")
    return {dtype: embed_raster(DEMO_RASTER, folder / f"{dtype}.tif", demo_model,
                                settings=InferenceSettings(output_dtype=dtype, **RUN)).path
            for dtype in ("float32", "int8")}


def test_an_int8_raster_is_a_quarter_of_float32_and_reads_back_as_float32(stored: dict[str, Path]) -> None:
    with rasterio.open(stored["int8"]) as raw:
        assert raw.count == 193 and raw.dtypes[0] == "int8" and raw.nodata == -128
        assert raw.descriptions[-1] == "scale_exponent"
        assert json.loads(raw.tags()["MSFM_QUANTIZATION"])["scheme"] == "msfm-int8-log2-v1"
    assert stored["int8"].stat().st_size < 0.35 * stored["float32"].stat().st_size
    with open_embeddings(stored["float32"]) as a, open_embeddings(stored["int8"]) as b:
        assert (a.count, b.count, b.quantized, a.quantized) == (192, 192, True, False)
        assert (b.width, b.height, b.transform, b.crs) == (a.width, a.height, a.transform, a.crs)
        assert _cosine(a.read(), b.read()).mean() >= 0.9999
        window = rasterio.windows.Window(3, 5, 7, 2)
        np.testing.assert_array_equal(b.read(window=window)[[1, 4]], b.read([2, 5], window=window))


@pytest.mark.parametrize("resolution", ["patch", "pixel"])
def test_kmeans_and_similarity_read_int8_like_float32(stored: dict[str, Path], tmp_path: Path,
                                                      resolution: str) -> None:
    classes, similarity = {}, {}
    for dtype, path in stored.items():
        cluster_raster(DEMO_RASTER, tmp_path / f"k-{dtype}.tif", embeddings=path,
                       clustering=ClusterSettings(k=8, resolution=resolution, seed=0))
        similarity_raster(DEMO_RASTER, tmp_path / f"s-{dtype}.tif", embeddings=path, resolution=resolution,
                          query=[{"type": "Point", "coordinates": _centre(path)}])
        with rasterio.open(tmp_path / f"k-{dtype}.tif") as k, rasterio.open(tmp_path / f"s-{dtype}.tif") as s:
            assert "MSFM_QUANTIZATION" not in k.tags() and "MSFM_QUANTIZATION" not in s.tags()
            classes[dtype], similarity[dtype] = k.read(1).ravel(), s.read(1)
    assert adjusted_rand_score(classes["float32"], classes["int8"]) >= 0.98
    assert np.nanmax(np.abs(similarity["float32"] - similarity["int8"])) < 0.01


def test_pca_and_pixel_embeddings_of_an_int8_raster(stored: dict[str, Path], tmp_path: Path) -> None:
    pcs = {dtype: write_pca_raster(path, tmp_path / f"pca-{dtype}.tif") for dtype, path in stored.items()}
    with rasterio.open(pcs["float32"]) as a, rasterio.open(pcs["int8"]) as b:
        assert np.abs(np.abs(_cosine(a.read(), b.read()))).mean() > 0.999  # components up to their sign
    out = write_pixel_embeddings(DEMO_RASTER, stored["int8"], tmp_path / "pixel.tif", output_dtype="int8")
    with rasterio.open(out) as raw:
        assert raw.count == 193 and raw.dtypes[0] == "int8" and (raw.width, raw.height) == (1024, 1024)
        assert raw.tags()["MSFM_KIND"] == "embeddings-pixel" and "MSFM_QUANTIZATION" in raw.tags()
    with open_embeddings(out) as pixel, open_embeddings(stored["float32"]) as cells:
        # the pixel at the centre of cell (10, 20) holds that cell's embedding (interpolation weight 1 there)
        centre = pixel.read(window=rasterio.windows.Window(20 * 16 + 8, 10 * 16 + 8, 1, 1))[:, 0, 0]
        assert _cosine(centre[:, None], cells.read(window=rasterio.windows.Window(20, 10, 1, 1))[:, 0]).min() > 0.999


def _centre(path: Path) -> list[float]:
    with rasterio.open(path) as ds:
        return list(ds.xy(ds.height // 2, ds.width // 2))
