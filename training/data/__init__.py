"""Training data: what the recipes sample batches from.

- :mod:`training.data.rasters` — single-sensor scenes (:class:`~training.data.rasters.RasterSource`) and the random
  crop sampler of the demo encoder (:class:`~training.data.rasters.PretrainSampler`);
- :mod:`training.data.pairs` — co-registered multi-sensor pairs, ground-aligned paired crops, whole-footprint images
  for evaluation, and the ``data.pairs`` config section;
- :mod:`training.data.stream` — the resumable, prefetching batch stream over a sampler;
- :mod:`training.data.augment` — DINO multi-crop augmentation and the MSAD view (plain torch);
- :mod:`training.data.xstars` — X-STARS samples (multi-crop of an anchor tile + MSAD views of its place) and stream.

Nothing is imported here (the modules import rasterio and torch).
"""
