"""The networks the recipes train, on top of the engine's encoders.

- :mod:`training.models.mae` — the SMARTIES masked auto-encoder (:class:`~training.models.mae.SmartiesMAE`, its
  norm-pix loss and its input layout);
- :mod:`training.models.msad_heads` — the MSAD projection heads ``P``, ``Q1``, ``Q2``;
- :mod:`training.models.xstars` — the X-STARS step module (student, EMA teacher, DINO + MSAD, frozen domain teacher);
- :mod:`training.models.smarties_align` — the ``smarties-align`` step module (student MAE, frozen teacher, MSAD).

Nothing is imported here.
"""
