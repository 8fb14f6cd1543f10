"""Tests of training/evaluation/protocols.py: frozen CLS features of real BigEarthNet-MM pairs, kNN, linear probe,
retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from engine.models import load_model
from tests.conftest import shared_file
from training.data.pairs import BEN43_CLASSES, PairImages, bigearthnet_pairs
from training.evaluation.protocols import (
    classification_metric,
    cross_sensor_retrieval,
    extract_features,
    knn_classify,
    linear_probe,
)

#: Image side for the real-data features: 224 = the model's native grid (docs/smarties.md §6).
SIZE = 224


@pytest.fixture(scope="module")
def ben() -> dict:
    """CLS features of the 6 BigEarthNet-MM pairs (S1 and S2) with the bundled demo encoder, 43-class labels."""
    pairs = bigearthnet_pairs(shared_file("data", "bigearthnet_mm"))
    model = load_model("smarties-demo-tiny")
    out = {"model": model, "pairs": pairs}
    for sensor in ("s1", "s2"):
        out[sensor], out["labels"] = extract_features(model, PairImages(pairs, sensor, SIZE, BEN43_CLASSES), 4)
    return out


def _separable(n_per_class: int, classes: int, dim: int, seed: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters (std 0.5) around random centres (std 3, from ``seed``); ``draw`` seeds the samples."""
    centres = np.random.default_rng(seed).normal(size=(classes, dim)) * 3.0
    labels = np.repeat(np.arange(classes), n_per_class)
    feats = centres[labels] + np.random.default_rng([seed, draw]).normal(size=(labels.size, dim)) * 0.5
    return feats.astype(np.float32), labels


# ---------------------------------------------------------------------------------------------------- features
def test_features_of_real_pairs(ben: dict) -> None:
    model = ben["model"]
    for sensor in ("s1", "s2"):
        assert ben[sensor].shape == (6, model.embed_dim) and ben[sensor].dtype == np.float32
        assert np.isfinite(ben[sensor]).all()
    labels = ben["labels"]
    assert labels.shape == (6, 43) and labels.dtype == np.float32
    for row, pair in zip(labels, ben["pairs"]):
        assert {BEN43_CLASSES[i] for i in np.flatnonzero(row)} == set(pair.labels)
    assert not np.allclose(ben["s1"], ben["s2"])  # different sensors, different embeddings


def test_extract_features_groups_items_by_bands(ben: dict) -> None:
    """S1 and S2 items interleaved (different band lists): batched per run of equal bands, same features."""
    s1, s2 = (PairImages(ben["pairs"][:2], s, SIZE) for s in ("s1", "s2"))
    items = [s1[0], s1[1], s2[0], s1[0], s2[1]]
    feats, labels = extract_features(ben["model"], items, batch_size=8)
    assert labels is None and feats.shape == (5, ben["model"].embed_dim)
    np.testing.assert_allclose(feats[[0, 1, 3]], ben["s1"][[0, 1, 0]], atol=1e-4)
    np.testing.assert_allclose(feats[[2, 4]], ben["s2"][:2], atol=1e-4)
    with pytest.raises(ValueError, match="C = 2 bands"):
        extract_features(ben["model"], [(s1[0][0][:1], ["microwave_1", "microwave_2"], None)])


def test_real_knn_linear_probe_and_retrieval_run(ben: dict) -> None:
    """6 pairs are far too few for meaningful numbers: check the ranges and report them (docs/training.md)."""
    y, train, test = ben["labels"], slice(0, 4), slice(4, 6)
    for sensor in ("s1", "s2"):
        f = ben[sensor]
        scores = knn_classify(f[train], y[train], f[test])
        assert scores.shape == (2, 43) and (scores >= 0).all()
        knn_ap = classification_metric(scores, y[test])
        lp_ap = linear_probe(f[train], y[train], f[test], y[test])
        assert 0.0 <= knn_ap <= 100.0 and 0.0 <= lp_ap <= 100.0
        print(f"BigEarthNet-MM {sensor}, 4 train / 2 test, 43 classes: kNN micro AP {knn_ap:.1f}, "
              f"linear probe micro AP {lp_ap:.1f}")
    retrieval = cross_sensor_retrieval(ben["s1"], ben["s2"])
    assert set(retrieval) == {"a_to_b@1", "a_to_b@5", "b_to_a@1", "b_to_a@5"}
    assert all(0.0 <= v <= 100.0 for v in retrieval.values())
    print(f"BigEarthNet-MM S1->S2 / S2->S1 retrieval among 6 pairs: {retrieval}")


# ---------------------------------------------------------------------------------------------------- retrieval
def test_retrieval_identical_and_shuffled_partners(ben: dict) -> None:
    f = ben["s2"]
    assert cross_sensor_retrieval(f, f) == {"a_to_b@1": 100.0, "a_to_b@5": 100.0, "b_to_a@1": 100.0,
                                            "b_to_a@5": 100.0}
    shuffled = cross_sensor_retrieval(f, f[[1, 2, 3, 4, 5, 0]])  # every partner wrong
    assert shuffled["a_to_b@1"] == 0.0 and shuffled["b_to_a@1"] == 0.0
    with pytest.raises(ValueError, match="same"):
        cross_sensor_retrieval(f, f[:5])


# ---------------------------------------------------------------------------------------------------- kNN
def test_knn_separable_set_is_perfect() -> None:
    feats, labels = _separable(30, 4, 16, seed=0, draw=0)
    test_feats, test_labels = _separable(10, 4, 16, seed=0, draw=1)  # same classes, new samples
    scores = knn_classify(feats, labels, test_feats, k=20, T=0.07)
    assert scores.shape == (40, 4)
    assert classification_metric(scores, test_labels) == 100.0


def test_knn_votes_are_exp_weighted_cosine() -> None:
    """Hand case: k = 2 nearest by cosine, votes exp(sim / T); multi-label neighbours vote for each class."""
    train = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
    multi = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], np.float32)
    test = np.array([[3.0, 0.5]], np.float32)
    scores = knn_classify(train, multi, test, k=2, T=0.5)
    q = test[0] / np.linalg.norm(test[0])
    sims = train @ q / np.linalg.norm(train, axis=1)  # [0.986, 0.164, 0.814]: neighbours 0 and 2
    w0, w2 = np.exp(sims[0] / 0.5), np.exp(sims[2] / 0.5)
    np.testing.assert_allclose(scores[0], [w0 + w2, w2, w0], rtol=1e-5)
    single = knn_classify(train, np.array([0, 1, 2]), test, k=2, T=0.5)
    np.testing.assert_allclose(single[0], [w0, 0.0, w2], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- metrics
def test_micro_average_precision_matches_sklearn() -> None:
    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]], np.float32)
    scores = np.array([[0.9, 0.8, 0.1], [0.4, 0.7, 0.3], [0.05, 0.2, 0.6]], np.float32)
    # Flattened, descending: .9+ .8- .7+ .6- .4- .3+ (.2- .1- .05+): precisions at the positives
    # 1/1, 2/3, 3/6, 4/9 → AP = (1 + 2/3 + 1/2 + 4/9) / 4.
    expected = (1 + 2 / 3 + 1 / 2 + 4 / 9) / 4 * 100
    assert classification_metric(scores, labels) == pytest.approx(expected)
    assert classification_metric(scores, labels) == pytest.approx(
        average_precision_score(labels, scores, average="micro") * 100)
    assert classification_metric(scores, np.array([0, 1, 1])) == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError, match="classes"):
        classification_metric(scores, np.array([0, 1, 3]))


# ---------------------------------------------------------------------------------------------------- linear probe
def test_linear_probe_separable_sets() -> None:
    feats, labels = _separable(50, 5, 32, seed=2, draw=0)
    test_feats, test_labels = _separable(20, 5, 32, seed=2, draw=1)
    accuracy = linear_probe(feats, labels, test_feats, test_labels)
    assert accuracy >= 95.0
    assert linear_probe(feats, labels, test_feats, test_labels) == accuracy  # seeded: deterministic
    # Multi-label: a sample is the sum of its classes' centres plus noise (linearly separable per class).
    rng = np.random.default_rng(4)
    y = (rng.random((400, 4)) < 0.4).astype(np.float32)
    x = (y @ (rng.normal(size=(4, 16)) * 2.0) + rng.normal(size=(400, 16)) * 0.5).astype(np.float32)
    assert linear_probe(x[:300], y[:300], x[300:], y[300:]) >= 95.0
    with pytest.raises(ValueError, match="both"):
        linear_probe(x[:300], y[:300], x[300:, :], y[300:, 0].astype(np.int64))


def test_linear_probe_lr_schedule_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """100 epochs of one step: lr 4e-3 (blr 1e-3 · 1024 / 256), × 0.1 from step 60, × 0.01 from step 80."""
    seen = []
    step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    feats, labels = _separable(5, 2, 4, seed=5, draw=0)
    linear_probe(feats, labels, feats, labels)
    assert len(seen) == 100
    assert seen[0] == pytest.approx(4e-3) and seen[59] == pytest.approx(4e-3)
    assert seen[60] == pytest.approx(4e-4) and seen[79] == pytest.approx(4e-4)
    assert seen[80] == pytest.approx(4e-5) and seen[99] == pytest.approx(4e-5)
