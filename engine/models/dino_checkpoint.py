"""Safe reading and writing of DINO / X-STARS checkpoints: ``.pth`` pickles and ``.safetensors`` (docs/xstars.md §6).

**Reading a pickle safely.** ``.pth`` files are read with ``torch.load(map_location="cpu", weights_only=True)``
inside ``torch.serialization.safe_globals`` with exactly the allow-list that the original X-STARS checkpoints need
(docs/xstars.md §6): ``argparse.Namespace`` (the pickled ``args``), the numpy scalar reconstructor under its numpy-2
name ``numpy._core.multiarray.scalar`` and its numpy-1 name ``numpy.core.multiarray.scalar`` (the optimiser's ``lr``
and ``weight_decay`` are ``numpy.float64``), ``numpy.dtype`` and ``numpy.dtypes.Float64DType``. Before loading, the
pickle is disassembled without running it (``torch.serialization.get_unsafe_globals_in_checkpoint``); any other
global is refused with a :class:`~engine.errors.CheckpointError` naming it, and nothing in the file is executed.

**Layout** (docs/xstars.md §6). A DINO checkpoint is a dict with ``student`` (keys ``module.backbone.*`` /
``module.head.*``, saved from DDP), ``teacher`` (``backbone.*`` / ``head.*``), ``optimizer``, ``epoch``, ``args``,
``dino_loss``, ``fp16_scaler``. A file holding one bare state dict (DINO's released backbones, or a teacher dict
converted to safetensors) is read too. A ``.safetensors`` file uses the same key names, either flat or prefixed with
``teacher.`` / ``student.``; its ``args`` and ``config`` metadata entries are JSON.

Reading picks ``teacher`` (the DINO convention for downstream use, default) or ``student``, strips ``module.`` then
``backbone.``, and maps the head's ``last_layer.weight_g`` / ``weight_v`` to
``last_layer.parametrizations.weight.original0`` / ``original1`` (:class:`~engine.models.DINOHead`). The geometry comes
from the tensors, never from ``args.arch``: D from ``cls_token`` [1, 1, D], depth from the block indices, the patch size
from ``patch_embed.proj.weight`` [D, 3, p, p], the grid from ``pos_embed`` [1, 1 + G², D], the MLP width from
``blocks.0.mlp.fc1.weight``. Keys are checked strictly, as for SMARTIES (:mod:`engine.models.smarties_checkpoint`):
every backbone key with its exact shape; besides them only a complete DINO head; anything else is an error listing the
keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional, Union, overload

import numpy as np

# ``scalar`` (what pickled numpy scalars reconstruct with) is not in numpy's type stubs.
try:
    from numpy._core.multiarray import scalar  # type: ignore[attr-defined]
except ImportError:  # numpy < 1.26 has no numpy._core
    from numpy.core.multiarray import scalar  # type: ignore[attr-defined]

from ..atomic import atomic_output
from ..errors import CheckpointError
from ..spectral import ChannelNorm
from .smarties_checkpoint import (
    EncoderGeometry,
    _all_finite,
    _block_shapes,
    _fmt_keys,
    _isqrt_exact,
    _read_header,
    _shape_problems,
    first_num_heads,
    json_metadata,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .dino import DinoViT, MultiCropWrapper

__all__ = (
    "DinoCheckpoint",
    "HeadGeometry",
    "build_dino_model",
    "dino_checkpoint_info",
    "dino_state_dict",
    "is_dino_checkpoint",
    "read_dino_checkpoint",
    "safe_torch_load",
    "save_dino_checkpoint",
)

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: File suffixes read as torch pickles.
PICKLE_SUFFIXES = frozenset({".pth", ".pt", ".ckpt"})
#: The two network dicts of a DINO checkpoint, in the order DINO saves them.
DICTS = ("student", "teacher")
#: DINO's weight-norm tensor names ↔ torch.nn.utils.parametrizations names (docs/xstars.md §6).
_WN_NAMES = {
    "last_layer.weight_g": "last_layer.parametrizations.weight.original0",
    "last_layer.weight_v": "last_layer.parametrizations.weight.original1",
}
_WN_BACK = {v: k for k, v in _WN_NAMES.items()}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_MLP_RE = re.compile(r"^mlp\.(\d+)\.weight$")
_GEOMETRY_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
_RESERVED = frozenset({*DICTS, "args", "epoch", "config"})
_IN_CHANS = 3


# ---------------------------------------------------------------------------------------------------- value objects
@dataclass(frozen=True)
class HeadGeometry:
    """Size of a DINO head, read from its tensors.

    Attributes:
        in_dim: Input width (D of the backbone).
        hidden_dim: Hidden width of the MLP (2048 in X-STARS; equal to ``bottleneck_dim`` and unused when
            ``nlayers == 1``).
        bottleneck_dim: Width before the last layer (256).
        out_dim: Output width K (65536).
        nlayers: Linear layers in the MLP (3).
    """

    in_dim: int
    hidden_dim: int
    bottleneck_dim: int
    out_dim: int
    nlayers: int


@dataclass(frozen=True)
class DinoCheckpoint:
    """One network of a DINO / X-STARS checkpoint, read strictly.

    Attributes:
        path: The file that was read.
        which: The network read: ``"teacher"``, ``"student"``, or ``"state"`` for a file holding one bare state dict.
        available: The networks the file holds (``("student", "teacher")``, or ``("state",)``).
        geometry: Backbone geometry from the tensors (D, depth, patch size, grid, MLP width).
        backbone_state: :class:`~engine.models.DinoViT` state dict (float32, CPU).
        head: Head geometry, or None when the network has no head.
        head_state: :class:`~engine.models.DINOHead` state dict with the parametrisation names (float32),
            empty when the head was not kept or is absent.
        args: The training arguments (``argparse.Namespace`` or dict in the file) as a dict, or ``{}``.
        config: Settings this package records when it writes a checkpoint (``num_heads``, …), or ``{}``.
        epoch: The stored epoch (DINO saves the next epoch to run), or None.
    """

    path: Path
    which: str
    available: tuple[str, ...]
    geometry: EncoderGeometry
    backbone_state: Mapping[str, torch.Tensor] = field(repr=False)
    head: Optional[HeadGeometry]
    head_state: Mapping[str, torch.Tensor] = field(repr=False)
    args: Mapping[str, Any] = field(default_factory=dict, repr=False)
    config: Mapping[str, Any] = field(default_factory=dict)
    epoch: Optional[int] = None

    @property
    def layout(self) -> str:
        """``"dino:<which>"`` (recorded as the loaded model's ``checkpoint_layout``)."""
        return f"dino:{self.which}"

    @property
    def input_norm(self) -> Optional[ChannelNorm]:
        """The per-channel mean/std the run trained with (``args.mean`` / ``args.std``), or None when not recorded."""
        mean, std = self.args.get("mean"), self.args.get("std")
        if mean is None or std is None:
            return None
        try:
            values = ChannelNorm(tuple(float(m) for m in mean), tuple(float(s) for s in std), "checkpoint args")
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{self.path}: args.mean/args.std are not usable ({exc}): {mean!r} / {std!r}"
            ) from exc
        if len(values.mean) != _IN_CHANS:
            raise CheckpointError(f"{self.path}: args.mean/args.std need 3 values (R, G, B), got {len(values.mean)}")
        return values


# ---------------------------------------------------------------------------------------------------- safe unpickling
def _allowed_globals() -> list[Any]:
    """The allow-list of ``torch.load(weights_only=True)`` (docs/xstars.md §6), valid under numpy 1.26 and numpy 2."""
    return [
        argparse.Namespace,
        (scalar, "numpy._core.multiarray.scalar"),  # pickles written under numpy 2
        (scalar, "numpy.core.multiarray.scalar"),  # pickles written under numpy 1.x
        np.dtype,
        # numpy.dtypes (numpy ≥ 1.25) names the class type(np.dtype(np.float64)) has had since numpy 1.20; Debian 12's
        # QGIS has numpy 1.24, which has no numpy.dtypes module
        (type(np.dtype(np.float64)), "numpy.dtypes.Float64DType"),
    ]


_ALLOWED_TEXT = (
    "tensors, plain Python types and argparse.Namespace, numpy.dtype, numpy.dtypes.Float64DType and the numpy scalar "
    "reconstructor"
)


def _refused(path: Path, names: list[str]) -> CheckpointError:
    return CheckpointError(
        f"refused to load {path}: its pickle calls {', '.join(sorted(names))}, which is not on the allow-list "
        f"({_ALLOWED_TEXT}). Unpickling it could run arbitrary code, so nothing in the file was executed. If you "
        "trust the file, convert it in a separate trusted session: "
        "safetensors.torch.save_file(torch.load(path, weights_only=False)['teacher'], 'teacher.safetensors')."
    )


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"cannot read {path} as a torch checkpoint ({type(exc).__name__}: {exc}). The file is truncated or corrupt "
        "(an interrupted download?) or not written by torch.save; download or export it again."
    )


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` under the allow-list; a refused global is named, never executed."""
    import torch

    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except ValueError:  # legacy (non-zip) torch.save format: the weights_only unpickler below still guards it
            unsafe = []
        except Exception as exc:
            raise _unreadable(path, exc) from exc
        if unsafe:
            raise _refused(path, unsafe)
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
            if names:
                raise _refused(path, sorted(set(names))) from None
            raise _unreadable(path, exc) from None
        except Exception as exc:
            raise _unreadable(path, exc) from exc


# ---------------------------------------------------------------------------------------------------- structure
def _is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _plain_args(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, argparse.Namespace):
        return dict(vars(value))
    if isinstance(value, Mapping):
        return dict(value)
    return {}


def _split_prefixed(keys: list[str]) -> Optional[dict[str, list[str]]]:
    """``teacher.*`` / ``student.*`` keys of a flat file grouped by network, or None for a single state dict."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        head, _, _ = key.partition(".")
        groups.setdefault(head if head in DICTS else "", []).append(key)
    if "" in groups or not groups:
        return None
    return groups


def _read_networks(path: Path) -> tuple[dict[str, Mapping[str, Any]], dict[str, Any], dict[str, Any], Optional[int]]:
    """``({network: state dict}, args, config, epoch)`` of a ``.pth`` or ``.safetensors`` file."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        _, _, metadata = _read_header(path)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                flat = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception as exc:
            raise _unreadable(path, exc) from exc
        groups = _split_prefixed(list(flat))
        if groups is None:
            networks: dict[str, Mapping[str, Any]] = {"state": flat}
        else:
            networks = {n: {k[len(n) + 1 :]: flat[k] for k in keys} for n, keys in groups.items()}
        epoch = metadata.get("epoch")
        return (
            networks,
            json_metadata(metadata, "args", path),
            json_metadata(metadata, "config", path),
            int(epoch) if epoch is not None and str(epoch).lstrip("-").isdigit() else None,
        )
    obj = safe_torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a DINO checkpoint dict (student/teacher/args/…) or a state dict"
        )
    found = {n: obj[n] for n in DICTS if isinstance(obj.get(n), Mapping)}
    if found:
        networks = found
    elif _is_tensor_dict(obj):
        networks = {"state": obj}
    else:
        raise CheckpointError(
            f"{path} is neither a DINO checkpoint (no 'teacher' or 'student' state dict; top-level keys: "
            f"{_fmt_keys(map(str, obj))}) nor a plain state dict of tensors"
        )
    raw_config = obj.get("config")
    config = raw_config if isinstance(raw_config, Mapping) else {}
    epoch = obj.get("epoch")
    return networks, _plain_args(obj.get("args")), dict(config), int(epoch) if isinstance(epoch, int) else None


def _network_keys(state: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Split one network's keys: ``({file key: backbone key}, {file key: head key}, other file keys)``."""
    stripped = {k: k[len("module.") :] if k.startswith("module.") else k for k in state}
    bare = not any(s.startswith(("backbone.", "head.")) for s in stripped.values())
    backbone, head, other = {}, {}, []
    for key, name in stripped.items():
        if bare:
            backbone[key] = name
        elif name.startswith("backbone."):
            backbone[key] = name[len("backbone.") :]
        elif name.startswith("head."):
            sub = name[len("head.") :]
            head[key] = _WN_NAMES.get(sub, sub)
        else:
            other.append(key)
    return backbone, head, other


def _foreign_hint(keys: list[str]) -> str:
    if any("spectrum_projection." in k for k in keys):
        return (
            " Its keys are those of a SMARTIES encoder (spectrum_projection.*): save its state dict as .safetensors "
            "and load that file instead."
        )
    return ""


def _backbone_geometry(shapes: Mapping[str, tuple[int, ...]], source: str) -> EncoderGeometry:
    missing = [k for k in _GEOMETRY_KEYS if k not in shapes]
    if missing:
        raise CheckpointError(
            f"{source} is not a DINO/X-STARS ViT: missing {_fmt_keys(missing)} (needed to infer the model size)."
            + _foreign_hint(list(shapes))
        )
    cls, pos, patch, fc1 = (shapes[k] for k in _GEOMETRY_KEYS)
    if len(cls) != 3 or cls[:2] != (1, 1):
        raise CheckpointError(f"{source}: cls_token has shape {list(cls)}, expected [1, 1, D]")
    dim = cls[2]
    if len(patch) != 4 or patch[0] != dim or patch[1] != _IN_CHANS or patch[2] != patch[3]:
        raise CheckpointError(
            f"{source}: patch_embed.proj.weight has shape {list(patch)}, expected [D={dim}, 3, p, p] (RGB input)"
        )
    grid = _isqrt_exact(pos[1] - 1) if len(pos) == 3 and pos[0] == 1 and pos[2] == dim else None
    if not grid:
        raise CheckpointError(f"{source}: pos_embed has shape {list(pos)}, expected [1, 1 + G², D={dim}]")
    if len(fc1) != 2 or fc1[1] != dim:
        raise CheckpointError(f"{source}: blocks.0.mlp.fc1.weight has shape {list(fc1)}, expected [hidden, D={dim}]")
    depth = 1 + max(int(m.group(1)) for k in shapes if (m := _BLOCK_RE.match(k)))
    return EncoderGeometry(embed_dim=dim, depth=depth, patch_size=patch[2], grid_size=grid, mlp_hidden=fc1[0])


def _backbone_shapes(geometry: EncoderGeometry) -> dict[str, tuple[int, ...]]:
    """Every DinoViT key and shape (4 + 12·depth + 2 keys; docs/xstars.md §6)."""
    d, p = geometry.embed_dim, geometry.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, geometry.num_tokens, d),
        "patch_embed.proj.weight": (d, _IN_CHANS, p, p),
        "patch_embed.proj.bias": (d,),
    }
    for i in range(geometry.depth):
        shapes.update(_block_shapes(f"blocks.{i}", d, geometry.mlp_hidden))
    shapes["norm.weight"] = (d,)
    shapes["norm.bias"] = (d,)
    return shapes


def _head_geometry(shapes: Mapping[str, tuple[int, ...]], dim: int, source: str) -> HeadGeometry:
    v_shape = shapes.get(_WN_NAMES["last_layer.weight_v"])
    if v_shape is None or len(v_shape) != 2:
        raise CheckpointError(
            f"{source}: the head has no last_layer.weight_v [K, bottleneck] (or its parametrisation name); head keys: "
            f"{_fmt_keys(shapes)}. Export the complete DINO head, or drop every head.* key."
        )
    out_dim, bottleneck = v_shape
    if "mlp.weight" in shapes:
        return HeadGeometry(dim, bottleneck, bottleneck, out_dim, 1)
    indices = sorted(int(m.group(1)) for k in shapes if (m := _MLP_RE.match(k)))
    if not indices or indices != list(range(0, 2 * len(indices), 2)):
        raise CheckpointError(
            f"{source}: the head's MLP Linears must be mlp.0, mlp.2, mlp.4, … (GELU between them, no batch norm), got "
            f"{_fmt_keys(k for k in shapes if k.startswith('mlp.'))}"
        )
    first = shapes[f"mlp.{indices[0]}.weight"]
    hidden = first[0] if len(first) == 2 else -1
    return HeadGeometry(dim, hidden, bottleneck, out_dim, len(indices))


def _head_shapes(head: HeadGeometry) -> dict[str, tuple[int, ...]]:
    """Every DINOHead key (parametrisation names) and shape."""
    if head.nlayers == 1:
        widths = [(head.in_dim, head.bottleneck_dim)]
    else:
        widths = [(head.in_dim, head.hidden_dim)] + [(head.hidden_dim, head.hidden_dim)] * (head.nlayers - 2)
        widths.append((head.hidden_dim, head.bottleneck_dim))
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(widths):
        name = "mlp" if head.nlayers == 1 else f"mlp.{2 * i}"
        shapes[f"{name}.weight"] = (fan_out, fan_in)
        shapes[f"{name}.bias"] = (fan_out,)
    shapes[_WN_NAMES["last_layer.weight_g"]] = (head.out_dim, 1)
    shapes[_WN_NAMES["last_layer.weight_v"]] = (head.out_dim, head.bottleneck_dim)
    return shapes


def _check_strict(
    expected: Mapping[str, tuple[int, ...]], shapes: Mapping[str, tuple[int, ...]], what: str, source: str
) -> None:
    parts = _shape_problems(expected, shapes, what, report_unexpected=True)
    if parts:
        raise CheckpointError(
            f"{source} does not match a DINO/X-STARS {what}: " + "; ".join(parts) + ". The file is incomplete or "
            "comes from another architecture (DINO ViT: pre-norm blocks with qkv bias; head: Linear/GELU MLP, no "
            "batch norm, weight-normed last layer); re-export the full state dict." + _foreign_hint(list(shapes))
        )


# ---------------------------------------------------------------------------------------------------- reading
def is_dino_checkpoint(path: PathLike) -> bool:
    """True for a file that :func:`read_dino_checkpoint` reads: a torch pickle, or safetensors in DINO layout.

    Header-only for safetensors (no tensor read, no torch import): DINO layout = some key ends with
    ``patch_embed.proj.weight`` (SMARTIES files have ``spectrum_projection.*`` instead).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return True
    if suffix != ".safetensors" or not path.is_file():
        return False
    try:
        shapes, _, _ = _read_header(path)
    except CheckpointError:
        return False  # let the SMARTIES reader report the damage
    return any(k.endswith("patch_embed.proj.weight") for k in shapes)


def read_dino_checkpoint(path: PathLike, which: str = "teacher", with_head: bool = True) -> DinoCheckpoint:
    """Read one network of a DINO / X-STARS checkpoint safely and strictly (docs/xstars.md §6).

    Args:
        path: ``.pth`` / ``.pt`` / ``.ckpt`` (read with ``weights_only=True`` and the module's allow-list) or
            ``.safetensors`` with the same key names.
        which: ``"teacher"`` (DINO's convention for downstream use) or ``"student"`` (what X-STARS' continual
            pretraining starts from). Ignored for a file that holds a single state dict.
        with_head: Keep the head tensors (they are checked either way).

    Returns:
        The checkpoint with the backbone (and head) state under :mod:`engine.models.dino_vit` names, float32.

    Raises:
        ValueError: ``which`` is not ``"teacher"`` or ``"student"``.
        engine.errors.CheckpointError: Missing or unreadable file; a pickle that needs a global outside the
            allow-list (named; nothing executed); no such network in the file; missing, unexpected or mis-shaped
            keys (listed); non-floating or non-finite backbone tensors; a 4-channel or otherwise non-DINO stem.
    """
    import torch

    if which not in DICTS:
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist or is not a file; check the path")
    networks, args, config, epoch = _read_networks(path)
    available = tuple(n for n in (*DICTS, "state") if n in networks)
    if "state" in networks:
        chosen = "state"
    elif which in networks:
        chosen = which
    else:
        raise CheckpointError(
            f"{path} has no {which!r} network (it holds {', '.join(available)}); pass which="
            f"{available[0]!r} to read that one"
        )
    state = networks[chosen]
    source = f"{path} [{chosen}]"
    not_tensor = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensor:
        raise CheckpointError(f"{source}: the state dict holds non-tensor values under {_fmt_keys(not_tensor)}")
    backbone_keys, head_keys, other = _network_keys(state)
    if other:
        raise CheckpointError(
            f"{source} has {len(other)} key(s) outside backbone.* and head.*: {_fmt_keys(other)}. A DINO network "
            "holds exactly the backbone and the DINO head (after the DDP prefix module.)."
        )
    shapes = {name: tuple(state[key].shape) for key, name in backbone_keys.items()}
    geometry = _backbone_geometry(shapes, source)
    _check_strict(_backbone_shapes(geometry), shapes, "backbone", source)
    head = None
    if head_keys:
        head_shapes = {name: tuple(state[key].shape) for key, name in head_keys.items()}
        head = _head_geometry(head_shapes, geometry.embed_dim, source)
        _check_strict(_head_shapes(head), head_shapes, "head", source)

    not_float = [k for k in backbone_keys if not state[k].is_floating_point()]
    if not_float:
        raise CheckpointError(f"{source}: backbone tensors must be floating point: {_fmt_keys(not_float)}")
    backbone_state = {name: state[key].to(torch.float32).contiguous() for key, name in backbone_keys.items()}
    non_finite = [k for k, t in backbone_state.items() if not _all_finite(t)]
    if non_finite:
        raise CheckpointError(
            f"{source}: backbone tensors contain NaN or Inf: {_fmt_keys(non_finite)}. The training run diverged or "
            "the file is damaged; use another checkpoint."
        )
    head_state = (
        {name: state[key].to(torch.float32).contiguous() for key, name in head_keys.items()} if with_head else {}
    )
    logger.debug("read %s: %s, geometry %s, head %s", path, chosen, geometry, head)
    return DinoCheckpoint(
        path=path, which=chosen, available=available, geometry=geometry, backbone_state=backbone_state, head=head,
        head_state=head_state, args=args, config=config, epoch=epoch,
    )


def _num_heads(checkpoint: DinoCheckpoint, num_heads: Optional[int]) -> tuple[int, str]:
    """The number of attention heads and where it comes from (it is not in the tensors).

    The argument, the file's config, ``args.arch`` (docs/xstars.md §1 table), else D/64.
    """
    from .dino import ARCHS  # torch: loaded only when a DINO network is built

    dim = checkpoint.geometry.embed_dim
    arch = checkpoint.args.get("arch")
    candidates = [
        (num_heads, "the num_heads argument"),
        (checkpoint.config.get("num_heads"), f"the config of {checkpoint.path.name}"),
        (ARCHS[arch][2] if arch in ARCHS else None, f"args.arch={arch!r} (docs/xstars.md §1)"),
        (dim // 64 if dim % 64 == 0 else None, "D/64 (head dim 64, as every DINO ViT)"),
    ]
    found = first_num_heads(dim, candidates)
    if found is not None:
        return found
    raise CheckpointError(
        f"{checkpoint.path}: the number of attention heads is not stored in the tensors, the file records neither "
        f"num_heads nor a known args.arch, and D={dim} is not a multiple of 64; pass num_heads="
    )


@overload
def build_dino_model(
    checkpoint: DinoCheckpoint,
    num_heads: Optional[int] = None,
    with_head: Literal[False] = False,
    drop_path_rate: float = 0.0,
) -> DinoViT: ...


@overload
def build_dino_model(
    checkpoint: DinoCheckpoint,
    num_heads: Optional[int] = None,
    *,
    with_head: Literal[True],
    drop_path_rate: float = 0.0,
) -> MultiCropWrapper: ...


@overload
def build_dino_model(
    checkpoint: DinoCheckpoint,
    num_heads: Optional[int] = None,
    with_head: bool = False,
    drop_path_rate: float = 0.0,
) -> Union[DinoViT, MultiCropWrapper]: ...


def build_dino_model(
    checkpoint: DinoCheckpoint,
    num_heads: Optional[int] = None,
    with_head: bool = False,
    drop_path_rate: float = 0.0,
) -> Union[DinoViT, MultiCropWrapper]:
    """Build the network of a checkpoint and load its weights strictly.

    Args:
        checkpoint: From :func:`read_dino_checkpoint`.
        num_heads: Attention heads; default from the file's config, ``args.arch`` (docs/xstars.md §1 table: tiny 3,
            small 6, base 12, large 16), else D/64.
        with_head: Return ``MultiCropWrapper(backbone, DINOHead)`` instead of the bare backbone.
        drop_path_rate: Stochastic depth of the backbone (0.1 for an X-STARS student in training; no effect in eval).

    Returns:
        A :class:`~engine.models.DinoViT` (or wrapper) in train mode on the CPU, float32. The backbone's
        ``input_norm`` is the checkpoint's ``args.mean/std``, else the ``sentinel_landsat`` preset (with a warning).
        ``num_heads_source`` records where the head count came from.

    Raises:
        engine.errors.CheckpointError: The head count cannot be determined or does not divide D; ``with_head`` but
            the network has no head (or it was not kept); unusable ``args.mean/std``.
    """
    import torch

    from .dino import DINOHead, DinoViT, MultiCropWrapper, xstars_norm  # torch: only to build a DINO network

    geometry = checkpoint.geometry
    heads, source = _num_heads(checkpoint, num_heads)
    with torch.device("meta"):
        backbone = DinoViT(
            embed_dim=geometry.embed_dim, depth=geometry.depth, num_heads=heads, patch_size=geometry.patch_size,
            img_size=geometry.image_size_px, mlp_ratio=geometry.mlp_ratio, drop_path_rate=drop_path_rate,
        )
    backbone.load_state_dict(checkpoint.backbone_state, strict=True, assign=True)
    norm = checkpoint.input_norm
    if norm is None:
        norm = xstars_norm()
        logger.warning(
            "%s records no args.mean/args.std: normalising inputs with the X-STARS %s; set model.input_norm = "
            "engine.models.xstars_norm(NAME) if the weights were trained with another preset",
            checkpoint.path, norm.source,
        )
    backbone.input_norm = norm
    backbone.num_heads_source = source
    if not with_head:
        return backbone
    if checkpoint.head is None or not checkpoint.head_state:
        raise CheckpointError(
            f"{checkpoint.path} [{checkpoint.which}] has no DINO head (or it was read with with_head=False); build "
            "the backbone alone"
        )
    head_geometry = checkpoint.head
    with torch.device("meta"):
        head = DINOHead(
            head_geometry.in_dim, head_geometry.out_dim, head_geometry.hidden_dim, head_geometry.bottleneck_dim,
            head_geometry.nlayers,
        )
    head.load_state_dict(checkpoint.head_state, strict=True, assign=True)
    return MultiCropWrapper(backbone, head)


def dino_checkpoint_info(path: PathLike) -> dict[str, Any]:
    """Describe a DINO / X-STARS checkpoint (what ``msfm models info FILE`` prints).

    Args:
        path: ``.pth`` or DINO-layout ``.safetensors`` file.

    Returns:
        ``name``, ``local_path``, ``available``, ``status``, ``family`` (``"dino"``), ``layout`` (``"dino:teacher"``
        or ``"dino:state"``), ``networks``, ``geometry`` (embed_dim, depth, patch_size, grid_size, mlp_ratio,
        num_heads, num_heads_source), ``head`` (its geometry or None), ``epoch``, ``input_norm`` (mean, std,
        source) and ``args`` (arch, sensors, mean, std, out_dim, … as recorded; plain values only).

    Raises:
        engine.errors.CheckpointError: As :func:`read_dino_checkpoint`.
    """
    from .dino import xstars_norm  # torch: loaded only when a DINO network is built

    checkpoint = read_dino_checkpoint(path, with_head=False)
    geometry = checkpoint.geometry
    try:
        heads, heads_source = _num_heads(checkpoint, None)
    except CheckpointError as exc:
        heads, heads_source = None, str(exc)
    norm = checkpoint.input_norm or xstars_norm()
    plain = (str, int, float, bool, type(None), list, tuple)
    return {
        "name": str(checkpoint.path),
        "local_path": str(checkpoint.path),
        "available": True,
        "status": "local file",
        "family": "dino",
        "layout": checkpoint.layout,
        "networks": list(checkpoint.available),
        "geometry": {
            "embed_dim": geometry.embed_dim,
            "depth": geometry.depth,
            "patch_size": geometry.patch_size,
            "grid_size": geometry.grid_size,
            "mlp_ratio": geometry.mlp_ratio,
            "num_heads": heads,
            "num_heads_source": heads_source,
        },
        "head": None if checkpoint.head is None else dataclasses.asdict(checkpoint.head),
        "epoch": checkpoint.epoch,
        "input_norm": {"mean": list(norm.mean), "std": list(norm.std), "source": norm.source},
        "args": {k: v for k, v in checkpoint.args.items() if isinstance(v, plain)},
        "config": dict(checkpoint.config),
    }


# ---------------------------------------------------------------------------------------------------- writing
def dino_state_dict(network: Union[nn.Module, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A network's state dict under DINO's key names (``backbone.*``, ``head.*``, ``last_layer.weight_g/_v``).

    Args:
        network: A :class:`~engine.models.MultiCropWrapper`, a bare
            :class:`~engine.models.DinoViT`, or a state dict of either (a bare backbone gets ``backbone.``).

    Returns:
        Detached CPU copies (contiguous clones) of every tensor, DINO names, no ``module.`` prefix.
    """
    from torch import nn

    state = network.state_dict() if isinstance(network, nn.Module) else dict(network)
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    out = {}
    for key, tensor in state.items():
        if key.startswith("head."):
            sub = key[len("head.") :]
            key = "head." + _WN_BACK.get(sub, sub)
        out[key] = tensor.detach().cpu().contiguous().clone()
    return out


def _plain(value: Any, where: str) -> Any:
    """``value`` with only tensors and plain types (numpy scalars → Python, Namespace → dict); else TypeError."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.generic):  # before float: numpy.float64 is a float subclass but pickles as numpy's
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}; a checkpoint holds only tensors and plain "
        "types (int, float, bool, str, None, list, tuple, dict) so that it loads with weights_only=True"
    )


def _network_config(network: Any) -> dict[str, Any]:
    from .dino import DINOHead, DinoViT  # torch: loaded only when a DINO network is built

    backbone = getattr(network, "backbone", network)
    head = getattr(network, "head", None)
    config: dict[str, Any] = {}
    if isinstance(backbone, DinoViT):
        config.update(
            embed_dim=backbone.embed_dim, depth=backbone.depth, num_heads=backbone.num_heads,
            patch_size=backbone.patch_size, grid_size=backbone.grid_size,
        )
        if backbone.input_norm is not None:  # a backbone without its own normalisation records none
            config["input_norm"] = {"mean": list(backbone.input_norm.mean), "std": list(backbone.input_norm.std)}
    if isinstance(head, DINOHead):
        config["head"] = {"out_dim": head.out_dim, "hidden_dim": head.hidden_dim,
                          "bottleneck_dim": head.bottleneck_dim, "nlayers": head.nlayers}
    return config


def save_dino_checkpoint(
    path: PathLike,
    teacher: Union[nn.Module, Mapping[str, torch.Tensor]],
    student: Optional[Union[nn.Module, Mapping[str, torch.Tensor]]] = None,
    *,
    args: Any = None,
    epoch: Optional[int] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a checkpoint in the DINO / X-STARS layout, atomically; it reads back with ``weights_only=True``.

    ``.pth``: a dict ``{student, teacher, epoch, args, config, **extra}`` (``student`` keys prefixed ``module.`` as
    DINO saves them from DDP), holding only tensors and plain types, so DINO tooling and ``torch.load`` without an
    allow-list both read it. ``.safetensors``: the same tensors as flat keys ``teacher.<key>`` /
    ``student.module.<key>``, with ``args``, ``config`` and ``epoch`` as metadata (JSON). The file is written to a
    temporary file in the destination folder, read back with :func:`read_dino_checkpoint`, then moved into place.

    Args:
        path: Destination ``.pth`` or ``.safetensors``; parent folders are created.
        teacher: The teacher network (:class:`~engine.models.MultiCropWrapper`, a bare backbone, or a state
            dict of either).
        student: The student network, same forms; optional.
        args: Training arguments (``argparse.Namespace`` or a mapping); stored as a plain dict.
        epoch: The next epoch to run (DINO's convention).
        extra: More top-level entries for ``.pth`` (``optimizer``, ``dino_loss``, ``fp16_scaler``, ``msad_heads`` …):
            tensors and plain types only; numpy scalars are converted to Python numbers.

    Returns:
        The written path.

    Raises:
        ValueError: Another suffix, ``extra`` for ``.safetensors``, or an ``extra`` key that collides with the
            layout (student, teacher, args, epoch, config).
        TypeError: A value that is not a tensor or plain type (the message gives where it is).
        engine.errors.CheckpointError: The networks do not satisfy the strict key rule (nothing is written).
    """
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".pth", ".safetensors"):
        raise ValueError(f"checkpoint path must end with .pth or .safetensors, got {path}")
    clash = sorted(set(extra or {}) & _RESERVED)
    if clash:
        raise ValueError(f"extra entries {clash} collide with the checkpoint layout ({', '.join(sorted(_RESERVED))})")
    if extra and suffix == ".safetensors":
        raise ValueError("extra entries (optimizer, …) can only be stored in a .pth checkpoint")
    networks: dict[str, dict[str, torch.Tensor]] = {}
    if student is not None:
        networks["student"] = {f"module.{k}": v for k, v in dino_state_dict(student).items()}
    networks["teacher"] = dino_state_dict(teacher)
    config = _network_config(teacher)
    plain_args = _plain(args, "args") if args is not None else {}
    if not isinstance(plain_args, dict):
        raise TypeError(f"args must be an argparse.Namespace or a mapping, got {type(args).__name__}")

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, sidecars=()) as tmp:  # keeps the suffix, which the reader dispatches on
        if suffix == ".pth":
            payload: dict[str, Any] = dict(networks)
            payload.update(epoch=epoch, args=plain_args, config=config)
            payload.update({k: _plain(v, f"extra[{k!r}]") for k, v in (extra or {}).items()})
            torch.save(payload, tmp)
        else:
            from safetensors.torch import save_file

            flat = {f"{name}.{k}": v for name, state in networks.items() for k, v in state.items()}
            metadata = {"format": "pt", "args": json.dumps(plain_args, default=str), "config": json.dumps(config)}
            if epoch is not None:
                metadata["epoch"] = str(int(epoch))
            save_file(flat, str(tmp), metadata=metadata)
        for name in networks:
            read_dino_checkpoint(tmp, which=name, with_head=False)
    logger.info("wrote %s (%s, %d tensors each)", path, "+".join(networks), len(networks["teacher"]))
    return path
