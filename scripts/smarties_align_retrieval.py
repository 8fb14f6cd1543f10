"""Cross-sensor retrieval before and after a short ``smarties-align`` run of the bundled demo encoder.

Measures whether aligning ``smarties-demo-tiny`` onto a new sensor with the ``smarties-align`` recipe
(:mod:`training.smarties_align`: MAE on the new view + alpha · MSAD to a frozen copy on the old view) makes the two
sensors' features of the same ground find each other, on ground the run never saw:

- **BigEarthNet-MM S2 → S1** (the 6 pairs of ``../shared/data/bigearthnet_mm``, 1.2 km each): the northern half of
  every pair (rows 0–59) is the training area, the southern half the test area, cut into non-overlapping 300 m
  windows (2 × 4 per pair = 48 test places). Old sensor (frozen teacher) = S2, new sensor (student) = S1.
- **Landsat-8 30 m multispectral → 15 m panchromatic** (``l8_l1_*_gulfcoast.tif``, 18.8 × 18.1 km): the western
  half is the training area, the eastern half the test area, cut into non-overlapping 1.8 km windows (5 × 10 = 50
  test places; the middle third of the scene is cloudy). Old = MS (9 bands), new = pan (no MAE pixel head:
  ``mae_weight 0``, MSAD only).

The areas are written as GeoTIFF subsets (same CRS, bands, presets), so every crop goes through the recipe's own
reader (:class:`training.data.pairs.PairedCropSampler`: same ground window for both sensors, engine normalisation,
224 px). Test windows are read without flips. Features are the CLS token and the mean patch token, both after the
final LayerNorm (``encode(..., "tokens")``); retrieval is
:func:`training.evaluation.protocols.cross_sensor_retrieval` (top-1/top-5 of the co-located partner among all test places, both
directions). Rows: the initial model on both sensors; the aligned student on the new sensor against the frozen
initial model on the old one (the pairing MSAD trains); the aligned student on both; the same pairing in the MSAD
embedding space (tokens through ``Q2 ∘ P`` for the student, ``Q1 ∘ P`` for the teacher: what the loss actually
aligns; baseline: the initial model through untrained heads); for BigEarthNet also a control run with
``msad.alpha 0`` (MAE on S1 only, same steps) to separate MSAD from plain fine-tuning.

Usage (≈ 15 min on 2 busy CPU cores at the defaults)::

    .venv/bin/python scripts/smarties_align_retrieval.py --data ../shared/data --work /tmp/align_eval --steps 200

Prints one row per model/feature; ``--json`` also writes them.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import rasterio
import torch
from rasterio.windows import Window, from_bounds

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.models import load_model  # noqa: E402
from training.data.pairs import PairedCropSampler, bigearthnet_pairs, pairs_from_csv  # noqa: E402
from training.evaluation.protocols import cross_sensor_retrieval  # noqa: E402
from training.export import load_msad_heads  # noqa: E402
from training.models.msad_heads import MSADHeads  # noqa: E402
from training.recipes.smarties_align import load_align_config, train_smarties_align  # noqa: E402

INIT = "smarties-demo-tiny"


def write_subset(src: Path, dst: Path, bounds: tuple[float, float, float, float]) -> None:
    """Copy the part of ``src`` inside ``bounds`` (whole pixels, rounded outwards) to a GeoTIFF ``dst``."""
    with rasterio.open(src) as ds:
        win = from_bounds(*bounds, transform=ds.transform).round_offsets(op="floor").round_lengths(op="ceil")
        win = win.intersection(Window(0, 0, ds.width, ds.height))
        profile = ds.profile | {"driver": "GTiff", "width": int(win.width), "height": int(win.height),
                                "transform": ds.window_transform(win)}
        for key in ("blockxsize", "blockysize", "tiled"):
            profile.pop(key, None)
        data = ds.read(window=win)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(dst, "w", **profile) as out:
            out.write(data)
            for band, text in enumerate(ds.descriptions, start=1):
                if text:
                    out.set_band_description(band, text)
            out.update_tags(**ds.tags())


def split_pairs(pairs: Sequence[Any], work: Path, split: str) -> tuple[Path, Path]:
    """Write train/test subsets of every pair and a pairs CSV for each. ``split``: ``rows`` (north/south halves)
    or ``cols`` (west/east halves) of the pair's common footprint."""
    sampler = PairedCropSampler(pairs, size_px=224)
    out = {}
    for part in ("train", "test"):
        rows = []
        for i, pair in enumerate(pairs):
            left, bottom, right, top = sampler.footprint(i)
            if split == "rows":
                mid = (bottom + top) / 2
                b = (left, mid, right, top) if part == "train" else (left, bottom, right, mid)
            else:
                mid = (left + right) / 2
                b = (left, bottom, mid, top) if part == "train" else (mid, bottom, right, top)
            row = {"id": f"{pair.id}-{part}"}
            for sensor, path in pair.paths.items():
                dst = work / part / f"{Path(path).stem}.tif"
                write_subset(Path(path), dst, b)
                row[sensor] = str(dst)
            rows.append(row)
        csv_path = work / f"{part}.csv"
        with open(csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        out[part] = csv_path
    return out["train"], out["test"]


def test_windows(csv_path: Path, presets: dict[str, str], side: float) -> tuple[dict[str, torch.Tensor], dict]:
    """Every non-overlapping ``side``-metre window of the test pairs, read by the recipe's reader at 224 px."""
    pairs = pairs_from_csv(csv_path, presets=presets)
    sampler = PairedCropSampler(pairs, size_px=224, flips=False)
    images: dict[str, list[torch.Tensor]] = {s: [] for s in pairs[0].sensors}
    bands: dict[str, Any] = {}
    for i in range(len(pairs)):
        left, bottom, right, top = sampler.footprint(i)
        nx, ny = int((right - left) // side), int((top - bottom) // side)
        for r in range(ny):
            for c in range(nx):
                b = (left + c * side, top - (r + 1) * side, left + (c + 1) * side, top - r * side)
                for s in images:
                    x, _, specs = sampler.read(i, s, b)
                    images[s].append(x)
                    bands[s] = specs
    return {s: torch.stack(v) for s, v in images.items()}, bands


@torch.no_grad()
def features(model: Any, images: torch.Tensor, bands: Sequence[Any], batch: int = 16,
             head: Any = None) -> dict[str, np.ndarray]:
    """CLS and mean patch token (after the final norm) of every image; with ``head`` (``P`` then ``Q1`` or ``Q2``
    of the MSAD heads) the same in the MSAD embedding space (every token through the head, then CLS / mean)."""
    model.eval()
    cls, mean = [], []
    for k in range(0, len(images), batch):
        tokens = model.encode(images[k:k + batch], bands, "tokens")
        if head is not None:
            tokens = head(tokens)
        cls.append(tokens[:, 0])
        mean.append(tokens[:, 1:].mean(1))
    return {"cls": torch.cat(cls).numpy(), "mean_patch": torch.cat(mean).numpy()}


def head_fns(heads: MSADHeads) -> tuple[Any, Any]:
    """``(Q1 ∘ P, Q2 ∘ P)``: the MSAD embeddings of the old sensor (sat1, teacher) and the new one (sat2, student)."""
    heads.eval()
    return (lambda t: heads.Q.sat1_projection(heads.P(t))), (lambda t: heads.Q.sat2_projection(heads.P(t)))


def align(train_csv: Path, presets: dict[str, str], old: str, new: str, out: Path, steps: int, batch: int,
          overrides: Sequence[str]) -> list[Path]:
    """Run the recipe on the training area (tiny CPU config + overrides); returns the exported files (encoder,
    full MAE, MSAD heads)."""
    preset_yaml = "{" + ", ".join(f"{k}: {v}" for k, v in presets.items()) + "}"
    cfg = load_align_config("smarties-align-tiny-cpu", [
        f"run.out_dir={out}", f"run.steps={steps}", "run.threads=1", "run.progress=false",
        f"run.checkpoint_every={steps}", "data.pairs.kind=csv", f"data.pairs.path={train_csv}",
        f"data.pairs.presets={preset_yaml}", f"data.batch_size={batch}", f"align.old_sensor={old}",
        f"align.new_sensor={new}", "optim.warmup_steps=null", "optim.warmup_frac=0.05", *overrides])
    t0 = time.time()
    result = train_smarties_align(cfg)
    with open(result.log_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = {k: rows[0][k] for k in ("loss", "mae_loss", "msad_loss")}
    last = {k: float(np.mean([float(r[k]) for r in rows[-20:] if r[k]])) if any(r[k] for r in rows[-20:])
            else float("nan") for k in ("loss", "mae_loss", "msad_loss")}
    print(f"  trained {steps} steps in {time.time() - t0:.0f} s; first {first}; mean of last 20 "
          f"{ {k: round(v, 3) for k, v in last.items()} }", flush=True)
    return result.exports


def retrieval_rows(name: str, feats_new: dict, feats_old: dict, new: str, old: str) -> list[dict[str, Any]]:
    rows = []
    for kind in ("cls", "mean_patch"):
        r = cross_sensor_retrieval(feats_new[kind], feats_old[kind])
        rows.append({"model": name, "features": kind,
                     f"{new}->{old}@1": r["a_to_b@1"], f"{new}->{old}@5": r["a_to_b@5"],
                     f"{old}->{new}@1": r["b_to_a@1"], f"{old}->{new}@5": r["b_to_a@5"]})
    return rows


def experiment(label: str, pairs: Sequence[Any], presets: dict[str, str], old: str, new: str, split: str,
               side: float, work: Path, args: argparse.Namespace, runs: dict[str, Sequence[str]]) -> list[dict]:
    print(f"== {label}: old {old} (frozen teacher) -> new {new} (student)", flush=True)
    train_csv, test_csv = split_pairs(pairs, work / label, split)
    images, bands = test_windows(test_csv, presets, side)
    n = len(images[new])
    print(f"  {n} held-out test places ({side:g} m windows); chance top-1 {100 / n:.1f} %, top-5 "
          f"{100 * min(5, n) / n:.1f} %", flush=True)
    init = load_model(INIT)
    f_init = {s: features(init, images[s], bands[s]) for s in (old, new)}
    rows = retrieval_rows("initial (both sensors)", f_init[new], f_init[old], new, old)
    torch.manual_seed(0)
    fresh_old, fresh_new = head_fns(MSADHeads(init.embed_dim, 256))  # untrained heads of the tiny config's width
    rows += retrieval_rows("initial, untrained MSAD heads", features(init, images[new], bands[new], head=fresh_new),
                           features(init, images[old], bands[old], head=fresh_old), new, old)
    for run, overrides in runs.items():
        exported = align(train_csv, presets, old, new, work / label / run, args.steps, args.batch, overrides)
        model = load_model(exported[0])
        f_new, f_old = features(model, images[new], bands[new]), features(model, images[old], bands[old])
        rows += retrieval_rows(f"{run}: student {new} vs initial {old}", f_new, f_init[old], new, old)
        rows += retrieval_rows(f"{run}: student on both", f_new, f_old, new, old)
        heads, _ = load_msad_heads(exported[2])
        h_old, h_new = head_fns(heads)
        rows += retrieval_rows(f"{run}: MSAD heads, student {new} vs initial {old}",
                               features(model, images[new], bands[new], head=h_new),
                               features(init, images[old], bands[old], head=h_old), new, old)
    for row in rows:
        row["dataset"], row["test_places"], row["steps"] = label, n, args.steps
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=Path("/tmp/smarties_align_retrieval"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--alpha", type=float, default=1.0, help="msad.alpha of the alignment runs")
    p.add_argument("--only", choices=["bigearthnet", "landsat"], help="run one dataset")
    p.add_argument("--no-control", action="store_true", help="skip the BigEarthNet MAE-only control run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.work.exists() and any(args.work.iterdir()):
        p.error(f"--work {args.work} is not empty (the run folders would clash); give a new folder")
    rows: list[dict] = []
    if args.only in (None, "bigearthnet"):
        ben = bigearthnet_pairs(args.data / "bigearthnet_mm")
        presets = {"s1": "sentinel1_grd_db", "s2": "sentinel2_l2a"}
        runs = {"align": [f"msad.alpha={args.alpha}"]}
        if not args.no_control:
            runs["mae-only control"] = ["msad.alpha=0"]
        rows += experiment("bigearthnet", ben, presets, "s2", "s1", "rows", 300.0, args.work, args, runs)
    if args.only in (None, "landsat"):
        from training.data.pairs import pan_ms_pairs

        l8 = pan_ms_pairs(args.data / "l8_l1_10band_30m_gulfcoast.tif", args.data / "l8_l1_pan_b8_15m_gulfcoast.tif",
                          "landsat8_oli_tirs", "landsat8_oli_tirs")
        presets = {"ms": "landsat8_oli_tirs", "pan": "landsat8_oli_tirs"}
        rows += experiment("landsat", l8, presets, "ms", "pan", "cols", 1800.0, args.work, args, {
            "align": [f"msad.alpha={args.alpha}", "align.mae_weight=0"]})
    for row in rows:
        scores = "  ".join(f"{k} {row[k]:5.1f}" for k in row if "@" in k)
        print(f"{row['dataset']:<12} {row['model']:<56} {row['features']:<10} {scores}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
