"""Numeric precision of a run — fp32, bf16 or int8 — chosen from the processor and the device, and said why.

Three paths run the same encoder (docs/performance.md has the measured speed and agreement of each):

- ``fp32``: torch in float32, the reference;
- ``bf16``: torch with a bfloat16 copy of the encoder fed bfloat16 tiles (:func:`at_precision`) — matrix
  products accumulate in float32 inside the kernels, LayerNorm and softmax compute in float32 and round their
  outputs to bf16, and the embeddings come back as float32. Casting the weights once, rather than at every call as
  :func:`torch.autocast` does, is 1.2× faster on an AMX CPU (bench/precision.py). Fast where the hardware has
  bf16 matrix instructions: Intel AMX (``amx_bf16``), AVX-512 BF16 (``avx512_bf16``: Intel Cooper Lake+, AMD Zen
  4+), Arm BF16 (Apple M2+, Graviton 3+), and CUDA GPUs of compute capability ≥ 8.0. Elsewhere torch emulates it,
  slower than fp32;
- ``int8``: ONNX Runtime with int8 weights (dynamic quantization, :func:`engine.models.onnx_twin`); uses VNNI /
  AVX2 integer dot products on any x86-64 CPU of the last decade.

``auto`` takes bf16 where it is native (CUDA with bf16, a CPU with one of the flags above) and fp32 otherwise; it never
picks int8, which changes the backend and agrees less closely with fp32 (cosine ≥ 0.99 instead of ≥ 0.999): on a CPU
without bf16, ``int8`` is the fast path to ask for. An ONNX Runtime model runs at the precision it was exported with.

This module imports torch only inside the functions that need it.
"""

from __future__ import annotations

import copy
import functools
import itertools
import platform
import subprocess  # nosec B404: one fixed sysctl query on macOS
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Optional

from ..errors import DeviceError, SettingsError
from ..settings import PRECISIONS

if TYPE_CHECKING:
    import torch

__all__ = ("PRECISIONS", "Precision", "PrecisionChoice", "at_precision", "choose_precision", "cpu_features",
           "native_bf16", "onnx_precision")

#: What a run runs at.
Precision = Literal["fp32", "bf16", "int8"]
#: CPU flags that mean native bf16 matrix instructions, with the name a user knows them by (first match wins).
_BF16_FLAGS = (("amx_bf16", "AMX bf16 tiles"), ("avx512_bf16", "AVX-512 BF16"), ("bf16", "Arm BF16"))
#: Export precisions (``msfm_quantization`` weights) as run precisions.
_ONNX_PRECISIONS = {"float32": "fp32", "int8": "int8", "float16": "fp16"}


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why.

    Attributes:
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"`` (``"fp16"`` for a float16 ONNX export on CUDA).
        reason: One sentence for the log and the output's metadata, e.g. ``"auto: the CPU has AVX-512 BF16"``.
    """

    precision: str
    reason: str

    def __str__(self) -> str:
        return f"{self.precision} ({self.reason})"


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """This machine's CPU feature flags, lower case (``{"avx2", "avx512_bf16", "amx_bf16", …}``).

    Linux: the ``flags`` (x86) or ``Features`` (Arm) line of ``/proc/cpuinfo``. macOS on Apple silicon:
    ``sysctl hw.optional.arm.FEAT_BF16`` gives ``"bf16"``. Elsewhere (Windows): empty, so ``auto`` stays at fp32.
    """
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                return frozenset(value.lower().split())
        return frozenset()
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["/usr/sbin/sysctl", "-n", "hw.optional.arm.FEAT_BF16"],  # nosec B603
                                 capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        except OSError:
            return frozenset()
        return frozenset({"bf16"}) if out == "1" else frozenset()
    return frozenset()


def native_bf16(features: Iterable[str]) -> Optional[str]:
    """The name of the CPU's native bf16 matrix instructions among ``features``, or None.

    Args:
        features: CPU flags (:func:`cpu_features`).

    Returns:
        ``"AMX bf16 tiles"``, ``"AVX-512 BF16"``, ``"Arm BF16"`` or None.
    """
    flags = set(features)
    return next((name for flag, name in _BF16_FLAGS if flag in flags), None)


def _cuda_bf16(device: str) -> bool:
    import torch

    index = torch.device(device).index
    major, _ = torch.cuda.get_device_capability(index if index is not None else 0)
    return major >= 8  # bf16 tensor cores: Ampere (8.x) and later


def choose_precision(requested: str, device: str, *, onnx: Optional[str] = None,
                     features: Optional[Iterable[str]] = None) -> PrecisionChoice:
    """Resolve a requested precision for a device and say why.

    Args:
        requested: One of :data:`PRECISIONS`.
        device: The resolved device: a torch device string (``"cpu"``, ``"cuda:0"``, ``"mps"``) or an ONNX Runtime
            model's ``"cpu"`` / ``"cuda"``.
        onnx: For an ONNX Runtime model, the precision it was exported with (``"float32"``, ``"int8"``,
            ``"float16"``; :func:`onnx_precision`); None for a torch model.
        features: CPU flags (default :func:`cpu_features`); tests pass other processors' flags.

    Returns:
        The :class:`PrecisionChoice`. ``auto`` → bf16 on CUDA of compute capability ≥ 8.0 and on a CPU with native
        bf16 (:func:`native_bf16`), else fp32; an ONNX model runs as exported.

    Raises:
        SettingsError: An unknown precision; an ONNX model asked for another precision than its export's (the
            message names the export command); int8 on a GPU (ONNX Runtime's int8 kernels are the CPU's).
        DeviceError: bf16 asked for on a CUDA GPU without bf16.
    """
    if requested not in PRECISIONS:
        raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    kind = device.split(":")[0]
    if onnx is not None:
        exported = _ONNX_PRECISIONS.get(onnx, onnx)
        if requested in ("auto", exported):
            return PrecisionChoice(exported, f"the ONNX model was exported at {onnx}")
        raise SettingsError(
            f"the ONNX model holds {onnx} weights, so it cannot run at {requested}; use precision auto, or run the "
            f"checkpoint with backend torch (precision {requested} then makes what it needs), or export it again: "
            f"msfm export-onnx OUT.onnx --model MODEL{' --int8' if requested == 'int8' else ''}"
        )
    if requested == "int8":
        if kind != "cpu":
            raise SettingsError(f"int8 runs on the CPU (ONNX Runtime's int8 kernels); device {device!r} was asked for. "
                                "Use precision bf16 (or auto) on a GPU, or device cpu")
        return PrecisionChoice("int8", "asked for: ONNX Runtime with int8 weights")
    if requested == "fp32":
        return PrecisionChoice("fp32", "asked for")
    if kind == "cuda":
        native = _cuda_bf16(device)
        if requested == "bf16" and not native:
            raise DeviceError(f"{device} has no bf16 tensor cores (compute capability < 8.0); use precision fp32")
        if native:
            return PrecisionChoice("bf16", "asked for" if requested == "bf16" else
                                   "auto: the GPU has bf16 tensor cores")
        return PrecisionChoice("fp32", "auto: the GPU has no bf16 tensor cores")
    if kind != "cpu":  # mps and others: fp32 unless asked
        return PrecisionChoice("bf16", "asked for") if requested == "bf16" else PrecisionChoice(
            "fp32", f"auto: fp32 on {kind}")
    native_name = native_bf16(cpu_features() if features is None else features)
    if requested == "bf16":
        return PrecisionChoice("bf16", f"asked for; the CPU has {native_name}" if native_name else
                               "asked for; this CPU has no native bf16, torch emulates it (slower than fp32)")
    if native_name:
        return PrecisionChoice("bf16", f"auto: the CPU has {native_name}")
    return PrecisionChoice("fp32", "auto: this CPU has no native bf16 (precision int8 runs 2.5–3× faster through ONNX "
                                   "Runtime, with cosine ≥ 0.99 to fp32)")


def onnx_precision(metadata: dict) -> str:
    """The precision an export was written at, from its metadata (``msfm_quantization``): float32, int8 or float16."""
    made = metadata.get("msfm_quantization")
    return str(made.get("weights", "float32")) if isinstance(made, dict) else "float32"


def at_precision(module: Any, precision: str) -> tuple[Any, "torch.dtype"]:
    """The module to run at a precision, and the dtype its inputs take.

    Args:
        module: A torch module (an encoder), in eval mode; it is never modified.
        precision: A :class:`PrecisionChoice`'s precision (``"fp32"`` or ``"bf16"``; int8 runs an ONNX Runtime twin).

    Returns:
        ``(module, torch.float32)`` for fp32; for bf16 a bfloat16 copy of the module (weights and buffers; the
        original keeps its float32 weights, so it stays usable at fp32) and ``torch.bfloat16``. Cast the module's
        outputs back with ``.float()``.
    """
    import torch

    if precision != "bf16":
        return module, torch.float32
    # the copy takes bf16 casts of the floating-point tensors directly (no float32 clone on the way)
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            half = tensor.detach().to(torch.bfloat16)
            memo[id(tensor)] = torch.nn.Parameter(half, requires_grad=False) if isinstance(
                tensor, torch.nn.Parameter) else half
    return copy.deepcopy(module, memo), torch.bfloat16
