"""Models: the encoders, strict checkpoint reading and writing, the registry, ONNX Runtime runners and devices.

Typical use::

    from engine.models import load_model
    model = load_model("smarties-vit-b")                     # registry name (Hub cache / download)
    model = load_model("weights/my-run.safetensors")         # or a file, or a folder with one .safetensors
    emb = model.encode(x, ["red_2", "green_2", "blue_1"])    # x: float32 [B, C, H, W], normalised
    xstars = load_model("checkpoint.pth")                    # a DINO / X-STARS checkpoint: the teacher ViT (RGB)
    onnx = load_model("encoder.onnx")                        # an export, run by ONNX Runtime without torch

Modules: :mod:`~engine.models.protocol` (the :class:`Encoder` contract, :class:`Provenance`),
:mod:`~engine.models.vit` (the transformer block both families share), :mod:`~engine.models.smarties` and
:mod:`~engine.models.dino` (the two torch families), :mod:`~engine.models.smarties_checkpoint` and
:mod:`~engine.models.dino_checkpoint` (their files, read strictly), :mod:`~engine.models.registry` (named models, the
Hub), :mod:`~engine.models.loading` (:func:`load_model`), :mod:`~engine.models.onnx_session`,
:mod:`~engine.models.onnx_encoder` and :mod:`~engine.models.onnx_graph` (ONNX files, their runner and their writer),
:mod:`~engine.models.device`, :mod:`~engine.models.precision` and :mod:`~engine.models.inputs` (devices, fp32 /
bf16 / int8, and from a raster to a model's input).

Names whose modules import torch are imported on first access, so this package (the registry, the ONNX runner,
:func:`load_model` of a ``.onnx`` file) works where torch is not installed.

Sources: docs/smarties.md §1; docs/xstars.md §1, §6.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr
from .device import select_device, tiles_per_batch, torch_device
from .dino_checkpoint import (
    DinoCheckpoint,
    build_dino_model,
    dino_checkpoint_info,
    dino_state_dict,
    is_dino_checkpoint,
    read_dino_checkpoint,
    safe_torch_load,
    save_dino_checkpoint,
)
from .inputs import model_statistics, open_reader
from .loading import load_model, onnx_cache_dir, onnx_twin
from .onnx_encoder import OnnxEncoder
from .onnx_session import (
    ONNX_FORMAT,
    SEGMENTER_FORMAT,
    check_onnx_model,
    open_session,
    read_metadata,
    run_session,
    set_metadata,
)
from .precision import PrecisionChoice, at_precision, choose_precision, cpu_features, native_bf16, onnx_precision
from .protocol import Backend, BlockEncoder, Encoder, InputSpec, Provenance
from .registry import ModelSpec, download_model, get_model_spec, list_models, model_info, resolve_weights
from .smarties_checkpoint import (
    Checkpoint,
    EncoderGeometry,
    inspect_checkpoint,
    read_checkpoint,
    save_encoder,
)

if TYPE_CHECKING:
    from .dino import ARCHS, DINOHead, DinoViT, MultiCropWrapper, dino_vit, xstars_norm
    from .onnx_graph import export_encoder
    from .smarties import SmartiesEncoder, init_from_scratch, sincos_pos_embed
    from .vit import Block, check_blocks, dense_blocks

#: Names that need torch, imported on first access.
_TORCH_NAMES = {
    **dict.fromkeys(("ARCHS", "DINOHead", "DinoViT", "MultiCropWrapper", "dino_vit", "xstars_norm"), ".dino"),
    "export_encoder": ".onnx_graph",
    **dict.fromkeys(("SmartiesEncoder", "init_from_scratch", "sincos_pos_embed"), ".smarties"),
    **dict.fromkeys(("Block", "check_blocks", "dense_blocks"), ".vit"),
}
__getattr__ = lazy_getattr(__name__, _TORCH_NAMES)

__all__ = (
    "ARCHS",
    "Backend",
    "Block",
    "BlockEncoder",
    "Checkpoint",
    "DINOHead",
    "DinoCheckpoint",
    "DinoViT",
    "Encoder",
    "EncoderGeometry",
    "InputSpec",
    "ModelSpec",
    "MultiCropWrapper",
    "ONNX_FORMAT",
    "OnnxEncoder",
    "PrecisionChoice",
    "Provenance",
    "SEGMENTER_FORMAT",
    "SmartiesEncoder",
    "at_precision",
    "build_dino_model",
    "check_blocks",
    "check_onnx_model",
    "choose_precision",
    "cpu_features",
    "dense_blocks",
    "dino_checkpoint_info",
    "dino_state_dict",
    "dino_vit",
    "download_model",
    "export_encoder",
    "get_model_spec",
    "init_from_scratch",
    "inspect_checkpoint",
    "is_dino_checkpoint",
    "list_models",
    "load_model",
    "model_info",
    "model_statistics",
    "native_bf16",
    "onnx_cache_dir",
    "onnx_precision",
    "onnx_twin",
    "open_reader",
    "open_session",
    "read_checkpoint",
    "read_dino_checkpoint",
    "read_metadata",
    "resolve_weights",
    "run_session",
    "safe_torch_load",
    "save_dino_checkpoint",
    "save_encoder",
    "select_device",
    "set_metadata",
    "sincos_pos_embed",
    "tiles_per_batch",
    "torch_device",
    "xstars_norm",
)
