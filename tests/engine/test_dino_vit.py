"""DINO / X-STARS ViT, head and checkpoints: parity with the original code, safe unpickling, strict keys, round trip.

Fixtures (../shared/fixtures/xstars, README §3–§4): ``vit_tiny_dino_checkpoint.pth`` was written by the original
``train_xstars`` (D = 48, depth 2, 3 heads, head 32/16/64; teacher ≠ student), ``vit_tiny_dino_io.safetensors`` holds
the original modules' outputs in eval mode. Tolerance atol 1e-5 (README "Tolerances").
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window
from safetensors.torch import load_file, save_file

from engine.errors import BandResolutionError, CheckpointError
from engine.maps import embed_raster
from engine.models import (
    ARCHS,
    DINOHead,
    DinoViT,
    MultiCropWrapper,
    build_dino_model,
    dino_vit,
    load_model,
    model_info,
    read_dino_checkpoint,
    save_dino_checkpoint,
    xstars_norm,
)
from engine.raster import Region
from engine.settings import InferenceSettings
from engine.spectral import resolve_bands, select_band_families
from tests.conftest import BEN_S1, NAIP, S2_L1C, shared_file

ATOL = 1e-5  # fixtures README, "Tolerances": ViT/head outputs


@pytest.fixture(scope="module")
def ckpt_path() -> Path:
    return shared_file("fixtures", "xstars", "vit_tiny_dino_checkpoint.pth")


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(shared_file("fixtures", "xstars", "vit_tiny_dino_io.safetensors")))


@pytest.fixture(scope="module")
def teacher(ckpt_path: Path) -> MultiCropWrapper:
    model = build_dino_model(read_dino_checkpoint(ckpt_path, "teacher"), with_head=True)
    assert isinstance(model, MultiCropWrapper)
    return model.eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------------- parity
def test_teacher_matches_the_original_outputs(teacher: MultiCropWrapper, io: dict[str, torch.Tensor]) -> None:
    images = io["images"]
    with torch.no_grad():
        cls = teacher.backbone(images)
        tokens = teacher.backbone(images, return_all_tokens=True)
        head_out = teacher(images)
        crop96 = teacher.backbone(images[:1, :, :96, :96], return_all_tokens=True)
    assert tokens.shape == (2, 197, 48) and crop96.shape == (1, 37, 48)  # 6 × 6 + 1 tokens for a 96-px crop
    assert _max_diff(cls, io["teacher_cls"]) < ATOL
    assert _max_diff(tokens, io["teacher_tokens"]) < ATOL
    assert _max_diff(head_out, io["teacher_head_out"]) < ATOL  # weight_g/weight_v → parametrizations mapping
    assert _max_diff(crop96, io["teacher_tokens_crop96"]) < ATOL  # bicubic resize with DINO's +0.1 offset


def test_student_is_read_from_its_own_dict(ckpt_path: Path, io: dict[str, torch.Tensor]) -> None:
    student = read_dino_checkpoint(ckpt_path, "student", with_head=False)
    assert student.which == "student" and student.available == ("student", "teacher") and not student.head_state
    model = build_dino_model(student).eval()
    with torch.no_grad():
        cls = model(io["images"])
    assert _max_diff(cls, io["student_cls_eval"]) < ATOL
    assert _max_diff(cls, io["teacher_cls"]) > 0.1  # reading the wrong dict would show


def test_checkpoint_geometry_comes_from_the_tensors(ckpt_path: Path) -> None:
    ck = read_dino_checkpoint(ckpt_path)
    assert ck.args["arch"] == "vit_tiny"  # the parser's choice; the tensors are the reduced model
    g = ck.geometry
    assert (g.embed_dim, g.depth, g.patch_size, g.grid_size, g.mlp_hidden) == (48, 2, 16, 14, 192)
    assert (ck.head.hidden_dim, ck.head.bottleneck_dim, ck.head.out_dim, ck.head.nlayers) == (32, 16, 64, 3)
    assert ck.epoch == 1 and ck.args["sensors"] == ["Sentinel", "Landsat"]
    assert ck.input_norm is not None and ck.input_norm.mean == pytest.approx(xstars_norm("sentinel_landsat").mean)
    assert len(ck.backbone_state) == 4 + 12 * 2 + 2 and len(ck.head_state) == 8


# ---------------------------------------------------------------------------------------------------- architecture
@pytest.mark.parametrize(
    ("arch", "backbone_m", "head_m"),
    [("vit_tiny", 5.52, 21.96), ("vit_small", 21.67, 22.35), ("vit_base", 85.80, 23.14), ("vit_large", 303.3, 23.66)],
)
def test_parameter_counts_match_the_spec_table(arch: str, backbone_m: float, head_m: float) -> None:
    with torch.device("meta"):  # sizes only
        backbone = dino_vit(arch)
        head = DINOHead(ARCHS[arch][0])  # out 65536, hidden 2048, bottleneck 256
    assert backbone.num_parameters() / 1e6 == pytest.approx(backbone_m, rel=2e-3)
    assert sum(p.numel() for p in head.parameters()) / 1e6 == pytest.approx(head_m, rel=2e-3)


def test_stochastic_depth_rises_linearly_and_only_acts_in_training() -> None:
    model = DinoViT(32, 3, 2, img_size=64, drop_path_rate=0.1)
    assert [b.drop_path_rate for b in model.blocks] == pytest.approx([0.0, 0.05, 0.1])
    x = torch.randn(8, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        torch.manual_seed(0)
        model.train()
        assert not torch.allclose(model(x), model(x))


def test_multicrop_wrapper_groups_consecutive_crops_of_equal_width() -> None:
    torch.manual_seed(0)
    wrapper = MultiCropWrapper(DinoViT(32, 1, 2, img_size=64), DINOHead(32, 10, 16, 8)).eval()
    calls: list[int] = []
    wrapper.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    crops = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32),
             torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)]
    with torch.no_grad():
        out = wrapper(crops)
        calls_grouped = list(calls)
        one_by_one = torch.cat([wrapper(c) for c in crops])
    assert calls_grouped == [4, 4, 2]  # 2 globals, 2 locals, then a global again (not merged: not consecutive)
    assert out.shape == (10, 10)
    torch.testing.assert_close(out, one_by_one, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- safe unpickling
class _Payload:
    """Pickles as a call to os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1, 1, 8)}, "args": _Payload(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match=r"posix\.system.*not on the allow-list") as err:
        read_dino_checkpoint(path)
    assert "nothing in the file was executed" in str(err.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really is hostile: an unrestricted load runs the command
    assert marker.exists()


def test_the_allow_list_is_needed_and_sufficient(ckpt_path: Path, tmp_path: Path) -> None:
    import pickle

    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt_path, map_location="cpu", weights_only=True)  # torch's default refuses the original file
    assert read_dino_checkpoint(ckpt_path).epoch == 1  # pickled under numpy 2: numpy._core.multiarray.scalar
    # The same structure pickled here (numpy 1.26): the scalar is numpy.core.multiarray.scalar, args a Namespace.
    numpy1 = tmp_path / "numpy1.pth"
    torch.save({"teacher": _teacher_flat(ckpt_path), "epoch": 7,
                "optimizer": {"param_groups": [{"lr": np.float64(3.9e-4), "weight_decay": np.float64(0.3)}]},
                "args": argparse.Namespace(arch="vit_tiny", mean=[0.1, 0.2, 0.3], std=[0.1, 0.1, 0.1])}, numpy1)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(numpy1)
    ck = read_dino_checkpoint(numpy1)
    assert ck.epoch == 7 and ck.input_norm.mean == (0.1, 0.2, 0.3)


# ---------------------------------------------------------------------------------------------------- strict keys
def _teacher_flat(ckpt_path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in torch.load(ckpt_path, map_location="cpu", weights_only=False)["teacher"].items()}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("backbone.blocks.1.attn.qkv.bias"), r"missing 1 backbone key\(s\): blocks\.1\.attn\.qkv"),
        (lambda sd: sd.update({"backbone.blocks.0.ls1.gamma": torch.ones(48)}), r"unexpected backbone.*ls1\.gamma"),
        (lambda sd: sd.update({"backbone.norm.bias": torch.zeros(47)}), r"norm\.bias \[47\] \(expected \[48\]\)"),
        (lambda sd: sd.update({"head.mlp.1.running_mean": torch.zeros(32)}), r"unexpected head.*mlp\.1\.running_mean"),
        (lambda sd: sd.update({"dino_center": torch.zeros(1, 64)}), r"outside backbone\.\* and head\.\*: dino_center"),
        (lambda sd: sd.update({"backbone.patch_embed.proj.weight": torch.zeros(48, 4, 16, 16)}), r"\[D=48, 3, p, p\]"),
    ],
    ids=["missing", "unexpected", "shape", "head-bn", "stray", "4-channels"],
)
def test_strict_key_rule(ckpt_path: Path, tmp_path: Path, edit: Any, message: str) -> None:
    state = _teacher_flat(ckpt_path)
    edit(state)
    path = tmp_path / "t.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=message):
        read_dino_checkpoint(path)


def test_missing_network_and_bare_state_dicts(ckpt_path: Path, tmp_path: Path, io: dict[str, torch.Tensor]) -> None:
    teacher_only = tmp_path / "teacher_only.pth"
    torch.save({"teacher": _teacher_flat(ckpt_path)}, teacher_only)
    with pytest.raises(CheckpointError, match=r"no 'student' network \(it holds teacher\); pass which='teacher'"):
        read_dino_checkpoint(teacher_only, "student")
    # DINO's released backbones are one bare state dict (no backbone. prefix, no head); D=48 needs num_heads.
    bare = tmp_path / "bare.safetensors"
    save_file({k[len("backbone."):]: v for k, v in _teacher_flat(ckpt_path).items() if k.startswith("backbone.")},
              str(bare))
    ck = read_dino_checkpoint(bare, "student")
    assert ck.which == "state" and ck.head is None and ck.input_norm is None
    with pytest.raises(CheckpointError, match="not stored in the tensors"):
        build_dino_model(ck)
    with torch.no_grad():
        cls = build_dino_model(ck, num_heads=3).eval()(io["images"])
    assert _max_diff(cls, io["teacher_cls"]) < ATOL


# ---------------------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_and_read_back_identically(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    teacher = MultiCropWrapper(DinoViT(32, 2, 4, img_size=64), DINOHead(32, 24, 16, 8, nlayers=2))
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    optimizer.param_groups[0]["lr"] = np.float64(3.9e-4)  # as the numpy schedules set it (a numpy scalar)
    args = argparse.Namespace(arch="custom", mean=[0.3, 0.3, 0.2], std=[0.2, 0.2, 0.1], lr=np.float64(0.05))
    extra = None
    if suffix == ".pth":
        extra = {"optimizer": optimizer.state_dict(), "dino_loss": {"center": torch.zeros(1, 24)}}
    path = save_dino_checkpoint(tmp_path / f"ck{suffix}", teacher, student, args=args, epoch=3, extra=extra)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ck{suffix}"]  # no temporary file left

    x = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)]
    for which, original in (("teacher", teacher), ("student", student)):
        ck = read_dino_checkpoint(path, which)
        assert ck.epoch == 3 and ck.args["lr"] == 0.05 and ck.input_norm.std == (0.2, 0.2, 0.1)
        rebuilt = build_dino_model(ck, with_head=True)
        assert rebuilt.backbone.num_heads == 4  # recorded in the file's config (D=32 is no multiple of 64)
        for (k, a), (k2, b) in zip(original.state_dict().items(), rebuilt.state_dict().items()):
            assert k == k2 and torch.equal(a, b), k
        with torch.no_grad():
            assert torch.equal(original.eval()(x), rebuilt.eval()(x))
    if suffix == ".pth":
        raw = torch.load(path, weights_only=True)  # only tensors and plain types: no allow-list needed
        assert list(raw)[:2] == ["student", "teacher"] and isinstance(raw["optimizer"]["param_groups"][0]["lr"], float)
        assert all(k.startswith("module.") for k in raw["student"]) and "head.last_layer.weight_g" in raw["teacher"]


def test_save_refuses_values_that_would_need_unpickling(tmp_path: Path) -> None:
    model = MultiCropWrapper(DinoViT(32, 1, 2, img_size=32), DINOHead(32, 8, 8, 8))
    with pytest.raises(TypeError, match=r"extra\['sampler'\]\['rng'\] is a .*Generator"):
        save_dino_checkpoint(tmp_path / "ck.pth", model, extra={"sampler": {"rng": np.random.default_rng(0)}})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- engine
@pytest.fixture(scope="module")
def engine_model(ckpt_path: Path) -> DinoViT:
    model = load_model(ckpt_path)
    assert isinstance(model, DinoViT)
    return model


def test_load_model_gives_the_teacher_backbone_for_the_engine(
    engine_model: DinoViT, ckpt_path: Path, io: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    assert engine_model.provenance.layout == "dino:teacher" and not engine_model.training
    assert engine_model.input_norm.source == "checkpoint args"  # args.mean/std: the README's Sentinel+Landsat pool
    rgb = ["red_2", "green_2", "blue_1"]
    with torch.no_grad():
        cls = engine_model.encode(io["images"], rgb, "cls")
        grid = engine_model.encode(io["images"], rgb, "grid")
        tokens = engine_model.encode(io["images"], rgb, "tokens")
    assert _max_diff(tokens, io["teacher_tokens"]) < ATOL  # all tokens after the final norm, CLS first
    assert _max_diff(cls, io["teacher_cls"]) < ATOL
    assert grid.shape == (2, 48, 14, 14)  # tokens after the final norm, row-major
    assert _max_diff(grid, io["teacher_tokens"][:, 1:].transpose(1, 2).reshape(2, 48, 14, 14)) < ATOL
    with pytest.raises(BandResolutionError, match=r"red, green, blue in that order"):
        engine_model.encode(io["images"], ["blue_1", "green_2", "red_2"], "cls")
    with pytest.raises(ValueError, match="averaging applies to SMARTIES"):
        load_model(ckpt_path, averaging="reference")
    # The student, and the teacher dict converted to safetensors (DINO names) in a folder of its own.
    with torch.no_grad():
        assert _max_diff(load_model(ckpt_path, which="student")(io["images"]), io["student_cls_eval"]) < ATOL
    (tmp_path / "run").mkdir()
    save_file(_teacher_flat(ckpt_path), str(tmp_path / "run" / "teacher.safetensors"))
    converted = load_model(tmp_path / "run", num_heads=3)
    assert converted.input_norm.source.startswith("preset sentinel_landsat")  # no args in the file
    with torch.no_grad():
        assert _max_diff(converted(io["images"]), io["teacher_cls"]) < ATOL
    info = model_info(ckpt_path)
    assert (info["family"], info["layout"], info["networks"]) == ("dino", "dino:teacher", ["student", "teacher"])
    assert info["geometry"]["embed_dim"] == 48 and info["geometry"]["num_heads"] == 3 and info["head"]["out_dim"] == 64


def test_embed_raster_uses_red_green_blue_and_the_xstars_normalisation(engine_model: DinoViT, tmp_path: Path) -> None:
    src_path = shared_file(*S2_L1C)
    with rasterio.open(src_path) as src:
        left, top = src.bounds.left, src.bounds.top
        region = Region(bounds=(left, top - 2240, left + 2240, top))  # 224 × 224 native pixels: one tile at scale 1
        res = embed_raster(src_path, tmp_path / "emb.tif", engine_model, region=region,
                           settings=InferenceSettings(overlap_px=0, scale=1.0, device="cpu", precision="fp32"))
        raw = src.read([4, 3, 2], window=Window(0, 0, 224, 224)).astype(np.float32)
        crs, transform = src.crs, src.transform
    assert res.mapping.indexes == [4, 3, 2] and res.tiles == 1
    assert {d.index for d in res.mapping.dropped} == set(range(1, 14)) - {2, 3, 4}
    # Expected: the preset's p1/p99 stretch to [0, 1], then the checkpoint's args.mean/std (docs/xstars.md §5).
    bands = [b.stats for b in res.mapping.bands]
    assert [s.p1 for s in bands] == pytest.approx([17.254247, 24.274742, 29.185595])
    mean, std = engine_model.input_norm.mean, engine_model.input_norm.std
    x = np.stack([(np.clip((raw[c] - s.p1) / (s.p99 - s.p1), 0, 1) - mean[c]) / std[c] for c, s in enumerate(bands)])
    with torch.no_grad():
        expected = engine_model.encode(torch.from_numpy(x[None]), ["red_2", "green_2", "blue_1"], "grid")[0].numpy()
    with rasterio.open(res.path) as emb:
        assert emb.count == 48 and emb.crs == crs and (emb.width, emb.height) == (14, 14)
        assert emb.transform == transform * Affine.scale(16)
        assert emb.tags()["MSFM_BAND_INDEXES"] == "[4, 3, 2]"
        assert emb.tags()["MSFM_OUTPUT"] == "grid: last-block patch tokens after the final norm"
        np.testing.assert_allclose(emb.read(), expected, atol=1e-4)


def test_rgb_selection_on_naip_and_a_clear_error_without_rgb(engine_model: DinoViT, tmp_path: Path) -> None:
    naip = shared_file(*NAIP)
    with rasterio.open(naip) as src:
        left, top = src.bounds.left, src.bounds.top
    res = embed_raster(naip, tmp_path / "naip.tif", engine_model, sensor="naip_rgbn",
                       region=Region(bounds=(left, top - 5 * 224, left + 5 * 224, top)),
                       settings=InferenceSettings(overlap_px=0, device="cpu"))
    assert res.mapping.indexes == [1, 2, 3] and res.mapping.keys == ["red_1", "green_1", "blue_3"]
    assert [d.index for d in res.mapping.dropped] == [4] and res.embed_dim == 48
    s1 = shared_file(*BEN_S1)
    with pytest.raises(BandResolutionError, match=r"no red and no green and no blue band.*VV\) → microwave_1"):
        embed_raster(s1, tmp_path / "s1.tif", engine_model, settings=InferenceSettings(device="cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["naip.tif"]


def test_select_band_families_prefers_the_band_nearest_the_family_centre() -> None:
    s2 = shared_file(*S2_L1C)
    mapping = resolve_bands(s2, overrides={5: "red_1"})  # B05 (704 nm) now competes with B04 (665 nm) for red
    rgb = select_band_families(mapping, ("red", "green", "blue"))
    assert rgb.indexes == [4, 3, 2] and select_band_families(rgb, ("red", "green", "blue")) == rgb
    assert "not used: the model takes one red band and band 4 is used" in {d.reason for d in rgb.dropped}
    assert select_band_families(mapping, ("red",)).indexes == [4]  # red_edge_* is not red
