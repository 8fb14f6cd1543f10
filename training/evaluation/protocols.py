"""Frozen-encoder evaluation on CLS features: kNN, linear probe, cross-sensor retrieval (docs/smarties.md §6).

Works with any encoder exposing ``encode(x [B, C, H, W], bands, output="cls") → [B, D]`` (SMARTIES today,
:mod:`engine.models.smarties`; the X-STARS DINO ViT later). Features are the CLS token after the final LayerNorm, as
SMARTIES' downstream protocols use (global pooling off, §6).

- :func:`extract_features` — ``[N, D]`` float32 features and the labels of a dataset of ``(image, bands, label)``
  items (e.g. :class:`training.data.pairs.PairImages`).
- :func:`knn_classify` — the §6 kNN: L2-normalised features, cosine similarity, the k = 20 nearest training samples
  vote with weight ``exp(sim / 0.07)``, votes summed per class → ``[M, C]`` class scores.
- :func:`linear_probe` — the §6 linear probe: ``BatchNorm1d(D, affine=False, eps=1e-6) → Linear(D, C)`` on frozen
  features, AdamW β = (0.9, 0.95), weight decay 0, batch 1024, lr = 1e-3 · 1024 / 256, 100 epochs, LR × 0.1 at 60 %
  and × 0.01 at 80 % of the steps; cross-entropy (single-label) or BCE-with-logits (multi-label).
- :func:`classification_metric` — top-1 accuracy × 100 (single-label) or micro-averaged average precision × 100
  (multi-label, the BigEarthNet "mAP" of §6, :func:`sklearn.metrics.average_precision_score`).
- :func:`cross_sensor_retrieval` — top-k retrieval of the co-located partner (row i of A ↔ row i of B) in both
  directions (e.g. S1 → S2 and S2 → S1).

Labels are ``[N]`` int64 class indices (single-label) or ``[N, C]`` {0, 1} multi-hot arrays (multi-label); the
label array's rank selects the variant everywhere.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import nn

__all__ = (
    "classification_metric",
    "cross_sensor_retrieval",
    "extract_features",
    "knn_classify",
    "linear_probe",
)

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

#: kNN neighbours and temperature (docs/smarties.md §6, the DINO kNN protocol).
KNN_K = 20
KNN_T = 0.07
#: Linear-probe recipe (docs/smarties.md §6): epochs, batch, base LR (lr = blr · batch / 256), milestones as fractions
#: of the steps (epochs 60 and 80 of 100) and their LR factors, AdamW betas, BatchNorm eps, head init std.
LP_EPOCHS = 100
LP_BATCH = 1024
LP_BLR = 1e-3
LP_MILESTONES = ((0.6, 0.1), (0.8, 0.01))
LP_BETAS = (0.9, 0.95)
LP_BN_EPS = 1e-6
LP_INIT_STD = 0.01
#: Test rows scored at once by :func:`knn_classify` (bounds the [rows, N] similarity matrix).
_KNN_CHUNK = 1024


def _as_float(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if not isinstance(x, torch.Tensor) else x).detach().float().cpu()
    if t.ndim != 2:
        raise ValueError(f"{name} must be [N, D] features, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/inf features; check the encoder inputs (normalisation, nodata)")
    return t


def _labels(y: ArrayLike, n: int, name: str) -> torch.Tensor:
    """Labels as int64 [N] (single-label) or float32 [N, C] multi-hot, checked against N rows."""
    t = torch.as_tensor(np.ascontiguousarray(y) if not isinstance(y, torch.Tensor) else y).detach().cpu()
    if t.ndim not in (1, 2) or t.shape[0] != n:
        raise ValueError(f"{name} must be [N] class indices or [N, C] multi-hot with N = {n}, got shape "
                         f"{tuple(t.shape)}")
    if t.ndim == 1:
        if t.is_floating_point() and not torch.equal(t, t.round()):
            raise ValueError(f"{name}: single-label labels must be integer class indices")
        t = t.long()
        if (t < 0).any():
            raise ValueError(f"{name}: class indices must be >= 0, got {int(t.min())}")
        return t
    t = t.float()
    if not ((t == 0) | (t == 1)).all():
        raise ValueError(f"{name}: multi-label labels must be 0/1 multi-hot vectors")
    return t


# ---------------------------------------------------------------------------------------------------- features
def _stack_labels(labels: list[Any]) -> Optional[np.ndarray]:
    if all(lab is None for lab in labels):
        return None
    if any(lab is None for lab in labels):
        raise ValueError("some items have a label and others none; label all items or none")
    arrays = [np.asarray(lab) for lab in labels]
    if all(a.ndim == 0 for a in arrays):
        return np.array([int(a) for a in arrays], np.int64)
    if all(a.ndim == 1 for a in arrays) and len({a.shape for a in arrays}) == 1:
        return np.stack(arrays).astype(np.float32)
    raise ValueError("labels must all be class indices (int) or all multi-hot vectors of one length")


@torch.no_grad()
def extract_features(
    model: Any, dataset: Iterable, batch_size: int = 64
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """CLS features of every item of a dataset, with the encoder frozen (eval mode, no gradients).

    Args:
        model: An encoder with ``encode(x, bands, output="cls")`` (:func:`engine.load_model`); it runs on its own
            device (that of its first parameter, CPU if it has none) and is put back in its previous train/eval mode.
        dataset: Iterable of ``(image, bands, label)``: image ``[C, H, W]`` float32 normalised (tensor or array),
            ``bands`` the C band specs ``encode`` takes (range keys / projections), ``label`` a class index, a
            multi-hot vector or ``None`` (:class:`training.data.pairs.PairImages`). Consecutive items with the same
            bands and size are batched together.
        batch_size: Images per ``encode`` call.

    Returns:
        ``(features [N, D] float32, labels)``: labels ``[N]`` int64, ``[N, C]`` float32, or ``None`` when no item is
        labelled.

    Raises:
        ValueError: Empty dataset, ``batch_size`` < 1, an image that is not ``[C, H, W]`` or does not match its band
            count, mixed label kinds.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else torch.device("cpu")
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    feats: list[torch.Tensor] = []
    labels: list[Any] = []
    pending: list[torch.Tensor] = []
    pending_key: Optional[tuple] = None
    pending_bands: Any = None

    def flush() -> None:
        if pending:
            x = torch.stack(pending).to(device)
            feats.append(model.encode(x, list(pending_bands), output="cls").float().cpu())
            pending.clear()

    try:
        for n, (image, bands, label) in enumerate(dataset):
            x = torch.as_tensor(image, dtype=torch.float32)
            if x.ndim != 3 or x.shape[0] != len(bands):
                raise ValueError(f"item {n}: image must be [C, H, W] with C = {len(bands)} bands, got shape "
                                 f"{tuple(x.shape)}")
            key = (tuple(map(repr, bands)), tuple(x.shape))
            if key != pending_key or len(pending) >= batch_size:
                flush()
                pending_key, pending_bands = key, bands
            pending.append(x)
            labels.append(label)
        flush()
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    if not feats:
        raise ValueError("the dataset yielded no item")
    return torch.cat(feats).numpy().astype(np.float32, copy=False), _stack_labels(labels)


# ---------------------------------------------------------------------------------------------------- metrics
def classification_metric(scores: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy × 100 (labels ``[M]``) or micro-averaged average precision × 100 (labels ``[M, C]``).

    Args:
        scores: ``[M, C]`` class scores (kNN votes, logits, probabilities: only their order matters).
        labels: ``[M]`` int class indices or ``[M, C]`` multi-hot {0, 1}.

    Returns:
        The metric in percent (0–100), a Python float. Micro AP is
        ``sklearn.metrics.average_precision_score(labels, scores, average="micro")`` × 100 (docs/smarties.md §6,
        BigEarthNet).

    Raises:
        ValueError: Shapes disagree, or multi-label labels without any positive (AP undefined).
    """
    s = _as_float(scores, "scores")
    y = _labels(labels, s.shape[0], "labels")
    if y.ndim == 1:
        if int(y.max()) >= s.shape[1]:
            raise ValueError(f"labels hold class {int(y.max())} but scores have {s.shape[1]} classes")
        return float((s.argmax(1) == y).double().mean() * 100.0)
    if y.shape[1] != s.shape[1]:
        raise ValueError(f"labels have {y.shape[1]} classes but scores {s.shape[1]}")
    if not (y > 0).any():
        raise ValueError("no positive label: average precision is undefined")
    return float(average_precision_score(y.numpy(), s.numpy(), average="micro") * 100.0)


def _num_classes(*labels: torch.Tensor, given: Optional[int] = None) -> int:
    if labels[0].ndim == 2:
        c = labels[0].shape[1]
        if any(y.shape[1] != c for y in labels):
            raise ValueError(f"multi-hot labels of different widths: {[y.shape[1] for y in labels]}")
        if given is not None and given != c:
            raise ValueError(f"num_classes={given} but the multi-hot labels have {c} classes")
        return c
    c = max(int(y.max()) + 1 for y in labels if y.numel())
    if given is not None:
        if given < c:
            raise ValueError(f"num_classes={given} but the labels hold class index {c - 1}")
        return given
    return c


def knn_classify(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    k: int = KNN_K,
    T: float = KNN_T,
    num_classes: Optional[int] = None,
) -> np.ndarray:
    """Weighted kNN class scores (docs/smarties.md §6, DINO's kNN).

    Train and test features are L2-normalised; for each test row the k most cosine-similar training rows vote for
    their class(es) with weight ``exp(sim / T)``; votes are summed per class. Single-label: the top-1 prediction is
    ``scores.argmax(1)``. Multi-label: a neighbour votes for each of its positive classes, and the per-class sums are
    the scores ranked by the micro AP. Score both with :func:`classification_metric`.

    Args:
        train_feats: ``[N, D]`` features.
        train_labels: ``[N]`` int class indices or ``[N, C]`` multi-hot.
        test_feats: ``[M, D]`` features.
        k: Neighbours (20, docs/smarties.md §6); ``min(k, N)`` are used.
        T: Temperature of the vote weights (0.07, docs/smarties.md §6).
        num_classes: C for single-label labels (default: the largest index + 1).

    Returns:
        ``[M, C]`` float32 vote scores.

    Raises:
        ValueError: Mismatched shapes or feature widths, ``k`` < 1, ``T`` <= 0, bad labels.
    """
    xtr, xte = _as_float(train_feats, "train_feats"), _as_float(test_feats, "test_feats")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train features have D = {xtr.shape[1]} but test features D = {xte.shape[1]}")
    if k < 1 or not T > 0:
        raise ValueError(f"k must be >= 1 and T > 0, got k={k}, T={T}")
    y = _labels(train_labels, xtr.shape[0], "train_labels")
    c = _num_classes(y, given=num_classes)
    votes_of = F.one_hot(y, c).float() if y.ndim == 1 else y  # [N, C]
    xtr, xte = F.normalize(xtr, dim=1), F.normalize(xte, dim=1)
    k = min(k, xtr.shape[0])
    out = []
    for start in range(0, xte.shape[0], _KNN_CHUNK):
        sim = xte[start:start + _KNN_CHUNK] @ xtr.T  # [m, N]
        top, idx = sim.topk(k, dim=1)  # [m, k]
        weights = (top / T).exp()
        out.append((votes_of[idx] * weights[..., None]).sum(1))  # [m, k, C] → [m, C]
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def _lr_factor(step: int, total: int) -> float:
    factor = 1.0
    for fraction, value in LP_MILESTONES:
        if step >= fraction * total:
            factor = value
    return factor


def linear_probe(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    epochs: int = LP_EPOCHS,
    batch_size: int = LP_BATCH,
    lr: Optional[float] = None,
    weight_decay: float = 0.0,
    num_classes: Optional[int] = None,
    seed: int = 0,
) -> float:
    """Train a linear head on frozen features and score it on the test features (docs/smarties.md §6, "lp").

    Head: ``BatchNorm1d(D, affine=False, eps=1e-6) → Linear(D, C)``, weight trunc-normal std 0.01, bias 0. AdamW
    β = (0.9, 0.95), weight decay 0, ``lr = 1e-3 · batch_size / 256`` unless given, ``epochs`` × ⌈N / batch⌉
    steps over shuffled training rows (the last, smaller batch kept; a last batch of one row is skipped, BatchNorm
    needs two), the LR multiplied by 0.1 from 60 % and by 0.01 from 80 % of the steps (epochs 60 and 80 of 100, per
    step, no warm-up). Loss: cross-entropy (single-label) or BCE-with-logits averaged over classes (multi-label; = the
    reference's multilabel soft-margin loss). CPU, deterministic for a seed.

    Args:
        train_feats, test_feats: ``[N, D]`` / ``[M, D]`` features.
        train_labels, test_labels: ``[N]`` / ``[M]`` int class indices, or ``[N, C]`` / ``[M, C]`` multi-hot.
        epochs: Passes over the training rows (100).
        batch_size: Rows per step (1024); BatchNorm needs at least 2 rows per step.
        lr: Learning rate; default ``1e-3 · batch_size / 256`` (= 4e-3 at 1024).
        weight_decay: AdamW weight decay (0).
        num_classes: C for single-label labels (default: the largest index in train or test + 1).
        seed: Seed of the head's init and the shuffling.

    Returns:
        Test top-1 accuracy × 100 (single-label) or micro AP × 100 (multi-label), see :func:`classification_metric`.

    Raises:
        ValueError: Mismatched shapes, mixed label kinds, fewer than 2 training rows, bad hyper-parameters.
    """
    xtr, xte = _as_float(train_feats, "train_feats"), _as_float(test_feats, "test_feats")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train features have D = {xtr.shape[1]} but test features D = {xte.shape[1]}")
    ytr = _labels(train_labels, xtr.shape[0], "train_labels")
    yte = _labels(test_labels, xte.shape[0], "test_labels")
    if ytr.ndim != yte.ndim:
        raise ValueError("train and test labels must both be class indices or both multi-hot")
    if xtr.shape[0] < 2:
        raise ValueError(f"the linear probe needs at least 2 training rows (BatchNorm), got {xtr.shape[0]}")
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {epochs}, {batch_size}")
    c = _num_classes(ytr, yte, given=num_classes)
    lr = LP_BLR * batch_size / 256 if lr is None else float(lr)
    gen = torch.Generator().manual_seed(seed)
    head = nn.Sequential(nn.BatchNorm1d(xtr.shape[1], affine=False, eps=LP_BN_EPS), nn.Linear(xtr.shape[1], c))
    nn.init.trunc_normal_(head[1].weight, std=LP_INIT_STD, generator=gen)
    nn.init.zeros_(head[1].bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, betas=LP_BETAS, weight_decay=weight_decay)
    n = xtr.shape[0]
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    loss_fn = nn.CrossEntropyLoss() if ytr.ndim == 1 else nn.BCEWithLogitsLoss()
    step = 0
    head.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            rows = order[b * batch_size:(b + 1) * batch_size]
            if rows.numel() < 2:  # BatchNorm cannot train on a single row: skip that step
                continue
            for group in optimizer.param_groups:
                group["lr"] = lr * _lr_factor(step, total)
            loss = loss_fn(head(xtr[rows]), ytr[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    head.eval()
    with torch.no_grad():
        logits = head(xte)
    return classification_metric(logits, yte)


def cross_sensor_retrieval(feats_a: ArrayLike, feats_b: ArrayLike, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Retrieve each sample's co-located partner in the other sensor by cosine similarity, both ways.

    Row i of ``feats_a`` and row i of ``feats_b`` are the same place (e.g. S1 and S2 of a BigEarthNet-MM pair). For
    every query of A, the rows of B are ranked by cosine similarity; a query is a hit at k when fewer than k rows of
    B are strictly more similar than its partner (ties count in the query's favour). Same for B → A.

    Args:
        feats_a: ``[N, D]`` features of sensor A.
        feats_b: ``[N, D]`` features of sensor B (same N and D).
        ks: Cut-offs (top-1 and top-5).

    Returns:
        ``{"a_to_b@1": %, "a_to_b@5": %, "b_to_a@1": %, "b_to_a@5": %}`` (percent of queries, 0–100).

    Raises:
        ValueError: Shapes differ, or a k < 1.
    """
    a, b = _as_float(feats_a, "feats_a"), _as_float(feats_b, "feats_b")
    if a.shape != b.shape:
        raise ValueError(f"feats_a {tuple(a.shape)} and feats_b {tuple(b.shape)} must have the same [N, D] shape "
                         "(row i of each = the same place)")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T  # [N, N]: a_i · b_j
    out = {}
    for name, s in (("a_to_b", sim), ("b_to_a", sim.T)):
        true = s.diagonal()[:, None]
        rank = (s > true).sum(1)  # rows strictly more similar than the partner
        for k in ks:
            out[f"{name}@{k}"] = float((rank < k).double().mean() * 100.0)
    return out
