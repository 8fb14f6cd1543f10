"""Tests of training/schedules.py: endpoints and lengths (docs/xstars.md §9 item 6), HF/DINO warm-up conventions, and
the values the original X-STARS run wrote into its checkpoint's optimiser (fixtures/xstars README §3)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from tests.conftest import shared_file
from training.schedules import (
    cosine_schedule,
    dino_lr_schedule,
    dino_wd_schedule,
    scaled_lr,
    schedule_value,
    smarties_lr_schedule,
    teacher_momentum_schedule,
    teacher_temp_schedule,
)


def test_cosine_schedule_dino_endpoints() -> None:
    v = cosine_schedule(1.0, 0.1, total_steps=100, warmup_steps=10, warmup_start=0.2)
    assert v.shape == (100,) and v.dtype == np.float64
    assert v[0] == 0.2
    np.testing.assert_allclose(v[:10], np.linspace(0.2, 1.0, 10))  # DINO: linspace with endpoint
    assert v[9] == pytest.approx(1.0) and v[10] == pytest.approx(1.0)
    assert v[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 89 / 90)))
    assert abs(v[-1] - 0.1) < 1e-3
    assert np.all(np.diff(v[10:]) <= 0)  # monotone decay after the warm-up
    np.testing.assert_allclose(cosine_schedule(1.0, 0.5, 7), schedule_value(np.arange(7), 1.0, 0.5, 7))


def test_cosine_schedule_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1.0, 0.0, 10, warmup_steps=11)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(1.0, 0.0, 0)
    with pytest.raises(ValueError, match="batch_size_total"):
        scaled_lr(5e-4, 0)


def test_dino_recipe_schedules() -> None:
    epochs, ipe, batch = 20, 5, 64
    lr = dino_lr_schedule(batch, epochs, ipe)
    wd = dino_wd_schedule(epochs, ipe)
    m = teacher_momentum_schedule(epochs, ipe)
    for s in (lr, wd, m):
        assert s.shape == (epochs * ipe,)
    peak = 5e-4 * batch / 256
    assert lr[0] == 0.0 and lr[10 * ipe] == pytest.approx(peak) and lr.max() == pytest.approx(peak)
    assert lr[-1] == pytest.approx(1e-6, abs=peak * 1e-3)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4, abs=1e-3) and np.all(np.diff(wd) >= 0)
    assert m[0] == pytest.approx(0.996) and m[-1] == pytest.approx(1.0, abs=1e-5) and m.max() <= 1.0
    assert scaled_lr(5e-4, 4) == 7.8125e-6  # X-STARS README run (docs/xstars.md §2)


def test_smarties_lr_is_hf_cosine_with_warmup() -> None:
    """HF get_cosine_schedule_with_warmup: lr·s/w during warm-up, then ½(1+cos(π·progress)), 0 at step = total."""
    epochs, ipe, batch, warm = 30, 4, 2048, 2
    lr = smarties_lr_schedule(batch, epochs, ipe, warmup_epochs=warm)
    peak = 1.5e-4 * 2048 / 256
    assert peak == pytest.approx(1.2e-3)
    total, w = epochs * ipe, warm * ipe
    expected = [peak * s / w if s < w else peak * 0.5 * (1 + math.cos(math.pi * (s - w) / (total - w)))
                for s in range(total)]
    np.testing.assert_allclose(lr, expected, rtol=1e-12, atol=0)
    assert lr[0] == 0.0 and lr[w] == pytest.approx(peak) and lr[w - 1] < peak
    assert float(schedule_value(total, peak, 0.0, total, w, warmup_endpoint=False)) == pytest.approx(0.0, abs=1e-18)


def test_teacher_temp_schedule_matches_fixture() -> None:
    """fixtures/xstars README §2: DINOLoss(..., 0.04, 0.07, 30, 100) at epoch 10 uses 0.0503448275862069."""
    t = teacher_temp_schedule(100, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_epochs=30)
    assert t.shape == (100,)
    assert t[10] == 0.0503448275862069
    assert t[0] == 0.04 and t[29] == 0.07 and np.all(t[30:] == 0.07)
    assert np.all(teacher_temp_schedule(400) == 0.04)  # X-STARS defaults: constant 0.04


def test_schedules_reproduce_original_checkpoint_optimizer() -> None:
    """The original run (1 epoch, 4 iterations, batch 2, lr 0.05, warm-up 1 epoch) left its last scheduled lr/wd
    (numpy.float64) in the AdamW param groups; our schedules at the last iteration give the same numbers."""
    path = shared_file("fixtures", "xstars", "vit_tiny_dino_checkpoint.pth")
    allowed = [argparse.Namespace, np.dtype, type(np.dtype(np.float64))]
    allowed.append((np.core.multiarray.scalar, "numpy._core.multiarray.scalar"))  # numpy-2 pickle under numpy 1
    allowed.append(np.core.multiarray.scalar)
    with torch.serialization.safe_globals(allowed):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    args, groups = ckpt["args"], ckpt["optimizer"]["param_groups"]
    ipe = 4
    lr = dino_lr_schedule(args.batch_size_per_gpu, args.epochs, ipe, args.lr, args.min_lr, args.warmup_epochs)
    wd = dino_wd_schedule(args.epochs, ipe, args.weight_decay, args.weight_decay_end)
    np.testing.assert_allclose(lr, np.linspace(0.0, 3.90625e-4, 4))
    assert [g["lr"] for g in groups] == [lr[-1], lr[-1]]
    assert groups[0]["weight_decay"] == pytest.approx(wd[-1], rel=1e-15) and groups[1]["weight_decay"] == 0.0
