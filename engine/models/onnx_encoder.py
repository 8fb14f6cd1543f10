"""A SMARTIES encoder exported to ONNX (:mod:`engine.onnx_export`), run with ONNX Runtime — no torch needed.

:class:`OnnxEncoder` mirrors the part of :class:`engine.models.smarties.SmartiesEncoder` that inference uses
(``encode(x, bands, output="cls"|"grid")``, ``embed_dim``, ``patch_size``, ``averaging``, ``projections``) on numpy
arrays. The band list becomes the graph's ``band_mix`` input (:func:`engine.spectrum.band_mix`), so one file serves every
band combination. Execution providers: CUDA when requested and available, else CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import numpy as np

from ..errors import CheckpointError
from ..spectrum import Projection, band_mix, projection_for

__all__ = ("ONNX_FORMAT", "SEGMENTER_FORMAT", "OnnxEncoder", "open_session", "read_metadata", "run_session")

#: ``msfm_format`` of our exported encoders (:mod:`engine.onnx_export`).
ONNX_FORMAT = "msfm-smarties-encoder-onnx/1"
#: ``msfm_format`` of exported segmenters, encoder + head (:class:`engine.models.onnx_segmenter.OnnxSegmenter`).
SEGMENTER_FORMAT = "msfm-segmenter-onnx/1"
#: One kind of export given where the other is expected: ``{(expected, found): (what it is, the fix)}``.
_WRONG_KIND = {
    (SEGMENTER_FORMAT, ONNX_FORMAT): (
        "an exported encoder, not a segmenter", "it has no segmentation head. Export the head with its encoder "
        "(msfm export-onnx seg.onnx --head HEAD.safetensors, or 'Export model to ONNX' with the head file) and use "
        "that file"),
    (ONNX_FORMAT, SEGMENTER_FORMAT): (
        "an exported segmenter (encoder + head), not an encoder", "use it as the head of msfm segment / 'Segment "
        "with a head', or export the encoder alone"),
}


class OnnxEncoder:
    """An exported SMARTIES encoder in an ONNX Runtime session (``backend = "onnx"``).

    Args:
        path: The ``.onnx`` file written by :func:`engine.onnx_export.export_encoder`.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA execution provider when onnxruntime has it).
        threads: Intra-op threads (None: onnxruntime's default).

    Raises:
        engine.errors.CheckpointError: Not an msfm encoder export (its metadata say what it is).
    """

    backend = "onnx"

    def __init__(self, path: Union[str, Path], device: str = "auto", threads: int | None = None) -> None:
        self.weights_path = Path(path)
        self.session, self.metadata, self.device = open_session(path, ONNX_FORMAT, device, threads)
        self.embed_dim = int(self.metadata["msfm_embed_dim"])
        self.patch_size = int(self.metadata["msfm_patch_size"])
        self.tile_size_px = int(self.metadata["msfm_tile_size_px"])
        self.depth = int(self.metadata["msfm_depth"])
        self.averaging = self.metadata.get("msfm_averaging", "linear")
        self.model_name = self.metadata.get("msfm_encoder")

    def projections(self, bands: Sequence[Any]) -> list[Projection]:
        """Resolve band specs (range keys, indices, Projections) with the exported encoder's averaging mode."""
        return [projection_for(b, self.averaging) for b in bands]

    def encode(self, x: Any, bands: Sequence[Any], output: Literal["cls", "grid"] = "cls") -> np.ndarray:
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
        return (f"OnnxEncoder({self.weights_path.name}, D={self.embed_dim}, depth {self.depth}, "
                f"tile {self.tile_size_px} px, {self.device})")


def open_session(path: Union[str, Path], expected_format: str, device: str = "auto",
                 threads: int | None = None) -> tuple[Any, dict[str, Any], str]:
    """An ONNX Runtime session on one of our exports, its decoded metadata and the device it runs on.

    Args:
        path: The ``.onnx`` file.
        expected_format: The ``msfm_format`` the file must carry (:data:`ONNX_FORMAT`, or the segmenter's).
        device: ``"cpu"``, ``"cuda"``/``"cuda:N"`` (CUDA execution provider, CPU for the ops it lacks) or ``"auto"``
            (CUDA when this onnxruntime has it).
        threads: Intra-op threads (None: onnxruntime's default, one per core).

    Returns:
        ``(session, metadata, "cuda" | "cpu")``.

    Raises:
        engine.errors.CheckpointError: CUDA requested but this onnxruntime has no CUDA provider (install
            ``onnxruntime-gpu``), or the file is not an export of the expected kind.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_cuda = device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available)
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise CheckpointError(f"device {device!r} was requested but onnxruntime has no CUDA provider "
                              f"({available}); install onnxruntime-gpu or use device='cpu'")
    cuda_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    providers: list[Any] = ([("CUDAExecutionProvider", {"device_id": cuda_id})] if want_cuda else [])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=providers + ["CPUExecutionProvider"])
    metadata = _decode(session.get_modelmeta().custom_metadata_map)
    found = metadata.get("msfm_format")
    if found != expected_format:
        kind = f"msfm_format {found!r}, expected kind {expected_format!r}"
        if (expected_format, found) in _WRONG_KIND:
            what, fix = _WRONG_KIND[expected_format, found]
            raise CheckpointError(f"{path} is {what} ({kind}): {fix}")
        raise CheckpointError(f"{path} is not an msfm export of the expected kind ({kind})")
    return session, metadata, "cuda" if want_cuda else "cpu"


def run_session(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``session`` on float32 ``feeds``, each cast to the dtype its graph input declares (a float16 export,
    :func:`engine.onnx_export.to_float16`, takes float16); outputs come back as float32."""
    types = {i.name: i.type for i in session.get_inputs()}
    cast = {k: v.astype(np.float16) if types.get(k) == "tensor(float16)" else v for k, v in feeds.items()}
    return [np.asarray(out, dtype=np.float32) for out in session.run(None, cast)]


def read_metadata(path: Union[str, Path]) -> dict[str, Any]:
    """The metadata of an exported file (ONNX ``metadata_props``), JSON values decoded."""
    try:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except ImportError:  # onnxruntime alone (a QGIS install without onnx)
        import onnxruntime as ort

        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    return _decode(props)


def _decode(props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dict(props).items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
