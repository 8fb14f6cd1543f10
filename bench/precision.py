"""Precision benchmark: fp32, bf16 and int8 encoder paths side by side, against the machine's matmul limits, in one run.

Run: ``.venv/bin/python bench/precision.py [--threads 2] [--rounds 3]``. Prints two markdown tables and one JSON line.
Compare figures within one run only (the machines are noisy); every path is timed once per round, rounds interleaved,
and the median round is reported.

1. **Encoder-only**, the ViT-B/16 geometry (12-band 224² tiles, batch 8, random weights, ≈ 35.3 GFLOP per tile,
   docs/smarties.md §7): torch fp32 (the baseline), torch with a bf16 copy of the encoder fed bf16 tiles (what
   ``--precision bf16`` runs, :func:`engine.models.at_precision`), torch fp32 weights under ``torch.autocast`` to
   bf16 (the alternative, which casts the weights at every call; not shipped), ONNX Runtime fp32 and int8
   (what ``--precision int8`` runs: :func:`engine.models.onnx_twin`). Each with tiles/s, the ratio to torch fp32,
   and the share of the machine's matmul limit at that precision (2048³ ``torch.mm`` in fp32 and bf16 — the limit is
   what the matrix units can do, so a share near 100 % means the path is bound by them; measured in every round, the
   best round is the limit; int8 is shown against the fp32 limit, as ONNX Runtime's int8 kernels have no torch
   counterpart to measure).
2. **Agreement and end to end**, the bundled ``smarties-demo-tiny`` on the demo Sentinel-2 scene (1024² px at scale 1,
   no overlap, 25 tiles): ``embed`` at each precision, seconds, per-cell cosine to fp32 (mean and 1st percentile) and
   k-means (k = 8, patch resolution) adjusted Rand index to fp32's classes.

What ``auto`` picks on this machine, and why, is printed first (:func:`engine.models.choose_precision`).

The original SMARTIES encoder is timm ``Block``s; timm needs torchvision, which does not install beside the CPU build
of torch 2.13.0 we pin, so the baseline is our own fp32 path (measured at 1.02–1.03× the original timm code, issue 16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import VIT_B_GFLOP_PER_TILE, matmul_gflops, vit_b  # noqa: E402

SCENE = REPO / "demo" / "s2_l1c_virginia_13band_10m.tif"
BATCH, BANDS, BATCHES = 8, 12, 3


def encoder_paths(folder: Path, threads: int) -> dict[str, tuple[Callable[[], object], str]]:
    """Name → (one batch of the ViT-B, the matmul limit it is measured against)."""
    import torch

    from engine.models import at_precision, load_model, onnx_twin, save_encoder
    from engine.spectral import get_sensor

    os.environ["MSFM_ONNX_CACHE"] = str(folder / "onnx")  # the twins are exported into the run's scratch folder
    keys = [b.key for b in get_sensor("sentinel2_l2a").bands][:BANDS]
    weights = folder / "vit_b.safetensors"
    save_encoder(vit_b(), weights, {"num_heads": 12})
    model = load_model(weights)
    x = torch.randn(BATCH, BANDS, 224, 224)
    half, dtype = at_precision(model, "bf16")
    xh = x.to(dtype)
    xn = x.numpy()
    onnx32 = onnx_twin(model, precision="fp32", threads=threads)
    onnx8 = onnx_twin(model, precision="int8", threads=threads)

    def torch_run(module: torch.nn.Module, inp: torch.Tensor, autocast: bool = False) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                return module.encode(inp, keys, "grid").float()
        return run

    return {
        "torch fp32": (torch_run(model, x), "float32"),
        "torch bf16 (--precision bf16)": (torch_run(half, xh), "bfloat16"),
        "torch.autocast bf16 (not shipped)": (torch_run(model, x, autocast=True), "bfloat16"),
        "ONNX Runtime fp32": (lambda: onnx32.encode(xn, keys, "grid"), "float32"),
        "ONNX Runtime int8 (--precision int8)": (lambda: onnx8.encode(xn, keys, "grid"), "float32"),
    }


def time_batches(run: Callable[[], object]) -> float:
    run()  # warm-up: first calls choose and initialise kernels
    t = time.perf_counter()
    for _ in range(BATCHES):
        run()
    return BATCH * BATCHES / (time.perf_counter() - t)


def agreement(folder: Path, threads: int) -> dict[str, dict[str, float]]:
    """``embed`` of the demo scene at each precision: seconds, cosine and k-means agreement with fp32."""
    import rasterio
    from sklearn.metrics import adjusted_rand_score

    from engine.maps import ClusterSettings, cluster_raster, embed_raster
    from engine.models import load_model
    from engine.settings import InferenceSettings

    model = load_model("smarties-demo-tiny")
    out: dict[str, dict[str, float]] = {}
    emb: dict[str, np.ndarray] = {}
    classes: dict[str, np.ndarray] = {}
    for precision in ("fp32", "bf16", "int8"):
        path = folder / f"emb-{precision}.tif"
        settings = InferenceSettings(overlap_px=0, scale=1.0, threads=threads, precision=precision)
        embed_raster(SCENE, path, model, settings=settings)  # warm-up run (int8: the one-time export)
        t = time.perf_counter()
        res = embed_raster(SCENE, path, model, settings=settings, overwrite=True)
        seconds = time.perf_counter() - t
        with rasterio.open(path) as ds:
            emb[precision] = ds.read().reshape(ds.count, -1)
        cluster_raster(SCENE, folder / f"cls-{precision}.tif", embeddings=path,
                       clustering=ClusterSettings(k=8, resolution="patch", seed=0))
        with rasterio.open(folder / f"cls-{precision}.tif") as ds:
            classes[precision] = ds.read(1).ravel()
        out[precision] = {"seconds": seconds, "tiles": res.tiles, "tiles_per_s": res.tiles / seconds}
    ok = np.isfinite(emb["fp32"]).all(0)
    for precision in ("bf16", "int8"):
        a, b = emb["fp32"][:, ok], emb[precision][:, ok]
        cos = (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))
        out[precision].update(cosine_mean=float(cos.mean()), cosine_p1=float(np.percentile(cos, 1)),
                              kmeans_ari=float(adjusted_rand_score(classes["fp32"], classes[precision])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import platform

    import torch

    from engine.models import choose_precision, cpu_features

    flags = sorted(f for f in cpu_features() if f.startswith(("avx512", "amx", "avx_vnni", "avx2")) or f == "bf16")
    auto = choose_precision("auto", "cpu")
    print(f"# Precision benchmark — {platform.processor() or platform.machine()}, {args.threads} threads, torch "
          f"{torch.__version__}; CPU flags: {' '.join(flags) or 'none of interest'}")
    print(f"auto on this CPU: {auto}\n")
    with tempfile.TemporaryDirectory() as tmp:
        paths = encoder_paths(Path(tmp), args.threads)
        rounds: dict[str, list[float]] = {name: [] for name in paths}
        measured: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        for _ in range(args.rounds):
            for dtype in measured:
                measured[dtype].append(matmul_gflops(args.threads, repeats=6, dtype=dtype))
            for name, (run, _) in paths.items():
                torch.set_num_threads(args.threads)
                rounds[name].append(time_batches(run))
        agree = agreement(Path(tmp), args.threads)
    limits = {dtype: max(values) for dtype, values in measured.items()}  # a limit: the best round
    tiles = {name: statistics.median(values) for name, values in rounds.items()}
    base = tiles["torch fp32"]
    print(f"matmul limit: fp32 {limits['float32']:.0f} GFLOP/s ({limits['float32'] / VIT_B_GFLOP_PER_TILE:.1f} "
          f"ViT-B tiles/s), bf16 {limits['bfloat16']:.0f} GFLOP/s "
          f"({limits['bfloat16'] / VIT_B_GFLOP_PER_TILE:.1f} tiles/s)\n")
    print("| ViT-B/16, 12 bands, 224², batch 8 | tiles/s (median of rounds) | × torch fp32 | of the matmul limit |")
    print("|---|---|---|---|")
    for name, (_, dtype) in paths.items():
        share = tiles[name] * VIT_B_GFLOP_PER_TILE / limits[dtype]
        print(f"| {name} | {tiles[name]:.2f} ({' / '.join(f'{v:.2f}' for v in rounds[name])}) | "
              f"{tiles[name] / base:.2f} | {share:.0%} of {'bf16' if dtype == 'bfloat16' else 'fp32'} |")
    print(f"\n| demo scene, smarties-demo-tiny, {agree['fp32']['tiles']} tiles | embed s | tiles/s | × fp32 | cosine "
          "to fp32 mean / p1 | k-means (k = 8) adjusted Rand |")
    print("|---|---|---|---|---|---|")
    for precision, r in agree.items():
        cos = f"{r['cosine_mean']:.6f} / {r['cosine_p1']:.6f}" if "cosine_mean" in r else "—"
        ari = f"{r['kmeans_ari']:.3f}" if "kmeans_ari" in r else "—"
        print(f"| {precision} | {r['seconds']:.1f} | {r['tiles_per_s']:.1f} | "
              f"{r['tiles_per_s'] / agree['fp32']['tiles_per_s']:.2f} | {cos} | {ari} |")
    print(json.dumps({"auto": str(auto), "flags": flags, "matmul_gflops": limits, "encoder_tiles_per_s": rounds,
                      "agreement": agree}))


if __name__ == "__main__":
    main()
