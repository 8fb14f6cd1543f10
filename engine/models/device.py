"""Compute devices: which torch device a run uses, with how many CPU threads.

ONNX Runtime models choose their execution provider when they are loaded (:func:`engine.models.open_session`).
"""

from __future__ import annotations

from ..errors import DeviceError
from ..settings import InferenceSettings

__all__ = ("select_device", "torch_device")


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
