"""Peak memory and time of change maps as the raster grows: does ``change_raster`` stream?

For mosaics of 1 × 1, 4 × 4 and 8 × 8 mirrored copies of a raster (``throughput.make_mosaic``; default the
Sen1Floods11 India S2 chip, 512² px → 4 096² px), each case in its own process (so its peak RSS is its own):

- ``embed``: ``embed_raster`` of the raster (the baseline: what one side costs);
- ``patch``: ``change_raster`` of the raster against itself at patch resolution (both sides embedded);
- ``pixel``: the same at pixel resolution (distances interpolated onto the pixels);
- ``mask+towards``: pixel resolution with an Otsu threshold, a mask and a towards map (k-means, k = 4).

Prints a markdown table: seconds and peak RSS (MB) per case and size, and each change case's RSS minus ``embed``'s.
Usage: ``.venv/bin/python bench/change_memory.py [--input RASTER] [--sizes 1,4,8]`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = ("embed", "patch", "pixel", "mask+towards")


def child(case: str, raster: str, out: str) -> None:
    """One case in this process; prints ``{"seconds": …, "rss_mb": …}``."""
    from throughput import peak_rss_mb

    from engine.maps import change_raster, embed_raster
    from engine.models import load_model
    from engine.settings import InferenceSettings

    model = load_model("smarties-demo-tiny")
    settings = InferenceSettings(tile_size_px=224, overlap_px=32, scale=1.0, precision="fp32")
    started = time.perf_counter()
    if case == "embed":
        embed_raster(raster, out, model, settings=settings)
    else:
        options = {"patch": {"resolution": "patch"}, "pixel": {},
                   "mask+towards": {"threshold": "otsu", "mask_output": out.replace(".tif", "_mask.tif"),
                                    "towards": 4, "towards_output": out.replace(".tif", "_towards.tif")}}[case]
        change_raster(raster, raster, out, model, settings=settings, **options)
    print(json.dumps({"seconds": time.perf_counter() - started, "rss_mb": peak_rss_mb()}))


def main() -> None:
    from throughput import make_mosaic

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "sen1floods11_india_900498_s2_l1c.tif")
    parser.add_argument("--sizes", default="1,4,8", help="mosaic sides (n × n copies)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    print("| raster | " + " | ".join(f"{c} s / MB" for c in CASES) + " | change − embed MB |")
    print("|---|" + "---|" * (len(CASES) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in args.sizes.split(",")):
            raster = args.input if n == 1 else make_mosaic(args.input, Path(tmp) / f"mosaic{n}.tif", n, n)
            rows = {}
            for case in CASES:
                out = Path(tmp) / f"{n}_{case.replace('+', '_')}.tif"
                run = subprocess.run([sys.executable, __file__, "--child", case, str(raster), str(out)], env=env,
                                     capture_output=True, text=True, check=True)
                rows[case] = json.loads(run.stdout.strip().splitlines()[-1])
            extra = max(rows[c]["rss_mb"] for c in CASES[1:]) - rows["embed"]["rss_mb"]
            with rasterio.open(raster) as ds:
                size = f"{ds.width} × {ds.height} px"
            print(f"| {size} | " + " | ".join(f"{rows[c]['seconds']:.1f} / {rows[c]['rss_mb']:.0f}" for c in CASES)
                  + f" | {extra:+.0f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
    else:
        main()
