"""Validation of a map trained from labels: a split of the label groups that never splits a polygon, and the scores.

Used by :func:`engine.segmentation.fit_head` and :func:`engine.segmentation.classify_raster` (torch-free, so the
random forest runs without torch).

- :func:`split_groups`: whole polygons (stratified by class) or label-raster blocks go to validation, so validation
  pixels are never neighbours of training pixels (a per-pixel split would report inflated scores);
- :func:`segmentation_scores`: per-class IoU, F1, precision, recall, their macro means and overall accuracy from a
  confusion matrix.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .labels import LabelGrid

__all__ = ("segmentation_scores", "split_groups")


def segmentation_scores(confusion: np.ndarray, names: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Per-class IoU, F1, precision and recall, their macro means, and overall accuracy from a confusion matrix.

    Args:
        confusion: ``int [K, K]``, rows = reference class, columns = predicted class.
        names: Class names (default ``"0"``…).

    Returns:
        ``{"miou", "macro_f1", "overall_accuracy", "pixels", "classes": {name: {"iou", "f1", "precision",
        "recall", "pixels"}}}``; IoU = TP / (TP + FP + FN), F1 = 2TP / (2TP + FP + FN). Classes without reference
        pixels are left out of the means (their scores are None).
    """
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)
    ref, pred = cm.sum(1), cm.sum(0)
    names = list(names) if names is not None else [str(i) for i in range(len(cm))]
    per: dict[str, Any] = {}
    ious, f1s = [], []
    for i, name in enumerate(names):
        if ref[i] == 0:
            per[name] = {"iou": None, "f1": None, "precision": None, "recall": None, "pixels": 0}
            continue
        iou = tp[i] / (ref[i] + pred[i] - tp[i])
        f1 = 2 * tp[i] / (ref[i] + pred[i])
        per[name] = {"iou": float(iou), "f1": float(f1), "precision": float(tp[i] / pred[i]) if pred[i] else 0.0,
                     "recall": float(tp[i] / ref[i]), "pixels": int(ref[i])}
        ious.append(iou)
        f1s.append(f1)
    total = cm.sum()
    return {
        "miou": float(np.mean(ious)) if ious else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "overall_accuracy": float(tp.sum() / total) if total else None,
        "pixels": int(total),
        "classes": per,
    }


def split_groups(grid: LabelGrid, val_fraction: float, seed: int = 0) -> tuple[set[int], set[int], list[str]]:
    """Split label groups (polygons or blocks) into train and validation, stratified by class for polygons.

    Returns:
        ``(train group ids, validation group ids, notes)``; notes name classes kept out of validation.
    """
    rng = np.random.default_rng(seed)
    present = set(np.unique(grid.groups[grid.groups >= 0]).tolist())
    train: set[int] = set()
    val: set[int] = set()
    notes: list[str] = []
    if val_fraction <= 0:
        return present, set(), notes
    if grid.group_class:  # polygons: stratify by class
        for c in grid.classes:
            ids = sorted(g for g, k in grid.group_class.items() if k == c.index and g in present)
            rng.shuffle(ids)
            if len(ids) < 2:
                notes.append(f"class {c.name!r} has {len(ids)} polygon(s) on the raster: all used for training, "
                             "none for validation")
                train.update(ids)
                continue
            n_val = min(len(ids) - 1, max(1, round(len(ids) * val_fraction)))
            val.update(ids[:n_val])
            train.update(ids[n_val:])
    else:
        ids = sorted(present)
        rng.shuffle(ids)
        n_val = min(len(ids) - 1, max(1, round(len(ids) * val_fraction))) if len(ids) > 1 else 0
        val.update(ids[:n_val])
        train.update(ids[n_val:])
    return train, val, notes
