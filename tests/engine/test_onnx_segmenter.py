"""An encoder and its segmentation head exported as one ONNX graph, and segmentation on ONNX Runtime alone.

Real data: an UPerNet road head fitted for a few steps on the SpaceNet-3 Las Vegas pan image and its road label
raster (the head need not be good for parity: the exported graph must compute what torch computes), and a linear
head on the Sentinel-2 Virginia scene's 13 bands.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from engine.errors import CheckpointError, DeviceError, ModelMismatchError
from engine.export import export_segmenter, quantize, to_float16
from engine.models import export_encoder, load_model, open_reader, read_metadata
from engine.segmentation import (
    HeadFitSettings,
    LabelRaster,
    OnnxSegmenter,
    build_head,
    card_projections,
    fit_head,
    load_head,
    save_head,
    segment_raster,
)
from engine.settings import InferenceSettings
from engine.spectral import BandStats

from ..conftest import S2_L1C, VEGAS_PAN, VEGAS_ROADS, run_without_torch, shared_file

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

FAST = InferenceSettings(tile_size_px=224, overlap_px=32, batch_size=8, scale=1.0, threads=2)


@pytest.fixture(scope="module")
def roads(tmp_path_factory, demo_model):
    """``(head file, exported segmenter)``: an UPerNet road head (3 steps) and its ONNX export."""
    folder = tmp_path_factory.mktemp("roads")
    labels = LabelRaster(shared_file(*VEGAS_ROADS), names={0: "background", 255: "road"})
    res = fit_head(shared_file(*VEGAS_PAN), labels, demo_model, fit=HeadFitSettings(head_type="upernet", steps=3), output=folder / "roads.safetensors", settings=FAST)
    return res.path, export_segmenter(load_head(res.path), demo_model, folder / "roads.onnx")


def _tiles(path, card, model, n: int = 3) -> np.ndarray:
    """``n`` real tiles of ``path`` along its diagonal, normalised with the card's statistics: ``[n, C, 224, 224]``."""
    stats = [BandStats(*s, source="card") for s in card.stats]
    with rasterio.open(path) as ds:
        reader, _ = open_reader(ds, model, InferenceSettings(scale=card.scale), stats=stats)
        try:
            return np.stack([reader.read(200 * i, 200 * i, 224)[0] for i in range(n)])
        finally:
            reader.close()


@pytest.mark.slow  # `roads`: an UPerNet head fitted on the 1300-px pan image and exported (~6 s)
def test_segmenter_graph_matches_torch_and_carries_the_card(roads, demo_model):
    head_file, exported = roads
    head = load_head(head_file)
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto, full_check=True)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {"image": ["batch", 1, 224, 224]} and [o.name for o in proto.graph.output] == ["probabilities"]

    meta = read_metadata(exported)
    assert meta["model_type"] == "Segmentor" and meta["class_names"] == {"0": "background", "1": "road"}
    assert meta["msfm_head_card"] == json.loads(head.card.to_json())
    assert meta["resolution"] == pytest.approx(head.card.gsd_m * 100 / head.card.scale, abs=1e-3)  # cm/px
    assert meta["standardization_mean"] == [s[2] for s in head.card.stats]

    segmenter = OnnxSegmenter(exported, device="cpu")
    assert segmenter.card.classes == head.card.classes and segmenter.tile_size_px == 224
    x = _tiles(shared_file(*VEGAS_PAN), head.card, demo_model)
    with torch.inference_mode():
        grids = demo_model.encode_blocks(torch.from_numpy(x), card_projections(head.card), head.blocks)
        expected = torch.softmax(head.pixel_logits(grids, (224, 224)), 1).numpy()
    got = segmenter.probabilities(x)
    assert got.shape == (3, 2, 224, 224) and np.abs(got - expected).max() <= 1e-4
    assert np.abs(segmenter.probabilities(x[:1]) - expected[:1]).max() <= 1e-4  # dynamic batch


def test_linear_head_on_thirteen_bands_exports_with_its_band_mix(tmp_path, demo_model):
    """A linear head on all 13 Sentinel-2 bands (an interpolated band included if any): the band mix is baked in."""
    with rasterio.open(shared_file(*S2_L1C)) as ds:
        reader, mapping = open_reader(ds, demo_model, FAST)
        x = np.stack([reader.read(0, 0, 224)[0], reader.read(300, 500, 224)[0]])
        stats = [[s.p1, s.p99, s.mean, s.std] for s in reader.stats]
        reader.close()
    bands = [{"index": b.index, "projection": b.projection.label, "key": b.key, "wavelength_nm": b.wavelength_nm}
             for b in mapping.bands]
    head = build_head("linear", demo_model, _classes(3), encoder={"name": "smarties-demo-tiny"}, bands=bands,
                      stats=stats, scale=1.0).eval()
    torch.nn.init.normal_(head.net[0].weight, std=0.2)  # a random head still has to match
    path = export_segmenter(load_head(save_head(head, tmp_path / "lin.safetensors")), demo_model, tmp_path / "lin.onnx")
    with torch.inference_mode():
        grids = demo_model.encode_blocks(torch.from_numpy(x), list(mapping.projections), head.blocks)
        expected = torch.softmax(head.pixel_logits(grids, (224, 224)), 1).numpy()
    assert np.abs(OnnxSegmenter(path).probabilities(x) - expected).max() <= 1e-4


def _classes(k: int):
    from engine.segmentation import ClassInfo

    return [ClassInfo(i, f"c{i}", (40 * i, 0, 0, 255), i) for i in range(k)]


@pytest.mark.slow  # `roads`: an UPerNet head fitted on the 1300-px pan image and exported (~6 s)
def test_segment_with_the_export_gives_torch_class_map_without_torch(roads, tmp_path):
    """``msfm segment scene.tif roads.onnx`` with torch and onnx hidden equals the torch head's class map."""
    head_file, exported = roads
    pan = shared_file(*VEGAS_PAN)
    with rasterio.open(pan) as ds:
        bounds = [*ds.xy(700, 100), *ds.xy(300, 600)]
    region = ["--bounds", *map(str, bounds), "--overlap-px", "32", "--scale", "1", "--threads", "2",
              "--precision", "fp32"]  # torch in fp32, as the export
    from engine.cli import main

    assert main(["segment", str(pan), str(head_file), str(tmp_path / "torch.tif"),
                 "--probabilities", str(tmp_path / "torch_p.tif"), *region]) == 0
    script = f"""
from engine.cli import main
code = main(['segment', {str(pan)!r}, {str(exported)!r}, {str(tmp_path / 'onnx.tif')!r},
             '--probabilities', {str(tmp_path / 'onnx_p.tif')!r}, *{region!r}])
assert 'torch' not in sys.modules
sys.exit(code)
"""
    done = run_without_torch(script)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = (rasterio.open(tmp_path / f"{k}.tif").read(1) for k in ("torch", "onnx"))
    assert a.shape == b.shape and (a == b).mean() > 0.999
    pa, pb = (rasterio.open(tmp_path / f"{k}_p.tif").read() for k in ("torch", "onnx"))
    assert np.nanmax(np.abs(pa - pb)) <= 1e-4
    assert "road" in (tmp_path / "onnx.qml").read_text()


@pytest.mark.slow  # `roads`: an UPerNet head fitted on the 1300-px pan image and exported (~6 s)
def test_int8_and_float16_segmenters_agree_with_float32(roads, demo_model, tmp_path):
    head_file, exported = roads
    card = load_head(head_file).card
    x = _tiles(shared_file(*VEGAS_PAN), card, demo_model, n=2)
    reference = OnnxSegmenter(exported).probabilities(x)
    for derive, name in ((quantize, "int8"), (to_float16, "float16")):
        path = derive(exported, tmp_path / f"roads_{name}.onnx")
        meta = read_metadata(path)
        assert meta["msfm_quantization"]["weights"] == name and meta["msfm_head_card"]["classes"][1]["name"] == "road"
        assert path.stat().st_size < 0.7 * exported.stat().st_size  # UPerNet convolutions stay float32 in int8
        got = OnnxSegmenter(path, device="cpu").probabilities(x)  # float16: the engine feeds float16, returns float32
        assert got.dtype == np.float32
        assert (got.argmax(1) == reference.argmax(1)).mean() > 0.99 and np.abs(got - reference).max() < 0.05


@pytest.mark.slow  # `roads`: an UPerNet head fitted on the 1300-px pan image and exported (~6 s)
def test_segmenter_errors_name_the_fix(roads, demo_model, tmp_path):
    head_file, exported = roads
    pan = shared_file(*VEGAS_PAN)
    with pytest.raises(ModelMismatchError, match="holds its encoder"):
        segment_raster(pan, tmp_path / "a.tif", exported, demo_model)
    with pytest.raises(ModelMismatchError, match="exported for 224-px tiles"):
        segment_raster(pan, tmp_path / "a.tif", exported, settings=InferenceSettings(tile_size_px=256))
    with pytest.raises(DeviceError, match="install onnxruntime-gpu"):
        segment_raster(pan, tmp_path / "a.tif", exported, settings=InferenceSettings(device="cuda"))
    encoder = export_encoder(demo_model, tmp_path / "encoder.onnx")
    with pytest.raises(CheckpointError, match="expected kind"):
        segment_raster(pan, tmp_path / "a.tif", encoder)
    with pytest.raises(ModelMismatchError, match="export-onnx OUT.onnx --head"):
        segment_raster(pan, tmp_path / "a.tif", head_file, load_model(encoder))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx"]


@pytest.mark.slow  # `roads`: an UPerNet head fitted on the 1300-px pan image and exported (~6 s)
def test_export_command_with_a_head(roads, tmp_path):
    from engine.cli import main

    head_file, _ = roads
    out = tmp_path / "cli.onnx"
    assert main(["export-onnx", str(out), "--head", str(head_file), "--int8"]) == 0
    meta = read_metadata(out)
    assert meta["msfm_format"] == "msfm-segmenter-onnx/1" and meta["msfm_quantization"]["weights"] == "int8"
    assert meta["msfm_encoder"] == "smarties-demo-tiny" and not list(tmp_path.glob(".*part*"))
