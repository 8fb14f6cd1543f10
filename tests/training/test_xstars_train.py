"""Tests of training/recipes/xstars.py and training/data/xstars.py: DINO optimiser rules, EMA, clipping, last-layer
freeze, a tiny pretraining run on the runner, and continual pretraining from the original X-STARS checkpoint (fixtures
README §3)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models import read_dino_checkpoint
from tests.conftest import shared_file
from training.config import load_config
from training.data.xstars import XStarsStream
from training.models.xstars import XStarsModel
from training.recipes.xstars import (
    XStarsConfig,
    before_step,
    build_samples,
    build_xstars_model,
    clip_gradients_per_tensor,
    dino_param_groups,
    joint_norm,
    train_xstars,
    xstars_task,
)
from training.runner import Runner

TINY_MODEL = {"name": "tiny", "embed_dim": 48, "depth": 2, "num_heads": 3, "out_dim": 64, "head_hidden_dim": 32,
              "head_bottleneck_dim": 16}
TINY_VIEWS = {"local_crops_number": 2, "global_size_px": 64, "local_size_px": 32}


@pytest.fixture(scope="module")
def msc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-sensor MSC-France-like tree: <root>/<Sensor>/<City>/tile<k>.png, 8-bit RGB at each sensor's size."""
    import rasterio

    root = tmp_path_factory.mktemp("msc")
    rng = np.random.default_rng(0)
    for sensor, size in {"Sentinel": 48, "Landsat": 16, "SPOT": 80}.items():
        for city in ("Lyon", "Paris"):
            for k in range(2):
                path = root / sensor / city / f"tile{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with rasterio.open(path, "w", driver="PNG", width=size, height=size, count=3, dtype="uint8") as ds:
                        ds.write(rng.integers(0, 256, (3, size, size), dtype=np.uint8))
    return root


def _cfg(root: Path, out: Path, **sections) -> XStarsConfig:
    data = {"recipe": "xstars", "run": {"out_dir": str(out), "steps": 3, "device": "cpu", "threads": 2,
                                        "checkpoint_every": 100, "progress": False, "seed": 0},
            "data": {"root": str(root), "sensors": ["Sentinel", "Landsat"], "batch_size": 2},
            "model": dict(TINY_MODEL), "dino": dict(TINY_VIEWS), "msad": {"size_px": 64},
            "optim": {"lr": 0.5, "warmup_epochs": 0}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config(XStarsConfig, data)


# ---------------------------------------------------------------------------------------------------- units
def test_param_groups_follow_dino(msc_root: Path, tmp_path: Path) -> None:
    """Decayed: tensors not 1-D and not named *.bias (cls_token, pos_embed included); frozen gain and teacher out."""
    model = build_xstars_model(_cfg(msc_root, tmp_path), epochs=1)
    groups = {g["name"]: g for g in dino_param_groups(model, 0.04, heads_lr_scale=0.5)}
    assert list(groups) == ["student.decay", "student.no_decay", "msad_heads.decay", "msad_heads.no_decay"]
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    s = model.student
    assert id(s.backbone.cls_token) in ids["student.decay"] and id(s.backbone.pos_embed) in ids["student.decay"]
    assert id(s.backbone.blocks[0].attn.qkv.bias) in ids["student.no_decay"]
    assert id(s.backbone.norm.weight) in ids["student.no_decay"]
    gain = s.head.last_layer.parametrizations.weight.original0
    listed = set().union(*ids.values())
    assert id(gain) not in listed and not any(id(p) in listed for p in model.teacher.parameters())
    assert groups["msad_heads.decay"]["lr_scale"] == 0.5 and groups["student.decay"]["weight_decay"] == 0.04
    assert groups["student.no_decay"]["weight_decay"] == 0.0
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == listed
    compat = build_xstars_model(_cfg(msc_root, tmp_path, msad={"mode": "compat"}), epochs=1)
    assert [g["name"] for g in dino_param_groups(compat)] == ["student.decay", "student.no_decay"]


def test_clip_gradients_per_tensor() -> None:
    params = [torch.nn.Parameter(torch.zeros(4)) for _ in range(3)]
    for p, scale in zip(params, (1.0, 5.0, 10.0)):
        p.grad = torch.tensor([scale, 0.0, 0.0, 0.0])
    norms = clip_gradients_per_tensor(params, 3.0)
    assert norms == pytest.approx([1.0, 5.0, 10.0])
    assert [p.grad[0].item() for p in params] == pytest.approx([1.0, 3.0, 3.0], abs=1e-5)


def test_before_step_clips_per_tensor_and_freezes_last_layer(msc_root: Path, tmp_path: Path) -> None:
    model = build_xstars_model(_cfg(msc_root, tmp_path), epochs=2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    last_v = model.student.head.last_layer.parametrizations.weight.original1
    for step, last_layer_kept in ((3, False), (4, True)):  # 4 steps per epoch: step 3 is epoch 0, step 4 epoch 1
        for i, p in enumerate(trainable):
            p.grad = torch.full_like(p, float(i + 1))
        before_step(model, step, iters_per_epoch=4, clip=3.0, per_tensor=True, freeze_last_layer=1)
        assert (last_v.grad is not None) == last_layer_kept
        norms = [p.grad.norm().item() for p in trainable if p.grad is not None]
        assert max(norms) == pytest.approx(3.0, rel=1e-3) and min(norms) < 3.0  # float32 norms of ~1e6 values


def test_ema_covers_every_parameter(msc_root: Path, tmp_path: Path) -> None:
    model = build_xstars_model(_cfg(msc_root, tmp_path), epochs=1)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    student = dict(model.student.named_parameters())
    model.update_teacher(0.9)
    for name, p in model.teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * student[name])
    assert "head.last_layer.parametrizations.weight.original0" in before  # the frozen gain is averaged too


def test_stream_is_deterministic_and_resumable(msc_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(msc_root, tmp_path)
    samples = build_samples(cfg, joint_norm(cfg))
    assert len(samples) == 8  # 4 places × 2 anchor sensors
    ranks = [XStarsStream(samples, 2, seed=1, rank=r, world=2) for r in range(2)]
    assert ranks[0].batches_per_epoch == 2
    epoch0 = [k for r in ranks for j in range(2) for k in r.batch_keys(j)]
    assert sorted(i for _, i in epoch0) == list(range(8))  # one epoch = every sample once over both ranks
    stream = XStarsStream(samples, 2, seed=1)
    iter(stream)
    first = [next(stream) for _ in range(2)]
    assert [v.shape for v in first[0]["crops"]] == [(2, 3, 64, 64)] * 2 + [(2, 3, 32, 32)] * 2
    assert [v.shape for v in first[0]["msad"]] == [(2, 3, 64, 64)] * 2
    again = XStarsStream(samples, 2, seed=1)
    again.load_state_dict({"position": 1})
    iter(again)
    assert all(torch.equal(a, b) for a, b in zip(next(again)["crops"], first[1]["crops"]))


# ---------------------------------------------------------------------------------------------------- runs
def test_pretraining_run(msc_root: Path, tmp_path: Path) -> None:
    """3 steps of epoch 0: everything trains but the head's last layer; the teacher follows by EMA; MSAD heads train
    and are exported under msad_heads with the DINO centre, in the DINO layout."""
    cfg = _cfg(msc_root, tmp_path / "run")
    result = train_xstars(cfg)
    assert result.steps == 3
    with open(result.log_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert all(float(r["msad_loss"]) > 0 and float(r["dino_loss"]) > 0 for r in rows)
    assert float(rows[0]["momentum"]) == pytest.approx(0.996) and float(rows[0]["wd"]) == pytest.approx(0.04)

    export = result.exports[0]
    saved = torch.load(export, map_location="cpu", weights_only=True)
    assert {"student", "teacher", "dino_loss", "msad_heads", "args"} <= set(saved)
    assert saved["args"]["mean"] == pytest.approx([0.15590523, 0.15850738, 0.10111853])
    teacher = read_dino_checkpoint(export, "teacher")
    student = read_dino_checkpoint(export, "student")
    assert teacher.input_norm is not None and teacher.geometry.embed_dim == 48

    # initial weights: same seed → same init (the runner seeds before the task builds the model)
    fresh = xstars_task(_cfg(msc_root, tmp_path / "fresh"), Runner(_cfg(msc_root, tmp_path / "fresh").run))
    init = fresh.model
    init_student = {f"backbone.{k}": v for k, v in init.student.backbone.state_dict().items()}
    init_student.update({f"head.{k}": v for k, v in init.student.head.state_dict().items()})
    v_key = "last_layer.parametrizations.weight.original1"
    torch.testing.assert_close(student.head_state[v_key], init.student.head.state_dict()[v_key])  # frozen in epoch 0
    assert not torch.allclose(student.backbone_state["blocks.0.attn.qkv.weight"],
                              init_student["backbone.blocks.0.attn.qkv.weight"])
    moved = student.backbone_state["cls_token"] - init_student["backbone.cls_token"]
    teacher_moved = teacher.backbone_state["cls_token"] - init_student["backbone.cls_token"]
    assert 0 < teacher_moved.abs().max() < moved.abs().max()  # EMA with m ≈ 0.996 lags the student
    heads0 = init.msad.heads.state_dict()
    assert not torch.allclose(saved["msad_heads"]["P.fc.weight"], heads0["P.fc.weight"])
    assert saved["dino_loss"]["center"].abs().sum() > 0


def test_continual_from_original_checkpoint(msc_root: Path, tmp_path: Path) -> None:
    """Student from the checkpoint's student, EMA teacher from its teacher (compat: student), frozen domain teacher
    from its student in eval mode without gradients; 2 steps leave the domain teacher untouched."""
    ckpt = shared_file("fixtures", "xstars", "vit_tiny_dino_checkpoint.pth")
    original = torch.load(ckpt, map_location="cpu", weights_only=False)
    sections = dict(recipe="xstars-continual", model={"name": "cont"}, run={"steps": 2},
                    continual={"pretrained": str(ckpt), "adapt_sensor": "SPOT"},
                    data={"sensors": ["Sentinel", "Landsat", "SPOT"]})
    cfg = _cfg(msc_root, tmp_path / "cont", **sections)
    assert joint_norm(cfg).mean == pytest.approx(original["args"].mean)  # the checkpoint's args.mean/std
    model = build_xstars_model(cfg, epochs=1)
    qkv = "backbone.blocks.1.attn.qkv.weight"
    torch.testing.assert_close(model.teacher.state_dict()[qkv], original["teacher"][qkv])
    torch.testing.assert_close(model.student.state_dict()[qkv], original["student"][f"module.{qkv}"])
    torch.testing.assert_close(model.frozen.state_dict()[qkv[len("backbone."):]], original["student"][f"module.{qkv}"])
    model.train()
    assert model.student.training and not model.frozen.training and not model.teacher.training
    assert not any(p.requires_grad for p in model.frozen.parameters())
    compat = build_xstars_model(_cfg(msc_root, tmp_path / "c2", **{**sections, "continual": {
        "pretrained": str(ckpt), "adapt_sensor": "SPOT", "teacher_from": "student"}}), epochs=1)
    torch.testing.assert_close(compat.teacher.state_dict()[qkv], original["student"][f"module.{qkv}"])
    assert compat.teacher.state_dict()[qkv].data_ptr() != compat.student.state_dict()[qkv].data_ptr()
    with pytest.raises(ValueError, match="shares parameter storage"):
        XStarsModel(model.student, model.teacher, model.dino_loss, frozen=model.student.backbone)

    samples = build_samples(cfg, joint_norm(cfg))
    assert len(samples) == 4 and samples.msad_sensors == ["Sentinel", "SPOT"]  # partner = first other sensor
    runner = Runner(cfg.run, cfg)  # what train_xstars does, keeping the model to inspect it
    task = xstars_task(cfg, runner)
    frozen0 = {k: v.clone() for k, v in task.model.frozen.state_dict().items()}
    result = runner.fit(task)
    for k, v in task.model.frozen.state_dict().items():
        assert torch.equal(v, frozen0[k]), k
    out = torch.load(result.exports[0], map_location="cpu", weights_only=True)
    assert out["args"]["adapt_sensor"] == "SPOT" and out["args"]["partner_sensor"] == "Sentinel"
    assert not torch.allclose(out["student"][f"module.{qkv}"], original["student"][f"module.{qkv}"])


@pytest.mark.parametrize("name", ["xstars-vit-tiny", "xstars-continual-vit-tiny", "xstars-tiny-cpu"])
def test_shipped_configs_load(name: str) -> None:
    from training.recipes.xstars import load_xstars_config

    cfg = load_xstars_config(name, ["run.out_dir=/tmp/unused"])
    assert cfg.recipe.startswith("xstars") and cfg.optim.clip_mode == "per_tensor" and cfg.msad.alpha == 0.1
