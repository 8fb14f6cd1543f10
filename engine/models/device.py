"""Compute devices: which torch device a run uses, with how many CPU threads.

ONNX Runtime models choose their execution provider when they are loaded (:func:`engine.models.open_session`).
"""

from __future__ import annotations

import logging
from typing import Optional

from ..errors import DeviceError
from ..settings import CPU_BATCH_SIZE, InferenceSettings

__all__ = ("select_device", "tile_bytes", "tiles_per_batch", "torch_device")

log = logging.getLogger(__name__)

#: Share of the GPU's free memory an automatic batch may plan for (the rest: allocator slack, cuDNN/cuBLAS
#: workspaces, other processes; the estimate of :func:`tile_bytes` is an upper bound of activations, not of those).
GPU_MEMORY_SHARE = 0.5
#: Largest automatic batch: a batch is the unit of cancelling and of progress, and 128 ViT-B tiles already fill a
#: GPU's matrix units many times over (not yet measured on a GPU: no device was lent while this was written).
MAX_AUTO_BATCH = 128


def select_device(device: str) -> str:
    """Resolve ``"auto"`` to ``"cuda"`` when torch sees a GPU, else ``"cpu"``; check explicit CUDA requests.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or another torch device string (``"mps"``).

    Returns:
        A torch device string.

    Raises:
        DeviceError: CUDA was asked for but torch sees no CUDA GPU (the message names the torch build).
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r} was requested but torch sees no CUDA GPU (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}); use device='cpu' or install a CUDA build of torch"
        )
    return device


def torch_device(settings: InferenceSettings) -> str:
    """The torch device of ``settings.device`` (:func:`select_device`), after applying ``settings.threads``.

    What every torch pass (embeddings, head fitting, segmentation) starts with.

    Raises:
        DeviceError: As :func:`select_device`.
    """
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    return select_device(settings.device)


def tile_bytes(tile_size_px: int, bands: int, patch_size: int, embed_dim: int, value_bytes: int) -> int:
    """Upper bound of the device memory one tile takes during a forward pass of a ViT encoder, in bytes.

    Counted (inference mode, where a block's intermediates are freed before the next block runs): the input tile in
    float32 and at the run's precision, its patches flattened for the spectral projection, the largest block's live
    tensors (residual, norm, q/k/v, attention output, the 4·D MLP hidden layer before and after the GELU: 14 · T · D
    values), the attention scores and softmax of D/64 heads (2 · h · T² values; a fused attention kernel needs none,
    so this is an upper bound) and the float32 patch-grid output.

    Args:
        tile_size_px: Tile side in model-input pixels.
        bands: Bands of the tile (C).
        patch_size: Patch side in pixels (p); T = (tile_size_px / p)² tokens.
        embed_dim: Token dimension D.
        value_bytes: Bytes per activation value (4 for fp32, 2 for bf16).

    Returns:
        Bytes per tile.
    """
    tokens = (tile_size_px // patch_size) ** 2
    heads = max(1, embed_dim // 64)
    pixels = bands * tile_size_px ** 2
    inputs = pixels * (4 + 2 * value_bytes)
    block = (14 * tokens * embed_dim + 2 * heads * tokens ** 2) * value_bytes
    return inputs + block + tokens * embed_dim * 4


def tiles_per_batch(settings: InferenceSettings, device: str = "cpu", *, bands: Optional[int] = None,
                    patch_size: int = 16, embed_dim: Optional[int] = None, value_bytes: int = 4) -> int:
    """Tiles per forward pass: ``settings.batch_size`` when given; otherwise chosen for ``device``.

    Automatic (``batch_size=None``): :data:`engine.settings.CPU_BATCH_SIZE` (8) on a CPU, where larger batches run no
    faster (docs/performance.md); on CUDA, as many tiles as fit in :data:`GPU_MEMORY_SHARE` of the GPU's free memory
    (``torch.cuda.mem_get_info``) by :func:`tile_bytes`, between 1 and :data:`MAX_AUTO_BATCH`. The choice is logged.
    The embedding passes (embed, cluster, similarity) give the forward pass's geometry; segmentation and head fitting,
    whose heads add memory per pixel, give none and take 8 tiles.

    Args:
        settings: The run's settings.
        device: The resolved torch device (:func:`torch_device`), or ``"onnxruntime …"`` (then the CPU default).
        bands: Bands per tile (C); None: no memory sizing (8 tiles).
        patch_size: Patch side in pixels.
        embed_dim: Token dimension D; None: no memory sizing (8 tiles).
        value_bytes: Bytes per activation value (4 for fp32, 2 for bf16).

    Returns:
        Batch size ≥ 1.
    """
    if settings.batch_size is not None:
        return settings.batch_size
    if not device.startswith("cuda") or bands is None or embed_dim is None:
        return CPU_BATCH_SIZE
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    per_tile = tile_bytes(settings.tile_size_px, bands, patch_size, embed_dim, value_bytes)
    size = int(min(MAX_AUTO_BATCH, max(1, GPU_MEMORY_SHARE * free // per_tile)))
    log.info("batch size %d (auto: %.1f GiB free on %s, ≤ %.0f MiB per %d px tile)", size, free / 2 ** 30, device,
             per_tile / 2 ** 20, settings.tile_size_px)
    return size
