"""msfm training: SMARTIES and X-STARS pretraining, their combination, and frozen-encoder evaluation, on ``engine``.

Recipes (``msfm train RECIPE CONFIG``, :mod:`training.cli`; YAML configs in ``training/configs/`` and
``training/xstars/configs/``), all on the resumable :mod:`training.runner` (``accelerate``; CPU, GPU, DDP):

- ``smarties-mae`` — :mod:`training.pretrain` with :mod:`training.mae` (SMARTIES masked auto-encoder, token mixup).
- ``xstars`` / ``xstars-continual`` — :mod:`training.xstars.train` (DINO + MSAD, continual with a frozen teacher).
- ``smarties-align`` — :mod:`training.smarties_align` (a SMARTIES encoder aligned onto a new sensor with MSAD).

Data: :mod:`training.pairs` (co-registered multi-sensor pairs, ground-aligned crops), :mod:`training.data` (random
windows of single-sensor GeoTIFFs), :mod:`training.labelled` (labelled patches). Evaluation: :mod:`training.evaluate`
(kNN, linear probe, cross-sensor retrieval) and ``msfm eval`` (:mod:`training.eval_cli`). ``python -m training
pretrain-demo`` retrains the bundled demo encoder ``engine/weights/smarties-demo-tiny``.
"""
