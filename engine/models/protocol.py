"""The encoder contract: what every model the engine runs provides, and where a loaded model comes from.

Three families implement :class:`Encoder`: the SMARTIES encoder (:class:`~engine.models.SmartiesEncoder`, any bands),
the DINO / X-STARS ViT (:class:`~engine.models.DinoViT`, a fixed red-green-blue stem) and an exported SMARTIES encoder
run by ONNX Runtime (:class:`~engine.models.OnnxEncoder`, no torch). The engine's tasks (embeddings, clustering,
similarity, head fitting, segmentation) only use what this contract declares; a new encoder family is added by
implementing it (docs/architecture.md). :class:`BlockEncoder` adds the per-block grids dense heads read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Protocol, Sequence, runtime_checkable

from ..spectral import Averaging, BandSpec, ChannelNorm

__all__ = ("Backend", "BlockEncoder", "Encoder", "InputSpec", "Provenance")

#: What runs a model: torch (the checkpoint itself) or ONNX Runtime (an exported graph).
Backend = Literal["torch", "onnx"]


@dataclass(frozen=True)
class Provenance:
    """Where a loaded model comes from; recorded in embedding rasters, head cards and ONNX metadata.

    Attributes:
        weights_path: The file the weights were read from, or None for a model built in memory.
        model_name: The registry name it was loaded by (``"smarties-vit-b"``), or None.
        layout: What the file held: ``"encoder"``, ``"mae"``, ``"head:linear"``, ``"head:linprobe"``,
            ``"head:segmentation"`` (SMARTIES files, docs/smarties.md §1.6–§1.7), ``"dino:teacher"``,
            ``"dino:student"``, ``"dino:state"`` (DINO / X-STARS files, docs/xstars.md §6), ``"onnx"`` (an export), or
            ``"memory"`` (built in memory, never read from a file).
        global_pool: True when a SMARTIES file held ``fc_norm`` instead of ``norm`` (a global-pool fine-tune).
        aligned: The sensors a ``smarties-align`` run aligned the encoder on (its ``old_sensor``, ``new_sensor``,
            e.g. ``("s2", "s1")``, from the file's ``config`` metadata; docs/training.md), or ``()``.
    """

    weights_path: Optional[Path] = None
    model_name: Optional[str] = None
    layout: str = "memory"
    global_pool: bool = False
    aligned: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The registry name, else the weights path, else ``"unknown"``: how outputs name the model."""
        return self.model_name or (str(self.weights_path) if self.weights_path else "unknown")


@runtime_checkable
class InputSpec(Protocol):
    """What a model needs from a raster: how its bands are resolved, selected and normalised.

    Encoders implement it, and so does an exported segmenter (:class:`engine.segmentation.OnnxSegmenter`), which
    reads tiles the same way (:func:`engine.models.open_reader`).

    Attributes:
        averaging: Weights of the averaged spectral ranges (:mod:`engine.spectral.ranges`); the band resolver uses it.
        band_families: The range families of a fixed input stem, in channel order (``("red", "green", "blue")`` for
            the X-STARS ViT), or None for a model that takes any bands.
        input_norm: Per-channel mean/std the model expects after the [0, 1] stretch (fixed-stem models), or None to
            normalise with the bands' own statistics.
        patch_size: Patch side p in model-input pixels (16): tiles start on multiples of it.
        provenance: Where the model comes from.
    """

    averaging: Averaging
    band_families: Optional[tuple[str, ...]]
    input_norm: Optional[ChannelNorm]
    patch_size: int
    provenance: Provenance


@runtime_checkable
class Encoder(InputSpec, Protocol):
    """What every engine encoder provides (besides :class:`InputSpec`).

    Attributes:
        backend: ``"torch"`` or ``"onnx"``.
        embed_dim: Token dimension D.
        depth: Number of transformer blocks.
        grid_output: What ``encode(..., "grid")`` returns, in words (recorded in embedding rasters).
    """

    backend: str
    embed_dim: int
    depth: int
    grid_output: str

    def encode(self, x: Any, bands: Sequence[BandSpec], output: Literal["cls", "grid", "tokens"] = "cls") -> Any:
        """Encode normalised tiles ``x`` ``[B, C, H, W]`` float32 of the C ``bands``.

        Returns:
            ``"cls"`` → ``[B, D]``; ``"grid"`` → ``[B, D, H/p, W/p]`` patch tokens; ``"tokens"`` (torch encoders) →
            ``[B, 1 + (H/p)·(W/p), D]``. A torch tensor for torch encoders, a numpy array for ONNX Runtime ones.
        """
        ...


@runtime_checkable
class BlockEncoder(Encoder, Protocol):
    """An encoder that also gives the patch-token grids of chosen blocks (what segmentation heads read)."""

    def encode_blocks(self, x: Any, bands: Sequence[BandSpec], blocks: Sequence[int]) -> list[Any]:
        """One ``[B, D, H/p, W/p]`` grid per listed 0-based block (increasing), before the final norm."""
        ...
