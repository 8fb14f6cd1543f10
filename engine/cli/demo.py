"""``msfm demo``: embed and cluster the bundled Sentinel-2 scene with the bundled model, offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputRasterError
from ..maps import ClusterSettings, cluster_raster, embedding_quicklook
from ..models import load_model
from ..raster import class_quicklook, rgb_quicklook
from ..settings import InferenceSettings
from ..spectral import describe_mapping, resolve_bands
from .options import DEMO_MODEL, DEMO_RASTER, Progress

__all__ = ("register",)


def cmd_demo(args: argparse.Namespace) -> int:
    """Write ``embeddings.tif``, ``classes.tif`` (+ ``.qml``) and three quicklooks into ``--out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not DEMO_RASTER.exists():
        raise InputRasterError(f"demo raster {DEMO_RASTER} is missing; run from a full clone of the repository")
    print(f"input: {DEMO_RASTER.name} (Sentinel-2 L1C, 13 bands, 10 m, Eastern Shore of Virginia)")
    mapping = resolve_bands(DEMO_RASTER)
    print(describe_mapping(mapping))
    model = load_model(DEMO_MODEL)
    bar = Progress("demo")
    try:
        res = cluster_raster(
            DEMO_RASTER, out / "classes.tif", model, clustering=ClusterSettings(k=args.k, resolution="pixel"),
            embeddings_output=out / "embeddings.tif", settings=InferenceSettings(threads=args.threads), progress=bar,
            overwrite=True,  # the demo's own folder: a second run replaces the first one's files
        )
    finally:
        bar.close()
    emb = res.embeddings
    assert emb is not None
    red, green, blue = (mapping.indexes[mapping.keys.index(k)] for k in ("red_2", "green_2", "blue_1"))
    looks = [
        rgb_quicklook(DEMO_RASTER, out / "input_truecolor.png", (red, green, blue), overwrite=True),
        embedding_quicklook(emb.path, out / "embeddings_pca.png", overwrite=True),
        class_quicklook(res.path, out / "classes.png", overwrite=True),
    ]
    print(f"embeddings: {emb.path} ({emb.width}×{emb.height} cells × {emb.embed_dim}, {emb.tiles} tiles, "
          f"{emb.seconds:.1f} s)")
    print(f"classes:    {res.path} (k={res.k}, pixel resolution) + {res.style}")
    print("quicklooks: " + ", ".join(str(p) for p in looks))
    return 0


def register(sub: Any) -> None:
    """Add ``demo`` to the ``msfm`` sub-parsers."""
    p = sub.add_parser("demo", help="cluster the bundled Sentinel-2 scene with the bundled model (offline)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--k", type=int, default=8, help="number of classes (default 8)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.set_defaults(func=cmd_demo)
