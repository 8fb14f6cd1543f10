"""A SMARTIES encoder exported to ONNX (:func:`engine.models.export_encoder`), run with ONNX Runtime — no torch.

:class:`OnnxEncoder` implements :class:`engine.models.Encoder` on numpy arrays (``encode(x, bands, output="cls" |
"grid")``). The band list becomes the graph's ``band_mix`` input (:func:`engine.spectral.band_mix`), so one file
serves every band combination. Execution providers: CUDA when requested and available, else CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union, cast

import numpy as np

from ..spectral import Averaging, BandSpec, ChannelNorm, Projection, band_mix, projection_for
from .onnx_session import ONNX_FORMAT, open_session, run_session
from .protocol import Provenance

__all__ = ("OnnxEncoder",)


class OnnxEncoder:
    """An exported SMARTIES encoder in an ONNX Runtime session (``backend = "onnx"``).

    Args:
        path: The ``.onnx`` file written by :func:`engine.export.export_encoder`.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA execution provider when onnxruntime has it).
        threads: Intra-op threads (None: onnxruntime's default).

    Raises:
        engine.errors.CheckpointError: Not an msfm encoder export (its metadata say what it is).
    """

    backend = "onnx"
    band_families: Optional[tuple[str, ...]] = None
    input_norm: Optional[ChannelNorm] = None
    grid_output = "last-block patch tokens before the final norm"

    def __init__(self, path: Union[str, Path], device: str = "auto", threads: Optional[int] = None) -> None:
        self.session, self.metadata, self.device = open_session(path, ONNX_FORMAT, device, threads)
        self.embed_dim = int(self.metadata["msfm_embed_dim"])
        self.patch_size = int(self.metadata["msfm_patch_size"])
        self.tile_size_px = int(self.metadata["msfm_tile_size_px"])
        self.depth = int(self.metadata["msfm_depth"])
        self.averaging: Averaging = self.metadata.get("msfm_averaging", "linear")
        self.provenance = Provenance(Path(path), self.metadata.get("msfm_encoder"), "onnx")

    def projections(self, bands: Sequence[BandSpec]) -> list[Projection]:
        """Resolve band specs (range keys, indices, Projections) with the exported encoder's averaging mode."""
        return [projection_for(b, self.averaging) for b in bands]

    def encode(self, x: Any, bands: Sequence[BandSpec], output: Literal["cls", "grid", "tokens"] = "cls") -> np.ndarray:
        """Encode normalised tiles.

        Args:
            x: ``[B, C, H, W]`` float32 (numpy, or anything ``np.asarray`` takes), H = W = the exported tile size.
            bands: C band specs in channel order.
            output: ``"cls"`` → ``[B, D]``; ``"grid"`` → ``[B, D, H/p, W/p]`` (before the final norm).

        Raises:
            ValueError: Wrong shape, band count or output.
        """
        if output not in ("cls", "grid"):
            raise ValueError(f"output must be 'cls' or 'grid' for an ONNX encoder, got {output!r}")
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if x.ndim != 4 or x.shape[2:] != (self.tile_size_px, self.tile_size_px):
            raise ValueError(f"x must be [B, C, {self.tile_size_px}, {self.tile_size_px}] (the exported tile size), "
                             f"got {x.shape}")
        if len(bands) != x.shape[1]:
            raise ValueError(f"got {x.shape[1]} image channels but {len(bands)} band specs; give one spec per channel")
        cls, grid = run_session(self.session, {"image": x, "band_mix": band_mix(self.projections(bands))})
        return cls if output == "cls" else grid

    def __repr__(self) -> str:
        path = cast(Path, self.provenance.weights_path)  # always the .onnx file for an ONNX Runtime encoder
        return (f"OnnxEncoder({path.name}, D={self.embed_dim}, depth {self.depth}, "
                f"tile {self.tile_size_px} px, {self.device})")
