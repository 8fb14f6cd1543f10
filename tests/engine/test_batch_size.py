"""Tiles per forward pass: kept when given; automatic is 8 on a CPU and sized from free memory on CUDA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import rasterio
import torch

from engine.maps import embed_raster
from engine.models import tiles_per_batch
from engine.models.device import MAX_AUTO_BATCH, tile_bytes
from engine.settings import CPU_BATCH_SIZE, InferenceSettings
from tests.conftest import TINY_S2

VIT_B = dict(bands=12, patch_size=16, embed_dim=768)
GIB = 2 ** 30


def test_a_given_batch_size_is_kept_and_automatic_is_8_on_a_cpu() -> None:
    assert tiles_per_batch(InferenceSettings(batch_size=3), "cuda", value_bytes=2, **VIT_B) == 3
    for device in ("cpu", "mps", "onnxruntime cpu"):
        assert tiles_per_batch(InferenceSettings(), device, value_bytes=4, **VIT_B) == CPU_BATCH_SIZE == 8


@pytest.mark.parametrize(("free_gib", "want"), [(0.001, 1), (1.0, None), (70.0, MAX_AUTO_BATCH)])
def test_on_cuda_the_batch_fills_half_the_free_memory(free_gib: float, want: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * GIB), 80 * GIB))
    size = tiles_per_batch(InferenceSettings(), "cuda:0", value_bytes=2, **VIT_B)
    per_tile = tile_bytes(224, value_bytes=2, **VIT_B)
    assert size == (want or int(0.5 * GIB // per_tile))
    if want is None:  # between the bounds: the batch's estimate fits in half the free memory, one more tile does not
        assert size * per_tile <= 0.5 * GIB < (size + 1) * per_tile and 1 < size < MAX_AUTO_BATCH


def test_the_per_tile_estimate_grows_with_bands_tile_and_precision() -> None:
    bf16 = tile_bytes(224, value_bytes=2, **VIT_B)
    # ViT-B/16, 224 px, 12 bands, bf16: a few MiB a tile (14·196·768 block values, 12 heads of 196² scores, inputs)
    assert 8 * 2 ** 20 < bf16 < 14 * 2 ** 20  # 10.9 MiB
    assert tile_bytes(224, value_bytes=4, **VIT_B) > bf16
    assert tile_bytes(448, value_bytes=2, **VIT_B) > 4 * bf16  # attention grows with the square of the tokens
    assert tile_bytes(224, 200, 16, 768, 2) > 5 * bf16  # a hyperspectral tile: inputs dominate


def test_an_automatic_run_records_the_batch_it_used(demo_model: Any, tmp_path: Path) -> None:
    settings = InferenceSettings(tile_size_px=224, overlap_px=32, scale=1.0, threads=2, device="cpu")
    assert settings.batch_size is None
    res = embed_raster(TINY_S2, tmp_path / "emb.tif", demo_model, settings=settings)
    with rasterio.open(res.path) as ds:
        assert json.loads(ds.tags()["MSFM_SETTINGS"])["batch_size"] == CPU_BATCH_SIZE
