"""Throughput benchmark: encoder tiles/s vs the machine's matmul limit, and end-to-end ``embed`` Mpx/s + peak RSS.

Run: ``.venv/bin/python bench/throughput.py [--threads 2] [--input RASTER]`` (or ``make bench``). Prints a table and
one JSON line per measurement. All figures of one run are comparable; compare across runs only as ratios.

Measures, in one process run (end-to-end cases in child processes so their peak RSS is their own):

1. fp32 matmul GFLOP/s (2048³ ``torch.mm``), the practical FLOP limit of the machine;
2. encoder-only tiles/s of the ViT-B/16 geometry (12-band 224² tiles, batch 8, random weights), and its ratio to
   the limit (a ViT-B/16 tile ≈ 35.3 GFLOP: 2 × 17.6 GMAC, docs/smarties.md §7), in torch eager and in ONNX Runtime
   fp32 (the same weights exported with the spectral projection in the graph; with ``--backend int8`` also int8);
3. end-to-end ``embed_raster`` Mpx/s (input pixels per second, reading + normalising + encoding + blending +
   writing) and peak RSS on a real raster and on a 2×2 (4×) mosaic of it (``--mosaic16``: also a 4×4 mosaic and a
   16×1 column of copies), with ``--backend torch|onnx|int8``, and the ratio of the raster case to encoder-only
   tiles/s of the same backend. Memory grows with the raster's width (one row band of tiles is held) but must stay
   flat as its height grows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VIT_B_GFLOP_PER_TILE = 35.3
DEFAULT_INPUT = REPO / "demo" / "s2_l1c_virginia_13band_10m.tif"


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """``torch.mm`` GFLOP/s of two ``n × n`` matrices in ``dtype`` (``"float32"`` or ``"bfloat16"``)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(getattr(torch, dtype)), torch.randn(n, n).to(getattr(torch, dtype))
    for _ in range(2):
        torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def vit_b(seed: int = 0):
    from engine.models import SmartiesEncoder, init_from_scratch

    return init_from_scratch(SmartiesEncoder(768, 12, 12), seed=seed).eval()


def encoder_tiles_per_s(threads: int, batch: int = 8, bands: int = 12, batches: int = 4,
                        precision: str = "fp32") -> float:
    import torch

    from engine.models import at_precision
    from engine.spectral import get_sensor

    torch.set_num_threads(threads)
    keys = [b.key for b in get_sensor("sentinel2_l2a").bands][:bands]
    model, dtype = at_precision(vit_b(), precision)
    x = torch.randn(batch, bands, 224, 224).to(dtype)
    with torch.inference_mode():
        model.encode(x, keys, "grid")
        t = time.perf_counter()
        for _ in range(batches):
            model.encode(x, keys, "grid")
    return batch * batches / (time.perf_counter() - t)


def ort_tiles_per_s(path: Path, threads: int, batch: int = 8, bands: int = 12, batches: int = 4) -> float:
    """ONNX Runtime tiles/s of an exported encoder (:func:`engine.onnx_export.export_encoder`), 12-band 224² tiles."""
    import numpy as np

    from engine.models import OnnxEncoder
    from engine.spectral import get_sensor

    keys = [b.key for b in get_sensor("sentinel2_l2a").bands][:bands]
    encoder = OnnxEncoder(path, device="cpu", threads=threads)
    x = np.random.default_rng(0).standard_normal((batch, bands, 224, 224)).astype(np.float32)
    encoder.encode(x, keys, "grid")
    t = time.perf_counter()
    for _ in range(batches):
        encoder.encode(x, keys, "grid")
    return batch * batches / (time.perf_counter() - t)


def make_mosaic(src_path: Path, dst_path: Path, rows: int = 2, cols: int = 2) -> Path:
    """A ``rows × cols`` mosaic of mirrored copies of a raster (``rows·cols`` × the pixels), same CRS, tiled GeoTIFF."""
    import numpy as np
    import rasterio
    from affine import Affine

    with rasterio.open(src_path) as src:
        data = src.read()
        profile = src.profile
        t = src.transform
        descriptions = src.descriptions
    row = np.concatenate([data if i % 2 == 0 else data[:, :, ::-1] for i in range(cols)], 2)
    big = np.concatenate([row if i % 2 == 0 else row[:, ::-1] for i in range(rows)], 1)
    profile.update(width=big.shape[2], height=big.shape[1], transform=Affine(t.a, t.b, t.c, t.d, t.e, t.f))
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(big)
        dst.descriptions = descriptions
    return dst_path


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; unlike ``ru_maxrss`` it is not inherited across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_embed_child(args: argparse.Namespace) -> None:
    """Child process: one end-to-end embed; prints a JSON line with seconds and peak RSS."""
    import torch

    from engine.maps import embed_raster
    from engine.models import at_precision, choose_precision, load_model
    from engine.settings import InferenceSettings

    torch.set_num_threads(args.threads)
    model = load_model(args.model, num_heads=None if args.model.endswith(".onnx") or "vit_b" not in args.model else 12,
                       threads=args.threads)
    with torch.inference_mode():  # warm-up, as for the encoder-only figure (first calls initialise kernels)
        x = torch.zeros(8, 3, 224, 224)
        if model.backend == "onnx":
            model.encode(x.numpy(), ["red_1", "green_1", "blue_3"], "grid")
        else:  # at the run's precision: bf16 kernels are others than fp32's
            warm, dtype = at_precision(model, choose_precision(args.precision, "cpu").precision)
            warm.encode(x.to(dtype), ["red_1", "green_1", "blue_3"], "grid")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = embed_raster(
            args.input, Path(tmp) / "emb.tif", model,
            settings=InferenceSettings(batch_size=8, threads=args.threads, scale=args.scale, device="cpu",
                                       overlap_px=args.overlap_px, precision=args.precision),
        )
        seconds = time.perf_counter() - t
    import rasterio

    with rasterio.open(args.input) as ds:
        pixels = ds.width * ds.height
    rss_mb = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "tiles": res.tiles, "pixels": pixels, "peak_rss_mb": rss_mb}))


def embed_case(raster: Path, model: str, threads: int, scale: float, overlap_px: int,
               precision: str = "fp32") -> dict:
    cmd = [sys.executable, __file__, "--child-embed", "--input", str(raster), "--model", model,
           "--threads", str(threads), "--scale", str(scale), "--overlap-px", str(overlap_px), "--precision", precision]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="real raster for the end-to-end cases")
    parser.add_argument("--model", default=None, help="model for the end-to-end cases (default: random ViT-B)")
    parser.add_argument("--scale", type=float, default=1.0, help="resampling factor for the end-to-end cases")
    parser.add_argument("--overlap-px", type=int, default=112, help="tile overlap of the end-to-end cases")
    parser.add_argument("--mosaic16", action="store_true", help="also run a 4×4 mosaic and a 16×1 (16× taller) one")
    parser.add_argument("--backend", choices=["torch", "onnx", "int8"], default="torch",
                        help="end-to-end cases with torch, ONNX Runtime fp32 or ONNX Runtime int8 (random ViT-B only)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help="torch precision of the encoder-only figure and the torch end-to-end cases (int8: "
                        "--backend int8; auto: as the model is, what the ONNX cases use)")
    parser.add_argument("--child-embed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_embed:
        run_embed_child(args)
        return

    import torch

    results = {"machine": f"{os.cpu_count()} cpus, torch {torch.__version__}", "threads": args.threads,
               "overlap_px": args.overlap_px, "precision": args.precision}
    limit = matmul_gflops(args.threads)
    tiles = encoder_tiles_per_s(args.threads, precision=args.precision)
    results.update(matmul_gflops=limit, encoder_tiles_per_s=tiles,
                   encoder_tiles_per_s_limit=limit / VIT_B_GFLOP_PER_TILE,
                   encoder_fraction_of_limit=tiles * VIT_B_GFLOP_PER_TILE / limit)
    with tempfile.TemporaryDirectory() as tmp:
        reference = tiles  # encoder-only tiles/s of the backend the end-to-end cases use
        try:
            from engine.export import quantize
            from engine.models import export_encoder

            fp32 = export_encoder(vit_b(), Path(tmp) / "vit_b.onnx")
            results["onnx_fp32_tiles_per_s"] = ort_tiles_per_s(fp32, args.threads)
            results["onnx_fp32_vs_torch"] = results["onnx_fp32_tiles_per_s"] / tiles
            if args.backend == "int8":
                int8 = quantize(fp32, Path(tmp) / "vit_b_int8.onnx")
                results["onnx_int8_tiles_per_s"] = ort_tiles_per_s(int8, args.threads)
                results["onnx_int8_vs_torch"] = results["onnx_int8_tiles_per_s"] / tiles
        except ImportError as exc:  # onnx / onnxruntime not installed
            print(f"ONNX Runtime skipped: {exc}")
        model = args.model
        if model is None and args.backend == "torch":
            from engine.models import save_encoder

            model = str(Path(tmp) / "vit_b_random.safetensors")
            save_encoder(vit_b(), model, {"num_heads": 12})
        elif model is None:
            model = str(fp32 if args.backend == "onnx" else int8)
            reference = results[f"onnx_{'fp32' if args.backend == 'onnx' else 'int8'}_tiles_per_s"]
        results["backend"] = args.backend
        cases = [("raster", args.input), ("mosaic4x", make_mosaic(args.input, Path(tmp) / "mosaic4x.tif", 2, 2))]
        if args.mosaic16:
            cases.append(("mosaic16x", make_mosaic(args.input, Path(tmp) / "mosaic16x.tif", 4, 4)))
            cases.append(("tall16x", make_mosaic(args.input, Path(tmp) / "tall16x.tif", 16, 1)))
        for name, raster in cases:
            r = embed_case(raster, model, args.threads, args.scale, args.overlap_px,
                           args.precision if args.backend == "torch" else "auto")  # an ONNX model runs as exported
            results[f"e2e_{name}_mpx_per_s"] = r["pixels"] / r["seconds"] / 1e6
            results[f"e2e_{name}_tiles_per_s"] = r["tiles"] / r["seconds"]
            results[f"e2e_{name}_peak_rss_mb"] = r["peak_rss_mb"]
            results[f"e2e_{name}_tiles"] = r["tiles"]
    results["e2e_vs_encoder_only"] = results["e2e_raster_tiles_per_s"] / reference if args.model is None else None
    print(f"fp32 matmul limit           {limit:8.1f} GFLOP/s ({args.threads} threads)")
    print(f"ViT-B encoder ({args.precision}, 12 b.) {tiles:8.2f} tiles/s = {results['encoder_fraction_of_limit']:.0%} of the "
          f"limit ({results['encoder_tiles_per_s_limit']:.2f} tiles/s)")
    if "onnx_fp32_tiles_per_s" in results:
        onnx_tiles = results["onnx_fp32_tiles_per_s"]
        print(f"ViT-B ONNX Runtime fp32     {onnx_tiles:8.2f} tiles/s = {results['onnx_fp32_vs_torch']:.2f}× torch eager, "
              f"{onnx_tiles * VIT_B_GFLOP_PER_TILE / limit:.0%} of the limit")
    if "onnx_int8_tiles_per_s" in results:
        print(f"ViT-B ONNX Runtime int8     {results['onnx_int8_tiles_per_s']:8.2f} tiles/s = "
              f"{results['onnx_int8_vs_torch']:.2f}× torch eager")
    print(f"end-to-end cases: backend {args.backend}; raster e2e / encoder-only of that backend = "
          f"{results['e2e_vs_encoder_only'] if results['e2e_vs_encoder_only'] is None else round(results['e2e_vs_encoder_only'], 2)}")
    for name in [n for n in ("raster", "mosaic4x", "mosaic16x", "tall16x") if f"e2e_{n}_tiles" in results]:
        print(f"embed e2e {name:<10}        {results[f'e2e_{name}_mpx_per_s']:8.3f} Mpx/s, "
              f"{results[f'e2e_{name}_tiles_per_s']:.2f} tiles/s ({results[f'e2e_{name}_tiles']} tiles), "
              f"peak RSS {results[f'e2e_{name}_peak_rss_mb']:.0f} MB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
