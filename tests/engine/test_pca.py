"""Principal components of embedding rasters: one fit for the PCA raster and the quicklook."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from engine.errors import InputRasterError
from engine.maps import embed_raster, embedding_quicklook, pca
from engine.models import SmartiesEncoder
from engine.settings import InferenceSettings
from tests.conftest import LANDSAT7, shared_file


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory, random_encoder: SmartiesEncoder) -> Path:
    """Embeddings of a raster with a nodata collar (NaN corner cells)."""
    out = tmp_path_factory.mktemp("emb") / "emb.tif"
    settings = InferenceSettings(batch_size=4, device="cpu", threads=2, scale=1, overlap_px=32)
    return embed_raster(shared_file(*LANDSAT7), out, random_encoder, settings=settings).path


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # reading the PNG back
def test_pca_raster_streams_the_principal_components(embeddings: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pca, "_BAND_VALUES", 64 * 50 * 3)  # force several row bands of 3 rows
    out = pca.write_pca_raster(embeddings, tmp_path / "pca.tif", n=3)
    with rasterio.open(embeddings) as grid, rasterio.open(out) as p:
        mean, components = pca.principal_components(grid, 3)
        g = grid.read()
        values = p.read()
        assert (p.count, p.shape, p.transform, p.crs) == (3, grid.shape, grid.transform, grid.crs)
        assert p.descriptions == ("pc1", "pc2", "pc3") and p.dtypes[0] == "float32" and np.isnan(p.nodata)
        assert p.tags()["MSFM_KIND"] == "pca"
        explained = json.loads(p.tags()["MSFM_PCA_EXPLAINED"])
    assert components.shape == (3, 64) and mean.shape == (64,)
    np.testing.assert_allclose(components @ components.T, np.eye(3), atol=1e-5)  # orthonormal
    assert explained == sorted(explained, reverse=True) and 0 < sum(explained) <= 1
    nodata = ~np.isfinite(g).all(axis=0)
    assert nodata.any() and np.isnan(values[:, nodata]).all() and np.isfinite(values[:, ~nodata]).all()
    x = g[:, ~nodata].T
    np.testing.assert_allclose(values[:, ~nodata].T, (x - mean) @ components.T, rtol=1e-4, atol=1e-4)
    # The sampled fit agrees with the variance of the whole raster: PC1 explains more than PC2, PC2 more than PC3, and
    # the ratios match the projected variances.
    var = values[:, ~nodata].var(axis=1)
    assert var[0] > var[1] > var[2]
    np.testing.assert_allclose(var / x.var(axis=0).sum(), explained, rtol=0.05)
    # The quicklook uses the same components.
    png = embedding_quicklook(embeddings, tmp_path / "pca.png")
    with rasterio.open(png) as q:
        rgb = q.read()
    assert rgb.shape[0] == 3 and rgb[:, ~nodata].std() > 20 and (rgb[:, nodata] == 0).all()
    with pytest.raises(InputRasterError, match="between 1 and 64"):
        pca.write_pca_raster(embeddings, tmp_path / "bad.tif", n=65)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["pca.png", "pca.tif"]
