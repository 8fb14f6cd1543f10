"""ONNX export of the SMARTIES encoder (spectral projection in the graph) and the ONNX Runtime encoder.

Parity is measured on real tiles read through the engine's normalising reader: Sentinel-2 (13 bands), Sentinel-1
(VV/VH), NAIP RGB+NIR and WorldView-3 pan — one graph for all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from engine.models import OnnxEncoder, export_encoder, load_model, open_reader, read_metadata
from engine.provenance import file_sha256
from engine.settings import InferenceSettings
from engine.spectral import get_sensor

from ..conftest import NAIP, S2_L1C, run_without_torch, shared_file

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo_model):
    return export_encoder(demo_model, tmp_path_factory.mktemp("onnx") / "demo.onnx", sensor="sentinel2_l1c")


def test_exported_graph_is_valid_and_has_dynamic_batch_and_bands(exported):
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto, full_check=True)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {"image": ["batch", "bands", 224, 224], "band_mix": ["bands", 17]}
    assert [o.name for o in proto.graph.output] == ["cls", "grid"]


def test_metadata_round_trip(exported, demo_model):
    meta = read_metadata(exported)
    assert meta["model_type"] == "Recognition" and meta["tile_size"] == 224 and meta["tiles_overlap"] == 50
    assert meta["msfm_embed_dim"] == 192 and meta["msfm_depth"] == 6 and meta["msfm_patch_size"] == 16
    assert meta["msfm_encoder"] == "smarties-demo-tiny"
    assert meta["msfm_source_sha256"] == file_sha256(demo_model.provenance.weights_path)
    assert len(meta["msfm_base_projections"]) == 17 and meta["msfm_base_projections"][0] == "aerosol"
    s2 = get_sensor("sentinel2_l1c")
    assert meta["msfm_presets"]["sentinel2_l1c"]["bands"] == [b.key for b in s2.bands]
    assert meta["standardization_mean"] == pytest.approx([b.stats.mean for b in s2.bands])
    assert meta["resolution"] == pytest.approx(s2.gsd_m * 100 / s2.default_scale)
    assert OnnxEncoder(exported).metadata == meta


def _tile(path: Path, sensor: str | None, model) -> tuple[np.ndarray, list]:
    """A real 224-px tile of ``path``, normalised by the engine's reader, and its band projections."""
    with rasterio.open(path) as ds:
        reader, mapping = open_reader(ds, model, InferenceSettings(), sensor=sensor)
        try:
            x, _ = reader.read(0, 0, 224)
        finally:
            reader.close()
    return x[None], list(mapping.projections)


@pytest.mark.parametrize("parts, sensor", [
    (("data", "s2_l1c_13band_10m_virginia.tif"), None),
    (("data", "bigearthnet_mm", "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_s1_vv_vh.tif"), None),
    (("data", "naip_rgbn_5m_north_dakota_2020.tif"), "naip_rgbn"),
    (("data", "spacenet3_vegas_pan_0.3m.tif"), None),
])
def test_onnx_matches_torch_on_real_tiles(exported, demo_model, parts, sensor):
    x, projections = _tile(shared_file(*parts), sensor, demo_model)
    encoder = OnnxEncoder(exported, device="cpu")
    with torch.inference_mode():
        cls = demo_model.encode(torch.from_numpy(x), projections, output="cls").numpy()
        grid = demo_model.encode(torch.from_numpy(x), projections, output="grid").numpy()
    assert np.abs(encoder.encode(x, projections, "cls") - cls).max() <= 1e-4
    assert np.abs(encoder.encode(x, projections, "grid") - grid).max() <= 1e-4 * max(1.0, np.abs(grid).max())


def test_onnx_encoder_runs_with_torch_hidden(exported, tmp_path):
    """The ONNX encoder and the band registry need neither torch nor onnx: only onnxruntime and numpy."""
    script = f"""
import numpy as np
from engine.models import OnnxEncoder
enc = OnnxEncoder({str(exported)!r}, device='cpu', threads=1)
out = enc.encode(np.zeros((2, 2, 224, 224), np.float32), ['red_2', 'near_infrared_1'], 'grid')
assert out.shape == (2, 192, 14, 14), out.shape
assert 'torch' not in sys.modules
print('ok', enc)
"""
    done = run_without_torch(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok OnnxEncoder(demo.onnx")


def test_bad_inputs_are_refused(exported, tmp_path):
    encoder = OnnxEncoder(exported)
    with pytest.raises(ValueError, match="exported tile size"):
        encoder.encode(np.zeros((1, 3, 112, 112), np.float32), ["red_2", "green_2", "blue_1"])
    with pytest.raises(ValueError, match="one spec per channel"):
        encoder.encode(np.zeros((1, 3, 224, 224), np.float32), ["red_2", "green_2"])
    other = tmp_path / "plain.onnx"
    proto = onnx.load(str(exported))
    del proto.metadata_props[:]
    onnx.save(proto, str(other))
    from engine.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not an msfm export of the expected kind"):
        OnnxEncoder(other)
    assert json.loads(json.dumps(read_metadata(other))) == {}


@pytest.mark.slow  # exports twice and quantizes to int8
def test_export_command(tmp_path, demo_model):
    from engine.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export-onnx", str(out), "--sensor", "naip_rgbn"]) == 0
    assert read_metadata(out)["msfm_sensor"] == "naip_rgbn" and not list(tmp_path.glob(".*part*"))
    int8 = tmp_path / "cli_int8.onnx"
    assert main(["export-onnx", str(int8), "--int8"]) == 0
    meta = read_metadata(int8)
    assert meta["msfm_quantization"]["weights"] == "int8" and meta["msfm_embed_dim"] == 192
    # int8 products: the patch embedding, then q, k, v, attention output, fc1, fc2 of each of the 6 blocks
    assert sum(n.op_type == "MatMulInteger" for n in onnx.load(str(int8)).graph.node) == 1 + 6 * 6
    assert int8.stat().st_size < 0.5 * out.stat().st_size
    x, projections = _tile(shared_file(*S2_L1C), None, demo_model)
    a, b = OnnxEncoder(out).encode(x, projections, "grid"), OnnxEncoder(int8).encode(x, projections, "grid")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99  # int8 embeddings of a real tile stay within the bound


@pytest.mark.slow  # embeds the NAIP tile twice (torch and ONNX Runtime)
def test_embed_with_the_onnx_backend_matches_torch(tmp_path, demo_model, monkeypatch):
    """``load_model(..., backend="onnx")`` exports once into the ONNX cache; ``embed_raster`` gives torch's embeddings."""
    from engine.maps import embed_raster

    monkeypatch.setenv("MSFM_ONNX_CACHE", str(tmp_path / "cache"))
    onnx_model = load_model("smarties-demo-tiny", backend="onnx")
    cached = list((tmp_path / "cache").glob("*.onnx"))
    assert len(cached) == 1 and onnx_model.provenance.weights_path == cached[0]
    stamp = cached[0].stat().st_mtime_ns
    assert load_model("smarties-demo-tiny", backend="onnx").provenance.weights_path == cached[0]
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not exported again
    raster = shared_file(*NAIP)
    settings = InferenceSettings(threads=2, precision="fp32")  # torch in fp32, as the export
    embed_raster(raster, tmp_path / "torch.tif", demo_model, settings=settings, sensor="naip_rgbn")
    embed_raster(raster, tmp_path / "onnx.tif", onnx_model, settings=settings, sensor="naip_rgbn")
    a, b = rasterio.open(tmp_path / "torch.tif").read(), rasterio.open(tmp_path / "onnx.tif").read()
    assert a.shape == b.shape and np.nanmax(np.abs(a - b)) <= 1e-4 * np.nanmax(np.abs(a))
    with pytest.raises(Exception, match="exported for 224-px tiles"):
        embed_raster(raster, tmp_path / "x.tif", onnx_model, settings=InferenceSettings(tile_size_px=256),
                     sensor="naip_rgbn")


@pytest.mark.slow  # a subprocess that imports the engine
def test_cluster_command_runs_on_onnxruntime_alone(exported, tmp_path):
    """``msfm cluster --model X.onnx`` with torch and onnx hidden from the import system: the torch-free install."""
    raster = shared_file(*NAIP)
    out = tmp_path / "classes.tif"
    script = f"""
from engine.cli import main
code = main(['cluster', {str(raster)!r}, {str(out)!r}, '--model', {str(exported)!r}, '--k', '4',
             '--sensor', 'naip_rgbn', '--threads', '1'])
assert 'torch' not in sys.modules
sys.exit(code)
"""
    done = run_without_torch(script)
    assert done.returncode == 0, done.stderr[-2000:]
    with rasterio.open(out) as ds:
        classes = ds.read(1)
    assert set(np.unique(classes)) <= {0, 1, 2, 3, 255} and (classes != 255).mean() > 0.9


@pytest.mark.slow  # a subprocess that imports the engine
def test_cached_export_of_a_registry_model_loads_without_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("MSFM_ONNX_CACHE", str(tmp_path))
    load_model("smarties-demo-tiny", backend="onnx")  # exported once, with torch
    script = """
from engine.models import load_model
model = load_model('smarties-demo-tiny', backend='onnx')
assert model.backend == 'onnx' and 'torch' not in sys.modules
"""
    done = run_without_torch(script, MSFM_ONNX_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
