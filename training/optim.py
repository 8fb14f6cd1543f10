"""AdamW of the SMARTIES-family recipes (``smarties-mae``, ``smarties-align``; docs/smarties.md §5).

- :class:`OptimConfig` — the ``optim`` section of their configs: peak LR (``lr``, or ``blr`` scaled by the effective
  batch), warm-up, weight decay, betas, clipping;
- :func:`param_groups` — weight decay on trainable parameters with ``ndim ≥ 2``, 0 on 1-D ones, frozen ones left out;
- :func:`lr_schedule` — per-step linear warm-up then cosine (Hugging Face ``get_cosine_schedule_with_warmup``
  convention, :func:`training.schedules.cosine_schedule`).

X-STARS keeps DINO's own optimiser rules (:mod:`training.recipes.xstars`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from torch import nn

from .config import ConfigError
from .schedules import cosine_schedule, scaled_lr

__all__ = ("OptimConfig", "lr_schedule", "param_groups")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its schedule (docs/smarties.md §5).

    Attributes:
        lr: Peak learning rate; give ``lr`` or ``blr``.
        blr: Base LR for a batch of 256: peak = ``blr · effective_batch / 256`` (scripts: 1.5e-4).
        min_lr: End of the cosine (0 in the reference).
        warmup_steps: Linear warm-up in optimiser steps (at most one of the three ``warmup_*``; none = no warm-up).
        warmup_epochs: Linear warm-up in epochs (20 of 300 in the scripts; needs ``data.samples_per_epoch``).
        warmup_frac: Linear warm-up as a fraction of the run (rounded to whole steps).
        weight_decay: AdamW weight decay of parameters with ``ndim ≥ 2`` (0.05); 1-D parameters get 0.
        betas: AdamW betas ((0.9, 0.95)).
        eps: AdamW epsilon.
        clip_grad: Max gradient L2 norm, ``null`` = no clipping (the reference does not clip; if the loss spikes,
            try 1.0 or a lower LR).
    """

    lr: Optional[float] = None
    blr: Optional[float] = None
    min_lr: float = 0.0
    warmup_steps: Optional[int] = None
    warmup_epochs: Optional[float] = None
    warmup_frac: Optional[float] = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.lr is None) == (self.blr is None):
            raise ConfigError("optim: give exactly one of lr (peak) and blr (per 256 samples)")
        given = [n for n in ("warmup_steps", "warmup_epochs", "warmup_frac") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"optim: give one of {', '.join(given)}, not several")
        if self.warmup_frac is not None and not 0.0 <= self.warmup_frac <= 1.0:
            raise ConfigError(f"optim.warmup_frac must lie in [0, 1], got {self.warmup_frac}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of docs/smarties.md §5: ``weight_decay`` on trainable parameters with ``ndim ≥ 2`` (weights, CLS and
    mask tokens), 0 on 1-D ones (biases, LayerNorms); frozen parameters (the sin-cos position tables) are left out."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_schedule(optim: OptimConfig, total_steps: int, effective_batch: int,
                samples_per_epoch: Optional[int] = None) -> np.ndarray:
    """Per-step LR (float64 ``[total_steps]``): linear warm-up 0 → peak (HF convention), cosine to ``min_lr``.

    Peak = ``optim.lr``, or ``scaled_lr(optim.blr, effective_batch)`` (docs/smarties.md §5). ``warmup_epochs`` is
    converted with ``samples_per_epoch / effective_batch`` steps per epoch, ``warmup_frac`` with ``total_steps``.

    Raises:
        training.config.ConfigError: ``warmup_epochs`` without ``samples_per_epoch``; more warm-up than run.
    """
    peak = optim.lr if optim.lr is not None else scaled_lr(optim.blr, effective_batch)
    warmup = optim.warmup_steps or 0
    if optim.warmup_frac is not None:
        warmup = round(optim.warmup_frac * total_steps)
    if optim.warmup_epochs is not None:
        if not samples_per_epoch:
            raise ConfigError("optim.warmup_epochs needs data.samples_per_epoch (or give optim.warmup_steps)")
        warmup = round(optim.warmup_epochs * samples_per_epoch / effective_batch)
    if warmup > total_steps:
        raise ConfigError(f"warm-up of {warmup} steps is longer than the run ({total_steps} steps)")
    return cosine_schedule(peak, optim.min_lr, total_steps, warmup, 0.0, warmup_endpoint=False)
