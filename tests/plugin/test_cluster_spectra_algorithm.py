"""``msfm:cluster`` with *Spectral weight* and *Suggest k (report only)* on the committed tiny Sentinel-2 crop."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from tests.conftest import TINY_S2

pytestmark = pytest.mark.qgis


def test_cluster_with_spectral_weight_reports_the_suggested_k(msfm_provider: Any, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingFeedback

    class Log(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def pushInfo(self, info: str) -> None:  # noqa: N802 - QGIS API
            self.lines.append(info)

    raster = tmp_path / "input" / TINY_S2.name  # a copy: QGIS writes .aux.xml statistics beside what it opens
    raster.parent.mkdir()
    shutil.copyfile(TINY_S2, raster)
    out = str(tmp_path / "classes.tif")
    alg = msfm_provider.algorithm("cluster")
    names = {p.name(): p.description() for p in alg.parameterDefinitions()}
    assert names["SPECTRAL_WEIGHT"] == "Spectral weight" and names["SUGGEST_K"] == "Suggest k (report only)"
    log = Log()
    result = processing.run("msfm:cluster", {"INPUT": str(raster), "K": 3, "SPECTRAL_WEIGHT": 1.0, "SUGGEST_K": True,
                                             "OVERLAP": 0, "OUTPUT": out}, feedback=log)
    assert result["K"] == 3 and 2 <= result["SUGGESTED_K"] <= 10
    text = "\n".join(log.lines)
    assert "spectral weight 1" in text and "Silhouette on the sample" in text and "k = 3 was used" in text
    with rasterio.open(TINY_S2) as src, rasterio.open(out) as classes:
        assert (classes.crs, classes.transform, classes.shape) == (src.crs, src.transform, src.shape)
        assert classes.tags()["MSFM_K"] == "3" and set(np.unique(classes.read(1))) <= {0, 1, 2}
