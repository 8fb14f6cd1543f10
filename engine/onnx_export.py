"""Export a SMARTIES encoder to ONNX with the spectral projection inside the graph, plus its metadata.

The graph (:class:`EncoderGraph`) takes two inputs:

- ``image`` ``[B, C, H, W]`` float32, normalised as for :meth:`SmartiesEncoder.encode` (spec smarties.md §3–§4);
- ``band_mix`` ``[C, 17]`` float32, each band's weights over the 17 base projections times ``12 / C``
  (:func:`engine.spectrum.band_mix`).

The 17 stacked base projections are constants of the graph; the per-band kernel is ``band_mix @ W`` computed inside it,
so one file serves every band combination (any C, any mix of sensors). Outputs: ``cls`` ``[B, D]`` (after the final
norm) and ``grid`` ``[B, D, H/16, W/16]`` (last block, before the norm, as ``encode(output="grid")``). Batch and band
count are dynamic; the tile size is fixed at export (224 uses the stored 14 × 14 position table).

Metadata (ONNX ``metadata_props``, read back by :func:`read_metadata`): Deepness-compatible keys where they apply
(``model_type`` = ``Recognition``, an embedding model; ``resolution`` in cm/px when a sensor preset is given;
``tile_size``; ``tiles_overlap`` in percent; ``standardization_mean``/``standardization_std`` of the preset's bands after
the p1/p99 stretch), and ours under ``msfm_*``: format, encoder name, SHA-256 of the source checkpoint, D, depth,
patch size, tile size, the 17 base range keys in projection order, the sensor presets (band keys and central
wavelengths), the inputs and outputs.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .models.onnx_encoder import ONNX_FORMAT, read_metadata
from .spectrum import NUM_BASE_PROJECTIONS, spectral_ranges

__all__ = ("EncoderGraph", "export_encoder", "quantize_encoder", "read_metadata")

OPSET = 17


class EncoderGraph(nn.Module):
    """``(image [B, C, H, W], band_mix [C, 17])`` → ``(cls [B, D], grid [B, D, h, w])`` for a fixed tile size."""

    def __init__(self, encoder: nn.Module, tile_size_px: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.cells = tile_size_px // encoder.patch_size

    def forward(self, image: torch.Tensor, band_mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc, n = self.encoder, self.cells
        out = enc.forward_tokens(enc.embed_mix(image, band_mix), n, n)
        grid = out[:, 1:].transpose(1, 2).reshape(-1, enc.embed_dim, n, n)
        return enc.norm(out[:, 0]), grid


def _base_keys() -> list[str]:
    """Range key of each base projection index 0..16."""
    keys = {r.projection_idx: r.key for r in spectral_ranges() if 0 <= r.projection_idx < NUM_BASE_PROJECTIONS}
    return [keys[i] for i in range(NUM_BASE_PROJECTIONS)]


def _metadata(model: Any, tile_size_px: int, sensor: Optional[str]) -> dict[str, str]:
    from .models.registry import file_sha256
    from .sensors import get_sensor, list_sensors

    weights = getattr(model, "weights_path", None)
    meta: dict[str, Any] = {
        "model_type": "Recognition",
        "tile_size": tile_size_px,
        "tiles_overlap": 50,
        "msfm_format": ONNX_FORMAT,
        "msfm_encoder": getattr(model, "model_name", None) or (Path(weights).name if weights else "unknown"),
        "msfm_source_sha256": file_sha256(weights) if weights and Path(weights).is_file() else "unknown",
        "msfm_embed_dim": model.embed_dim,
        "msfm_depth": len(model.blocks),
        "msfm_patch_size": model.patch_size,
        "msfm_tile_size_px": tile_size_px,
        "msfm_averaging": model.averaging,
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
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


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
    import onnx

    if not hasattr(model, "embed_mix"):
        raise ValueError(f"{type(model).__name__} has no spectral projection; only SMARTIES encoders are exported")
    if tile_size_px % model.patch_size:
        raise ValueError(f"tile_size_px {tile_size_px} is not a multiple of the patch size {model.patch_size}")
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part-{os.getpid()}.onnx")
    graph = EncoderGraph(model.float().cpu().eval(), tile_size_px).eval()
    image = torch.zeros(2, 3, tile_size_px, tile_size_px)
    mix = torch.zeros(3, NUM_BASE_PROJECTIONS)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch 2.13 marks the TorchScript exporter (dynamo=False) deprecated in favour of the dynamo one, which
            # needs onnxscript (not a dependency of ours); the TorchScript exporter handles this graph.
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            torch.onnx.export(
                graph, (image, mix), str(tmp), dynamo=False, opset_version=opset,
                input_names=["image", "band_mix"], output_names=["cls", "grid"],
                dynamic_axes={"image": {0: "batch", 1: "bands"}, "band_mix": {0: "bands"},
                              "cls": {0: "batch"}, "grid": {0: "batch"}},
            )
        proto = onnx.load(str(tmp))
        for key, value in _metadata(model, tile_size_px, sensor).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "msfm"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def quantize_encoder(source: Union[str, Path], path: Union[str, Path], *, per_channel: bool = True) -> Path:
    """Write an int8 copy of an exported encoder: ONNX Runtime dynamic quantization (weights of MatMul/Gemm int8,
    per output channel; activations quantized on the fly per batch; LayerNorm, softmax, GELU stay float32).

    The metadata are kept and ``msfm_quantization`` is added. Accuracy against the float32 graph is measured by
    ``bench/onnx_speed.py`` (cosine of embeddings and k-means agreement on a real scene).

    Args:
        source: A float32 export (:func:`export_encoder`).
        path: Destination ``.onnx`` (temporary name, renamed when complete).
        per_channel: Per-output-channel weight scales (more accurate; default) instead of one per tensor.

    Returns:
        ``path``.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part-{os.getpid()}.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)  # onnxruntime logs a pre-processing hint on the root logger
            try:
                quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel,
                                 op_types_to_quantize=["MatMul", "Gemm"])
            finally:
                logging.disable(logging.NOTSET)
        proto = onnx.load(str(tmp))
        kept = {p.key for p in proto.metadata_props}
        for key, value in read_metadata(source).items():
            if key not in kept:
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        entry = proto.metadata_props.add()
        entry.key = "msfm_quantization"
        entry.value = json.dumps({"method": "onnxruntime dynamic", "weights": "int8", "per_channel": per_channel,
                                  "ops": ["MatMul", "Gemm"]})
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
