"""SMARTIES encoders as ONNX graphs, with the spectral projection inside the graph (torch + onnx).

The graph (:class:`EncoderGraph`) takes two inputs:

- ``image`` ``[B, C, H, W]`` float32, normalised as for :meth:`SmartiesEncoder.encode` (docs/smarties.md §3–§4);
- ``band_mix`` ``[C, 17]`` float32, each band's weights over the 17 base projections times ``12 / C``
  (:func:`engine.spectral.band_mix`).

The 17 stacked base projections are constants of the graph; the bands are mixed into the 17 base channels by
``band_mix`` inside it (:class:`ExportPatchEmbed`), so one file serves every band combination (any C, any mix of
sensors). The exported copy of the encoder writes its attention as plain MatMul/Softmax (:class:`ExportAttention`);
both choices are the eager encoder's function to float rounding and make the int8 copy faster (docs/onnx.md).
Outputs: ``cls`` ``[B, D]`` (after the final norm) and ``grid`` ``[B, D, H/16, W/16]`` (last block, before the norm,
as ``encode(output="grid")``). Batch and band count are dynamic; the tile size is fixed at export (224 uses the
stored 14 × 14 position table).

Metadata (ONNX ``metadata_props``, read back by :func:`engine.models.read_metadata`): Deepness-compatible keys where
they apply (``model_type`` = ``Recognition``, an embedding model; ``resolution`` in cm/px when a sensor preset is
given; ``tile_size``; ``tiles_overlap`` in percent; ``standardization_mean``/``standardization_std`` of the preset's
bands after the p1/p99 stretch), and ours under ``msfm_*``: format, encoder name, SHA-256 of the source checkpoint, D,
depth, attention heads, patch size, tile size, the 17 base range keys in projection order, the sensor presets (band
keys and central wavelengths), the inputs and outputs.

The encoder graph lives with the models, not in :mod:`engine.export`, because :func:`engine.models.load_model` with
``backend="onnx"`` converts a checkpoint on first use. :func:`write_graph` is the one tracing + metadata + check step
of every export (encoders here, segmenters in :mod:`engine.export`).
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Any, Optional, Union, cast

import torch
from torch import nn

from ..atomic import atomic_output
from ..errors import ModelMismatchError, SettingsError
from ..provenance import file_sha256
from ..spectral import NUM_BASE_PROJECTIONS, get_sensor, list_sensors, spectral_ranges
from .onnx_session import ONNX_FORMAT, set_metadata
from .protocol import Encoder
from .smarties import SmartiesEncoder
from .vit import Attention

__all__ = (
    "EncoderGraph",
    "ExportAttention",
    "ExportPatchEmbed",
    "OPSET",
    "export_copy",
    "export_encoder",
    "model_metadata",
    "set_metadata",
    "write_graph",
)

#: ONNX opset of every export.
OPSET = 17


class ExportAttention(nn.Module):
    """The encoder's attention written out for export as plain MatMul/Div/Softmax.

    Separate q/k/v projections (slices of the fused ``qkv`` weights) and ``softmax(q·kᵀ / √d_h)·v``. Same function as
    :class:`engine.models.vit.Attention` (which calls ``scaled_dot_product_attention``), to float rounding; its int8
    copy runs 11 % faster than that of the exported ``scaled_dot_product_attention`` (docs/onnx.md).

    Args:
        attn: The :class:`engine.models.vit.Attention` to rewrite (its q/k/v weights are copied, ``proj`` is reused).
    """

    def __init__(self, attn: Attention) -> None:
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
        """``x``: [B, N, D] → [B, N, D]."""
        heads = x.size()[:-1] + (self.num_heads, self.head_dim)
        q = self.q(x).view(heads).permute(0, 2, 1, 3)
        k = self.k(x).view(heads).permute(0, 2, 3, 1)
        v = self.v(x).view(heads).permute(0, 2, 1, 3)
        probs = torch.softmax(torch.matmul(q, k) / math.sqrt(self.head_dim), dim=-1)
        out = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return self.proj(out.view(out.size()[:-2] + (self.dim,)))


class ExportPatchEmbed(nn.Module):
    """The spectral projection of :meth:`SmartiesEncoder.embed_mix` written as matrix products for export.

    ``image [B, C, H, W]`` and ``band_mix [C, 17]`` → patch tokens ``[B, h·w, D]``.

    The bands are mixed into the 17 base-projection channels (``[B, H, W, C] @ [C, 17]``), cut into p × p patches and
    projected by one ``[p²·17, D]`` MatMul with the stacked base weights. ``embed_mix`` folds the mix into the
    weights instead; here the weights stay a constant initializer, so that int8 quantization
    (:func:`engine.export.quantize`) covers the MatMul too.

    Args:
        encoder: The :class:`engine.models.SmartiesEncoder` (its base projections are copied).
        cells: Patches per tile side (the tile size is fixed in the graph).
    """

    def __init__(self, encoder: SmartiesEncoder, cells: int) -> None:
        super().__init__()
        weight, bias = encoder.spectrum_projection.stacked()  # [17, D, p²], [17, D]
        self.patch_size, self.cells, self.embed_dim = encoder.patch_size, cells, encoder.embed_dim
        self.weight = nn.Parameter(weight.detach().permute(2, 0, 1).reshape(-1, encoder.embed_dim).clone())
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, image: torch.Tensor, band_mix: torch.Tensor) -> torch.Tensor:
        """``image [B, C, H, W]``, ``band_mix [C, 17]`` → patch tokens ``[B, h·w, D]`` (H = W = cells · p)."""
        n, p = self.cells, self.patch_size
        mixed = torch.matmul(image.permute(0, 2, 3, 1), band_mix)  # [B, H, W, 17]
        patches = mixed.reshape(-1, n, p, n, p, NUM_BASE_PROJECTIONS).permute(0, 1, 3, 2, 4, 5)
        tokens = torch.matmul(patches.reshape(-1, n * n, p * p * NUM_BASE_PROJECTIONS), self.weight)
        return tokens + (band_mix.sum(0)[:, None] * self.bias).sum(0)  # not a MatMul: the bias stays float32


def export_copy(model: SmartiesEncoder) -> SmartiesEncoder:
    """A float32 CPU copy of the encoder with :class:`ExportAttention` in every block."""
    copied = copy.deepcopy(model).float().cpu().eval()
    for block in copied.blocks:
        block.attn = ExportAttention(cast(Attention, block.attn))  # nn.ModuleList is not generic: blocks are Blocks
    return copied


class EncoderGraph(nn.Module):
    """``(image [B, C, H, W], band_mix [C, 17])`` → ``(cls [B, D], grid [B, D, h, w])`` for a fixed tile size.

    Args:
        encoder: The encoder to export (:func:`export_copy`).
        tile_size_px: Tile side fixed in the graph (model-input pixels, a multiple of the patch size).
    """

    def __init__(self, encoder: SmartiesEncoder, tile_size_px: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.cells = tile_size_px // encoder.patch_size
        self.embed = ExportPatchEmbed(encoder, self.cells)

    def forward(self, image: torch.Tensor, band_mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised CLS token ``[B, D]`` and the patch-token grid ``[B, D, h, w]`` (before the final norm)."""
        enc, n = self.encoder, self.cells
        out = enc.forward_tokens(self.embed(image, band_mix), n, n)
        grid = out[:, 1:].transpose(1, 2).reshape(-1, enc.embed_dim, n, n)
        return enc.norm(out[:, 0]), grid


def _base_keys() -> list[str]:
    """Range key of each base projection index 0..16."""
    keys = {r.projection_idx: r.key for r in spectral_ranges() if 0 <= r.projection_idx < NUM_BASE_PROJECTIONS}
    return [keys[i] for i in range(NUM_BASE_PROJECTIONS)]


def model_metadata(model: SmartiesEncoder, tile_size_px: int) -> dict[str, Any]:
    """Keys shared by both exports: Deepness's tile keys and the encoder's ``msfm_*`` description."""
    weights = model.provenance.weights_path
    return {
        "tile_size": tile_size_px,
        "tiles_overlap": 50,
        "msfm_encoder": model.provenance.model_name or (Path(weights).name if weights else "unknown"),
        "msfm_source_sha256": file_sha256(weights) if weights and Path(weights).is_file() else "unknown",
        "msfm_embed_dim": model.embed_dim,
        "msfm_depth": len(model.blocks),
        "msfm_num_heads": model.num_heads,
        "msfm_patch_size": model.patch_size,
        "msfm_tile_size_px": tile_size_px,
        "msfm_averaging": model.averaging,
    }


def _encoder_metadata(model: SmartiesEncoder, tile_size_px: int, sensor: Optional[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "model_type": "Recognition",
        "msfm_format": ONNX_FORMAT,
        **model_metadata(model, tile_size_px),
        "msfm_base_projections": _base_keys(),
        "msfm_inputs": {"image": "[B, C, H, W] float32, normalised (engine.spectral.normalize)",
                        "band_mix": "[C, 17] float32, engine.spectral.band_mix(projections)"},
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
        stats = [b.stats for b in preset.bands if b.stats is not None]
        if len(stats) == len(preset.bands):
            meta["standardization_mean"] = [s.mean for s in stats]
            meta["standardization_std"] = [s.std for s in stats]
    return meta


def write_graph(graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: Union[str, Path], metadata: dict[str, Any],
                opset: int, input_names: list[str], output_names: list[str],
                dynamic_axes: dict[str, dict[int, str]]) -> Path:
    """Trace ``graph`` to ``path`` with the TorchScript exporter, add ``metadata`` (JSON values), check, atomically.

    Args:
        graph: The module to export (eval mode, float32, CPU).
        inputs: Example inputs (their shapes fix every non-dynamic axis).
        path: Destination ``.onnx``.
        metadata: ``metadata_props`` entries (:func:`engine.models.set_metadata`).
        opset: ONNX opset.
        input_names: Graph input names, in ``inputs`` order.
        output_names: Graph output names.
        dynamic_axes: ``{name: {axis: label}}`` of the dynamic axes (batch, bands).

    Returns:
        ``path``.

    Raises:
        onnx.checker.ValidationError: The exported graph is invalid.
    """
    import onnx

    with atomic_output(path, sidecars=()) as tmp, torch.no_grad(), warnings.catch_warnings():
        # torch 2.13 marks the TorchScript exporter (dynamo=False) deprecated in favour of the dynamo one, which
        # needs onnxscript (not a dependency of ours); the TorchScript exporter handles these graphs. Tracer
        # warnings say sizes become constants: the tile size is fixed at export by design.
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning))
        torch.onnx.export(graph, inputs, str(tmp), dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes)
        proto = onnx.load(str(tmp))
        set_metadata(proto, metadata)
        proto.producer_name = "msfm"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return Path(path)


def check_exportable(model: Encoder, tile_size_px: int) -> SmartiesEncoder:
    """Check that ``model`` can be exported with ``tile_size_px``-pixel tiles.

    Returns:
        ``model``, known to be a :class:`SmartiesEncoder`.

    Raises:
        engine.errors.ModelMismatchError: Not a SMARTIES encoder (the X-STARS/DINO ViT has no spectral projection).
        engine.errors.SettingsError: A tile size that is not a multiple of the patch size.
    """
    if not isinstance(model, SmartiesEncoder):
        raise ModelMismatchError(
            f"{type(model).__name__} has no spectral projection; only SMARTIES encoders are exported"
        )
    if tile_size_px % model.patch_size:
        raise SettingsError(
            f"tile_size_px {tile_size_px} is not a multiple of the patch size {model.patch_size}; use e.g. "
            f"{max(1, round(tile_size_px / model.patch_size)) * model.patch_size}"
        )
    return model


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
    encoder = check_exportable(model, tile_size_px)
    graph = EncoderGraph(export_copy(encoder), tile_size_px).eval()
    inputs = (torch.zeros(2, 3, tile_size_px, tile_size_px), torch.zeros(3, NUM_BASE_PROJECTIONS))
    return write_graph(graph, inputs, Path(path), _encoder_metadata(model, tile_size_px, sensor), opset,
                   ["image", "band_mix"], ["cls", "grid"],
                   {"image": {0: "batch", 1: "bands"}, "band_mix": {0: "bands"}, "cls": {0: "batch"},
                    "grid": {0: "batch"}})
