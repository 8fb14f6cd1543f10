"""X-STARS: cross-sensor DINO + MSAD pretraining (spec xstars.md), written from the spec.

- :mod:`training.xstars.dino_loss` — :class:`DINOLoss` (centring, teacher-temperature schedule, guarded all-reduce).
- :mod:`training.xstars.msad` — :class:`MSADLoss` (vectorised over tokens, modes ``paper``/``compat``).
- :mod:`training.xstars.heads` — the MSAD heads ``P``, ``Q1``, ``Q2`` (:class:`MSADHeads`).
- :mod:`training.xstars.augment` — DINO multi-crop augmentation and the MSAD resize-only view, in plain torch.
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
