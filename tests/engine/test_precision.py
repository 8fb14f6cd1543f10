"""Precision: how ``auto`` chooses on each kind of processor, and fp32 ↔ bf16 ↔ int8 agreement on a real scene.

Agreement thresholds are issue 16's: embedding cosine mean ≥ 0.999 (bf16) / ≥ 0.99 (int8), k-means (k = 8) adjusted
Rand ≥ 0.98, segmentation argmax agreement ≥ 99 %. bf16 runs everywhere (emulated where the CPU has no native bf16,
slower but the same numbers), so the agreement tests do not depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from sklearn.metrics import adjusted_rand_score

from engine.cli.options import DEMO_RASTER
from engine.errors import SettingsError
from engine.maps import ClusterSettings, cluster_raster, embed_raster
from engine.models import choose_precision, native_bf16, onnx_precision
from engine.segmentation import segment_raster
from engine.settings import InferenceSettings
from tests.conftest import TINY_S2, shared_file
from tests.engine.test_segmentation_grid import _fit

S2 = "sen1floods11_india_900498_s2_l1c.tif"  # the segmentation head's flood chip
#: Embedding and k-means agreement on the demo scene (1024² px at scale 1, 25 tiles, 64 × 64 cells): on the flood
#: chip, k = 8 has no stable solution (two fp32 k-means seeds agree at adjusted Rand 0.5), so any change moves classes.
SCENE = DEMO_RASTER

AMX = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"]
ZEN4 = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
AVX2 = ["avx2", "fma", "avx_vnni"]


@pytest.mark.parametrize(("flags", "want", "why"), [
    (AMX, "bf16", "AMX bf16 tiles"), (ZEN4, "bf16", "AVX-512 BF16"), (["fp", "asimd", "bf16"], "bf16", "Arm BF16"),
    (AVX2, "fp32", "int8"), ([], "fp32", "no native bf16"),
])
def test_auto_takes_bf16_only_where_the_cpu_has_it(flags: list[str], want: str, why: str) -> None:
    choice = choose_precision("auto", "cpu", features=flags)
    assert choice.precision == want
    assert why in choice.reason and choice.reason.startswith("auto")


def test_asked_precisions_are_kept_and_explained() -> None:
    assert choose_precision("fp32", "cpu", features=AMX).precision == "fp32"
    slow = choose_precision("bf16", "cpu", features=AVX2)
    assert slow.precision == "bf16" and "emulates" in slow.reason
    assert choose_precision("int8", "cpu", features=AVX2).precision == "int8"
    assert native_bf16(AVX2) is None and native_bf16(AMX) == "AMX bf16 tiles"


def test_impossible_precisions_are_refused_with_the_fix() -> None:
    with pytest.raises(SettingsError, match="device cpu"):
        choose_precision("int8", "cuda:0")
    with pytest.raises(SettingsError, match="int8"):
        InferenceSettings(precision="int4")
    # an ONNX model runs as exported: auto follows the file, another precision names the export to make
    assert choose_precision("auto", "cpu", onnx="int8").precision == "int8"
    with pytest.raises(SettingsError, match="--int8"):
        choose_precision("int8", "cpu", onnx="float32")
    assert onnx_precision({"msfm_quantization": {"weights": "int8"}}) == "int8"
    assert onnx_precision({}) == "float32"
    from engine.models import dino_vit, onnx_twin

    with pytest.raises(SettingsError, match="SMARTIES encoders only"):  # X-STARS / DINO ViTs run in fp32 or bf16
        onnx_twin(dino_vit("vit_tiny"), precision="int8")


def _embed(tmp_path: Path, model: Any, precision: str) -> tuple[np.ndarray, Path]:
    out = tmp_path / f"emb-{precision}.tif"
    embed_raster(SCENE, out, model, settings=InferenceSettings(overlap_px=0, scale=1.0, threads=2,
                                                               precision=precision))
    with rasterio.open(out) as ds:
        assert json.loads(ds.tags()["MSFM_SETTINGS"])["precision"] == precision  # what ran, never "auto"
        return ds.read().reshape(ds.count, -1), out


def _classes(tmp_path: Path, source: Path, name: str) -> np.ndarray:
    out = tmp_path / f"classes-{name}.tif"
    cluster_raster(SCENE, out, embeddings=source,
                   clustering=ClusterSettings(k=8, resolution="patch", seed=0))
    with rasterio.open(out) as ds:
        return ds.read(1).ravel()


@pytest.mark.parametrize(("precision", "min_cosine"), [("bf16", 0.999), ("int8", 0.99)])
def test_embeddings_and_kmeans_agree_with_fp32(tmp_path: Path, demo_model: Any, monkeypatch: pytest.MonkeyPatch,
                                               precision: str, min_cosine: float) -> None:
    monkeypatch.setenv("MSFM_ONNX_CACHE", str(tmp_path / "onnx"))
    ref, ref_path = _embed(tmp_path, demo_model, "fp32")
    got, got_path = _embed(tmp_path, demo_model, precision)
    ok = np.isfinite(ref).all(0)
    assert ok.mean() > 0.95 and np.array_equal(ok, np.isfinite(got).all(0))
    a, b = ref[:, ok], got[:, ok]
    cosine = (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))
    assert cosine.mean() >= min_cosine, cosine.mean()
    assert not np.array_equal(a, b)  # the other path really ran
    ari = adjusted_rand_score(_classes(tmp_path, ref_path, "fp32"), _classes(tmp_path, got_path, precision))
    assert ari >= 0.98, ari


def test_segmentation_argmax_agrees_with_fp32(tmp_path: Path, demo_model: Any) -> None:
    head, _ = _fit(tmp_path, S2, demo_model, "pixel", steps=40)
    maps = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"seg-{precision}.tif"
        segment_raster(shared_file("data", S2), out, head, demo_model,
                       settings=InferenceSettings(overlap_px=0, threads=2, precision=precision))
        with rasterio.open(out) as ds:
            maps[precision] = ds.read(1)
            assert json.loads(ds.tags()["MSFM_SETTINGS"])["precision"] == precision
    valid = maps["fp32"] != 255
    assert valid.mean() > 0.9
    agreement = (maps["fp32"] == maps["bf16"])[valid].mean()
    assert agreement >= 0.99, agreement
    with pytest.raises(SettingsError, match="export-onnx"):
        segment_raster(shared_file("data", S2), tmp_path / "seg-int8.tif", head, demo_model,
                       settings=InferenceSettings(overlap_px=0, threads=2, precision="int8"))


def test_the_plugin_offers_the_engines_precisions() -> None:
    pytest.importorskip("qgis")
    from engine.settings import PRECISIONS
    from qgis_plugin.algorithms.base import PRECISIONS as PLUGIN_PRECISIONS

    assert PLUGIN_PRECISIONS == PRECISIONS


def test_cli_precision_is_used_and_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.cli import main

    monkeypatch.setenv("MSFM_ONNX_CACHE", str(tmp_path / "onnx"))
    out = tmp_path / "emb.tif"
    assert main(["embed", str(TINY_S2), str(out), "--precision", "int8", "--threads", "2", "--overlap-px", "0"]) == 0
    with rasterio.open(out) as ds:
        assert json.loads(ds.tags()["MSFM_SETTINGS"])["precision"] == "int8"
    assert list((tmp_path / "onnx").glob("*-int8.onnx"))  # the int8 twin, made once into the cache
    with pytest.raises(SystemExit) as refused:
        main(["embed", str(TINY_S2), str(tmp_path / "x.tif"), "--precision", "fp16"])
    assert refused.value.code == 2
