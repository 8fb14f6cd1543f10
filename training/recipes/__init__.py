"""The training recipes, one module each: its config dataclasses (the YAML schema), how it builds the model, data
and :class:`~training.runner.TrainTask`, its ``train_*`` function and a ``main(config, overrides)`` entry.

- :mod:`training.recipes.smarties_mae` — ``smarties-mae`` (SMARTIES masked auto-encoder, token mixup);
- :mod:`training.recipes.xstars` — ``xstars`` and ``xstars-continual`` (DINO + MSAD);
- :mod:`training.recipes.smarties_align` — ``smarties-align`` (a SMARTIES encoder aligned onto a new sensor with MSAD).

A recipe imports shared modules only (data, models, losses, optimiser, exports, runner), never another recipe.
:data:`training.cli.RECIPES` names them for ``msfm train``. Nothing is imported here, so importing one recipe does
not import the others.
"""
