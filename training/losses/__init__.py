"""Training losses, one per module (the MAE's norm-pix loss is part of the MAE's forward pass,
:mod:`training.models.mae`).

- :mod:`training.losses.dino` — :class:`~training.losses.dino.DINOLoss` (centring, teacher-temperature schedule,
  guarded all-reduce);
- :mod:`training.losses.msad` — :class:`~training.losses.msad.MSADLoss` (X-STARS' dense multi-sensor alignment,
  vectorised over tokens, modes ``paper``/``compat``).

Nothing is imported here.
"""
