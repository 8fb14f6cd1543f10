"""Tests of training/recipes/smarties_align.py (recipe ``smarties-align``): SMARTIES continual alignment onto a new
sensor with MAE + MSAD to a frozen domain teacher, on the real BigEarthNet-MM S1/S2 pairs and Landsat-8 pan/MS scene.

The 20-step run uses the bundled demo encoder (224-px inputs); the other runs use the original SMARTIES code's tiny
full-MAE fixture (``fixtures/smarties/tiny_mae.safetensors``: D 32, patch 8, 4 × 4 tokens) to stay fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch

from engine import cli as engine_cli
from engine.errors import CheckpointError
from engine.models import load_model, read_checkpoint
from tests.conftest import DATA, FIXTURES, shared_file
from tests.training.helpers import fit_recipe, read_log
from training.config import ConfigError
from training.data.pairs import PairedCropSampler, bigearthnet_pairs, pan_ms_pairs
from training.export import load_msad_heads
from training.models.smarties_align import SmartiesAlignModel
from training.recipes.smarties_align import (
    SmartiesAlignConfig,
    align_param_groups,
    align_task,
    build_align_model,
    build_stream,
    load_align_config,
)
from training.runner import LOG_COLUMNS, Runner, latest_checkpoint

BEN = DATA / "bigearthnet_mm"
TINY_MAE = FIXTURES / "smarties" / "tiny_mae.safetensors"
#: Overrides turning the tiny config into a run of the 4 × 4-token fixture model (32-px crops).
FIXTURE_MODEL = ("model.num_heads=4", "msad.proj_dim=64", "data.batch_size=2")


def align_cfg(out: Path, *overrides: str, init: Optional[Path] = None) -> SmartiesAlignConfig:
    """The tiny CPU config on the shared BigEarthNet pairs, one thread, no progress bar, no prefetch thread."""
    shared_file("data", "bigearthnet_mm", "index.csv")
    extra = [f"model.init={shared_file(*init.relative_to(FIXTURES.parent).parts)}"] if init is not None else []
    return load_align_config("smarties-align-tiny-cpu", [
        f"run.out_dir={out}", "run.progress=false", "run.threads=1", f"data.pairs.path={BEN}", "data.prefetch=0",
        *extra, *overrides])


def fit(cfg, crash_at: Optional[int] = None) -> tuple[Any, Any]:
    """Fit the recipe; ``crash_at`` raises KeyboardInterrupt in that (0-based) step. Returns (result or None, task)."""
    return fit_recipe(cfg, align_task, crash_at)


def first_batch(cfg: SmartiesAlignConfig, patch: int, grid: int) -> dict[str, Any]:
    stream, _ = build_stream(cfg, patch, grid)
    try:
        return next(iter(stream))
    finally:
        stream.close()


# ---------------------------------------------------------------------------------------------------- 20 real steps
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SmartiesAlignConfig, Any, Any, dict]:
    """The tiny config: bundled demo encoder, S2 teacher → S1 student, 20 steps on one fixed batch of 4 real pairs."""
    cfg = align_cfg(tmp_path_factory.mktemp("align") / "run", "data.overfit_one_batch=true")
    runner = Runner(cfg.run, cfg)
    task = align_task(cfg, runner)
    initial = {k: v.clone() for k, v in task.model.teacher.state_dict().items()}
    try:
        result = runner.fit(task)
    finally:
        task.data.close()
    return cfg, result, task, initial


@pytest.mark.slow  # the demo_run fixture: 20 steps of the demo encoder, about 12 s
def test_tiny_config_aligns_s1_onto_s2_and_the_losses_fall(demo_run) -> None:
    cfg, result, task, _ = demo_run
    rows = read_log(result.log_csv)
    assert list(rows[0]) == [*LOG_COLUMNS, "mae_loss", "msad_loss"] and len(rows) == 20
    mae = np.array([float(r["mae_loss"]) for r in rows])
    msad = np.array([float(r["msad_loss"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, cfg.align.mae_weight * mae + cfg.msad.alpha * msad, rtol=1e-4)
    # one fixed batch: the MSAD term (teacher S2 tokens vs student S1 tokens) and the S1 MAE loss both fall
    assert msad[-5:].mean() < 0.7 * msad[:5].mean(), msad
    assert mae[-5:].mean() < mae[:5].mean() - 0.1, mae
    assert result.steps == 20 and [p.name for p in result.exports] == [
        "smarties-demo-tiny-s1.safetensors", "smarties-demo-tiny-s1-mae.safetensors",
        "smarties-demo-tiny-s1-msad-heads.safetensors"]


@pytest.mark.slow  # demo_run
def test_domain_teacher_is_frozen_bit_identical_and_outside_the_optimiser(demo_run) -> None:
    cfg, _, task, initial = demo_run
    model: SmartiesAlignModel = task.model
    teacher = model.teacher
    assert not teacher.training and model.student.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, initial[k]) for k, v in teacher.state_dict().items())
    original = load_model("smarties-demo-tiny").state_dict()  # ... and equal to the checkpoint it was copied from
    assert all(torch.equal(v, original[k]) for k, v in teacher.state_dict().items())
    listed = {id(p) for g in task.param_groups for p in g["params"]}
    assert not any(id(p) in listed for p in teacher.parameters())
    assert all(id(p) in listed for p in model.msad.heads.parameters())  # paper mode: heads are trained
    student = model.student.encoder.state_dict()
    assert not torch.equal(student["blocks.0.attn.qkv.weight"], original["blocks.0.attn.qkv.weight"])


@pytest.mark.slow  # demo_run
def test_export_loads_in_the_engine_and_changes_s1_embeddings(demo_run) -> None:
    cfg, result, task, _ = demo_run
    encoder_file, mae_file, heads_file = result.exports
    aligned, initial = load_model(encoder_file), load_model("smarties-demo-tiny")
    assert aligned.provenance.layout == "encoder" and read_checkpoint(mae_file).layout == "mae"
    geometry = lambda m: (m.embed_dim, m.depth, m.num_heads, m.grid_size)  # noqa: E731
    assert geometry(aligned) == geometry(initial)
    pairs = bigearthnet_pairs(BEN)
    crops = PairedCropSampler(pairs, size_px=224, seed=5).batch(3)
    with torch.no_grad():
        for sensor in ("s1", "s2"):
            a = aligned.encode(crops.images[sensor], crops.bands[sensor])
            b = initial.encode(crops.images[sensor], crops.bands[sensor])
            assert a.shape == b.shape == (3, initial.embed_dim)
            assert (a - b).abs().max() > 1e-3, sensor
        tokens = aligned.encode(crops.images["s1"], crops.bands["s1"], "tokens")
        torch.testing.assert_close(tokens[:, 0], aligned.encode(crops.images["s1"], crops.bands["s1"]))
    assert tokens.shape == (3, 1 + 14 * 14, initial.embed_dim)
    heads, meta = load_msad_heads(heads_file)
    trained = task.model.msad.heads.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in heads.state_dict().items())
    assert (meta["sat1"], meta["sat2"], meta["steps"], meta["proj_dim"]) == ("s2", "s1", 20, 256)
    with pytest.raises(CheckpointError):  # the heads file is not an encoder: the engine refuses it
        load_model(heads_file)


# ---------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", ["paper", "compat"])
def test_msad_gradient_reaches_student_and_heads_in_paper_mode_only(tmp_path, mode) -> None:
    mae_weight = 0.0 if mode == "paper" else 1.0  # paper: MSAD alone; compat needs the MAE term to train at all
    cfg = align_cfg(tmp_path, *FIXTURE_MODEL, f"msad.mode={mode}", f"align.mae_weight={mae_weight}", init=TINY_MAE)
    torch.manual_seed(0)
    model = build_align_model(cfg)
    batch = first_batch(cfg, 8, 4)
    loss, mae, msad = model(batch)
    loss.backward()
    heads = list(model.msad.heads.parameters())
    qkv = model.student.encoder.blocks[0].attn.qkv.weight
    assert all(p.grad is None for p in model.teacher.parameters())
    with torch.no_grad():
        old = model.teacher.encode(batch["old"], batch["old_bands"], "tokens")
    new = model.student.encoder.encode(batch["new"], batch["new_bands"], "tokens")
    value = model.msad([old, new])
    if mode == "paper":
        assert torch.isnan(mae) and value.requires_grad
        assert qkv.grad is not None and qkv.grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads)
        assert not any(p.grad is not None for p in model.student.decoder_blocks.parameters())  # frozen, unused
        names = [g["name"] for g in align_param_groups(model, 0.05)]
        assert names == ["student.decay", "student.no_decay", "msad_heads.decay", "msad_heads.no_decay"]
    else:
        assert value.grad_fn is None and torch.isfinite(msad) and torch.isfinite(mae)
        assert all(p.grad is None and not p.requires_grad for p in heads)
        torch.testing.assert_close(loss, mae + cfg.msad.alpha * msad)
        assert [g["name"] for g in align_param_groups(model, 0.05)] == ["student.decay", "student.no_decay"]


# ---------------------------------------------------------------------------------------------------- resume, init
def test_resume_continues_identically(tmp_path) -> None:
    """Crash in step 4 (checkpoint at 2), resume: same losses, log and weights (student, heads, teacher)."""
    over = (*FIXTURE_MODEL, "run.steps=5", "run.checkpoint_every=2")
    full, full_task = fit(align_cfg(tmp_path / "full", *over, init=TINY_MAE))
    crashed, _ = fit(align_cfg(tmp_path / "cut", *over, init=TINY_MAE), crash_at=3)
    assert crashed is None and latest_checkpoint(tmp_path / "cut").name == "step_0000002"
    resumed, resumed_task = fit(align_cfg(tmp_path / "cut", *over, "run.resume=true", init=TINY_MAE))
    assert resumed.start_step == 2 and resumed.steps == 5
    assert resumed.history == full.history[2:]  # exact float equality
    a, b = full_task.model.state_dict(), resumed_task.model.state_dict()
    assert set(a) == set(b) and any(k.startswith("msad.heads.") for k in a) and any(k.startswith("teacher.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(read_log(resumed.log_csv)) == strip(read_log(full.log_csv))


def test_init_from_full_mae_file_and_from_a_pickled_state_dict(tmp_path) -> None:
    """The official full-MAE layout restores the decoder; a DDP-prefixed .pth under "model" loads like the file."""
    from safetensors.torch import load_file

    file_state = load_file(str(shared_file("fixtures", "smarties", "tiny_mae.safetensors")))
    full = build_align_model(align_cfg(tmp_path, *FIXTURE_MODEL, init=TINY_MAE))
    assert all(torch.equal(v, file_state[k]) for k, v in full.student.state_dict().items())  # decoder included
    pth = tmp_path / "smarties.pth"
    torch.save({"model": {f"module.{k}": v for k, v in file_state.items()}, "epoch": 3}, pth)
    cfg = align_cfg(tmp_path, *FIXTURE_MODEL, f"model.init={pth}")
    from_pickle = build_align_model(cfg)
    assert all(torch.equal(v, file_state[k]) for k, v in from_pickle.student.state_dict().items())
    assert all(torch.equal(v, file_state[k]) for k, v in from_pickle.teacher.state_dict().items())
    dino = shared_file("fixtures", "xstars", "vit_tiny_dino_checkpoint.pth")
    with pytest.raises(ConfigError, match="DINO / X-STARS checkpoint.*xstars-continual"):
        build_align_model(align_cfg(tmp_path, *FIXTURE_MODEL, f"model.init={dino}"))


# ---------------------------------------------------------------------------------------------------- data, errors
def test_token_grids_correspond_across_gsds() -> None:
    """Landsat-8 pan (15 m) ↔ multispectral (30 m): a paired crop's patch t covers the same ground in both views.

    Per 16-px patch of a 224-px crop, the pan mean correlates with the mean of B2–B4 at the same grid position far
    better than with the patch one token to the right or below."""
    ms = shared_file("data", "l8_l1_10band_30m_gulfcoast.tif")
    pan = shared_file("data", "l8_l1_pan_b8_15m_gulfcoast.tif")
    sampler = PairedCropSampler(pan_ms_pairs(ms, pan, "landsat8_oli_tirs", "landsat8_oli_tirs"), size_px=224,
                                scale=(0.03, 0.06), seed=3)
    same, shifted = [], []
    for _ in range(3):
        crop = sampler.sample(0)
        rgb = [crop.bands["ms"].index(k) for k in ("blue_2", "green_2", "red_2")]
        a = crop.images["pan"][0].reshape(14, 16, 14, 16).mean((1, 3))
        b = crop.images["ms"][rgb].mean(0).reshape(14, 16, 14, 16).mean((1, 3))
        same.append(np.corrcoef(a.flatten(), b.flatten())[0, 1])
        shifted.append(max(np.corrcoef(a[:, 1:].flatten(), b[:, :-1].flatten())[0, 1],
                           np.corrcoef(a[1:].flatten(), b[:-1].flatten())[0, 1]))
    assert min(same) > 0.85 and max(np.array(shifted) - np.array(same)) < -0.2, (same, shifted)


def test_mismatched_configs_give_clear_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="both 's1'"):
        align_cfg(tmp_path, "align.old_sensor=s1")
    with pytest.raises(ConfigError, match="nothing would train"):
        align_cfg(tmp_path, "align.mae_weight=0", "msad.mode=compat")
    with pytest.raises(ConfigError, match="batch_size must be ≥ 2"):
        align_cfg(tmp_path, "data.batch_size=1")
    with pytest.raises(ConfigError, match=r"\['sar'\] are not in the pairs.*\['s1', 's2'\]"):
        build_stream(align_cfg(tmp_path, "align.new_sensor=sar"), 16, 14)
    with pytest.raises(ConfigError, match="data.pairs.path is not set"):
        build_stream(align_cfg(tmp_path, "data.pairs.path=null"), 16, 14)
    with pytest.raises(FileNotFoundError, match="index.csv"):
        build_stream(align_cfg(tmp_path, f"data.pairs.path={tmp_path / 'no-pairs'}"), 16, 14)
    # a panchromatic new sensor has no MAE pixel head: MSAD only
    pairs_csv = tmp_path / "l8.csv"
    pairs_csv.write_text(f"ms,pan\n{shared_file('data', 'l8_l1_10band_30m_gulfcoast.tif')},"
                         f"{shared_file('data', 'l8_l1_pan_b8_15m_gulfcoast.tif')}\n")
    pan = ("data.pairs.kind=csv", f"data.pairs.path={pairs_csv}", "data.pairs.presets={ms: landsat8_oli_tirs, "
           "pan: landsat8_oli_tirs}", "align.old_sensor=ms", "align.new_sensor=pan")
    with pytest.raises(ConfigError, match="without an MAE pixel head.*mae_weight: 0"):
        build_stream(align_cfg(tmp_path, *pan), 16, 14)
    stream, n = build_stream(align_cfg(tmp_path, *pan, "align.mae_weight=0"), 16, 4)
    assert n == 1 and stream.sampler.size_px == {"ms": 64, "pan": 64}


def test_msfm_train_smarties_align_reports_a_mismatched_config(tmp_path, capsys) -> None:
    code = engine_cli.main(["train", "smarties-align", "smarties-align-tiny-cpu", "--out-dir", str(tmp_path),
                            "--set", "align.new_sensor=s2"])
    assert code == 2 and "align.old_sensor and align.new_sensor are both 's2'" in capsys.readouterr().err
    assert engine_cli.main(["train", "smarties-align", "smarties-mae-tiny-cpu"]) == 2
    assert "unknown key mae" in capsys.readouterr().err  # a smarties-mae config is not a smarties-align one


def test_bundled_configs_load_and_feed_ground_aligned_batches(tmp_path) -> None:
    """Both YAML configs load strictly; the ViT-B one (weights not fetched here) reads the BigEarthNet pairs."""
    tiny = align_cfg(tmp_path)
    assert (tiny.align.old_sensor, tiny.align.new_sensor, tiny.model.init) == ("s2", "s1", "smarties-demo-tiny")
    vitb = load_align_config("smarties-align-s1-vitb", [f"data.pairs.path={BEN}", "data.batch_size=2",
                                                        "data.prefetch=0"])
    assert vitb.model.init == "smarties-vit-b" and vitb.msad.proj_dim == 1024 and vitb.msad.alpha == 0.1
    batch = first_batch(vitb, 16, 4)
    assert batch["old"].shape == (2, 12, 64, 64) and batch["new"].shape == (2, 2, 64, 64)
    assert batch["new_bands"] == ["microwave_1", "microwave_2"]
    assert batch["patches"].shape == (2, 4, 4, 2, 16, 16) and batch["indices"][0, 0, 0].tolist() == [15, 16]
