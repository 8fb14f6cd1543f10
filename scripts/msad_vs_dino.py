"""Does MSAD improve cross-sensor retrieval over DINO alone, at equal steps? (issue 4, docs/xstars.md §3).

Real co-registered pair: the Landsat-8 Gulf-Coast scene of ``../shared/data`` seen by two "sensors" of different GSD
and spectrum — ``MS`` = the 30 m false-colour composite NIR (B5) / SWIR-1 (B6) / red (B4), ``PAN`` = the 15 m
panchromatic band (B8, 500–680 nm). Vegetation is bright in NIR and dark in the panchromatic band, so the two views of
a place differ in more than resolution.

1. Tiles: 32 × 32 px MS (960 m) ↔ 64 × 64 px PAN of the same ground, 8-bit (2–98 % stretch of the whole scene), in
   the MSC-France layout ``<root>/<Sensor>/<City>/<tile>.tif``. Training tiles come from the northern 2/3 of the
   scene (stride 16 MS px); held-out test tiles (no overlap) from the southern 1/3, so no test ground is seen in
   training.
2. The same X-STARS recipe (:mod:`training.recipes.xstars`, from scratch) is trained at equal steps, batch and seed
   with MSAD off (DINO only), with alpha = 0.1 (the X-STARS default) and with alpha = 1.0.
3. Retrieval (:func:`training.evaluation.protocols.cross_sensor_retrieval`) among the test tiles, MS → PAN and PAN → MS top-1 /
   top-5, on the EMA teacher's CLS token and on its mean patch token (both after the final norm), plus two
   references measured the same way: the randomly initialised network and raw pixels (each tile's 3-band mean image at
   8 × 8, standardised).

Usage (≈ 3 × 4 min on 2 CPU cores at the defaults)::

    .venv/bin/python scripts/msad_vs_dino.py --data ../shared/data --work /tmp/msad_vs_dino --steps 300 --alphas 0 1

Prints one row per model and feature; ``--json`` also writes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.atomic import write_text  # noqa: E402
from training.evaluation.protocols import cross_sensor_retrieval  # noqa: E402

MS_FILE = "l8_l1_10band_30m_gulfcoast.tif"
PAN_FILE = "l8_l1_pan_b8_15m_gulfcoast.tif"
MS_BANDS = (5, 6, 4)  # B5 NIR, B6 SWIR-1, B4 red (1-based band indexes of the 10-band file: B1-B7, B9, B10, B11)
TILE = 32  # MS px; PAN tiles are 2 × TILE
TRAIN_FRAC = 2 / 3


def _stretch(a: np.ndarray) -> np.ndarray:
    """[C, H, W] → uint8 with a 2–98 % per-band stretch over the whole array."""
    out = np.empty(a.shape, np.uint8)
    for i, band in enumerate(a.astype(np.float32)):
        lo, hi = np.percentile(band[band > 0], (2, 98)) if (band > 0).any() else (0.0, 1.0)
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-6) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0], dtype="uint8")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def build_tiles(data: Path, root: Path) -> dict[str, int]:
    """Write the training folder ``root/train`` and the test folder ``root/test``; returns the tile counts."""
    with rasterio.open(data / MS_FILE) as ms_ds, rasterio.open(data / PAN_FILE) as pan_ds:
        ms = _stretch(ms_ds.read(list(MS_BANDS)))
        # the PAN grid is 2× the MS grid over the same footprint (1254 × 1207 vs 627 × 603; check the bounds)
        if not np.allclose(ms_ds.bounds, pan_ds.bounds, atol=30):
            raise SystemExit(f"{MS_FILE} and {PAN_FILE} do not cover the same ground")
        pan = _stretch(pan_ds.read(1, out_shape=(ms_ds.height * 2, ms_ds.width * 2), resampling=Resampling.nearest)[None])
    h, w = ms.shape[1:]
    split = int(h * TRAIN_FRAC) // TILE * TILE
    counts = {"train": 0, "test": 0}
    for part, rows, stride in (("train", range(0, split - TILE + 1, TILE // 2), TILE // 2),
                               ("test", range(split, h - TILE + 1, TILE), TILE)):
        for r in rows:
            for c in range(0, w - TILE + 1, stride):
                name = f"r{r:04d}_c{c:04d}.tif"
                _write(root / part / "MS" / "gulfcoast" / name, ms[:, r:r + TILE, c:c + TILE])
                _write(root / part / "PAN" / "gulfcoast" / name, pan[:, 2 * r:2 * r + 2 * TILE, 2 * c:2 * c + 2 * TILE])
                counts[part] += 1
    return counts


def _read_folder(folder: Path) -> torch.Tensor:
    from training.data.xstars import read_rgb

    return torch.stack([read_rgb(p) for p in sorted(folder.glob("*.tif"))])


def _features(backbone: torch.nn.Module, images: torch.Tensor, mean: list[float], std: list[float],
              size: int) -> dict[str, torch.Tensor]:
    x = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    backbone.eval()
    with torch.no_grad():
        tokens = torch.cat([backbone(x[i:i + 64], return_all_tokens=True) for i in range(0, len(x), 64)])
    return {"cls": tokens[:, 0], "mean_patch": tokens[:, 1:].mean(1)}


def _pixels(images: torch.Tensor) -> torch.Tensor:
    x = F.interpolate(images.mean(1, keepdim=True), size=(8, 8), mode="area").flatten(1)
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder with the Landsat-8 files")
    p.add_argument("--work", default="/tmp/msad_vs_dino", help="tiles and run folders go here")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.1, 1.0], help="0 = MSAD off (DINO only)")
    p.add_argument("--lr", type=float, default=4e-3,
                   help="optim.lr for a batch of 256 (DINO scaling: peak = lr · batch / 256 = 5e-4 at batch 32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the table here")
    args = p.parse_args(argv)

    from engine.models import build_dino_model, read_dino_checkpoint
    from training.recipes.xstars import build_xstars_model, load_xstars_config, train_xstars

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if not (work / "tiles" / "test").exists():
        counts = build_tiles(Path(args.data), work / "tiles")
        print(f"tiles: {counts['train']} training places, {counts['test']} held-out places")
    train_root = work / "tiles" / "train"
    test = {s: _read_folder(work / "tiles" / "test" / s / "gulfcoast") for s in ("MS", "PAN")}
    # one joint normalisation (X-STARS' --mean/--std), from the training tiles of both sensors
    pooled = torch.cat([_read_folder(train_root / s / "gulfcoast").flatten(2) for s in ("MS", "PAN")], 2)
    mean, std = pooled.mean((0, 2)).tolist(), pooled.std((0, 2)).tolist()

    size = 64
    rows = [{"model": "raw pixels (8×8 mean image)", "feature": "pixels", "seed": None,
             **cross_sensor_retrieval(_pixels(test["MS"]), _pixels(test["PAN"]))}]
    for seed in args.seeds:
        for alpha in args.alphas:
            name = "DINO only" if alpha == 0 else f"DINO + {alpha:g}·MSAD"
            out = work / "runs" / f"seed{seed}_alpha{alpha:g}_lr{args.lr:g}"
            overrides = [
                f"run.out_dir={out}", f"run.steps={args.steps}", f"run.seed={seed}", f"run.threads={args.threads}",
                "run.checkpoint_every=100000", "run.progress=false", f"data.root={train_root}",
                "data.sensors=[MS, PAN]", f"data.batch_size={args.batch_size}", f"data.mean={mean}",
                f"data.std={std}", "model.name=l8", "model.embed_dim=96", "model.depth=4", "model.num_heads=3",
                "model.patch_size=8", f"model.img_size={size}", "model.out_dim=1024", "model.head_hidden_dim=256",
                "model.head_bottleneck_dim=64", "dino.local_crops_number=2", f"dino.global_size_px={size}",
                "dino.local_size_px=32", "dino.momentum_teacher=0.99", f"msad.size_px={size}",
                f"msad.enabled={str(alpha > 0).lower()}", f"msad.alpha={alpha if alpha > 0 else 0.1}",
                f"optim.lr={args.lr}", "optim.warmup_epochs=1",
            ]
            cfg = load_xstars_config("xstars-tiny-cpu", overrides)
            if seed == args.seeds[0] and alpha == args.alphas[0]:
                torch.manual_seed(seed)
                init = build_xstars_model(cfg, epochs=1).teacher.backbone
                fa_all, fb_all = (_features(init, test[s], mean, std, size) for s in ("MS", "PAN"))
                for feature in fa_all:
                    rows.append({"model": "random init", "feature": feature, "seed": seed,
                                 **cross_sensor_retrieval(fa_all[feature], fb_all[feature])})
            if (out / "export" / "l8.pth").exists():
                print(f"{name}, seed {seed}: reusing {out}")
                wall = None
            else:
                t0 = time.perf_counter()
                train_xstars(cfg)
                wall = time.perf_counter() - t0
            backbone = build_dino_model(read_dino_checkpoint(out / "export" / "l8.pth", "teacher", with_head=False))
            fa_all, fb_all = (_features(backbone, test[s], mean, std, size) for s in ("MS", "PAN"))
            for feature in fa_all:
                rows.append({"model": name, "feature": feature, "seed": seed, "train_s": wall,
                             **cross_sensor_retrieval(fa_all[feature], fb_all[feature])})
    n = len(test["MS"])
    print(f"\ncross-sensor retrieval among {n} held-out Landsat-8 places (MS false colour ↔ PAN), "
          f"{args.steps} steps × batch {args.batch_size}, lr {args.lr:g} per 256; % of queries")
    print(f"{'model':28s} {'feature':11s} {'seed':>4s}  MS→PAN@1 MS→PAN@5 PAN→MS@1 PAN→MS@5")
    for r in rows:
        seed = "" if r["seed"] is None else str(r["seed"])
        print(f"{r['model']:28s} {r['feature']:11s} {seed:>4s}  {r['a_to_b@1']:8.1f} {r['a_to_b@5']:8.1f} "
              f"{r['b_to_a@1']:8.1f} {r['b_to_a@5']:8.1f}")
    if args.json:
        write_text(args.json, json.dumps({"places": n, "steps": args.steps, "lr": args.lr, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
