"""Export a SMARTIES encoder to ONNX with the spectral projection inside the graph, plus its metadata.

The graph (:class:`EncoderGraph`) takes two inputs:

- ``image`` ``[B, C, H, W]`` float32, normalised as for :meth:`SmartiesEncoder.encode` (spec smarties.md §3–§4);
- ``band_mix`` ``[C, 17]`` float32, each band's weights over the 17 base projections times ``12 / C``
  (:func:`engine.spectrum.band_mix`).

The 17 stacked base projections are constants of the graph; the bands are mixed into the 17 base channels by
``band_mix`` inside it (:class:`ExportPatchEmbed`), so one file serves every band combination (any C, any mix of
sensors). The exported copy of the encoder writes its attention as plain MatMul/Softmax (:class:`ExportAttention`);
both choices are the eager encoder's function to float rounding and make the int8 copy faster. Outputs: ``cls`` ``[B, D]`` (after the final
norm) and ``grid`` ``[B, D, H/16, W/16]`` (last block, before the norm, as ``encode(output="grid")``). Batch and band
count are dynamic; the tile size is fixed at export (224 uses the stored 14 × 14 position table).

Metadata (ONNX ``metadata_props``, read back by :func:`read_metadata`): Deepness-compatible keys where they apply
(``model_type`` = ``Recognition``, an embedding model; ``resolution`` in cm/px when a sensor preset is given;
``tile_size``; ``tiles_overlap`` in percent; ``standardization_mean``/``standardization_std`` of the preset's bands after
the p1/p99 stretch), and ours under ``msfm_*``: format, encoder name, SHA-256 of the source checkpoint, D, depth,
attention heads, patch size, tile size, the 17 base range keys in projection order, the sensor presets (band keys and central
wavelengths), the inputs and outputs.

:func:`export_segmenter` exports an encoder with its segmentation head (:mod:`engine.heads`) as one graph: ``image``
``[B, C, H, W]`` (the head's bands, its band mix a constant) → ``probabilities`` ``[B, K, H, W]``; the head's card goes
into the metadata (``msfm_head_card``) with Deepness's ``model_type`` = ``Segmentor`` and ``class_names``.
:func:`quantize` (int8, CPU) and :func:`to_float16` (fp16, CUDA) derive smaller copies of either export.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .models.onnx_encoder import ONNX_FORMAT, read_metadata
from .models.onnx_segmenter import SEGMENTER_FORMAT
from .spectrum import NUM_BASE_PROJECTIONS, band_mix, spectral_ranges

__all__ = ("PRECISIONS", "EncoderGraph", "SegmenterGraph", "export", "export_encoder", "export_segmenter", "quantize",
           "read_metadata", "to_float16")

#: Precisions of :func:`export`: float32 as exported, int8 (:func:`quantize`, CPU), float16 (:func:`to_float16`, CUDA).
PRECISIONS = ("float32", "int8", "float16")

OPSET = 17


class ExportAttention(nn.Module):
    """The encoder's attention written out for export: separate q/k/v projections (slices of the fused ``qkv``
    weights) and ``softmax(q·kᵀ / √d_h)·v`` as plain MatMul/Div/Softmax. Same function as
    :class:`engine.models.smarties.Attention` (which calls ``scaled_dot_product_attention``), to float rounding; its
    int8 copy runs 11 % faster than that of the exported ``scaled_dot_product_attention`` (docs/onnx.md).
    """

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        d = attn.qkv.in_features
        self.num_heads, self.head_dim, self.dim = attn.num_heads, d // attn.num_heads, d
        self.q, self.k, self.v = (nn.Linear(d, d) for _ in range(3))
        with torch.no_grad():
            for i, linear in enumerate((self.q, self.k, self.v)):
                linear.weight.copy_(attn.qkv.weight[i * d : (i + 1) * d])
                linear.bias.copy_(attn.qkv.bias[i * d : (i + 1) * d])
        self.proj = attn.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = x.size()[:-1] + (self.num_heads, self.head_dim)
        q = self.q(x).view(heads).permute(0, 2, 1, 3)
        k = self.k(x).view(heads).permute(0, 2, 3, 1)
        v = self.v(x).view(heads).permute(0, 2, 1, 3)
        probs = torch.softmax(torch.matmul(q, k) / math.sqrt(self.head_dim), dim=-1)
        out = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return self.proj(out.view(out.size()[:-2] + (self.dim,)))


class ExportPatchEmbed(nn.Module):
    """The spectral projection of :meth:`SmartiesEncoder.embed_mix` written as matrix products for export:
    ``image [B, C, H, W]`` and ``band_mix [C, 17]`` → patch tokens ``[B, h·w, D]``.

    The bands are mixed into the 17 base-projection channels (``[B, H, W, C] @ [C, 17]``), cut into p × p patches and
    projected by one ``[p²·17, D]`` MatMul with the stacked base weights — the convolution of ``embed_mix`` as a
    MatMul, so that int8 quantization (:func:`quantize`) covers it too. Fixed tile size (``cells`` patches a side).
    """

    def __init__(self, encoder: nn.Module, cells: int) -> None:
        super().__init__()
        weight, bias = encoder.spectrum_projection.stacked()  # [17, D, p²], [17, D]
        self.patch_size, self.cells, self.embed_dim = encoder.patch_size, cells, encoder.embed_dim
        self.weight = nn.Parameter(weight.detach().permute(2, 0, 1).reshape(-1, encoder.embed_dim).clone())
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, image: torch.Tensor, band_mix: torch.Tensor) -> torch.Tensor:
        n, p = self.cells, self.patch_size
        mixed = torch.matmul(image.permute(0, 2, 3, 1), band_mix)  # [B, H, W, 17]
        patches = mixed.reshape(-1, n, p, n, p, NUM_BASE_PROJECTIONS).permute(0, 1, 3, 2, 4, 5)
        tokens = torch.matmul(patches.reshape(-1, n * n, p * p * NUM_BASE_PROJECTIONS), self.weight)
        return tokens + (band_mix.sum(0)[:, None] * self.bias).sum(0)  # not a MatMul: the bias stays float32


def _export_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of the encoder with :class:`ExportAttention` in every block."""
    copied = copy.deepcopy(model).float().cpu().eval()
    for block in copied.blocks:
        block.attn = ExportAttention(block.attn)
    return copied


class EncoderGraph(nn.Module):
    """``(image [B, C, H, W], band_mix [C, 17])`` → ``(cls [B, D], grid [B, D, h, w])`` for a fixed tile size."""

    def __init__(self, encoder: nn.Module, tile_size_px: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.cells = tile_size_px // encoder.patch_size
        self.embed = ExportPatchEmbed(encoder, self.cells)

    def forward(self, image: torch.Tensor, band_mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc, n = self.encoder, self.cells
        out = enc.forward_tokens(self.embed(image, band_mix), n, n)
        grid = out[:, 1:].transpose(1, 2).reshape(-1, enc.embed_dim, n, n)
        return enc.norm(out[:, 0]), grid


class SegmenterGraph(nn.Module):
    """``image [B, C, H, W]`` → class ``probabilities [B, K, H, W]``: the encoder's block grids for the head's fixed
    bands (:meth:`SmartiesEncoder.encode_blocks`), the head's pixel logits, softmax over classes."""

    def __init__(self, encoder: nn.Module, head: nn.Module, projections: list[Any], tile_size_px: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.register_buffer("mix", torch.from_numpy(band_mix(projections)))
        self.tile_size_px = tile_size_px
        self.cells = tile_size_px // encoder.patch_size
        self.embed = ExportPatchEmbed(encoder, self.cells)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # static token-grid sizes (not read from the image's traced shape), so the head's pooling exports
        grids = self.encoder.token_grids(self.embed(image, self.mix), self.cells, self.cells, self.head.blocks)
        return torch.softmax(self.head.pixel_logits(grids, (self.tile_size_px, self.tile_size_px)), dim=1)


def _base_keys() -> list[str]:
    """Range key of each base projection index 0..16."""
    keys = {r.projection_idx: r.key for r in spectral_ranges() if 0 <= r.projection_idx < NUM_BASE_PROJECTIONS}
    return [keys[i] for i in range(NUM_BASE_PROJECTIONS)]


def _model_metadata(model: Any, tile_size_px: int) -> dict[str, Any]:
    """Keys shared by both exports: Deepness's tile keys and the encoder's ``msfm_*`` description."""
    from .models.registry import file_sha256

    weights = getattr(model, "weights_path", None)
    return {
        "tile_size": tile_size_px,
        "tiles_overlap": 50,
        "msfm_encoder": getattr(model, "model_name", None) or (Path(weights).name if weights else "unknown"),
        "msfm_source_sha256": file_sha256(weights) if weights and Path(weights).is_file() else "unknown",
        "msfm_embed_dim": model.embed_dim,
        "msfm_depth": len(model.blocks),
        "msfm_num_heads": model.blocks[0].attn.num_heads,
        "msfm_patch_size": model.patch_size,
        "msfm_tile_size_px": tile_size_px,
        "msfm_averaging": model.averaging,
    }


def _encoder_metadata(model: Any, tile_size_px: int, sensor: Optional[str]) -> dict[str, Any]:
    from .sensors import get_sensor, list_sensors

    meta: dict[str, Any] = {
        "model_type": "Recognition",
        "msfm_format": ONNX_FORMAT,
        **_model_metadata(model, tile_size_px),
        "msfm_base_projections": _base_keys(),
        "msfm_inputs": {"image": "[B, C, H, W] float32, normalised (engine.normalize)",
                        "band_mix": "[C, 17] float32, engine.spectrum.band_mix(projections)"},
        "msfm_outputs": {"cls": "[B, D] CLS token after the final norm",
                         "grid": "[B, D, H/p, W/p] last-block patch tokens before the final norm"},
        "msfm_presets": {s.id: {"bands": [b.key for b in s.bands], "wavelengths_nm": [b.wavelength_nm for b in s.bands]}
                         for s in list_sensors()},
    }
    if sensor is not None:
        preset = get_sensor(sensor)
        meta["msfm_sensor"] = sensor
        if preset.gsd_m:
            meta["resolution"] = round(preset.gsd_m * 100 / preset.default_scale, 3)
        stats = [b.stats for b in preset.bands]
        if all(s is not None for s in stats):
            meta["standardization_mean"] = [s.mean for s in stats]
            meta["standardization_std"] = [s.std for s in stats]
    return meta


def _segmenter_metadata(model: Any, card: Any, tile_size_px: int) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(c.index): c.name for c in card.classes},
        "msfm_format": SEGMENTER_FORMAT,
        **_model_metadata(model, tile_size_px),
        "msfm_head_card": json.loads(card.to_json()),
        "msfm_inputs": {"image": "[B, C, H, W] float32, the card's bands in order, normalised with the card's stats"},
        "msfm_outputs": {"probabilities": "[B, K, H, W] float32, softmax over the card's classes"},
    }
    if card.gsd_m:
        meta["resolution"] = round(card.gsd_m * 100 / card.scale, 3)
    if card.stats:
        meta["standardization_mean"] = [s[2] for s in card.stats]
        meta["standardization_std"] = [s[3] for s in card.stats]
    return meta


def _export(graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, metadata: dict[str, Any], opset: int,
            input_names: list[str], output_names: list[str], dynamic_axes: dict[str, dict[int, str]]) -> Path:
    """Trace ``graph`` to ``path`` (temporary name, renamed when complete), add ``metadata`` (JSON values), check."""
    import onnx

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part-{os.getpid()}.onnx")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch 2.13 marks the TorchScript exporter (dynamo=False) deprecated in favour of the dynamo one, which
            # needs onnxscript (not a dependency of ours); the TorchScript exporter handles these graphs. Tracer
            # warnings say sizes become constants: the tile size is fixed at export by design.
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning))
            torch.onnx.export(graph, inputs, str(tmp), dynamo=False, opset_version=opset, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic_axes)
        proto = onnx.load(str(tmp))
        _set_metadata(proto, metadata)
        proto.producer_name = "msfm"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _set_metadata(proto: Any, metadata: dict[str, Any]) -> None:
    """Add or replace ``metadata_props`` entries (non-string values as JSON)."""
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for p in kept:
        proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))


def _check_tile(model: Any, tile_size_px: int) -> None:
    if not hasattr(model, "embed_mix"):
        raise ValueError(f"{type(model).__name__} has no spectral projection; only SMARTIES encoders are exported")
    if tile_size_px % model.patch_size:
        raise ValueError(f"tile_size_px {tile_size_px} is not a multiple of the patch size {model.patch_size}")


def export_encoder(model: Any, path: Union[str, Path], *, tile_size_px: int = 224, sensor: Optional[str] = None,
                   opset: int = OPSET) -> Path:
    """Export a SMARTIES encoder to ONNX (spectral projection in the graph), check it, embed the metadata.

    Args:
        model: A :class:`engine.models.smarties.SmartiesEncoder` (from :func:`engine.load_model`).
        path: Destination ``.onnx`` file, written to a temporary name and renamed when complete.
        tile_size_px: Tile side fixed in the graph (multiple of the patch size).
        sensor: Optional sensor preset id recorded with Deepness's ``resolution`` and standardisation keys.
        opset: ONNX opset.

    Returns:
        ``path``.

    Raises:
        ValueError: A model without a spectral projection (the X-STARS/DINO ViT), or a bad tile size.
        onnx.checker.ValidationError: The exported graph is invalid.
    """
    _check_tile(model, tile_size_px)
    graph = EncoderGraph(_export_copy(model), tile_size_px).eval()
    inputs = (torch.zeros(2, 3, tile_size_px, tile_size_px), torch.zeros(3, NUM_BASE_PROJECTIONS))
    return _export(graph, inputs, Path(path), _encoder_metadata(model, tile_size_px, sensor), opset,
                   ["image", "band_mix"], ["cls", "grid"],
                   {"image": {0: "batch", 1: "bands"}, "band_mix": {0: "bands"}, "cls": {0: "batch"},
                    "grid": {0: "batch"}})


def export_segmenter(head: Any, model: Any, path: Union[str, Path], *, tile_size_px: Optional[int] = None,
                     opset: int = OPSET) -> Path:
    """Export an encoder and its segmentation head as one ONNX graph (:class:`SegmenterGraph`), card in the metadata.

    The head's bands are fixed (their band mix is a constant of the graph), so the graph has one input, ``image``
    ``[B, C, T, T]`` (normalised with the card's statistics, C = the card's bands in order), and one output,
    ``probabilities`` ``[B, K, T, T]``; batch is dynamic. :class:`engine.models.onnx_segmenter.OnnxSegmenter` runs it
    and :func:`engine.segmentation.segment_raster` takes the file in place of a head.

    Args:
        head: A :class:`engine.heads.SegmentationHead` (:func:`engine.heads.load_head`).
        model: The encoder it was trained on (its fine-tuned copy, if any: :func:`engine.segmentation.encoder_source`).
        path: Destination ``.onnx`` (temporary name, renamed when complete).
        tile_size_px: Tile side fixed in the graph (default: the card's training chip size).
        opset: ONNX opset.

    Returns:
        ``path``.

    Raises:
        ValueError: Not a SMARTIES encoder, or a bad tile size.
        engine.errors.InputRasterError: ``model`` is not the encoder the card names (width, depth).
        engine.errors.CheckpointError: A card whose band projections cannot be rebuilt.
    """
    from .head_card import card_projections
    from .segmentation import check_encoder

    card = head.card
    tile_size_px = tile_size_px or card.tile_size_px
    _check_tile(model, tile_size_px)
    check_encoder(head, model)
    projections = card_projections(card, model.averaging)
    graph = SegmenterGraph(_export_copy(model), copy.deepcopy(head).float().cpu().eval(), projections, tile_size_px)
    inputs = (torch.zeros(2, len(projections), tile_size_px, tile_size_px),)
    return _export(graph, inputs, Path(path), _segmenter_metadata(model, card, tile_size_px), opset, ["image"],
                   ["probabilities"], {"image": {0: "batch"}, "probabilities": {0: "batch"}})


def export(model: Any, path: Union[str, Path], *, head: Any = None, precision: str = "float32",
           tile_size_px: Optional[int] = None, sensor: Optional[str] = None) -> Path:
    """Export an encoder (:func:`export_encoder`) or, with ``head``, an encoder and its head (:func:`export_segmenter`)
    at a precision of :data:`PRECISIONS`. An int8/float16 copy is derived from a float32 export in a temporary file
    beside ``path``, removed afterwards; nothing is left at ``path`` unless the whole export succeeds.

    Args:
        model: The SMARTIES encoder (for a head: the one it was trained on, :func:`engine.segmentation.encoder_source`).
        path: Destination ``.onnx``.
        head: A :class:`engine.heads.SegmentationHead`, or None for the encoder alone.
        precision: ``"float32"``, ``"int8"`` or ``"float16"``.
        tile_size_px: Tile side fixed in the graph (default 224, or the head's training chip size).
        sensor: Sensor preset recorded in an encoder's metadata (ignored with a head: its card has the bands).

    Raises:
        ValueError: Unknown precision, or as the export functions.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    path = Path(path)
    raw = path if precision == "float32" else path.with_name(f".{path.stem}.float32-{os.getpid()}.onnx")
    try:
        if head is not None:
            export_segmenter(head, model, raw, tile_size_px=tile_size_px)
        else:
            export_encoder(model, raw, tile_size_px=tile_size_px or 224, sensor=sensor)
        if precision != "float32":
            (quantize if precision == "int8" else to_float16)(raw, path)
    finally:
        if raw != path:
            raw.unlink(missing_ok=True)
    return path


def quantize(source: Union[str, Path], path: Union[str, Path], *, per_channel: bool = True) -> Path:
    """Write an int8 copy of an export (encoder or segmenter) for the CPU; ``path`` may be ``source``.

    ONNX Runtime dynamic quantization: the weights of every MatMul/Gemm with a constant weight — the patch embedding
    (:class:`ExportPatchEmbed`), q/k/v, the attention output and both MLP layers — become int8 per output channel;
    activations are quantized on the fly per batch, so no calibration set is needed. Attention's activation ×
    activation products, softmax, LayerNorm, GELU and the heads' convolutions stay float32. The metadata are kept and
    ``msfm_quantization`` is added. Speed and agreement against float32: ``bench/onnx_speed.py``.

    Measured alternatives, slower on an AVX-512 VNNI CPU (docs/onnx.md): ONNX Runtime's transformer fusions
    (``Attention``/``QAttention``, ``SkipLayerNormalization``, ``BiasGelu``) before quantizing, and static
    quantization (QDQ or QOperator, every MatMul, calibrated activation ranges).

    Args:
        source: A float32 export (:func:`export_encoder`, :func:`export_segmenter`).
        path: Destination ``.onnx`` (temporary name, renamed when complete).
        per_channel: Per-output-channel weight scales (more accurate; default) instead of one per tensor.

    Returns:
        ``path``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def convert(tmp: Path) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)  # onnxruntime logs a pre-processing hint on the root logger
            try:
                quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel,
                                 op_types_to_quantize=["MatMul", "Gemm"])
            finally:
                logging.disable(logging.NOTSET)
        return {"method": "onnxruntime dynamic", "weights": "int8", "per_channel": per_channel,
                "ops": ["MatMul", "Gemm"]}

    return _derive(source, path, convert)


def to_float16(source: Union[str, Path], path: Union[str, Path]) -> Path:
    """Write a float16 copy of an export for the CUDA execution provider (half the size; tensor cores).

    Weights, activations, inputs and outputs become float16 (``onnxruntime.transformers.float16``); the engine's ONNX
    models feed each input in the dtype the graph declares and return float32. ONNX Runtime's CPU provider lacks float16 kernels for much of the graph and runs it
    slowly or not at all: use :func:`quantize` for the CPU. ``msfm_quantization`` says so.

    Args:
        source: A float32 export.
        path: Destination ``.onnx`` (temporary name, renamed when complete); may be ``source``.

    Returns:
        ``path``.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    def convert(tmp: Path) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # float16 inputs/outputs: keep_io_types=True leaves its input casts out of topological order (invalid)
            half = convert_float_to_float16(onnx.load(str(source)), keep_io_types=False)
        onnx.save(half, str(tmp))
        return {"method": "onnxruntime.transformers.float16", "weights": "float16", "activations": "float16"}

    return _derive(source, path, convert)


def _derive(source: Union[str, Path], path: Union[str, Path], convert: Any) -> Path:
    """Write ``convert(tmp)``'s model to ``path`` (atomically) with ``source``'s metadata plus ``msfm_quantization``."""
    import onnx

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part-{os.getpid()}.onnx")
    try:
        how = convert(tmp)
        proto = onnx.load(str(tmp))
        _set_metadata(proto, {**read_metadata(source), "msfm_quantization": how})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
