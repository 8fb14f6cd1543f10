"""ONNX Runtime benchmark: torch eager vs ONNX fp32 vs ONNX int8, speed and embedding agreement, in one run.

Run: ``.venv/bin/python bench/onnx_speed.py [--threads 2] [--alternatives]``. Prints tables and one JSON line. All
figures of one run are comparable; compare runs only as ratios.

1. Encoder-only tiles/s of the ViT-B/16 geometry (12-band 224² tiles, batch 8, random weights) in torch eager, ONNX
   Runtime fp32 and ONNX Runtime int8 (:func:`engine.onnx_export.quantize`, dynamic quantization), with the ratio to
   torch and to the measured fp32 matmul limit (a tile ≈ 35.3 GFLOP, docs/smarties.md §7); ``--alternatives`` adds
   two int8 variants we measured and did not ship: ONNX Runtime's transformer fusions before dynamic quantization,
   and static QDQ quantization calibrated on the demo scene.
2. Agreement on a real scene (the demo's Sentinel-2 scene, 13 bands, the bundled ``smarties-demo-tiny`` weights):
   ``embed`` with each backend; per-cell cosine of int8 (and fp32) embeddings against torch's, and k-means (k = 8,
   same seed, :func:`engine.cluster.cluster_raster` on the embeddings, patch resolution) adjusted Rand index against
   torch's classes; end-to-end seconds of each ``embed``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import (  # noqa: E402
    VIT_B_GFLOP_PER_TILE,
    encoder_tiles_per_s,
    matmul_gflops,
    ort_tiles_per_s,
    vit_b,
)

SCENE = REPO / "demo" / "s2_l1c_virginia_13band_10m.tif"


def agreement(threads: int, folder: Path) -> dict:
    """Embeddings and k-means classes of the demo scene with torch, ONNX fp32 and ONNX int8."""
    import rasterio
    from sklearn.metrics import adjusted_rand_score

    from engine.export import quantize
    from engine.maps import ClusterSettings, cluster_raster, embed_raster
    from engine.models import OnnxEncoder, export_encoder, load_model
    from engine.settings import InferenceSettings

    torch_model = load_model("smarties-demo-tiny")
    fp32 = export_encoder(torch_model, folder / "demo.onnx")
    int8 = quantize(fp32, folder / "demo_int8.onnx")
    models = {"torch": torch_model, "onnx fp32": OnnxEncoder(fp32, "cpu", threads),
              "onnx int8": OnnxEncoder(int8, "cpu", threads)}
    settings = InferenceSettings(threads=threads)
    out: dict = {}
    emb, classes = {}, {}
    for name, model in models.items():
        path = folder / f"{name.replace(' ', '_')}.tif"
        t = time.perf_counter()
        res = embed_raster(SCENE, path, model, settings=settings)
        out[f"{name} embed s"] = time.perf_counter() - t
        out[f"{name} embed Mpx/s"] = res.width * res.height * res.cell_size_px ** 2 / 1e6 / out[f"{name} embed s"]
        with rasterio.open(path) as ds:
            emb[name] = ds.read().reshape(ds.count, -1).T
        cls = cluster_raster(SCENE, folder / f"{name.replace(' ', '_')}_k8.tif", clustering=ClusterSettings(k=8, resolution="patch", seed=0), embeddings=path)
        with rasterio.open(cls.path) as ds:
            classes[name] = ds.read(1).ravel()
    ok = np.isfinite(emb["torch"]).all(1)
    for name in ("onnx fp32", "onnx int8"):
        a, b = emb["torch"][ok], emb[name][ok]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out[f"{name} cosine mean"] = float(cos.mean())
        out[f"{name} cosine p1"] = float(np.percentile(cos, 1))
        out[f"{name} max abs diff"] = float(np.abs(a - b).max())
        out[f"{name} k-means ARI"] = float(adjusted_rand_score(classes["torch"], classes[name]))
    return out


def fused_int8(fp32: Path, out: Path) -> Path:
    """Alternative int8: ONNX Runtime's transformer optimizer (Attention, SkipLayerNormalization, BiasGelu) first."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from engine.models import read_metadata, set_metadata

    meta = read_metadata(fp32)
    fused = optimize_model(str(fp32), model_type="vit", num_heads=meta["msfm_num_heads"],
                           hidden_size=meta["msfm_embed_dim"])
    fused.save_model_to_file(str(out))
    quantize_dynamic(str(out), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    proto = onnx.load(str(out))
    set_metadata(proto, meta)
    onnx.save(proto, str(out))
    return out


def static_int8(fp32: Path, out: Path, batches: int = 4) -> Path:
    """Alternative int8: static QDQ quantization of every MatMul, activation ranges calibrated on demo-scene tiles."""
    import onnx
    import rasterio
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from engine.models import load_model, open_reader, read_metadata, set_metadata
    from engine.settings import InferenceSettings
    from engine.spectral import band_mix

    with rasterio.open(SCENE) as ds:
        reader, mapping = open_reader(ds, load_model("smarties-demo-tiny"), InferenceSettings())
        tiles = [reader.read(r, c, 224)[0][:12] for r in (0, 448, 896) for c in (0, 448, 896)]
        reader.close()
    mix = band_mix(list(mapping.projections)[:12])

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = [np.stack(tiles[i::batches]) for i in range(batches)]

        def get_next(self) -> dict | None:
            return {"image": self.left.pop(), "band_mix": mix} if self.left else None

    quantize_static(str(fp32), str(out), Tiles(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    proto = onnx.load(str(out))
    set_metadata(proto, read_metadata(fp32))
    onnx.save(proto, str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alternatives", action="store_true",
                        help="also time int8 with ONNX Runtime's transformer fusions and static QDQ quantization")
    args = parser.parse_args()
    from engine.export import quantize
    from engine.models import export_encoder

    limit = matmul_gflops(args.threads)
    results: dict = {"threads": args.threads, "matmul_gflops": limit}
    with tempfile.TemporaryDirectory(prefix="msfm-bench-onnx-") as tmp:
        folder = Path(tmp)
        fp32 = export_encoder(vit_b(), folder / "vit_b.onnx")
        int8 = quantize(fp32, folder / "vit_b_int8.onnx")
        speed = {"torch eager fp32": encoder_tiles_per_s(args.threads), "onnx fp32": ort_tiles_per_s(fp32, args.threads),
                 "onnx int8 (dynamic, msfm export-onnx --int8)": ort_tiles_per_s(int8, args.threads)}
        if args.alternatives:
            for name, make in (("fused + dynamic", fused_int8), ("static QDQ", static_int8)):
                speed[f"onnx int8 ({name})"] = ort_tiles_per_s(make(fp32, folder / f"vit_b_{name[:5]}.onnx"),
                                                               args.threads)
        results.update({f"{k} tiles/s": v for k, v in speed.items()})
        results.update(agreement(args.threads, folder))
    base = speed["torch eager fp32"]
    print(f"fp32 matmul limit {limit:.1f} GFLOP/s = {limit / VIT_B_GFLOP_PER_TILE:.2f} ViT-B tiles/s "
          f"({args.threads} threads)")
    print("| ViT-B, 12 bands, batch 8 | tiles/s | × torch eager | of the fp32 limit |")
    print("|---|---|---|---|")
    for name, v in speed.items():
        print(f"| {name} | {v:.2f} | {v / base:.2f} | {v * VIT_B_GFLOP_PER_TILE / limit:.0%} |")
    print("\n| demo scene, smarties-demo-tiny | embed s | cosine vs torch (mean / p1) | k-means ARI vs torch |")
    print("|---|---|---|---|")
    print(f"| torch eager | {results['torch embed s']:.1f} | 1 | 1 |")
    for name in ("onnx fp32", "onnx int8"):
        print(f"| {name} | {results[f'{name} embed s']:.1f} | {results[f'{name} cosine mean']:.5f} / "
              f"{results[f'{name} cosine p1']:.5f} | {results[f'{name} k-means ARI']:.3f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
