"""Segmentation benchmark: ``segment`` Mpx/s and peak RSS on a real raster and on taller/wider mosaics of it.

Run: ``.venv/bin/python bench/segmentation.py [--threads 2] [--head linear|upernet|pixel]``. A head is fitted first (on the
SpaceNet-3 Las Vegas pan image and its road label, few steps: only speed and memory are measured here; quality is
``scripts/segmentation_vs_rf.py``), then :func:`engine.segmentation.segment_raster` runs in a child process per case so
each peak RSS is its own: the raster (1.7 Mpx), a 2×2 mosaic (4×) and a 16×1 column of copies (16× taller). The
pixel blender holds one tile row of class probabilities (``K × tile × width`` float32), so memory may grow with the
width but must stay flat as the raster grows taller. Figures of one run are comparable; compare runs only as ratios.

``--compare``: instead, the time of ``segment`` with each head (linear, UPerNet, pixel; fitted for a few steps) on the
Vegas pan image (scale 1) and on the Sen1Floods11 India S2 chip (scale 2: probabilities averaged onto the input grid),
each in its own process, as ratios to the UPerNet head measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import make_mosaic, peak_rss_mb  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def child(args: argparse.Namespace) -> None:
    """One ``segment_raster`` run; prints a JSON line with seconds, pixels, tiles and peak RSS."""
    import rasterio
    import torch

    from engine.segmentation import segment_raster
    from engine.settings import InferenceSettings

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = segment_raster(args.input, Path(tmp) / "classes.tif", args.head_file,
                             settings=InferenceSettings(threads=args.threads, overlap_px=args.overlap_px, device="cpu"),
                             shifts=args.shifts)
        seconds = time.perf_counter() - t
    with rasterio.open(args.input) as ds:
        pixels = ds.width * ds.height
    print(json.dumps({"seconds": seconds, "pixels": pixels, "tiles": res.tiles, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--head", choices=["linear", "upernet", "pixel"], default="upernet")
    parser.add_argument("--compare", action="store_true", help="segment time of every head relative to UPerNet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overlap-px", type=int, default=112)
    parser.add_argument("--shifts", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--head-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from engine.models import load_model
    from engine.segmentation import HeadFitSettings, LabelRaster, fit_head
    from engine.settings import InferenceSettings

    if args.compare:
        compare(args)
        return
    image = args.data / "spacenet3_vegas_pan_0.3m.tif"
    with tempfile.TemporaryDirectory(prefix="msfm-bench-seg-") as tmp:
        head = Path(tmp) / "head.safetensors"
        fit_head(image, LabelRaster(args.data / "spacenet3_vegas_road_mask.tif"), load_model("smarties-demo-tiny"), fit=HeadFitSettings(head_type=args.head, steps=10), output=head, settings=InferenceSettings(threads=args.threads))
        cases = [("raster", image), ("mosaic 2×2 (4×)", make_mosaic(image, Path(tmp) / "m4.tif", 2, 2)),
                 ("column 16×1 (16× taller)", make_mosaic(image, Path(tmp) / "t16.tif", 16, 1))]
        print(f"segment with a {args.head} head (smarties-demo-tiny), overlap {args.overlap_px} px, shifts "
              f"{args.shifts}, {args.threads} threads")
        print("| case | Mpx | tiles | seconds | Mpx/s | peak RSS MB |")
        print("|---|---|---|---|---|---|")
        for name, path in cases:
            cmd = [sys.executable, __file__, "--child", "--input", str(path), "--head-file", str(head),
                   "--threads", str(args.threads), "--overlap-px", str(args.overlap_px), "--shifts", str(args.shifts)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            print(f"| {name} | {r['pixels'] / 1e6:.1f} | {r['tiles']} | {r['seconds']:.1f} | "
                  f"{r['pixels'] / 1e6 / r['seconds']:.3f} | {r['peak_rss_mb']:.0f} |", flush=True)


def _segment_in_child(args: argparse.Namespace, image: Path, head: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--input", str(image), "--head-file", str(head),
           "--threads", str(args.threads), "--overlap-px", str(args.overlap_px), "--shifts", str(args.shifts)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> None:
    """``segment`` seconds per head and raster, relative to the UPerNet head (same run)."""
    from engine.models import load_model
    from engine.segmentation import HeadFitSettings, LabelRaster, fit_head
    from engine.settings import InferenceSettings

    model = load_model("smarties-demo-tiny")
    rasters = {
        "Vegas pan 1300² (scale 1)": (args.data / "spacenet3_vegas_pan_0.3m.tif",
                                       LabelRaster(args.data / "spacenet3_vegas_road_mask.tif")),
        "India S2 512² (scale 2)": (args.data / "sen1floods11_india_900498_s2_l1c.tif",
                                    LabelRaster(args.data / "sen1floods11_india_900498_water_label.tif",
                                                ignore_values=(-1,))),
    }
    print(f"segment time per head (smarties-demo-tiny), overlap {args.overlap_px} px, shifts {args.shifts}, "
          f"{args.threads} threads; ratio to the UPerNet head in this run")
    print("| raster | head | tiles | seconds | × UPerNet |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="msfm-bench-seg-") as tmp:
        for name, (image, labels) in rasters.items():
            seconds = {}
            for head_type in ("upernet", "linear", "pixel"):
                head = Path(tmp) / f"{head_type}-{image.stem}.safetensors"
                fit_head(image, labels, model, fit=HeadFitSettings(head_type=head_type, steps=5), output=head,
                         settings=InferenceSettings(threads=args.threads))
                r = _segment_in_child(args, image, head)
                seconds[head_type] = r["seconds"]
                print(f"| {name} | {head_type} | {r['tiles']} | {r['seconds']:.1f} | "
                      f"{r['seconds'] / seconds['upernet']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
