"""Change-map quality on the real pairs of ../shared/data (issue 19): two markdown tables.

1. **BigEarthNet-MM S1 ↔ S2 pairs** (``bigearthnet_mm/index.csv``: six 120 × 120-px patches, Sentinel-2 L2A and
   Sentinel-1 VV/VH of the same place within a day). Every S2 patch is compared cell by cell (its 7 × 7 … 8 × 8 cells)
   with every S1 patch, the same place on the diagonal and the five other places off it: mean cosine distance, how
   often the same place is the closest S1 patch (top-1 of 6), and the AUC of "same place" against "other place" over
   the 36 patch pairs. Then the calibration a batch run learns for the pair (:func:`engine.maps.robust_spread` of the
   same-place cell distances pooled over the six patches): the other places' robust z-score under it.
2. **Sen1Floods11 flood chips** (hand-labelled water, −1 = no data). No pre-event image of these chips is in the
   data, so two references stand in for one, both honest about what they are:

   - *dry S1* — the event's own Sentinel-1 chip with every labelled water pixel replaced by its nearest dry pixel
     (``scipy.ndimage.distance_transform_edt``): what the chip would look like without water, *by construction*
     differing only where the label says water. The change map (``dry S1`` → event S1, same sensor, cosine
     distance) is scored against the water label: pixel precision / recall / IoU of the change mask per threshold
     and the AUC of the distance. It measures whether the map finds real flood shapes, not whether it would
     separate a flood from the rest of a year's changes.
   - *S2 of the event* (India only) → S1: a cross-sensor pair of one date (robust z-score, the default for two
     sensors). Nothing changed but the sensor: its AUC against the water label says how much of the cross-sensor
     "change" is water.

   With ``towards = 4`` (k-means of the event S1), the class most of the changed pixels went to, and its water share.

Usage: ``.venv/bin/python bench/change_quality.py [--data ../shared/data] [--model smarties-demo-tiny]`` (about a
minute on 2 cores; fp32, 224-px tiles, overlap 32, scale 1).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.maps import change_raster, embed_raster, l2_normalize, robust_spread  # noqa: E402
from engine.models import load_model  # noqa: E402
from engine.settings import InferenceSettings  # noqa: E402

SETTINGS = InferenceSettings(tile_size_px=224, overlap_px=32, scale=1.0, precision="fp32")
#: Thresholds per map unit: cosine distances (one sensor) and robust z-scores (two sensors).
THRESHOLDS = {"sentinel1_grd_db": ("otsu", "robust", 0.05, 0.1), "sentinel2_l1c": ("otsu", "robust", 1.0, 2.0)}


def _unit(e: np.ndarray) -> np.ndarray:
    """[D, h, w] → [h·w, D] L2-normalised (NaN cells kept NaN)."""
    return l2_normalize(e.reshape(e.shape[0], -1).T)


def bigearthnet(data: Path, model: object, tmp: Path) -> None:
    folder = data / "bigearthnet_mm"
    with open(folder / "index.csv", newline="", encoding="utf-8") as fh:
        pairs = [(row["s2_patch"], row["s1_patch"]) for row in csv.DictReader(fh)]
    s2, s1 = [], []
    for i, (a, b) in enumerate(pairs):
        for name, sensor, out in ((f"{a}_s2_12band.tif", "sentinel2_l2a", s2), (f"{b}_s1_vv_vh.tif",
                                                                                 "sentinel1_grd_db", s1)):
            path = embed_raster(folder / name, tmp / f"{i}_{sensor}.tif", model, settings=SETTINGS,
                                sensor=sensor).path
            with rasterio.open(path) as ds:
                out.append(_unit(ds.read()))
    n = len(pairs)
    cells = np.array([[np.nanmean(1 - (s2[i] * s1[j]).sum(axis=1)) for j in range(n)] for i in range(n)])
    same, other = np.diag(cells), cells[~np.eye(n, dtype=bool)]
    top1 = int((cells.argmin(axis=1) == np.arange(n)).sum())
    auc = roc_auc_score(np.r_[np.ones(n), np.zeros(other.size)], -np.r_[same, other])
    pooled = np.concatenate([1 - (s2[i] * s1[i]).sum(axis=1) for i in range(n)])
    median, sigma = robust_spread(pooled[np.isfinite(pooled)])
    z_other = [(np.nanmedian(1 - (s2[i] * s1[j]).sum(axis=1)) - median) / sigma
               for i in range(n) for j in range(n) if i != j]
    print(f"\n### BigEarthNet-MM S1 ↔ S2 ({n} same-place pairs, {s2[0].shape[0]} cells each)\n")
    print("| measure | value |\n|---|---|")
    print(f"| mean cell distance, same place | {same.mean():.3f} (min {same.min():.3f}, max {same.max():.3f}) |")
    print(f"| mean cell distance, other places | {other.mean():.3f} (min {other.min():.3f}, max {other.max():.3f}) |")
    print(f"| same place is the closest S1 patch (top-1 of {n}) | {top1} of {n} |")
    print(f"| AUC same vs other place (36 patch pairs) | {auc:.2f} |")
    print(f"| pooled no-change calibration of the pair (median, σ) | {median:.3f}, {sigma:.3f} |")
    print(f"| other places under it: median robust z (mean over pairs) | {np.mean(z_other):.2f} |")


def _scores(changed: np.ndarray, water: np.ndarray) -> tuple[float, float, float]:
    tp = float((changed & water).sum())
    return (tp / max(changed.sum(), 1), tp / max(water.sum(), 1),
            tp / max(float((changed | water).sum()), 1))


def dry_reference(s1: Path, label: np.ndarray, out: Path) -> Path:
    """A pre-event-like reference: the chip with its labelled water (``label == 1``) replaced by the nearest dry
    pixel's backscatter (``scipy.ndimage.distance_transform_edt`` indices), written with the chip's profile."""
    with rasterio.open(s1) as ds:
        pixels, profile, descriptions = ds.read(), ds.profile, ds.descriptions
    wet = label == 1
    _, (rows, cols) = ndimage.distance_transform_edt(wet, return_indices=True)
    dry = pixels[:, rows, cols]
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(dry)
        dst.descriptions = descriptions
    return out


def floods(data: Path, model: object, tmp: Path) -> None:
    print("\n### Sen1Floods11 flood chips: change map against the hand-labelled water\n")
    print("| chip | reference → event | threshold | cut | precision | recall | IoU | AUC | water share |")
    print("|---|---|---|---|---|---|---|---|---|")
    chips = [("india_900498", True), ("usa_905409", False)]
    for chip, has_s2 in chips:
        with rasterio.open(data / f"sen1floods11_{chip}_water_label.tif") as ds:
            label = ds.read(1)
        valid, water = label >= 0, label == 1
        event = data / f"sen1floods11_{chip}_s1_db.tif"
        refs = [("dry S1 → S1", dry_reference(event, label, tmp / f"{chip}_dry.tif"), "sentinel1_grd_db")]
        if has_s2:
            refs.append(("S2 (same date) → S1", data / f"sen1floods11_{chip}_s2_l1c.tif", "sentinel2_l1c"))
        for name, before, sensor in refs:
            for t in THRESHOLDS[sensor]:
                res = change_raster(before, event, tmp / f"{chip}_{sensor}_{t}.tif", model, settings=SETTINGS,
                                    before_sensor=sensor, after_sensor="sentinel1_grd_db", threshold=t,
                                    mask_output=tmp / f"{chip}_{sensor}_{t}_mask.tif",
                                    towards=4 if t == "otsu" else None,
                                    towards_output=tmp / f"{chip}_{sensor}_towards.tif" if t == "otsu" else None,
                                    overwrite=True)
                with rasterio.open(res.path) as ds:
                    values = ds.read(1)
                with rasterio.open(res.mask) as ds:
                    changed = ds.read(1) == 1
                ok = valid & np.isfinite(values)
                precision, recall, iou = _scores(changed & ok, water & ok)
                auc = roc_auc_score(water[ok], values[ok])
                share = ""
                if res.towards is not None:
                    with rasterio.open(res.towards) as ds:
                        towards = ds.read(1)
                    top = max(res.towards_fractions, key=res.towards_fractions.__getitem__)
                    cls = int(top.split()[-1])
                    share = (f"{100 * res.towards_fractions[top]:.0f} % of changed → {top}, "
                             f"{100 * water[(towards == cls) & valid].mean():.0f} % water")
                units = "z" if res.units == "robust_z" else "d"
                print(f"| {chip} ({100 * water[valid].mean():.0f} % water) | {name} | {t} | {units} "
                      f"{res.threshold:.3f} | {precision:.2f} | {recall:.2f} | {iou:.2f} | {auc:.2f} | {share} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--model", default="smarties-demo-tiny")
    args = parser.parse_args()
    model = load_model(args.model)
    print(f"model {args.model}; {SETTINGS.tile_size_px}-px tiles, overlap {SETTINGS.overlap_px}, scale 1, fp32")
    with tempfile.TemporaryDirectory() as tmp:
        bigearthnet(args.data, model, Path(tmp))
        floods(args.data, model, Path(tmp))


if __name__ == "__main__":
    main()
