"""msfm training: reproduces SMARTIES masked-autoencoder pretraining (and, later, X-STARS) on top of ``engine``."""
