"""Loading a model by registry name, file or folder: the one entry point, :func:`load_model`.

It reads the file strictly (SMARTIES ``.safetensors`` through :mod:`engine.models.smarties_checkpoint`, DINO / X-STARS
checkpoints through :mod:`engine.models.dino_checkpoint`, ONNX exports through :class:`engine.models.OnnxEncoder`),
builds the encoder, and records where it came from in its :class:`~engine.models.Provenance`. A SMARTIES checkpoint
asked for with ``backend="onnx"`` is exported once (:func:`engine.models.export_encoder`) into :func:`onnx_cache_dir`.

Sources: docs/smarties.md §1.4–§1.8; docs/xstars.md §1, §6 (DINO / X-STARS).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union, cast

from ..atomic import scratch_folder
from ..errors import CheckpointError, ModelNotAvailableError, SettingsError
from ..provenance import file_sha256
from ..spectral import Averaging, ChannelNorm
from .dino_checkpoint import build_dino_model, is_dino_checkpoint, read_dino_checkpoint
from .onnx_encoder import OnnxEncoder
from .protocol import Provenance
from .registry import ModelSpec, get_model_spec, list_models, resolve_weights
from .smarties_checkpoint import Checkpoint, first_num_heads, read_checkpoint

if TYPE_CHECKING:  # torch is imported on first use only, so ONNX models and the registry work without it
    import torch

    from .dino import DinoViT
    from .smarties import SmartiesEncoder

__all__ = ("load_model", "onnx_cache_dir", "onnx_twin")

logger = logging.getLogger(__name__)

_AVERAGING = ("linear", "reference")
#: Config keys that must agree with the geometry read from the tensors.
_GEOMETRY_FIELDS = ("embed_dim", "depth", "patch_size")


def _spec_for(path_or_name: Union[str, "os.PathLike[str]"], path: Path, embed_dim: int) -> Optional[ModelSpec]:
    """The registry entry behind a name, or the one whose file name (and D) matches a given path."""
    if isinstance(path_or_name, str) and not Path(path_or_name).expanduser().exists():
        try:
            return get_model_spec(path_or_name)
        except ModelNotAvailableError:
            return None
    matches = [
        s for s in list_models() if path.name in (s.filename, s.bundled) and s.embed_dim == embed_dim
    ]
    return matches[0] if len(matches) == 1 else None


def _read_config_json(path: Path) -> dict[str, Any]:
    config_path = path.parent / "config.json"
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{config_path} (next to {path.name}) cannot be read as JSON ({exc}); fix or remove it, or pass "
            "num_heads explicitly"
        ) from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
    return config


def _check_config(config: Mapping[str, Any], checkpoint: Checkpoint, source: str) -> None:
    geometry = checkpoint.geometry
    for name in _GEOMETRY_FIELDS:
        if name in config and config[name] != getattr(geometry, name):
            raise CheckpointError(
                f"{source} says {name}={config[name]!r} but the tensors of {checkpoint.path} have "
                f"{name}={getattr(geometry, name)}; the config belongs to another model. Fix or remove it, or "
                "pass num_heads/averaging explicitly."
            )


def _heads_from(config: Mapping[str, Any]) -> Optional[Any]:
    for key in ("num_heads", "num_attention_heads"):
        if config.get(key) is not None:
            return config[key]
    return None


def _resolve_num_heads(
    num_heads: Optional[int],
    checkpoint: Checkpoint,
    config_json: Mapping[str, Any],
    spec: Optional[ModelSpec],
) -> tuple[int, str]:
    dim = checkpoint.geometry.embed_dim
    candidates = (
        (num_heads, "the num_heads argument"),
        (_heads_from(checkpoint.config), f"the config metadata of {checkpoint.path.name}"),
        (_heads_from(config_json), f"config.json next to {checkpoint.path.name}"),
        (spec.num_heads if spec else None, f"the registry entry {spec.name!r}" if spec else ""),
    )
    found = first_num_heads(dim, candidates)
    if found is not None:
        return found
    if dim % 64 == 0:
        logger.warning(
            "%s: no num_heads recorded; assuming D/64 = %d heads (head dim 64, true for ViT-Ti/S/B/L). "
            "Pass num_heads= if the model was trained otherwise.", checkpoint.path, dim // 64,
        )
        return dim // 64, "D/64"
    raise CheckpointError(
        f"{checkpoint.path}: the number of attention heads is not stored in the tensors and no config records it "
        f"(D={dim} is not a multiple of 64, so D/64 cannot be assumed). Pass num_heads= to load_model, or add "
        '{"num_heads": N} to a config.json next to the file.'
    )


def _resolve_averaging(
    averaging: Optional[str], checkpoint: Checkpoint, config_json: Mapping[str, Any]
) -> Averaging:
    if averaging is not None:
        if averaging not in _AVERAGING:
            raise SettingsError(f"averaging must be one of {_AVERAGING}, got {averaging!r}")
        return averaging  # type: ignore[return-value]
    for config, source in ((checkpoint.config, "config metadata"), (config_json, "config.json")):
        value = config.get("averaging")
        if value is not None:
            if value not in _AVERAGING:
                raise CheckpointError(
                    f"{checkpoint.path}: {source} has averaging={value!r}, expected one of {_AVERAGING}; pass "
                    "averaging= explicitly"
                )
            return value
    return "linear"


def load_model(
    path_or_name: Union[str, "os.PathLike[str]"],
    num_heads: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    averaging: Optional[Averaging] = None,
    which: Optional[str] = None,
    backend: str = "torch",
    threads: Optional[int] = None,
) -> Union[SmartiesEncoder, DinoViT, OnnxEncoder]:
    """Load a SMARTIES encoder or a DINO / X-STARS ViT from a registry name, a file or a folder, strictly.

    A ``.pth`` file, or a ``.safetensors`` file with DINO key names (``patch_embed.proj.weight``), is read as a DINO /
    X-STARS checkpoint (:func:`~engine.models.read_dino_checkpoint`: safe unpickling, strict keys)
    and gives a :class:`~engine.models.DinoViT` (backbone only; the DINO head is checked, not loaded) that
    takes red, green, blue and normalises them with the checkpoint's ``args.mean/std`` (else the X-STARS
    ``sentinel_landsat`` preset, docs/xstars.md §5). Its number of heads comes from ``num_heads``, the file's
    config, ``args.arch`` or D/64. Everything below describes SMARTIES files.

    The geometry (D, depth, patch size, position grid, MLP width) is read from the tensors. The number of heads is
    not stored in them; it is taken, in order, from ``num_heads``, the file's ``config`` metadata, a
    ``config.json`` next to the file, the registry entry, or D/64 when D is a multiple of 64 (with a warning).
    Head or MAE-decoder tensors in the file are checked (docs/smarties.md §1.6–§1.7) but not loaded into the encoder.

    Args:
        path_or_name: Registry name (``"smarties-vit-b"``, ``"smarties-demo-tiny"``; see
            :func:`list_models`), a ``.safetensors`` file, or a folder with exactly one ``.safetensors`` file.
        num_heads: Attention heads; overrides any recorded value.
        device: Torch device for the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        averaging: Weights of the averaged ranges 17/18 (``"linear"`` or ``"reference"`` for bit-exact parity with
            the reference code, see :mod:`engine.spectral.ranges`); default from the file's config, else ``"linear"``.
            SMARTIES only.
        which: DINO / X-STARS only: the network to load, ``"teacher"`` (default, DINO's convention) or
            ``"student"``.
        backend: ``"torch"`` (default) or ``"onnx"``: an :class:`~engine.models.OnnxEncoder` run by ONNX
            Runtime. A ``.onnx`` file always loads with ONNX Runtime (torch is then never imported); a SMARTIES
            checkpoint with ``backend="onnx"`` is exported once (:func:`engine.models.export_encoder`) into
            :func:`onnx_cache_dir` and reused while its SHA-256 is unchanged.
        threads: ONNX Runtime intra-op threads of an ONNX model (None: one per physical core). A torch model takes
            its threads from the run (:attr:`engine.settings.InferenceSettings.threads`).

    Returns:
        The encoder (an :class:`~engine.models.Encoder`), in eval mode on ``device`` (float32), with its
        :class:`~engine.models.Provenance`: the weights path, the registry name (or None), the file's layout
        (``"encoder"``, ``"mae"``, ``"head:..."``, ``"dino:teacher"``, ``"dino:student"``, ``"dino:state"``,
        ``"onnx"``) and ``global_pool`` (True when the file held ``fc_norm`` instead of ``norm``).

    Raises:
        engine.errors.ModelNotAvailableError: Unknown name, missing path, or a Hub model that is not cached while
            offline (the message gives ``msfm models download NAME``).
        engine.errors.CheckpointError: The file is unreadable or breaks the strict key rule, a config contradicts
            the tensors, or the number of heads cannot be determined or does not divide D.
        SettingsError: Invalid ``backend`` or ``averaging``; ``averaging`` given for a DINO file or ``which`` for a
            SMARTIES file.
    """
    if backend not in ("torch", "onnx"):
        raise SettingsError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    path = resolve_weights(path_or_name)
    if path.suffix.lower() == ".onnx":
        return OnnxEncoder(path, device=str(device), threads=threads)
    if backend == "onnx":
        return _load_onnx_export(path_or_name, path, num_heads, str(device), threads)
    import torch

    from .smarties import SmartiesEncoder  # torch: loading an ONNX model must never import it

    if is_dino_checkpoint(path):
        if averaging is not None:
            raise SettingsError(
                f"averaging applies to SMARTIES checkpoints; {path.name} is a DINO / X-STARS checkpoint"
            )
        return _load_dino(path, which or "teacher", num_heads, device)
    if which is not None:
        raise SettingsError(f"which={which!r} applies to DINO / X-STARS checkpoints; {path.name} is a SMARTIES file")

    checkpoint = read_checkpoint(path)
    geometry = checkpoint.geometry
    config_json = _read_config_json(path)
    _check_config(checkpoint.config, checkpoint, f"the config metadata of {path.name}")
    _check_config(config_json, checkpoint, f"config.json next to {path.name}")
    spec = _spec_for(path_or_name, path, geometry.embed_dim)
    heads, heads_source = _resolve_num_heads(num_heads, checkpoint, config_json, spec)
    mode = _resolve_averaging(averaging, checkpoint, config_json)

    with torch.device("meta"):
        model = SmartiesEncoder(
            embed_dim=geometry.embed_dim,
            depth=geometry.depth,
            num_heads=heads,
            patch_size=geometry.patch_size,
            grid_size=geometry.grid_size,
            mlp_ratio=geometry.mlp_ratio,
            averaging=mode,
        )
    try:
        model.load_state_dict(checkpoint.encoder_state, strict=True, assign=True)
    except RuntimeError as exc:  # cannot happen after classify_keys unless the two drift apart
        raise CheckpointError(f"{path}: state dict does not fit the encoder: {exc}") from exc
    model = model.to(torch.device(device)).eval()
    model.provenance = Provenance(path, spec.name if spec else None, checkpoint.layout, checkpoint.global_pool,
                                  aligned_sensors(checkpoint.config))
    if checkpoint.global_pool:
        logger.warning(
            "%s was trained with global pooling (fc_norm): its norm is applied to the CLS token by encode('cls'); "
            "for the trained pooled feature use encode(..., 'grid').mean((2, 3)) followed by model.norm.", path,
        )
    logger.info(
        "loaded %s (%s, D=%d, depth %d, %d heads from %s, patch %d, grid %d, averaging %s) on %s",
        path, checkpoint.layout, geometry.embed_dim, geometry.depth, heads, heads_source, geometry.patch_size,
        geometry.grid_size, mode, device,
    )
    return model


def aligned_sensors(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The sensors a ``smarties-align`` run aligned an encoder on, from its file's ``config`` metadata.

    Args:
        config: The JSON ``config`` metadata of a checkpoint (``training.export.mae_exporter`` writes ``recipe``,
            ``old_sensor`` and ``new_sensor`` there).

    Returns:
        ``(old_sensor, new_sensor)`` for a ``smarties-align`` export, else ``()``.
    """
    if config.get("recipe") != "smarties-align":
        return ()
    return tuple(str(config[key]) for key in ("old_sensor", "new_sensor") if config.get(key))


def onnx_cache_dir() -> Path:
    """Where checkpoints exported for ``backend="onnx"`` are kept.

    ``$MSFM_ONNX_CACHE``, else ``$XDG_CACHE_HOME/msfm/onnx`` (``~/.cache/msfm/onnx``).
    """
    if os.environ.get("MSFM_ONNX_CACHE"):
        return Path(os.environ["MSFM_ONNX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "msfm" / "onnx"


def _load_onnx_export(path_or_name: Any, path: Path, num_heads: Optional[int], device: str,
                      threads: Optional[int]) -> OnnxEncoder:
    """The ONNX export of a SMARTIES checkpoint (made once per checkpoint content, then reused without torch)."""
    target = onnx_cache_dir() / f"{path.stem}-{file_sha256(path)[:16]}.onnx"
    if not target.is_file():
        _export_into(load_model(path_or_name, num_heads=num_heads), target, 224, "fp32")
    return OnnxEncoder(target, device=device, threads=threads)


def onnx_twin(model: Any, *, tile_size_px: int = 224, precision: str = "fp32", device: str = "cpu",
              threads: Optional[int] = None) -> OnnxEncoder:
    """The ONNX Runtime twin of a torch SMARTIES encoder loaded from a file, at fp32 or with int8 weights.

    Exported once (:func:`engine.models.export_encoder`; int8: :func:`engine.models.onnx_quantize.quantize`) into
    :func:`onnx_cache_dir` under a name made of the weights' SHA-256, the number of heads, the averaging, the tile
    size and the precision, then reused. What ``precision="int8"`` runs (:mod:`engine.models.precision`).

    Args:
        model: A :class:`~engine.models.SmartiesEncoder` whose ``provenance.weights_path`` is its weights file.
        tile_size_px: Tile side fixed in the graph.
        precision: ``"fp32"`` or ``"int8"``.
        device: ``"cpu"`` or ``"cuda"`` (ONNX Runtime's provider).
        threads: ONNX Runtime intra-op threads (None: its default).

    Returns:
        The :class:`~engine.models.OnnxEncoder`.

    Raises:
        SettingsError: Not a SMARTIES encoder (the X-STARS/DINO ViT is not exported), a model not loaded from a
            weights file (export it with :func:`engine.export.export`), or an unknown precision.
    """
    if precision not in ("fp32", "int8"):
        raise SettingsError(f"an ONNX twin is fp32 or int8, got {precision!r}")
    from .smarties import SmartiesEncoder  # torch: the model to convert is a torch model

    if not isinstance(model, SmartiesEncoder):
        raise SettingsError(f"precision {precision} runs an ONNX Runtime copy, made for SMARTIES encoders only; "
                            f"{type(model).__name__} runs with precision fp32 or bf16 (or auto)")
    path = model.provenance.weights_path if getattr(model, "provenance", None) else None
    if path is None or not Path(path).is_file():
        raise SettingsError(
            "int8 runs an ONNX Runtime copy of the model, made from its weights file, and this model was not loaded "
            "from one; save it (engine.models.save_encoder) and load it, or export it yourself: "
            "engine.export.export(model, 'model.onnx', precision='int8')"
        )
    path = Path(path)
    key = (f"{path.stem}-{file_sha256(path)[:16]}-h{getattr(model, 'num_heads', 0)}-{getattr(model, 'averaging', '')}"
           f"-{tile_size_px}px-{precision}")
    target = onnx_cache_dir() / f"{key}.onnx"
    if not target.is_file():
        _export_into(model, target, tile_size_px, precision)
    return OnnxEncoder(target, device=device, threads=threads)


def _export_into(model: Any, target: Path, tile_size_px: int, precision: str) -> None:
    """Export ``model`` to ``target`` (int8: quantized from a float32 export in a scratch folder), atomically."""
    from .onnx_graph import check_exportable, export_encoder  # torch and onnx: only when a model is converted
    from .onnx_quantize import quantize  # onnxruntime.quantization: only for an int8 twin

    check_exportable(model, tile_size_px)
    target.parent.mkdir(parents=True, exist_ok=True)
    with scratch_folder(target) as scratch:
        raw = target if precision == "fp32" else scratch / "float32.onnx"
        export_encoder(model, raw, tile_size_px=tile_size_px)
        if precision == "int8":
            quantize(raw, target)
    logger.info("exported %s to %s for ONNX Runtime (%s)", model.provenance.weights_path, target, precision)


def _load_dino(path: Path, which: str, num_heads: Optional[int], device: Union[str, torch.device]) -> DinoViT:
    """The backbone of a DINO / X-STARS checkpoint, ready for the engine (see :func:`load_model`)."""
    import torch

    checkpoint = read_dino_checkpoint(path, which=which, with_head=False)
    model = build_dino_model(checkpoint, num_heads=num_heads)
    model = model.to(torch.device(device)).eval()
    model.provenance = Provenance(path, None, checkpoint.layout)
    geometry = checkpoint.geometry
    logger.info(
        "loaded %s (%s, D=%d, depth %d, %d heads from %s, patch %d, grid %d, inputs R, G, B normalised with %s) on %s",
        path, checkpoint.layout, geometry.embed_dim, geometry.depth, model.num_heads, model.num_heads_source,
        geometry.patch_size, geometry.grid_size, cast(ChannelNorm, model.input_norm).source, device,  # set by build
    )
    return model
