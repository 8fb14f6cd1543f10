"""Per-iteration training schedules: one cosine implementation shared by every recipe (DINO/X-STARS, SMARTIES MAE).

Every schedule is a float64 numpy array indexed by the global iteration (``epoch · iters_per_epoch + it``), as DINO
precomputes its learning rate, weight decay and teacher momentum (docs/xstars.md §2). The teacher temperature is the
exception: it is indexed by *epoch* (docs/xstars.md §2, DINO's ``DINOLoss``).

The one mechanism is :func:`schedule_value`: an optional linear warm-up followed by a half-cosine from ``base`` to
``final``. Two warm-up conventions exist in the recipes we reproduce, and they differ only in the warm-up segment:

* DINO (``warmup_endpoint=True``): ``numpy.linspace(warmup_start, base, warmup_steps)``, endpoint included, so the
  last warm-up step is already ``base`` (and so is the first cosine step).
* Hugging Face ``get_cosine_schedule_with_warmup`` (SMARTIES, docs/smarties.md §5; ``warmup_endpoint=False``):
  ``base · step / warmup_steps``, so ``lr[warmup_steps - 1] = base · (w − 1)/w``.

The cosine part is the same in both: at step ``s ≥ w`` the value is
``final + ½ (base − final) (1 + cos(π (s − w) / (total − w)))``, so ``v[w] = base`` and ``v[-1]`` is one cosine step
above ``final`` (``final`` itself would be reached at ``s = total``).
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np

__all__ = (
    "LINEAR_SCALING_BATCH",
    "cosine_schedule",
    "dino_lr_schedule",
    "dino_wd_schedule",
    "scaled_lr",
    "schedule_value",
    "smarties_lr_schedule",
    "teacher_momentum_schedule",
    "teacher_temp_schedule",
)

#: Reference batch size of the linear scaling rule ``lr = base_lr · batch_total / 256`` (DINO, MAE, SMARTIES).
LINEAR_SCALING_BATCH = 256

ArrayLike = Union[float, int, np.ndarray]


def _check(total_steps: int, warmup_steps: int) -> None:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"warmup_steps must lie in [0, total_steps={total_steps}], got {warmup_steps}")


def schedule_value(
    step: ArrayLike,
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
    warmup_endpoint: bool = True,
) -> np.ndarray:
    """Value of the warm-up + cosine schedule at (possibly fractional) step(s).

    Args:
        step: Iteration index, scalar or array, in ``[0, total_steps]``; fractional values interpolate the same
            formula (for wall-clock-budgeted runs: ``step = progress · total_steps``). Values outside are clipped.
        base: Peak value, reached at the end of the warm-up (e.g. the learning rate after linear scaling).
        final: Value the cosine decays (or rises) to at ``step = total_steps``.
        total_steps: Length of the run in iterations (> 0).
        warmup_steps: Linear warm-up length in iterations (0 = start the cosine at ``base``).
        warmup_start: Value at step 0 when there is a warm-up.
        warmup_endpoint: ``True`` = DINO convention (``linspace`` with endpoint: ``v[w − 1] = base``); ``False`` =
            Hugging Face convention (``v[s] = warmup_start + (base − warmup_start) · s / w``).

    Returns:
        float64 array of ``step``'s shape (0-d for a scalar step).

    Raises:
        ValueError: ``total_steps ≤ 0`` or ``warmup_steps`` outside ``[0, total_steps]``.
    """
    _check(total_steps, warmup_steps)
    s = np.clip(np.asarray(step, dtype=np.float64), 0.0, float(total_steps))
    if warmup_endpoint:
        denom = warmup_steps - 1
        frac = s / denom if denom > 0 else np.zeros_like(s)  # linspace(a, b, 1) == [a]
    else:
        frac = s / max(warmup_steps, 1)
    warm = warmup_start + (base - warmup_start) * np.minimum(frac, 1.0)
    n_cos = total_steps - warmup_steps
    t = (s - warmup_steps) / max(n_cos, 1)
    cos = final + 0.5 * (base - final) * (1.0 + np.cos(math.pi * np.clip(t, 0.0, 1.0)))
    return np.where(s < warmup_steps, warm, cos)


def cosine_schedule(
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
    warmup_endpoint: bool = True,
) -> np.ndarray:
    """Per-iteration array of :func:`schedule_value` over ``range(total_steps)``.

    With the defaults this is DINO's ``cosine_scheduler`` (docs/xstars.md §2): ``v[0] = warmup_start`` (or ``base``
    without warm-up), ``v[warmup_steps] = base``, ``v[-1] ≈ final``.

    Args:
        base: Peak value.
        final: End value of the cosine.
        total_steps: Array length (iterations of the whole run, ``epochs · iters_per_epoch``).
        warmup_steps: Linear warm-up length in iterations.
        warmup_start: Value at step 0 of the warm-up.
        warmup_endpoint: Warm-up convention, see :func:`schedule_value`.

    Returns:
        float64 array ``[total_steps]``.

    Raises:
        ValueError: As :func:`schedule_value`.
    """
    return schedule_value(
        np.arange(total_steps), base, final, total_steps, warmup_steps, warmup_start, warmup_endpoint
    )


def scaled_lr(base_lr: float, batch_size_total: int) -> float:
    """Linear scaling rule: ``base_lr · batch_size_total / 256`` (DINO, MAE/SMARTIES ``blr``).

    Args:
        base_lr: Learning rate for a batch of 256 samples.
        batch_size_total: Samples per optimiser step over all processes (per-device batch × world × accumulation).

    Raises:
        ValueError: ``batch_size_total ≤ 0``.
    """
    if batch_size_total <= 0:
        raise ValueError(f"batch_size_total must be positive, got {batch_size_total}")
    return base_lr * batch_size_total / LINEAR_SCALING_BATCH


def dino_lr_schedule(
    batch_size_total: int,
    epochs: int,
    iters_per_epoch: int,
    lr: float = 5e-4,
    min_lr: float = 1e-6,
    warmup_epochs: int = 10,
) -> np.ndarray:
    """DINO / X-STARS learning rate (docs/xstars.md §2): linear warm-up 0 → ``lr·batch/256``, then cosine to ``min_lr``.

    Defaults are DINO's argparse values (lr 5e-4, min_lr 1e-6, 10 warm-up epochs). X-STARS README pretraining (batch
    4 on 1 GPU) gives a peak of 7.8125e-6.

    Returns:
        float64 ``[epochs · iters_per_epoch]``.

    Raises:
        ValueError: Non-positive batch or run length, or more warm-up than run.
    """
    peak = scaled_lr(lr, batch_size_total)
    return cosine_schedule(peak, min_lr, epochs * iters_per_epoch, warmup_epochs * iters_per_epoch, 0.0)


def dino_wd_schedule(epochs: int, iters_per_epoch: int, weight_decay: float = 0.04,
                     weight_decay_end: float = 0.4) -> np.ndarray:
    """DINO / X-STARS weight decay: cosine from 0.04 *up to* 0.4 over the run, no warm-up (docs/xstars.md §2).

    Returns:
        float64 ``[epochs · iters_per_epoch]``.
    """
    return cosine_schedule(weight_decay, weight_decay_end, epochs * iters_per_epoch)


def teacher_momentum_schedule(epochs: int, iters_per_epoch: int, momentum_teacher: float = 0.996,
                              final: float = 1.0) -> np.ndarray:
    """EMA teacher momentum: cosine from 0.996 to 1 over the run, no warm-up (docs/xstars.md §2, DINO).

    Returns:
        float64 ``[epochs · iters_per_epoch]``; ``m[0] = 0.996``, ``m[-1] ≈ 1``.
    """
    return cosine_schedule(momentum_teacher, final, epochs * iters_per_epoch)


def smarties_lr_schedule(
    batch_size_total: int,
    epochs: int,
    iters_per_epoch: int,
    blr: float = 1.5e-4,
    warmup_epochs: int = 20,
) -> np.ndarray:
    """SMARTIES MAE learning rate (docs/smarties.md §5): HF ``get_cosine_schedule_with_warmup`` stepped per iteration.

    ``lr = blr · batch_size_total / 256`` (scripts: blr 1.5e-4, batch 2048 → 1.2e-3), linear warm-up 0 → lr over
    ``warmup_epochs`` (20 of 300 in the scripts) with the HF convention (``lr[s] = lr · s / w``), then cosine to 0.

    Returns:
        float64 ``[epochs · iters_per_epoch]``.

    Raises:
        ValueError: Non-positive batch or run length, or more warm-up than run.
    """
    peak = scaled_lr(blr, batch_size_total)
    return cosine_schedule(peak, 0.0, epochs * iters_per_epoch, warmup_epochs * iters_per_epoch, 0.0,
                           warmup_endpoint=False)


def teacher_temp_schedule(epochs: int, *, warmup_teacher_temp: float = 0.04, teacher_temp: float = 0.04,
                          warmup_epochs: int = 0) -> np.ndarray:
    """DINO teacher temperature, **indexed by epoch**: ``linspace(warmup_teacher_temp, teacher_temp, warmup_epochs)``
    (endpoint included) then constant ``teacher_temp`` (docs/xstars.md §2; X-STARS defaults 0.04 → 0.04 over 0 epochs).

    Example (the parity fixtures of the X-STARS code): 0.04 → 0.07 over 30 epochs gives 0.0503448275862069 at epoch 10.

    Returns:
        float64 ``[epochs]``.

    Raises:
        ValueError: ``epochs ≤ 0`` or ``warmup_epochs`` outside ``[0, epochs]``.
    """
    _check(epochs, warmup_epochs)
    return np.concatenate(
        (np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs), np.full(epochs - warmup_epochs, teacher_temp))
    )
