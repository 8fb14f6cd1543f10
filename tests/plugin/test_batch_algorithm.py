"""*Batch embeddings (many rasters)* in QGIS Processing: real rasters on a local Dask cluster, one way to give them,
cancel and resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import rasterio
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from tests.conftest import BEN_S1, L8, shared_file
from tests.plugin.test_algorithms import D_DEMO, run

pytestmark = [pytest.mark.qgis, pytest.mark.slow]  # each run starts a Dask cluster (~3 s)
FAST = {"TILE_SIZE": 224, "OVERLAP": 32, "SCALE": 1, "WORKERS": 1, "PRECISION": "fp32"}


class CancelAfterFirst(QgsProcessingFeedback):
    """Cancels once the first raster is done."""

    def setProgress(self, progress: float) -> None:  # noqa: N802 - QGIS API
        super().setProgress(progress)
        if progress > 0:
            self.cancel()


def test_layers_become_cogs_mosaics_and_stac_and_a_cancelled_run_resumes(msfm_provider: Any,
                                                                          tmp_path: Path) -> None:
    rasters = [str(shared_file(*BEN_S1)), str(shared_file(*L8))]
    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("batch_embed", {"INPUTS": rasters, "OUTPUT": str(out), **FAST}, feedback=CancelAfterFirst())
    result = run("batch_embed", {"INPUTS": rasters, "OUTPUT": str(out), **FAST})
    assert (result["DONE"], result["SKIPPED"], json.loads(result["FAILED"])) == (1, 1, {})
    names = sorted(Path(r).stem for r in rasters)
    assert sorted(p.stem for p in out.glob("*.tif")) == names
    for name in names:
        with rasterio.open(out / f"{name}.tif") as ds:
            assert ds.count == D_DEMO and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert len(json.loads(result["MOSAICS"])) == 2 and Path(result["STAC"]).is_file()  # two CRSs: two mosaics


def test_the_rasters_are_given_one_way(msfm_provider: Any, tmp_path: Path) -> None:
    with pytest.raises(QgsProcessingException, match="one way"):
        run("batch_embed", {"INPUTS": [str(shared_file(*BEN_S1))], "FOLDER": str(tmp_path),
                            "OUTPUT": str(tmp_path / "out"), **FAST})
    with pytest.raises(QgsProcessingException, match="one way"):
        run("batch_embed", {"OUTPUT": str(tmp_path / "out"), **FAST})
