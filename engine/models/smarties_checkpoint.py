"""Strict reading and writing of SMARTIES ``.safetensors`` checkpoints (docs/smarties.md §1.6–§1.7).

A SMARTIES checkpoint is a flat state dict without prefix. Its geometry is read from the tensors themselves:

- ``D`` (embedding dim) from ``cls_token`` ``[1, 1, D]``;
- depth from the largest ``blocks.{i}`` index;
- patch size ``p`` from ``spectrum_projection.spectrum_embeds.0.proj.weight`` ``[D, p²]``;
- position grid ``G`` from ``pos_embed`` ``[1, 1 + G², D]``;
- MLP hidden size from ``blocks.0.mlp.fc1.weight`` ``[hidden, D]``.

The loading rule is the strict rule of docs/smarties.md §1.6: every encoder key must be present with its exact shape;
keys left over are allowed only when they form *exactly* one known set:

- ``"mae"``: the MAE pretraining extras (``mask_token``, ``decoder_pos_embed``, ``decoder_embed.*``,
  ``decoder_blocks.{i}.*``, ``decoder_norm.*``, ``decoder_preds.{0..16}.*``; 136 keys for the published 8-block
  decoder, the same name pattern for other decoder depths);
- ``"head:linear"``: ``head.weight`` ``[C, S·D]`` + ``head.bias`` ``[C]`` (fine-tuned classifiers);
- ``"head:linprobe"``: ``head.0.running_mean/running_var`` ``[S·D]``, ``head.0.num_batches_tracked`` ``[]`` +
  ``head.1.weight`` ``[C, S·D]`` / ``head.1.bias`` ``[C]`` (BatchNorm1d without affine, then Linear);
- ``"head:segmentation"``: ``head.0.weight`` ``[C, S·D, 1, 1]`` + ``head.0.bias`` ``[C]`` (1×1 convolution).

``S`` is the number of sources of a multi-modal head (1, or 2 for ``bigearthnetmm``). Independently of these, a
global-pool checkpoint may carry ``fc_norm.*`` *instead of* ``norm.*`` (docs/smarties.md §1.1 step 6); it is loaded into
the encoder's ``norm`` and flagged with ``global_pool=True``. Anything else is refused with
:class:`~engine.errors.CheckpointError` naming the keys.

Pickle-based files (``.pth``/``.ckpt``) are refused on purpose: loading them can execute code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

from ..atomic import atomic_output
from ..errors import CheckpointError
from ..spectral import NUM_BASE_PROJECTIONS

if TYPE_CHECKING:  # header inspection (inspect_checkpoint) works without torch; reading tensors imports it
    import torch
    from torch import nn

__all__ = (
    "Checkpoint",
    "DecoderGeometry",
    "EncoderGeometry",
    "KeyLayout",
    "Layout",
    "classify_keys",
    "encoder_key_shapes",
    "first_num_heads",
    "inspect_checkpoint",
    "mae_key_shapes",
    "read_checkpoint",
    "save_encoder",
)

logger = logging.getLogger(__name__)

#: ``"encoder"``, ``"mae"``, ``"head:linear"``, ``"head:linprobe"`` or ``"head:segmentation"``.
Layout = str

PathLike = Union[str, "os.PathLike[str]"]

#: Metadata key of the JSON config written by :func:`save_encoder` (safetensors metadata values are strings).
CONFIG_METADATA_KEY = "config"

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_MAX_LISTED_KEYS = 25
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_DECODER_BLOCK_RE = re.compile(r"^decoder_blocks\.(\d+)\.")
_SPECTRUM_W0 = "spectrum_projection.spectrum_embeds.0.proj.weight"
_FC1_W0 = "blocks.0.mlp.fc1.weight"
_GEOMETRY_KEYS = ("cls_token", "pos_embed", _SPECTRUM_W0, _FC1_W0)
_PICKLE_SUFFIXES = {".pth", ".pt", ".ckpt", ".bin", ".pkl"}

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------------- value objects
@dataclass(frozen=True)
class EncoderGeometry:
    """Size of a SMARTIES encoder, read from its tensors.

    Attributes:
        embed_dim: Token dimension D (768 ViT-B, 1024 ViT-L, 192 ViT-Tiny).
        depth: Number of transformer blocks.
        patch_size: Patch side p in pixels (16 for the published models).
        grid_size: Tokens per side G of the stored position table (14 for 224-px inputs).
        mlp_hidden: Hidden width of the block MLPs (4·D for all published models).
    """

    embed_dim: int
    depth: int
    patch_size: int
    grid_size: int
    mlp_hidden: int

    @property
    def mlp_ratio(self) -> float:
        """MLP hidden width as a multiple of D."""
        return self.mlp_hidden / self.embed_dim

    @property
    def num_tokens(self) -> int:
        """Length of the position table, ``1 + G²`` (CLS included)."""
        return 1 + self.grid_size**2

    @property
    def image_size_px(self) -> int:
        """Native input side in pixels, ``G · p`` (224 for the published models)."""
        return self.grid_size * self.patch_size


@dataclass(frozen=True)
class DecoderGeometry:
    """Size of the MAE decoder stored next to the encoder of a pretraining checkpoint (docs/smarties.md §1.5).

    Attributes:
        embed_dim: Decoder width (512 published).
        depth: Decoder blocks (8 published).
        mlp_hidden: Decoder MLP hidden width (4 × width published).
    """

    embed_dim: int
    depth: int
    mlp_hidden: int


@dataclass(frozen=True)
class KeyLayout:
    """How the keys of a state dict were classified by :func:`classify_keys`.

    Attributes:
        geometry: Encoder geometry inferred from the tensors.
        layout: ``"encoder"``, ``"mae"``, ``"head:linear"``, ``"head:linprobe"`` or ``"head:segmentation"``.
        global_pool: True when the file holds ``fc_norm.*`` instead of ``norm.*`` (global-pool variant).
        encoder_keys: File key → :class:`~engine.models.smarties.SmartiesEncoder` state-dict key, for every
            encoder tensor (identity except ``fc_norm.*`` → ``norm.*``).
        extra_keys: The leftover keys (MAE extras or head keys), sorted.
        decoder: MAE decoder geometry when ``layout == "mae"``.
        num_classes: Output classes C of a head layout.
        head_in_features: Input width of a head (D, or S·D for a multi-modal head).
    """

    geometry: EncoderGeometry
    layout: Layout
    global_pool: bool
    encoder_keys: Mapping[str, str]
    extra_keys: tuple[str, ...]
    decoder: Optional[DecoderGeometry] = None
    num_classes: Optional[int] = None
    head_in_features: Optional[int] = None


@dataclass(frozen=True)
class Checkpoint:
    """A SMARTIES checkpoint read strictly from a ``.safetensors`` file.

    Attributes:
        path: The file that was read.
        geometry: Encoder geometry inferred from the tensors.
        layout: ``"encoder"``, ``"mae"``, ``"head:linear"``, ``"head:linprobe"`` or ``"head:segmentation"``.
        encoder_state: :class:`~engine.models.smarties.SmartiesEncoder` state dict (float32, CPU), ready for
            ``load_state_dict(strict=True)``.
        extra_state: MAE-decoder or head tensors under their file names (floating tensors float32, integer
            tensors such as ``num_batches_tracked`` unchanged); empty for ``layout == "encoder"``.
        config: JSON object stored under the ``config`` metadata key (``num_heads``, ``averaging``, ...), or ``{}``.
        metadata: The raw safetensors metadata (string → string), or ``{}``.
        global_pool: True when the file held ``fc_norm.*`` instead of ``norm.*``.
        decoder: MAE decoder geometry for ``layout == "mae"``.
        num_classes: Output classes of a head layout.
    """

    path: Path
    geometry: EncoderGeometry
    layout: Layout
    encoder_state: Mapping[str, torch.Tensor] = field(repr=False)
    extra_state: Mapping[str, torch.Tensor] = field(repr=False)
    config: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    global_pool: bool = False
    decoder: Optional[DecoderGeometry] = None
    num_classes: Optional[int] = None

    @property
    def num_encoder_parameters(self) -> int:
        """Number of encoder values, position table included (the count of docs/smarties.md §1.4)."""
        return sum(t.numel() for t in self.encoder_state.values())


# ---------------------------------------------------------------------------------------------------- expected keys
def _block_shapes(prefix: str, dim: int, hidden: int) -> dict[str, Shape]:
    """The 12 parameter shapes of one pre-norm ViT block (timm names) under ``prefix``."""
    return {
        f"{prefix}.norm1.weight": (dim,),
        f"{prefix}.norm1.bias": (dim,),
        f"{prefix}.attn.qkv.weight": (3 * dim, dim),
        f"{prefix}.attn.qkv.bias": (3 * dim,),
        f"{prefix}.attn.proj.weight": (dim, dim),
        f"{prefix}.attn.proj.bias": (dim,),
        f"{prefix}.norm2.weight": (dim,),
        f"{prefix}.norm2.bias": (dim,),
        f"{prefix}.mlp.fc1.weight": (hidden, dim),
        f"{prefix}.mlp.fc1.bias": (hidden,),
        f"{prefix}.mlp.fc2.weight": (dim, hidden),
        f"{prefix}.mlp.fc2.bias": (dim,),
    }


def encoder_key_shapes(geometry: EncoderGeometry) -> dict[str, Shape]:
    """Every encoder key and its exact shape for a geometry (docs/smarties.md §1.6: 182 keys for ViT-B, 326 for ViT-L).

    Args:
        geometry: Encoder geometry.

    Returns:
        Key → shape, in a stable order (cls, pos, projections, blocks, norm).
    """
    d, p2 = geometry.embed_dim, geometry.patch_size**2
    shapes: dict[str, Shape] = {"cls_token": (1, 1, d), "pos_embed": (1, geometry.num_tokens, d)}
    for r in range(NUM_BASE_PROJECTIONS):
        shapes[f"spectrum_projection.spectrum_embeds.{r}.proj.weight"] = (d, p2)
        shapes[f"spectrum_projection.spectrum_embeds.{r}.proj.bias"] = (d,)
    for i in range(geometry.depth):
        shapes.update(_block_shapes(f"blocks.{i}", d, geometry.mlp_hidden))
    shapes["norm.weight"] = (d,)
    shapes["norm.bias"] = (d,)
    return shapes


def mae_key_shapes(geometry: EncoderGeometry, decoder: DecoderGeometry) -> dict[str, Shape]:
    """The MAE-only keys and shapes (docs/smarties.md §1.5–§1.6; 136 keys for the published 8-block decoder).

    Args:
        geometry: Encoder geometry (D, p, G).
        decoder: Decoder geometry.

    Returns:
        Key → shape of ``mask_token``, ``decoder_pos_embed``, ``decoder_embed.*``, ``decoder_blocks.{i}.*``,
        ``decoder_norm.*`` and ``decoder_preds.{0..16}.*``.
    """
    dd, p2 = decoder.embed_dim, geometry.patch_size**2
    shapes: dict[str, Shape] = {
        "mask_token": (1, 1, dd),
        "decoder_pos_embed": (1, geometry.num_tokens, dd),
        "decoder_embed.weight": (dd, geometry.embed_dim),
        "decoder_embed.bias": (dd,),
    }
    for i in range(decoder.depth):
        shapes.update(_block_shapes(f"decoder_blocks.{i}", dd, decoder.mlp_hidden))
    shapes["decoder_norm.weight"] = (dd,)
    shapes["decoder_norm.bias"] = (dd,)
    for r in range(NUM_BASE_PROJECTIONS):
        shapes[f"decoder_preds.{r}.weight"] = (p2, dd)
        shapes[f"decoder_preds.{r}.bias"] = (p2,)
    return shapes


# ---------------------------------------------------------------------------------------------------- classification
def _fmt_keys(keys: Iterable[str]) -> str:
    """Comma-separated sorted keys, cut after a few dozen."""
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    if len(keys) > _MAX_LISTED_KEYS:
        shown += f", ... ({len(keys) - _MAX_LISTED_KEYS} more)"
    return shown


def _fmt_shapes(bad: Mapping[str, tuple[Shape, Shape]]) -> str:
    items = [f"{k} {list(got)} (expected {list(want)})" for k, (got, want) in sorted(bad.items())]
    shown = "; ".join(items[:_MAX_LISTED_KEYS])
    if len(items) > _MAX_LISTED_KEYS:
        shown += f"; ... ({len(items) - _MAX_LISTED_KEYS} more)"
    return shown


def _isqrt_exact(value: int) -> Optional[int]:
    root = math.isqrt(value) if value >= 0 else -1
    return root if root >= 0 and root * root == value else None


def _foreign_hint(keys: Sequence[str]) -> str:
    """A hint when the keys look like a prefixed SMARTIES state dict or a non-SMARTIES ViT."""
    for key in keys:
        if key.endswith(".cls_token"):
            prefix = key[: -len("cls_token")]
            return (
                f" The keys carry the prefix {prefix!r} (a training wrapper); export the bare encoder state dict "
                f"instead, e.g. {{k.removeprefix({prefix!r}): v}}."
            )
    if any(k.startswith("patch_embed.") for k in keys):
        return (
            " It has 'patch_embed.*' keys: this is a standard ViT, not a spectrum-aware SMARTIES encoder "
            "(which has 'spectrum_projection.spectrum_embeds.{0..16}.proj.*')."
        )
    return ""


def _infer_geometry(shapes: Mapping[str, Shape], source: str) -> EncoderGeometry:
    missing = [k for k in _GEOMETRY_KEYS if k not in shapes]
    if missing:
        raise CheckpointError(
            f"{source} is not a SMARTIES encoder checkpoint: missing {_fmt_keys(missing)} "
            f"(needed to infer the model size).{_foreign_hint(list(shapes))}"
        )
    cls_shape, pos_shape = shapes["cls_token"], shapes["pos_embed"]
    if len(cls_shape) != 3 or cls_shape[:2] != (1, 1):
        raise CheckpointError(f"{source}: cls_token has shape {list(cls_shape)}, expected [1, 1, D]")
    dim = cls_shape[2]
    spec_shape = shapes[_SPECTRUM_W0]
    if len(spec_shape) != 2 or spec_shape[0] != dim:
        raise CheckpointError(f"{source}: {_SPECTRUM_W0} has shape {list(spec_shape)}, expected [D={dim}, p²]")
    patch = _isqrt_exact(spec_shape[1])
    if patch is None:
        raise CheckpointError(
            f"{source}: {_SPECTRUM_W0} has {spec_shape[1]} input features, not a square p² (patch side p)"
        )
    if len(pos_shape) != 3 or pos_shape[0] != 1 or pos_shape[2] != dim:
        raise CheckpointError(f"{source}: pos_embed has shape {list(pos_shape)}, expected [1, 1 + G², D={dim}]")
    grid = _isqrt_exact(pos_shape[1] - 1)
    if grid is None or grid == 0:
        raise CheckpointError(
            f"{source}: pos_embed holds {pos_shape[1]} positions, expected 1 (CLS) + G² for a square G×G grid"
        )
    fc1 = shapes[_FC1_W0]
    if len(fc1) != 2 or fc1[1] != dim:
        raise CheckpointError(f"{source}: {_FC1_W0} has shape {list(fc1)}, expected [hidden, D={dim}]")
    depth = 1 + max(int(m.group(1)) for k in shapes if (m := _BLOCK_RE.match(k)))
    return EncoderGeometry(embed_dim=dim, depth=depth, patch_size=patch, grid_size=grid, mlp_hidden=fc1[0])


def _shape_problems(
    expected: Mapping[str, Shape], shapes: Mapping[str, Shape], what: str, report_unexpected: bool = False
) -> list[str]:
    """What is wrong with ``shapes`` against ``expected``; empty when they match.

    Missing keys, mis-shaped keys and (when ``report_unexpected``) keys that are not expected, one message part each.
    """
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected] if report_unexpected else []
    bad = {k: (shapes[k], want) for k, want in expected.items() if k in shapes and shapes[k] != want}
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} {what} key(s): {_fmt_keys(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected {what} key(s): {_fmt_keys(unexpected)}")
    if bad:
        parts.append(f"{len(bad)} {what} key(s) with the wrong shape: {_fmt_shapes(bad)}")
    return parts


def _check_shapes(
    expected: Mapping[str, Shape], shapes: Mapping[str, Shape], what: str, source: str
) -> None:
    parts = _shape_problems(expected, shapes, what)
    if parts:
        raise CheckpointError(
            f"{source} does not match a SMARTIES {what}: " + "; ".join(parts) + ". The file is incomplete or was "
            "exported from a different architecture; re-export the full state dict (no renamed or dropped keys)."
        )


def first_num_heads(dim: int, candidates: Iterable[tuple[Any, str]]) -> Optional[tuple[int, str]]:
    """The first recorded head count of ``(value, where it comes from)`` pairs (None values skipped), checked.

    Heads are not stored in the tensors, so loaders look them up in order of trust (argument, file config, ...).

    Returns:
        ``(num_heads, source)``, or None when every candidate is None.

    Raises:
        CheckpointError: The first recorded value is not a positive divisor of ``dim`` (names its source).
    """
    for value, source in candidates:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or dim % value:
            raise CheckpointError(
                f"num_heads={value!r} from {source} is invalid for embed_dim D={dim}: it must be a positive divisor "
                "of D; pass num_heads explicitly"
            )
        return value, source
    return None


def _classify_mae(
    keys: Sequence[str], shapes: Mapping[str, Shape], geometry: EncoderGeometry, source: str
) -> DecoderGeometry:
    if "mask_token" in shapes and len(shapes["mask_token"]) == 3:
        dd = shapes["mask_token"][2]
    elif "decoder_embed.weight" in shapes and len(shapes["decoder_embed.weight"]) == 2:
        dd = shapes["decoder_embed.weight"][0]
    else:
        raise CheckpointError(
            f"{source} has MAE decoder keys but neither mask_token [1, 1, Dd] nor decoder_embed.weight [Dd, D] to "
            f"size the decoder: {_fmt_keys(keys)}. Re-export the complete MAE state dict, or drop every "
            "decoder_*/mask_token key to keep the encoder only."
        )
    block_ids = [int(m.group(1)) for k in keys if (m := _DECODER_BLOCK_RE.match(k))]
    depth = 1 + max(block_ids) if block_ids else 0
    fc1 = shapes.get("decoder_blocks.0.mlp.fc1.weight")
    hidden = fc1[0] if fc1 and len(fc1) == 2 else 4 * dd
    decoder = DecoderGeometry(embed_dim=dd, depth=depth, mlp_hidden=hidden)
    expected = mae_key_shapes(geometry, decoder)
    unexpected = [k for k in keys if k not in expected]
    if unexpected or depth == 0:
        raise CheckpointError(
            f"{source} has unexpected keys next to the MAE decoder: {_fmt_keys(unexpected) or '(no decoder blocks)'}. "
            "Allowed leftovers are exactly the MAE set (mask_token, decoder_pos_embed, decoder_embed.*, "
            "decoder_blocks.{i}.*, decoder_norm.*, decoder_preds.{0..16}.*)."
        )
    _check_shapes(expected, {k: shapes[k] for k in keys}, "MAE decoder", source)
    return decoder


def _classify_head(
    keys: Sequence[str], shapes: Mapping[str, Shape], dim: int, source: str
) -> tuple[Layout, int, int]:
    key_set = set(keys)
    variants = {
        "head:linear": {"head.weight", "head.bias"},
        "head:linprobe": {
            "head.0.running_mean",
            "head.0.running_var",
            "head.0.num_batches_tracked",
            "head.1.weight",
            "head.1.bias",
        },
        "head:segmentation": {"head.0.weight", "head.0.bias"},
    }
    layout = next((name for name, names in variants.items() if names == key_set), None)
    if layout is None:
        known = "; ".join(f"{name}: {', '.join(sorted(names))}" for name, names in variants.items())
        raise CheckpointError(
            f"{source} has head keys that match no known head variant: {_fmt_keys(keys)}. Known variants "
            f"(docs/smarties.md §1.7): {known}. Export the encoder only, or one of these heads."
        )
    weight_key = {"head:linear": "head.weight", "head:linprobe": "head.1.weight", "head:segmentation": "head.0.weight"}
    weight = shapes[weight_key[layout]]
    want_ndim = 4 if layout == "head:segmentation" else 2
    if len(weight) != want_ndim or weight[1] % dim or weight[1] == 0 or (want_ndim == 4 and weight[2:] != (1, 1)):
        form = "[C, S·D, 1, 1]" if want_ndim == 4 else "[C, S·D]"
        raise CheckpointError(
            f"{source}: {weight_key[layout]} has shape {list(weight)}, expected {form} with D={dim} and S sources"
        )
    classes, in_features = weight[0], weight[1]
    expected: dict[str, Shape] = {weight_key[layout]: weight, weight_key[layout][: -len("weight")] + "bias": (classes,)}
    if layout == "head:linprobe":
        expected["head.0.running_mean"] = (in_features,)
        expected["head.0.running_var"] = (in_features,)
        expected["head.0.num_batches_tracked"] = ()
    _check_shapes(expected, {k: shapes[k] for k in keys}, f"{layout} head", source)
    return layout, classes, in_features


def classify_keys(shapes: Mapping[str, Sequence[int]], source: str = "checkpoint") -> KeyLayout:
    """Classify the keys of a state dict by the strict SMARTIES rule, from shapes only (no tensors needed).

    Args:
        shapes: Key → tensor shape (e.g. from a safetensors header or ``{k: v.shape for k, v in sd.items()}``).
        source: Name used in error messages (usually the file path).

    Returns:
        The inferred geometry and layout.

    Raises:
        engine.errors.CheckpointError: A geometry key is missing or malformed; an encoder key is missing or has the
            wrong shape; leftover keys are not exactly the MAE set or one head variant (the message lists them).
    """
    norm_shapes: dict[str, Shape] = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
    geometry = _infer_geometry(norm_shapes, source)
    expected = encoder_key_shapes(geometry)
    encoder_keys = {k: k for k in expected}

    global_pool = False
    has_fc_norm = any(k in norm_shapes for k in ("fc_norm.weight", "fc_norm.bias"))
    has_norm = any(k in norm_shapes for k in ("norm.weight", "norm.bias"))
    if has_fc_norm and not has_norm:
        global_pool = True
        for name in ("weight", "bias"):
            expected[f"fc_norm.{name}"] = expected.pop(f"norm.{name}")
            del encoder_keys[f"norm.{name}"]
            encoder_keys[f"fc_norm.{name}"] = f"norm.{name}"

    leftover = sorted(k for k in norm_shapes if k not in expected)
    mae_like = [k for k in leftover if k == "mask_token" or k.startswith("decoder_")]
    head_like = [k for k in leftover if k.startswith("head.")]
    other = [k for k in leftover if k not in set(mae_like) | set(head_like)]
    if other or (mae_like and head_like):
        blocks_hint = ""
        if any(_BLOCK_RE.match(k) for k in other):
            blocks_hint = " (block keys with unknown sub-names: the blocks are not plain pre-norm timm ViT blocks)"
        both = " It mixes MAE decoder keys with head keys; keep only one of the two." if mae_like and head_like else ""
        raise CheckpointError(
            f"{source} has {len(other) or len(head_like)} unexpected key(s){blocks_hint}: "
            f"{_fmt_keys(other or head_like)}.{both} A SMARTIES checkpoint may hold the encoder keys plus exactly "
            "the MAE decoder set or one known head (docs/smarties.md §1.6–§1.7); remove the other keys when exporting."
            + _foreign_hint(other)
        )
    # Encoder keys are checked after the leftovers so that a foreign file gets the more telling message first.
    _check_shapes(expected, norm_shapes, "encoder", source)

    if mae_like:
        decoder = _classify_mae(mae_like, norm_shapes, geometry, source)
        return KeyLayout(geometry, "mae", global_pool, encoder_keys, tuple(mae_like), decoder=decoder)
    if head_like:
        layout, classes, in_features = _classify_head(head_like, norm_shapes, geometry.embed_dim, source)
        return KeyLayout(
            geometry, layout, global_pool, encoder_keys, tuple(head_like), num_classes=classes,
            head_in_features=in_features,
        )
    return KeyLayout(geometry, "encoder", global_pool, encoder_keys, ())


# ---------------------------------------------------------------------------------------------------- reading
def _open_error(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"cannot read {path} as a safetensors checkpoint ({type(exc).__name__}: {exc}). The file is truncated or "
        "corrupt (an interrupted download?) or not a safetensors file; delete it and download it again "
        "(`msfm models download NAME`) or re-export it."
    )


def _check_path(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist or is not a file; check the path")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path} looks like a pickle checkpoint ({path.suffix}); only .safetensors files are read (pickles can "
            "run code). Convert it once in a trusted session: "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')."
        )


def json_metadata(metadata: Mapping[str, str], key: str, path: Path, fix: str = "re-export the file") -> dict[str, Any]:
    """The JSON object stored under ``key`` in a safetensors file's metadata (``{}`` when absent).

    Shared by the SMARTIES and the DINO / X-STARS readers.

    Raises:
        CheckpointError: The value is not valid JSON, or not a JSON object (the message ends with ``fix``).
    """
    raw = metadata.get(key)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the '{key}' metadata is not valid JSON ({exc}); {fix}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the '{key}' metadata must be a JSON object, got {type(value).__name__}")
    return value


def _config(metadata: Mapping[str, str], path: Path) -> dict[str, Any]:
    return json_metadata(metadata, CONFIG_METADATA_KEY, path,
                         "re-export the file with engine.models.save_encoder")


def _read_header(path: Path) -> tuple[dict[str, Shape], dict[str, str], dict[str, str]]:
    """Shapes, dtypes and metadata of a safetensors file, without reading tensor data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:  # header only: no torch needed
            metadata = dict(handle.metadata() or {})
            shapes, dtypes = {}, {}
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                shapes[key] = tuple(tensor_slice.get_shape())
                dtypes[key] = tensor_slice.get_dtype()
    except Exception as exc:  # safetensors raises its own SafetensorError (not exported stably) or OSError
        raise _open_error(path, exc) from exc
    return shapes, dtypes, metadata


def inspect_checkpoint(path: PathLike) -> tuple[KeyLayout, dict[str, Any]]:
    """Classify a checkpoint from its header only (fast: no tensor is read).

    Args:
        path: ``.safetensors`` file.

    Returns:
        ``(key_layout, config)``: the classification and the JSON ``config`` metadata (``{}`` when absent).

    Raises:
        engine.errors.CheckpointError: Unreadable file or keys that break the strict rule.
    """
    path = Path(path)
    _check_path(path)
    shapes, _, metadata = _read_header(path)
    return classify_keys(shapes, str(path)), _config(metadata, path)


def _all_finite(tensor: torch.Tensor) -> bool:
    """True when no value is NaN/±Inf (min/max propagate NaN; ~10× faster than ``isfinite(t).all()``)."""
    import torch

    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read a SMARTIES checkpoint strictly (docs/smarties.md §1.6–§1.7).

    Floating tensors are returned as float32 (fp16/bf16/fp64 files are cast); integer tensors (a BatchNorm's
    ``num_batches_tracked``) keep their dtype.

    Args:
        path: ``.safetensors`` file; its metadata may hold a JSON ``config`` (``num_heads``, ``averaging``, ...).

    Returns:
        The classified checkpoint with the encoder state under :class:`~engine.models.smarties.SmartiesEncoder`
        names.

    Raises:
        engine.errors.CheckpointError: Missing/unreadable/truncated file, a pickle file, missing or mis-shaped
            encoder keys, unexpected keys, non-floating or non-finite encoder tensors, or invalid ``config``
            metadata. The message lists the offending keys.
    """
    import torch
    from safetensors import safe_open

    path = Path(path)
    _check_path(path)
    shapes, dtypes, metadata = _read_header(path)
    layout = classify_keys(shapes, str(path))
    config = _config(metadata, path)

    not_float = [k for k in layout.encoder_keys if dtypes[k] not in _FLOAT_DTYPES]
    if not_float:
        raise CheckpointError(
            f"{path}: encoder tensors must be floating point, got {', '.join(f'{k} ({dtypes[k]})' for k in not_float)}"
        )
    cast = sorted({dtypes[k] for k in layout.encoder_keys} - {"F32"})
    if cast:
        logger.info("%s: casting %s encoder tensors to float32", path, "/".join(cast))

    encoder_state: dict[str, torch.Tensor] = {}
    extra_state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for file_key, model_key in layout.encoder_keys.items():
                encoder_state[model_key] = handle.get_tensor(file_key).to(torch.float32).contiguous()
            for key in layout.extra_keys:
                tensor = handle.get_tensor(key)
                extra_state[key] = tensor.to(torch.float32) if tensor.is_floating_point() else tensor
    except Exception as exc:
        raise _open_error(path, exc) from exc

    non_finite = [k for k, t in encoder_state.items() if not _all_finite(t)]
    if non_finite:
        raise CheckpointError(
            f"{path}: encoder tensors contain NaN or Inf: {_fmt_keys(non_finite)}. The training run diverged or "
            "the file is damaged; use another checkpoint."
        )
    logger.debug("read %s: layout=%s geometry=%s", path, layout.layout, layout.geometry)
    return Checkpoint(
        path=path,
        geometry=layout.geometry,
        layout=layout.layout,
        encoder_state=encoder_state,
        extra_state=extra_state,
        config=config,
        metadata=metadata,
        global_pool=layout.global_pool,
        decoder=layout.decoder,
        num_classes=layout.num_classes,
    )


# ---------------------------------------------------------------------------------------------------- writing
def _geometry_config(model: Any) -> dict[str, Any]:
    names = ("embed_dim", "depth", "num_heads", "patch_size", "grid_size", "averaging")
    out: dict[str, Any] = {n: getattr(model, n) for n in names if hasattr(model, n)}
    if hasattr(model, "mlp_hidden") and hasattr(model, "embed_dim"):
        out["mlp_ratio"] = model.mlp_hidden / model.embed_dim
    return out


def save_encoder(
    model: nn.Module, path: PathLike, config: Optional[Mapping[str, Any]] = None, dtype: Optional[torch.dtype] = None
) -> Path:
    """Write a model's state dict as a ``.safetensors`` checkpoint with a JSON ``config`` metadata entry.

    The file is written to a temporary file in the destination folder, read back with the strict rule
    (:func:`inspect_checkpoint`), then moved into place (:func:`engine.atomic.atomic_output`), so readers never see a
    partial file. Floating tensors are stored as ``dtype`` (float32 by default; float16 halves a release file and is
    read back as float32 by :func:`read_checkpoint`); integer tensors keep their dtype.

    Args:
        model: A :class:`~engine.models.smarties.SmartiesEncoder` (optionally with a known head / MAE decoder under
            the key names of docs/smarties.md §1.6–§1.7).
        path: Destination ``.safetensors`` file; parent folders are created.
        config: Extra JSON-serialisable settings to record (training recipe, data, ...). The model's geometry
            (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``grid_size``, ``mlp_ratio``, ``averaging``)
            is added automatically; a contradicting value raises.
        dtype: Storage dtype of floating tensors (``torch.float32`` when None, ``torch.float16`` or
            ``torch.bfloat16``).

    Returns:
        The written path.

    Raises:
        ValueError: ``config`` is not JSON-serialisable or contradicts the model's geometry.
        engine.errors.CheckpointError: The state dict does not satisfy the strict key rule (nothing is written).
    """
    import torch
    from safetensors.torch import save_file

    dtype = dtype or torch.float32
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end with .safetensors, got {path}")
    merged: dict[str, Any] = dict(config or {})
    for key, value in _geometry_config(model).items():
        if key in merged and merged[key] != value:
            raise ValueError(f"config[{key!r}] = {merged[key]!r} contradicts the model ({key} = {value!r})")
        merged[key] = value
    try:
        config_json = json.dumps(merged, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config must be JSON-serialisable: {exc}") from exc

    state = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, sidecars=()) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", CONFIG_METADATA_KEY: config_json})
        layout, _ = inspect_checkpoint(tmp)
    logger.info("wrote %s (%s, %d tensors, geometry %s)", path, layout.layout, len(state), layout.geometry)
    return path
