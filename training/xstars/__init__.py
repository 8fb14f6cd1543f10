"""X-STARS: cross-sensor DINO + MSAD pretraining (docs/xstars.md), written from the paper.

- :mod:`training.xstars.dino_loss` — :class:`DINOLoss` (centring, teacher-temperature schedule, guarded all-reduce).
- :mod:`training.xstars.msad` — :class:`MSADLoss` (vectorised over tokens, modes ``paper``/``compat``).
- :mod:`training.xstars.heads` — the MSAD heads ``P``, ``Q1``, ``Q2`` (:class:`MSADHeads`).
- :mod:`training.xstars.augment` — DINO multi-crop augmentation and the MSAD resize-only view, in plain torch.
- :mod:`training.xstars.data` — samples (multi-crop of an anchor tile + MSAD views of its place) and a resumable stream.
- :mod:`training.xstars.train` — pretraining and continual pretraining on :mod:`training.runner`
  (:func:`~training.xstars.train.train_xstars`, configs in ``training/xstars/configs/``); not imported here, so the
  losses stay importable without ``accelerate``.
"""

from .dino_loss import DINOLoss
from .heads import MSADHeads, MSADPairHeads, MSADProjection
from .msad import MSADLoss, msad_pair_loss, soft_cross_entropy

__all__ = (
    "DINOLoss",
    "MSADHeads",
    "MSADLoss",
    "MSADPairHeads",
    "MSADProjection",
    "msad_pair_loss",
    "soft_cross_entropy",
)
