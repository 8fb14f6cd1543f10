"""The ONNX files msfm writes: their kinds, their metadata, and ONNX Runtime sessions on them (numpy only).

Two kinds exist, told apart by the ``msfm_format`` metadata entry: an encoder (:data:`ONNX_FORMAT`,
:class:`engine.models.OnnxEncoder`) and an encoder with its segmentation head (:data:`SEGMENTER_FORMAT`,
:class:`engine.segmentation.OnnxSegmenter`). :func:`open_session` opens either with the right execution provider and
explains when a file of the other kind is given; :func:`check_onnx_model` checks a loaded one against the run's
settings. Writing them: :mod:`engine.models.onnx_graph` and :mod:`engine.export`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Protocol, Union

import numpy as np

from ..errors import CheckpointError, DeviceError, ModelMismatchError
from ..settings import InferenceSettings
from .protocol import Provenance

__all__ = (
    "ONNX_FORMAT",
    "SEGMENTER_FORMAT",
    "check_onnx_model",
    "open_session",
    "read_metadata",
    "run_session",
    "set_metadata",
)

#: ``msfm_format`` of our exported encoders (:mod:`engine.export`).
ONNX_FORMAT = "msfm-smarties-encoder-onnx/1"
#: ``msfm_format`` of exported segmenters, encoder + head (:class:`engine.segmentation.OnnxSegmenter`).
SEGMENTER_FORMAT = "msfm-segmenter-onnx/1"
#: One kind of export given where the other is expected: ``{(expected, found): (what it is, the fix)}``.
_WRONG_KIND: dict[tuple[str, Optional[str]], tuple[str, str]] = {
    (SEGMENTER_FORMAT, ONNX_FORMAT): (
        "an exported encoder, not a segmenter", "it has no segmentation head. Export the head with its encoder "
        "(msfm export-onnx seg.onnx --head HEAD.safetensors, or 'Export model to ONNX' with the head file) and use "
        "that file"),
    (ONNX_FORMAT, SEGMENTER_FORMAT): (
        "an exported segmenter (encoder + head), not an encoder", "use it as the head of msfm segment / 'Segment "
        "with a head', or export the encoder alone"),
}


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
        DeviceError: CUDA requested but this onnxruntime has no CUDA provider (install ``onnxruntime-gpu``).
        CheckpointError: The file is not an export of the expected kind.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_cuda = device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available)
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise DeviceError(f"device {device!r} was requested but onnxruntime has no CUDA provider "
                              f"({available}); install onnxruntime-gpu or use device='cpu'")
    cuda_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    providers: list[Any] = ([("CUDAExecutionProvider", {"device_id": cuda_id})] if want_cuda else [])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=providers + ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes (InvalidProtobuf, Fail…), not OSError/ValueError
        if not Path(path).is_file():
            raise
        raise CheckpointError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "re-export it (`msfm export-onnx`, or Export to ONNX in QGIS) or download it again"
        ) from exc
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
    """Run ``session`` on float32 ``feeds``; outputs come back as float32.

    Each feed is cast to the dtype its graph input declares (a float16 export, :func:`engine.export.to_float16`, takes
    float16).

    Args:
        session: An ``onnxruntime.InferenceSession``.
        feeds: Input name → float32 array.

    Returns:
        The session's outputs, in graph order, as float32 arrays.
    """
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


class OnnxModel(Protocol):
    """What :func:`check_onnx_model` reads of an ONNX Runtime runner (encoder or segmenter)."""

    tile_size_px: int
    device: str
    provenance: Provenance


def check_onnx_model(model: OnnxModel, settings: InferenceSettings) -> None:
    """Check that an ONNX Runtime model (encoder or segmenter) fits the run's settings.

    The tile size is fixed in the graph at export, and the execution provider is chosen when the file is loaded.

    Args:
        model: An :class:`engine.models.OnnxEncoder` or :class:`engine.segmentation.OnnxSegmenter`.
        settings: The run's settings (``tile_size_px``, ``device``).

    Raises:
        ModelMismatchError: The model was exported for another tile size, or loaded for another device.
    """
    name = model.provenance.weights_path.name if model.provenance.weights_path else "the ONNX model"
    if settings.tile_size_px != model.tile_size_px:
        raise ModelMismatchError(
            f"{name} was exported for {model.tile_size_px}-px tiles; use tile_size_px={model.tile_size_px} or export "
            f"it again with --tile-size-px {settings.tile_size_px}"
        )
    wanted = settings.device.split(":")[0]
    if wanted != "auto" and wanted != model.device:
        raise ModelMismatchError(f"{name} was loaded on {model.device} but device {settings.device!r} was asked "
                                 f"for; load it with device={settings.device!r}")


def set_metadata(proto: Any, metadata: dict[str, Any]) -> None:
    """Add or replace ``metadata_props`` entries (non-string values as JSON)."""
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for p in kept:
        proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
