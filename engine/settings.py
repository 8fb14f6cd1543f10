"""How a raster is tiled and encoded: :class:`InferenceSettings`, shared by every pass of a model over a raster.

Embeddings, clustering, similarity maps, head fitting and segmentation all read tiles through the same settings, so a
tile size, an overlap or a device means the same thing everywhere (vocabulary: docs/glossary.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional

from rasterio.enums import Resampling

from .errors import SettingsError

__all__ = ("BlendKind", "CPU_BATCH_SIZE", "InferenceSettings", "PRECISIONS")

#: Window of the overlap blending (:func:`engine.raster.window_weights`).
BlendKind = Literal["cosine", "linear"]
_BLENDS = ("cosine", "linear")
_DTYPES = ("float32", "float16", "int8")
#: Precisions a run may ask for (:mod:`engine.models.precision` resolves ``auto`` and says why).
PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: Device strings a run accepts (torch device names; ONNX Runtime maps cuda to its CUDA provider).
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
#: Largest tile side: attention memory and time grow with the square of the tokens per tile (1024 px = 4096 tokens).
_MAX_TILE_SIZE_PX = 1024
#: Tiles per forward pass on a CPU when the batch size is automatic: larger batches run no faster there
#: (docs/performance.md), and a batch is the unit of cancelling.
CPU_BATCH_SIZE = 8


@dataclass(frozen=True)
class InferenceSettings:
    """How a raster is tiled and encoded.

    Attributes:
        tile_size_px: Tile side in model-input pixels (after scaling); multiple of the patch size (checked when
            tiles are planned, :func:`engine.raster.tile_grid`, which knows the model's patch), at most 1024:
            attention memory grows with the square of the tokens per tile, and 1024 px are already 4096 tokens of
            16 px. 224 matches the checkpoints' 14×14 position grid; other sizes use a resized grid.
        overlap_px: Overlap between neighbouring tiles in model-input pixels; multiple of the patch size. Overlaps
            are blended, never cut. Cost grows as ``(tile / (tile − overlap))²``: 4× at the default 112 px (half a
            tile), 1.36× at 32 px. A ViT's patch tokens depend on the whole tile's content, so with small overlaps
            k-means boundaries in homogeneous areas can snap to tile borders; half-tile overlaps average that out
            (docs/inference.md).
        batch_size: Tiles per forward pass; memory ∝ ``batch_size · tile_size_px²``. None (automatic): 8 on a CPU,
            on CUDA as many as fit in half the GPU's free memory (:func:`engine.models.tiles_per_batch`).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
        threads: CPU threads of torch and of the int8 ONNX Runtime twin (None: the libraries' default, one per physical
            core). An ONNX model takes its threads when loaded (``load_model(..., threads=)``).
        scale: Resampling factor from native to model-input pixels (2.0 = each native pixel becomes 2×2); None
            uses the sensor preset's default (1.0 if no preset).
        resampling: rasterio resampling used when ``scale != 1`` (``"bilinear"``, ``"cubic"``, ``"nearest"``…).
        blend: Window of the overlap blending, ``"cosine"`` or ``"linear"``.
        output_dtype: ``"float32"``, ``"float16"`` (stored as 16-bit floats; half the disk) or ``"int8"`` (int8
            values with a per-cell scale, a quarter of the disk, cosine ≥ 0.9999 to float32;
            :mod:`engine.maps.quantized`).
        precision: ``"auto"`` (bf16 where the GPU or CPU has native bf16, else fp32), ``"fp32"``, ``"bf16"``
            (torch in bfloat16) or ``"int8"`` (ONNX Runtime with int8 weights, CPU): :mod:`engine.models.precision`,
            measured in docs/performance.md. An ONNX model runs as exported (``auto``).
        min_valid_fraction: A cell with a smaller share of valid pixels is written as nodata.
        max_tiles: The most tiles one pass may plan; a larger run is refused (:class:`SettingsError`) before any
            tile is read, so a mistyped scale or a continent-sized raster fails at once instead of running for days.
            100 000 tiles take about an hour at 30 tiles/s. Counted on the tile grid, before tiles without a valid
            pixel are skipped. None: no limit (``--yes`` on the command line; the QGIS plugin, which shows progress
            and can cancel).

    Raises:
        SettingsError: (on creation) an unknown device, threads below 1, a batch size below 1, a tile size above
            1024 px, a scale outside 0.05–20, an unknown output dtype, precision, resampling or blend window, a
            ``max_tiles`` below 1.
    """

    tile_size_px: int = 224
    overlap_px: int = 112
    batch_size: Optional[int] = None
    device: str = "auto"
    threads: Optional[int] = None
    scale: Optional[float] = None
    resampling: str = "bilinear"
    blend: BlendKind = "cosine"
    output_dtype: str = "float32"
    precision: str = "auto"
    min_valid_fraction: float = 0.5
    max_tiles: Optional[int] = 100_000

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise SettingsError(f"batch_size must be ≥ 1 (or None: automatic), got {self.batch_size}")
        if not _DEVICE.fullmatch(self.device):
            raise SettingsError(f"unknown device {self.device!r}; use auto, cpu, cuda, cuda:N (N = GPU index) or mps")
        if self.threads is not None and self.threads < 1:
            raise SettingsError(f"threads must be ≥ 1 (or None for the default), got {self.threads}")
        if self.tile_size_px > _MAX_TILE_SIZE_PX:
            raise SettingsError(
                f"tile_size_px must be at most {_MAX_TILE_SIZE_PX}, got {self.tile_size_px}: attention memory grows "
                f"with the square of the tokens per tile ({_MAX_TILE_SIZE_PX} px = "
                f"{(_MAX_TILE_SIZE_PX // 16) ** 2} tokens of 16 px); use a larger batch_size for throughput instead"
            )
        if self.max_tiles is not None and self.max_tiles < 1:
            raise SettingsError(f"max_tiles must be ≥ 1 or None (no limit), got {self.max_tiles}")
        if self.scale is not None and not 0.05 <= self.scale <= 20:
            raise SettingsError(f"scale must be between 0.05 and 20 (model pixels per native pixel), got {self.scale}")
        if self.output_dtype not in _DTYPES:
            raise SettingsError(f"output_dtype must be 'float32', 'float16' or 'int8', got {self.output_dtype!r}")
        if self.resampling not in Resampling.__members__:
            raise SettingsError(
                f"unknown resampling {self.resampling!r}; use one of {', '.join(Resampling.__members__)}"
            )
        if self.precision not in PRECISIONS:
            raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.blend not in _BLENDS:
            raise SettingsError(f"blend must be 'cosine' or 'linear', got {self.blend!r}")
