"""Tests for engine.models: parity with the reference fixtures, strict checkpoint rules, and the offline registry.

Fixtures: ../shared/fixtures/smarties (tiny random-weight checkpoints and outputs of the original SMARTIES code,
state_dict_keys.json with every ViT-B/ViT-L key and shape). No test touches the network: conftest sets
HF_HUB_OFFLINE=1 and a fresh HF_HUB_CACHE, and the registry tests additionally block sockets.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import engine
from engine.errors import CheckpointError, ModelNotAvailableError
from engine.models import (
    SmartiesEncoder,
    download_model,
    list_models,
    load_model,
    model_info,
    read_checkpoint,
    registry,
    resolve_weights,
    save_encoder,
)
from engine.models import smarties_checkpoint as ckpt
from tests.conftest import shared_file

VITB_PARAMS = 88_563_456
VITL_PARAMS = 306_988_032
CASES = ("s2_l2a", "rgb", "s1", "agg")
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ---------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny_path() -> Path:
    return shared_file("fixtures", "smarties", "tiny_encoder.safetensors")


@pytest.fixture(scope="module")
def tiny_state(tiny_path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_path))


@pytest.fixture(scope="module")
def key_shapes() -> dict[str, Any]:
    return json.loads(shared_file("fixtures", "smarties", "state_dict_keys.json").read_text())


@pytest.fixture(scope="module")
def tiny_model(tiny_path: Path) -> SmartiesEncoder:
    return load_model(tiny_path, num_heads=4, averaging="reference")


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything tries to open a connection."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _write(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def _tiny_model(depth: int = 1, dim: int = 32, heads: int = 4) -> SmartiesEncoder:
    return SmartiesEncoder(embed_dim=dim, depth=depth, num_heads=heads, patch_size=8, grid_size=4)


def _fake_hub_file(cache: Path, repo_id: str, filename: str, source: Path, commit: str = FAKE_COMMIT) -> Path:
    """The Hub cache layout: models--org--name/{refs/main, snapshots/<commit>/<file>}."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, snapshot / filename)
    return snapshot / filename


# ---------------------------------------------------------------------------------------------------- (a) parity
@pytest.mark.parametrize("case", CASES)
def test_parity_band_list(tiny_model: SmartiesEncoder, case: str) -> None:
    io = load_file(str(shared_file("fixtures", "smarties", "tiny_encoder_io.safetensors")))
    image, indices = io[f"{case}.image"], io[f"{case}.proj_indices"]
    bands = indices[0, 0, 0].tolist()
    assert (indices == indices[0, 0, 0]).all(), "fixture band lists are broadcast over tokens"
    with torch.no_grad():
        cls = tiny_model.encode(image, bands, "cls")
        grid = tiny_model.encode(image, bands, "grid")
        cls_t = tiny_model.encode(image, indices, "cls")
        grid_t = tiny_model.encode(image, indices, "grid")
        tokens = tiny_model.encode(image, bands, "tokens")
    # "tokens": every token after the final norm, CLS first (what MSAD aligns), the pre-norm grid normalised
    torch.testing.assert_close(tokens[:, 0], cls, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        normed = tiny_model.norm(grid.flatten(2).transpose(1, 2))
    torch.testing.assert_close(tokens[:, 1:], normed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls, io[f"{case}.cls_out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grid, io[f"{case}.all_tokens_out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls_t, io[f"{case}.cls_out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grid_t, io[f"{case}.all_tokens_out"], atol=1e-5, rtol=1e-5)


def test_parity_hetero(tiny_model: SmartiesEncoder) -> None:
    io = load_file(str(shared_file("fixtures", "smarties", "tiny_encoder_io.safetensors")))
    patches, indices = io["hetero.patches"], io["hetero.proj_indices"]
    b, h, w = indices.shape[:3]
    with torch.no_grad():
        tokens = tiny_model.embed_patches(patches, indices)
        cls = tiny_model.norm(tiny_model.forward_tokens(tokens, h, w)[:, 0])
    assert cls.shape == (b, tiny_model.embed_dim)
    torch.testing.assert_close(cls, io["hetero.cls_out"], atol=1e-5, rtol=1e-5)


def test_load_model_state(tiny_model: SmartiesEncoder, tiny_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    assert not tiny_model.training
    assert tiny_model.num_heads == 4 and tiny_model.averaging == "reference"
    assert (tiny_model.patch_size, tiny_model.grid_size, tiny_model.depth) == (8, 4, 2)
    assert tiny_model.provenance.weights_path == tiny_path and tiny_model.provenance.layout == "encoder"
    for key, value in tiny_model.state_dict().items():
        assert value.device.type == "cpu" and value.dtype == torch.float32
        torch.testing.assert_close(value, tiny_state[key], atol=0, rtol=0)
    assert not tiny_model.pos_embed.requires_grad


def test_engine_lazy_exports() -> None:
    assert engine.load_model is load_model
    assert engine.list_models is list_models
    import engine.models as models

    assert list(models.__all__) == sorted(models.__all__)


# ---------------------------------------------------------------------------------------------------- (b) geometry
def test_key_shapes_match_reference_vitb_vitl(key_shapes: dict[str, Any]) -> None:
    for size, dim, depth, params in (("vitb", 768, 12, VITB_PARAMS), ("vitl", 1024, 24, VITL_PARAMS)):
        encoder = {k: tuple(v) for k, v in key_shapes[f"{size}_encoder"].items()}
        mae = {k: tuple(v) for k, v in key_shapes[f"{size}_mae_extra"].items()}
        assert len(encoder) == (182 if size == "vitb" else 326) and len(mae) == 136

        layout = ckpt.classify_keys(encoder)
        assert layout.layout == "encoder" and not layout.global_pool and layout.extra_keys == ()
        assert layout.geometry == ckpt.EncoderGeometry(dim, depth, 16, 14, 4 * dim)
        assert ckpt.encoder_key_shapes(layout.geometry) == encoder

        full = ckpt.classify_keys({**encoder, **mae})
        assert full.layout == "mae" and set(full.extra_keys) == set(mae)
        assert full.decoder == ckpt.DecoderGeometry(512, 8, 2048)
        assert ckpt.mae_key_shapes(full.geometry, full.decoder) == mae

        with torch.device("meta"):  # no allocation, even for ViT-L
            model = SmartiesEncoder(dim, depth, dim // 64)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == encoder
        assert model.num_parameters() == params


def test_vitb_file_loads_strictly(tmp_path: Path, key_shapes: dict[str, Any]) -> None:
    """A full-size ViT-B file (bf16 zeros to keep it small) loads as encoder+MAE; the encoder-only subset too."""
    encoder, mae = key_shapes["vitb_encoder"], key_shapes["vitb_mae_extra"]
    state = {k: torch.zeros(v, dtype=torch.bfloat16) for k, v in {**encoder, **mae}.items()}
    path = _write(tmp_path / "vitb_mae.safetensors", state)

    checkpoint = read_checkpoint(path)
    assert checkpoint.layout == "mae" and len(checkpoint.extra_state) == 136
    assert checkpoint.num_encoder_parameters == VITB_PARAMS
    assert all(t.dtype == torch.float32 for t in checkpoint.encoder_state.values())
    del checkpoint

    only = _write(tmp_path / "vitb.safetensors", {k: state[k] for k in encoder})
    del state
    layout, config = ckpt.inspect_checkpoint(only)
    assert layout.layout == "encoder" and config == {}
    model = load_model(only)  # D/64 = 12 heads
    assert model.num_heads == 12 and model.num_parameters() == VITB_PARAMS
    assert (model.embed_dim, model.depth, model.provenance.layout) == (768, 12, "encoder")


@pytest.mark.parametrize(
    ("extra", "layout", "classes"),
    [
        ({"head.weight": (10, 768), "head.bias": (10,)}, "head:linear", 10),
        (
            {
                "head.0.running_mean": (768,),
                "head.0.running_var": (768,),
                "head.0.num_batches_tracked": (),
                "head.1.weight": (19, 768),
                "head.1.bias": (19,),
            },
            "head:linprobe",
            19,
        ),
        (
            {
                "head.0.running_mean": (1536,),
                "head.0.running_var": (1536,),
                "head.0.num_batches_tracked": (),
                "head.1.weight": (19, 1536),
                "head.1.bias": (19,),
            },
            "head:linprobe",
            19,
        ),
        ({"head.0.weight": (8, 768, 1, 1), "head.0.bias": (8,)}, "head:segmentation", 8),
    ],
)
def test_head_variants(
    key_shapes: dict[str, Any], extra: dict[str, tuple[int, ...]], layout: str, classes: int
) -> None:
    result = ckpt.classify_keys({**key_shapes["vitb_encoder"], **extra})
    assert result.layout == layout and result.num_classes == classes
    assert set(result.extra_keys) == set(extra)


def test_fc_norm_variant(key_shapes: dict[str, Any]) -> None:
    shapes = dict(key_shapes["vitb_encoder"])
    shapes["fc_norm.weight"], shapes["fc_norm.bias"] = shapes.pop("norm.weight"), shapes.pop("norm.bias")
    result = ckpt.classify_keys({**shapes, "head.weight": (10, 768), "head.bias": (10,)})
    assert result.global_pool and result.layout == "head:linear"
    assert result.encoder_keys["fc_norm.weight"] == "norm.weight"
    both = {**key_shapes["vitb_encoder"], "fc_norm.weight": (768,), "fc_norm.bias": (768,)}
    with pytest.raises(CheckpointError, match="fc_norm.bias"):
        ckpt.classify_keys(both)


def test_head_and_fc_norm_files_load(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    state = dict(tiny_state)
    state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), state.pop("norm.bias")
    state["head.1.weight"], state["head.1.bias"] = torch.randn(5, 32), torch.randn(5)
    state["head.0.running_mean"], state["head.0.running_var"] = torch.zeros(32), torch.ones(32)
    state["head.0.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    path = _write(tmp_path / "probe.safetensors", state)
    checkpoint = read_checkpoint(path)
    assert checkpoint.layout == "head:linprobe" and checkpoint.global_pool and checkpoint.num_classes == 5
    assert checkpoint.extra_state["head.0.num_batches_tracked"].dtype == torch.int64
    model = load_model(path, num_heads=4)
    assert model.provenance.global_pool and model.provenance.layout == "head:linprobe"
    torch.testing.assert_close(model.norm.weight.detach(), tiny_state["norm.weight"])


def test_tiny_mae_fixture_loads() -> None:
    path = shared_file("fixtures", "smarties", "tiny_mae.safetensors")
    checkpoint = read_checkpoint(path)
    assert checkpoint.layout == "mae"
    assert checkpoint.decoder == ckpt.DecoderGeometry(16, 1, 64)
    assert len(checkpoint.extra_state) == 52  # 4 + 12·1 + 2 + 34
    assert load_model(path, num_heads=4).provenance.layout == "mae"


# ---------------------------------------------------------------------------------------------------- (c) bad files
def test_unknown_extra_key(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    path = _write(tmp_path / "extra.safetensors", {**tiny_state, "foo.bar": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"foo\.bar"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"foo\.bar"):
        load_model(path, num_heads=4)


def test_missing_key(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in tiny_state.items() if k != "blocks.1.norm2.bias"}
    with pytest.raises(CheckpointError, match=r"missing 1 encoder key.*blocks\.1\.norm2\.bias"):
        read_checkpoint(_write(tmp_path / "missing.safetensors", state))


def test_missing_geometry_key(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in tiny_state.items() if k != "pos_embed"}
    with pytest.raises(CheckpointError, match="pos_embed"):
        read_checkpoint(_write(tmp_path / "nopos.safetensors", state))


def test_misshaped_key(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    state = {**tiny_state, "blocks.0.attn.proj.weight": torch.zeros(32, 31)}
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.proj\.weight \[32, 31\] \(expected \[32, 32\]\)"):
        read_checkpoint(_write(tmp_path / "shape.safetensors", state))


def test_prefixed_keys_hint(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    state = {f"module.{k}": v for k, v in tiny_state.items()}
    with pytest.raises(CheckpointError, match="prefix 'module.'"):
        read_checkpoint(_write(tmp_path / "ddp.safetensors", state))


def test_incomplete_mae_and_bad_heads(tmp_path: Path, key_shapes: dict[str, Any]) -> None:
    encoder, mae = key_shapes["vitb_encoder"], dict(key_shapes["vitb_mae_extra"])
    del mae["decoder_preds.3.bias"]
    with pytest.raises(CheckpointError, match=r"decoder_preds\.3\.bias"):
        ckpt.classify_keys({**encoder, **mae})
    with pytest.raises(CheckpointError, match=r"head\.weight"):
        ckpt.classify_keys({**encoder, "head.weight": (10, 768)})
    with pytest.raises(CheckpointError, match=r"head\.weight"):
        ckpt.classify_keys({**encoder, "head.weight": (10, 700), "head.bias": (10,)})
    with pytest.raises(CheckpointError, match="mixes MAE decoder keys with head keys"):
        ckpt.classify_keys({**encoder, **key_shapes["vitb_mae_extra"], "head.weight": (10, 768), "head.bias": (10,)})


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file(tmp_path: Path, tiny_path: Path, damage: str) -> None:
    data = tiny_path.read_bytes()
    content = {"truncated": data[: len(data) // 2], "garbage": b"not a safetensors file" * 40, "empty": b""}[damage]
    path = tmp_path / f"{damage}.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path, num_heads=4)


def test_non_finite_and_non_float(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    bad = dict(tiny_state)
    bad["blocks.0.norm1.weight"] = torch.full((32,), float("nan"))
    with pytest.raises(CheckpointError, match=r"NaN or Inf: blocks\.0\.norm1\.weight"):
        read_checkpoint(_write(tmp_path / "nan.safetensors", bad))
    ints = {**tiny_state, "norm.bias": torch.zeros(32, dtype=torch.int32)}
    with pytest.raises(CheckpointError, match=r"floating point.*norm\.bias"):
        read_checkpoint(_write(tmp_path / "int.safetensors", ints))


def test_pickle_and_bad_config(tmp_path: Path, tiny_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    pickle = tmp_path / "model.pth"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="only .safetensors"):
        read_checkpoint(pickle)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_checkpoint(_write(tmp_path / "badcfg.safetensors", tiny_state, {"config": "{nope"}))
    folder = tmp_path / "withcfg"
    folder.mkdir()
    shutil.copyfile(tiny_path, folder / "w.safetensors")
    (folder / "config.json").write_text(json.dumps({"embed_dim": 64, "num_heads": 4}))
    with pytest.raises(CheckpointError, match="embed_dim=64"):
        load_model(folder)


def test_num_heads_resolution(tmp_path: Path, tiny_path: Path) -> None:
    with pytest.raises(CheckpointError, match="num_heads"):
        load_model(tiny_path)  # D=32: nothing recorded, D/64 impossible
    with pytest.raises(CheckpointError, match="positive divisor"):
        load_model(tiny_path, num_heads=5)
    with pytest.raises(ValueError, match="averaging"):
        load_model(tiny_path, num_heads=4, averaging="nearest")  # type: ignore[arg-type]
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copyfile(tiny_path, folder / "weights.safetensors")
    (folder / "config.json").write_text(json.dumps({"num_heads": 2, "averaging": "reference"}))
    model = load_model(folder)
    assert model.num_heads == 2 and model.averaging == "reference"
    assert load_model(folder, num_heads=8, averaging="linear").num_heads == 8


# ---------------------------------------------------------------------------------------------------- save_encoder
def test_save_encoder_roundtrip(tmp_path: Path) -> None:
    model = _tiny_model(depth=2)
    torch.nn.init.normal_(model.cls_token)
    path = save_encoder(model, tmp_path / "out" / "enc.safetensors", {"recipe": "demo", "num_heads": 4})
    assert [p.name for p in path.parent.iterdir()] == ["enc.safetensors"]  # no temp file left behind
    with safe_open(str(path), "pt") as handle:
        config = json.loads(handle.metadata()["config"])
    assert config["num_heads"] == 4 and config["recipe"] == "demo" and config["embed_dim"] == 32
    loaded = load_model(path)  # heads and averaging from the metadata
    assert loaded.num_heads == 4 and loaded.averaging == "linear"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x, ["red_2", "green_2", "blue_1"]), model.eval().encode(x, [6, 4, 1]))


def test_save_encoder_refuses(tmp_path: Path) -> None:
    model = _tiny_model()
    with pytest.raises(ValueError, match="contradicts"):
        save_encoder(model, tmp_path / "a.safetensors", {"num_heads": 8})
    with pytest.raises(ValueError, match="JSON"):
        save_encoder(model, tmp_path / "b.safetensors", {"x": object()})
    model.extra = torch.nn.Linear(2, 2)  # unknown keys: nothing may be written
    with pytest.raises(CheckpointError, match=r"extra\.weight"):
        save_encoder(model, tmp_path / "c.safetensors", {})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- (d) registry
def test_registry_entries() -> None:
    names = [s.name for s in list_models()]
    assert names[:3] == ["smarties-vit-b", "smarties-vit-l", "smarties-demo-tiny"]
    assert len(set(names)) == len(names)
    vitb, vitl, tiny = (registry.get_model_spec(n) for n in names[:3])
    assert (vitb.repo_id, vitb.filename, vitb.num_heads) == (
        "gsumbul/SMARTIES-v1-ViT-B", "smarties-v1-vitb.safetensors", 12
    )
    assert (vitl.repo_id, vitl.filename, vitl.num_heads) == (
        "gsumbul/SMARTIES-v1-ViT-L", "smarties-v1-vitl.safetensors", 16
    )
    assert (tiny.bundled, tiny.embed_dim, tiny.num_heads, tiny.repo_id) == (
        "smarties-demo-tiny.safetensors", 192, 3, None
    )
    finetuned = [s for s in list_models() if s.repo_id == "gsumbul/SMARTIES-v1-finetuned-models"]
    assert len(finetuned) == 12 and not any(s.filename_verified for s in finetuned)
    assert all(s.filename == f"{s.name}.safetensors" and s.head for s in finetuned)
    assert registry.get_model_spec("gsumbul/SMARTIES-v1-ViT-L") is vitl
    assert registry.get_model_spec("SMARTIES-ViT-B") is vitb


def test_unknown_name(no_network: None) -> None:
    with pytest.raises(ModelNotAvailableError, match="did you mean smarties-vit-b"):
        resolve_weights("smarties-vit-bb")
    with pytest.raises(ModelNotAvailableError, match="msfm models list"):
        load_model("resnet50")
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_weights("missing/dir/model.safetensors")


def test_local_file_and_folder(tmp_path: Path, tiny_path: Path, no_network: None) -> None:
    assert resolve_weights(tiny_path) == tiny_path
    assert resolve_weights(str(tiny_path)) == tiny_path
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copyfile(tiny_path, folder / "m.safetensors")
    (folder / "config.json").write_text("{}")
    assert resolve_weights(folder) == folder / "m.safetensors"
    shutil.copyfile(tiny_path, folder / "n.safetensors")
    with pytest.raises(ModelNotAvailableError, match=r"2 weight files \(m.safetensors, n.safetensors\)"):
        resolve_weights(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotAvailableError, match=r"no .safetensors or .pth file"):
        resolve_weights(empty)
    (empty / "checkpoint.pth").write_bytes(b"")  # a DINO / X-STARS checkpoint folder
    assert resolve_weights(empty) == empty / "checkpoint.pth"
    info = model_info(tiny_path)
    assert info["available"] and info["layout"] == "encoder" and info["geometry"]["embed_dim"] == 32


def test_bundled_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    info = model_info("smarties-demo-tiny")
    assert not info["available"] and "not present yet" in info["status"] and info["local_path"] is None
    assert not info["bundled_present"] and not info["cached"]
    with pytest.raises(ModelNotAvailableError, match="bundled model 'smarties-demo-tiny' is missing"):
        resolve_weights("smarties-demo-tiny")

    demo = SmartiesEncoder(embed_dim=192, depth=1, num_heads=3)  # ViT-Tiny width, one block to stay small
    save_encoder(demo, tmp_path / "weights" / "smarties-demo-tiny.safetensors", {"note": "test stand-in"})
    path = resolve_weights("smarties-demo-tiny")
    assert path == tmp_path / "weights" / "smarties-demo-tiny.safetensors"
    info = model_info("smarties-demo-tiny")
    assert info["available"] and info["local_path"] == str(path) and info["geometry"]["embed_dim"] == 192
    assert "bundled" in info["status"] and info["bundled_present"] and not info["cached"]
    model = load_model("smarties-demo-tiny")
    assert model.num_heads == 3 and model.provenance.model_name == "smarties-demo-tiny"
    assert download_model("smarties-demo-tiny") == path


def test_fake_hub_cache_offline(tmp_path: Path, no_network: None) -> None:
    import os

    cache = Path(os.environ["HF_HUB_CACHE"])
    source = save_encoder(_tiny_model(), tmp_path / "src.safetensors", {"num_heads": 4})
    expected = _fake_hub_file(cache, "gsumbul/SMARTIES-v1-ViT-B", "smarties-v1-vitb.safetensors", source)

    path = resolve_weights("smarties-vit-b")
    assert path == expected and registry.snapshot_commit(path) == FAKE_COMMIT
    assert download_model("smarties-vit-b") == expected  # offline: the cached file is used as is
    info = model_info("smarties-vit-b")
    assert info["available"] and info["commit"] == FAKE_COMMIT and info["local_path"] == str(expected)
    assert info["layout"] == "encoder" and info["config"]["num_heads"] == 4 and info["cached"]
    json.dumps(info)  # the CLI prints it
    model = load_model("smarties-vit-b")  # num_heads 4 from the metadata wins over the registry's 12
    assert model.num_heads == 4 and model.provenance.model_name == "smarties-vit-b"


def test_not_cached_offline(no_network: None) -> None:
    with pytest.raises(ModelNotAvailableError, match="msfm models download smarties-vit-l") as err:
        resolve_weights("smarties-vit-l")
    assert "HF_HUB_OFFLINE=1" in str(err.value) and "pass its path" in str(err.value)
    with pytest.raises(ModelNotAvailableError, match="msfm models download smarties-vit-l"):
        load_model("smarties-vit-l")
    with pytest.raises(ModelNotAvailableError, match="msfm models download smarties-vit-l"):
        download_model("smarties-vit-l")
    info = model_info("smarties-vit-l")
    assert not info["available"] and not info["cached"]
    assert "msfm models download smarties-vit-l" in info["status"]


def test_download_records_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, no_network: None
) -> None:
    """With the Hub 'online' (a stub hf_hub_download), download_model fetches, then logs the resolved commit."""
    import os

    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cache = Path(os.environ["HF_HUB_CACHE"])
    source = save_encoder(_tiny_model(), tmp_path / "src.safetensors", {"num_heads": 4})
    calls: list[dict[str, Any]] = []

    def fake_download(repo_id: str, filename: str, **kwargs: Any) -> str:
        calls.append(kwargs)
        assert kwargs["cache_dir"] == str(cache)
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(_fake_hub_file(cache, repo_id, filename, source))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(ModelNotAvailableError, match="download=False"):
        resolve_weights("smarties-vit-l", download=False)
    with caplog.at_level(logging.INFO, logger="engine.models.registry"):
        path = download_model("smarties-vit-l")
    assert registry.snapshot_commit(path) == FAKE_COMMIT
    assert FAKE_COMMIT in caplog.text
    assert any(not c.get("local_files_only") for c in calls)

    def failing(repo_id: str, filename: str, **kwargs: Any) -> str:
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        raise OSError("404 entry not found")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing)
    with pytest.raises(ModelNotAvailableError, match="may differ on the Hub"):
        download_model("smarties-v1-vitb-eurosat-finetune")
