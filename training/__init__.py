"""msfm training: SMARTIES and X-STARS pretraining, their combination, and frozen-encoder evaluation, on ``engine``.

Recipes (``msfm train RECIPE CONFIG``, :mod:`training.cli`; YAML configs in ``training/configs/``), one module each in
:mod:`training.recipes` (its config dataclasses, its ``train_*`` function and a ``main`` entry), all on the resumable
:mod:`training.runner` (``accelerate``; CPU, GPU, DDP):

- ``smarties-mae`` — :mod:`training.recipes.smarties_mae` (SMARTIES masked auto-encoder, token mixup).
- ``xstars`` / ``xstars-continual`` — :mod:`training.recipes.xstars` (DINO + MSAD, continual with a frozen teacher).
- ``smarties-align`` — :mod:`training.recipes.smarties_align` (a SMARTIES encoder aligned onto a new sensor with MSAD).

What the recipes share, so that no recipe imports another:

- :mod:`training.config` (strict YAML → frozen dataclasses, the shipped configs), :mod:`training.runner` (the loop,
  ``RunConfig``), :mod:`training.schedules` (warm-up + cosine schedules), :mod:`training.optim` (AdamW of the SMARTIES
  recipes), :mod:`training.export` (released encoder and MSAD heads files), :mod:`training.cards` (model card);
- :mod:`training.data` — :mod:`~training.data.rasters` (random windows of single-sensor scenes),
  :mod:`~training.data.pairs` (co-registered multi-sensor pairs, ground-aligned crops), :mod:`~training.data.stream`
  (resumable batch stream), :mod:`~training.data.augment` and :mod:`~training.data.xstars` (X-STARS views);
- :mod:`training.models` (the SMARTIES MAE, the MSAD heads, the recipes' step modules) and :mod:`training.losses`
  (DINO, MSAD).

Evaluation: :mod:`training.evaluation` — :mod:`~training.evaluation.protocols` (kNN, linear probe, cross-sensor
retrieval), :mod:`~training.evaluation.datasets` (labelled patches) and ``msfm eval`` (:mod:`training.evaluation.cli`).
``python -m training pretrain-demo`` retrains the bundled demo encoder ``engine/weights/smarties-demo-tiny``.
"""
