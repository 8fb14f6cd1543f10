"""Frozen-encoder evaluation (docs/smarties.md §6): ``msfm eval knn | linear-probe | retrieval``.

- :mod:`training.evaluation.protocols` — CLS features, kNN, linear probe, classification metrics, cross-sensor
  retrieval;
- :mod:`training.evaluation.datasets` — labelled patches (class folders, CSV, BigEarthNet-MM) and their splits;
- :mod:`training.evaluation.cli` — the ``eval`` command (entry point ``training.evaluation.cli:register``).

Nothing is imported here: building the ``msfm`` parser imports the command module, which must not import torch.
"""
