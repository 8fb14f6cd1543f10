"""How long a run will take: the seconds per tile and the fixed seconds that earlier runs on this machine measured.

A run's time is ``fixed + per_tile × tiles``. Every embedding, clustering or similarity run (from the dock or the
toolbox) records both, from the engine's own split (``EmbeddingResult.tile_seconds``: the tile loop; the rest is
fixed: opening, statistics, model set-up, k-means, writing), keyed by model, device choice, tile size and backend.
Counting the fixed part per tile made a 48-tile run predict 5× too long for 81 tiles; timing the dialog made a 2.6-s
run read 49 s. Before any run the estimate is a rough guess from the model's FLOPs per tile and the machine's cores.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from qgis.core import QgsSettings

__all__ = ("MIN_TILES_TIMED", "ROUGH_FLOPS_PER_CORE", "ROUGH_GPU_FLOPS", "estimate", "key", "measured", "record")

GROUP = "msfm/timing"
#: Runs with fewer tiles are not timed: a few tiles say little about the per-tile time.
MIN_TILES_TIMED = 8
#: Rough sustained FLOP/s per CPU core for a ViT with our tiling around it (the demo model, 1.2 GFLOP per 224-px tile,
#: clustered 81 Sentinel-2 tiles in 9.9 s on 2 cores: ~5 GFLOP/s per core), and for a CUDA GPU; a guess until a run
#: measures the machine.
ROUGH_FLOPS_PER_CORE = 5e9
ROUGH_GPU_FLOPS = 20e12


def key(model: str, device: str, tile_size: int, backend: str) -> str:
    """The settings key of a model file or registry name, the DEVICE choice, the tile size and the backend."""
    clean = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in os.path.basename(model) or "model")
    return f"{GROUP}/{clean}/{device or 'auto'}/{tile_size}/{backend or 'torch'}"


def record(name: str, tiles: int, seconds: float, tile_seconds: float) -> bool:
    """Remember a run's per-tile and fixed seconds under ``name`` (:func:`key`); runs of few tiles are ignored.

    Returns:
        True when recorded.
    """
    if tiles < MIN_TILES_TIMED or not 0 < tile_seconds <= seconds:
        return False
    value = {"per_tile": tile_seconds / tiles, "fixed": seconds - tile_seconds, "tiles": tiles}
    QgsSettings().setValue(name, json.dumps(value))
    return True


def measured(name: str) -> Optional[tuple[float, float]]:
    """``(seconds per tile, fixed seconds)`` recorded under ``name``, or None."""
    text = QgsSettings().value(name, None)
    try:
        value = json.loads(text) if text else None
        return (float(value["per_tile"]), float(value["fixed"])) if value else None
    except (TypeError, ValueError, KeyError):
        return None


def estimate(name: str, tiles: int, flops_per_tile: Optional[float], device: str) -> tuple[Optional[float], str]:
    """Seconds a run of ``tiles`` tiles will take, and where the figure comes from.

    Args:
        name: :func:`key` of the run's settings.
        tiles: Tiles of the run.
        flops_per_tile: The model's FLOPs per tile (for the rough guess), or None.
        device: ``"cuda"…`` or ``"cpu"`` (for the rough guess).

    Returns:
        ``(seconds or None, description)``.
    """
    found = measured(name)
    if found is not None:
        per_tile, fixed = found
        return fixed + per_tile * tiles, f"measured here: {per_tile:.3g} s/tile + {fixed:.1f} s fixed"
    if flops_per_tile is None:
        return None, ""
    gpu = device.startswith("cuda")
    rate = ROUGH_GPU_FLOPS if gpu else ROUGH_FLOPS_PER_CORE * (os.cpu_count() or 1)
    return flops_per_tile * tiles / rate, (f"rough guess: {flops_per_tile / 1e9:.1f} GFLOP/tile at "
                                          f"~{rate / 1e9:g} GFLOP/s ({'GPU' if gpu else f'{os.cpu_count()} cores'}); "
                                          "a run measures it")
