"""msfm training: reproduces SMARTIES masked-autoencoder pretraining (and, later, X-STARS) on top of ``engine``.

- :mod:`training.mae` — :class:`~training.mae.SmartiesMAE` (encoder + MAE decoder, reference-parity forward).
- :mod:`training.data` — random-crop sampler over real GeoTIFFs with explicit SMARTIES band keys.
- :mod:`training.pretrain` — AdamW/cosine pretraining loop, float16 encoder-only export, model card.
- ``python -m training pretrain-demo`` trains the bundled demo encoder ``engine/weights/smarties-demo-tiny``.
"""
