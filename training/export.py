"""Release files of a run, written by the recipes' export hooks (``run.out_dir/export/``).

- :class:`ExportConfig` and :func:`mae_exporter` — the SMARTIES encoder of ``smarties-mae`` and ``smarties-align``:
  ``<name>.safetensors`` (encoder only, loads in :func:`engine.load_model`) and ``<name>-mae.safetensors`` (encoder
  + decoder in the official key layout, to continue from);
- :func:`save_msad_heads` / :func:`load_msad_heads` — the MSAD heads ``P``, ``Q1``, ``Q2`` of a ``smarties-align``
  run as their own ``.safetensors`` (the engine's strict key rule refuses foreign keys next to an encoder,
  docs/smarties.md §1.6).

X-STARS exports a DINO/X-STARS ``.pth`` through :func:`engine.models.save_dino_checkpoint`
(:mod:`training.recipes.xstars`); the model card of the demo encoder is :mod:`training.cards`. Every file is written
atomically (:mod:`engine.atomic`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.atomic import atomic_output
from engine.models import save_encoder

from .models.mae import SmartiesMAE
from .models.msad_heads import MSADHeads

__all__ = ("ExportConfig", "load_msad_heads", "mae_exporter", "save_msad_heads")


@dataclass(frozen=True)
class ExportConfig:
    """Release files written with every checkpoint and at the end (``run.out_dir/export/``).

    Attributes:
        dtype: Storage dtype of the exported floating tensors.
        full_mae: Also write ``<name>-mae.safetensors`` (encoder + decoder, official key layout) to continue from.
    """

    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    full_mae: bool = True


def mae_exporter(name: str, export: ExportConfig,
                 meta: Optional[Mapping[str, Any]] = None) -> Callable[[SmartiesMAE, Path, int], list[Path]]:
    """The export hook of a SMARTIES MAE run (``smarties-mae``, ``smarties-align``): ``export(mae, folder, step)``.

    Writes ``folder/<name>.safetensors`` (encoder only, :func:`engine.models.save_encoder`; loads in
    :func:`engine.load_model`) and, with ``export.full_mae``, ``folder/<name>-mae.safetensors`` (encoder + decoder,
    the official key layout, :meth:`SmartiesMAE.save`), floating tensors stored as ``export.dtype``. The JSON
    ``config`` metadata holds ``model``, ``official: false``, ``steps`` and ``meta`` (the recipe's own entries).

    Returns:
        ``export(mae, folder, step) → written paths``.
    """
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[export.dtype]
    extra = dict(meta or {})

    def run(model: SmartiesMAE, folder: Path, step: int) -> list[Path]:
        assert isinstance(model, SmartiesMAE)
        info = {"model": name, "official": False, **extra, "steps": step}
        paths = [save_encoder(model.encoder, folder / f"{name}.safetensors", info, dtype=dtype)]
        if export.full_mae:
            paths.append(model.save(folder / f"{name}-mae.safetensors", info, dtype=dtype))
        return paths

    return run


def save_msad_heads(heads: MSADHeads, path: Union[str, "os.PathLike[str]"],
                    config: Optional[Mapping[str, Any]] = None) -> Path:
    """Write MSAD heads as ``.safetensors`` (keys of :class:`~training.models.msad_heads.MSADHeads`: ``P.*``, ``Q.*``).

    Written atomically (:func:`engine.atomic.atomic_output`) with a JSON ``config`` metadata entry holding
    ``embed_dim``, ``proj_dim`` and ``config``.

    Args:
        heads: The heads.
        path: Destination ``.safetensors``.
        config: Extra JSON-serialisable metadata (sensors of ``sat1``/``sat2``, recipe, steps).

    Returns:
        The written path.

    Raises:
        ValueError: ``path`` does not end with ``.safetensors``; ``config`` not JSON-serialisable.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"MSAD heads path must end with .safetensors, got {path}")
    meta = {**(config or {}), "embed_dim": heads.embed_dim, "proj_dim": heads.P.projection.out_features,
            "dropout": heads.P.dropout.p}
    try:
        text = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config must be JSON-serialisable: {exc}") from exc
    state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in heads.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, sidecars=()) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "config": text})
    return path


def load_msad_heads(path: Union[str, "os.PathLike[str]"]) -> tuple[MSADHeads, dict[str, Any]]:
    """Read a file of :func:`save_msad_heads` strictly.

    Returns:
        ``(heads, config)``: the heads (float32, CPU, eval mode; width and dropout from the file) and its metadata.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Missing/unexpected keys or shapes that are not MSAD heads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MSAD heads file {path} does not exist")
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        config = json.loads((fh.metadata() or {}).get("config", "{}"))
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    if "P.projection.weight" not in state:
        raise ValueError(f"{path} holds no MSAD heads (no P.projection.weight); its keys: {sorted(state)[:8]}")
    proj_dim, embed_dim = state["P.projection.weight"].shape
    heads = MSADHeads(embed_dim, proj_dim, float(config.get("dropout", 0.2)))
    try:
        heads.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not an MSAD heads file ({exc})") from exc
    return heads.eval(), config
