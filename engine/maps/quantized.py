"""int8 embedding rasters: a quarter of float32 on disk, one GeoTIFF, read back as float32 by every tool.

``embed --dtype int8`` (``InferenceSettings(output_dtype="int8")``) writes each cell's D-vector as int8 values with
one int8 scale exponent per cell (docs/inference.md, "int8 embeddings"):

- bands 1 … D: ``q`` in −127 … 127 (int8; −128 = nodata);
- band D + 1 (described ``scale_exponent``): ``e`` in −127 … 127; the cell's scale is ``2 ** (e / 8)``;
- value ``v_d = q_d · 2 ** (e / 8)``.

Per cell, ``e = ceil(8 · log2(max_d |v_d| / 127))``, so ``|v_d| / scale ≤ 127`` and the rounding error of every
dimension is at most half a step, ``scale / 2 ≤ 2^(1/8) · max_d |v_d| / 254`` — about 0.4 % of the cell's largest
value (cosine to float32 ≥ 0.9999 on the demo scene). A per-cell scale keeps that precision for every cell,
whatever its norm; a base-2^(1/8) exponent lets the scale live in an int8 band of the same file (GeoTIFF bands share
one data type). The scheme is recorded in the ``MSFM_QUANTIZATION`` tag as JSON: ``{"scheme":
"msfm-int8-log2-v1", "scale_band": D + 1, "value": "q * 2 ** (e / 8)", "nodata": -128}``.

:func:`open_embeddings` opens any embedding raster — float32, float16 (stored as 16-bit floats) or int8 — as a
dataset whose ``read`` returns float32 ``[D, h, w]`` with NaN nodata; k-means, similarity, PCA, pixel-resolution
upsampling and the random forest all read through it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

__all__ = ("EmbeddingRaster", "EmbeddingStorage", "MAX_VALUE", "QUANTIZATION_TAG", "SCHEME", "dequantize",
           "open_embeddings", "quantize")

#: The scheme's name, in the ``MSFM_QUANTIZATION`` tag.
SCHEME = "msfm-int8-log2-v1"
#: The dataset tag that describes the scheme.
QUANTIZATION_TAG = "MSFM_QUANTIZATION"
_NODATA = -128
_STEPS_PER_OCTAVE = 8
#: The largest value an int8 embedding raster stores: 127 × the largest scale 2^(127/8) (≈ 7.6e6).
MAX_VALUE = 127 * 2 ** (127 / _STEPS_PER_OCTAVE)


def quantize(values: np.ndarray) -> np.ndarray:
    """Cells of float embeddings as int8 values plus one int8 scale exponent per cell.

    Args:
        values: ``float32 [D, h, w]``; a cell with any NaN is nodata.

    Returns:
        ``int8 [D + 1, h, w]``: ``q`` in bands 0 … D − 1, the exponent ``e`` in band D; nodata cells −128 throughout.

    Raises:
        ValueError: A cell whose largest value exceeds :data:`MAX_VALUE` (the largest scale, 2^(127/8), × 127).

    The smallest scale is 2^(−127/8) ≈ 1.7e-5: cells whose largest value is below 127 × that ≈ 2.1e-3 keep an absolute
    precision of 8.6e-6 rather than a relative one (embeddings of the models here are of order 0.1–10).
    """
    finite = np.nan_to_num(np.asarray(values, np.float32))  # the one float copy of the rows
    valid = np.isfinite(values).all(axis=0)
    peak = np.where(valid, np.abs(finite).max(axis=0), 0.0)
    if peak.max(initial=0.0) > MAX_VALUE:
        raise ValueError(f"an embedding value of {peak.max():.3g} exceeds what int8 embeddings store "
                         f"({MAX_VALUE:.3g}); write float16 or float32")
    e = np.clip(np.ceil(_STEPS_PER_OCTAVE * np.log2(np.maximum(peak, 1e-30) / 127.0)), -127, 127)
    finite /= np.exp2(e / _STEPS_PER_OCTAVE)
    out = np.empty((finite.shape[0] + 1, *finite.shape[1:]), np.int8)
    out[:-1] = np.clip(np.rint(finite, out=finite), -127, 127)
    out[-1] = e
    out[:, ~valid] = _NODATA
    return out


def dequantize(q: np.ndarray) -> np.ndarray:
    """The float32 embeddings of :func:`quantize`'s output.

    Args:
        q: ``int8 [D + 1, h, w]`` (bands 0 … D − 1 values, band D the scale exponent).

    Returns:
        ``float32 [D, h, w]``, NaN where a cell is nodata (−128 in any band).
    """
    q = np.asarray(q)
    values = q[:-1].astype(np.float32) * np.exp2(q[-1:].astype(np.float32) / _STEPS_PER_OCTAVE)
    values[:, (q == _NODATA).any(axis=0)] = np.nan
    return values


@dataclass(frozen=True)
class EmbeddingStorage:
    """How D embedding bands are stored in a GeoTIFF of a given output dtype (the one rule both writers follow).

    Args:
        dtype: ``"float32"``, ``"float16"`` (16-bit floats) or ``"int8"`` (this module's scheme).
        count: The embedding's dimensions D.

    Attributes:
        bands: Bands in the file (D, or D + 1 with the int8 scale band).
        nodata: The file's nodata (NaN, or −128).
        extra_descriptions: Descriptions of the bands after the D embedding bands.
        tags: Dataset tags the file carries (the quantization scheme).
    """

    dtype: str
    count: int

    @property
    def quantized(self) -> bool:
        """True for int8."""
        return self.dtype == "int8"

    @property
    def bands(self) -> int:
        """Bands in the file."""
        return self.count + 1 if self.quantized else self.count

    @property
    def nodata(self) -> float:
        """The file's nodata value."""
        return float(_NODATA) if self.quantized else float("nan")

    @property
    def extra_descriptions(self) -> list[str]:
        """``["scale_exponent"]`` for int8, else nothing."""
        return ["scale_exponent"] if self.quantized else []

    @property
    def tags(self) -> dict[str, str]:
        """``MSFM_QUANTIZATION`` for int8, else nothing."""
        if not self.quantized:
            return {}
        return {QUANTIZATION_TAG: json.dumps({"scheme": SCHEME, "scale_band": self.count + 1,
                                              "value": f"q * 2 ** (e / {_STEPS_PER_OCTAVE})", "nodata": _NODATA})}

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Rows ``float32 [D, h, w]`` as written: :func:`quantize`'d for int8, unchanged otherwise."""
        return quantize(values) if self.quantized else values


class EmbeddingRaster:
    """An open embedding raster whose ``read`` returns float32 embeddings, whatever the file stores.

    Everything but ``count``, ``dtypes``, ``descriptions`` and ``read`` is the wrapped rasterio dataset's
    (``width``, ``height``, ``transform``, ``crs``, ``tags()``, ``name``, …).

    Args:
        dataset: An open rasterio dataset of an embedding raster (float, or int8 with the ``MSFM_QUANTIZATION`` tag).

    Attributes:
        quantized: True for an int8 raster of :data:`SCHEME`.
        count: The embedding's dimensions D (the int8 raster's scale band excluded).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        tag = dataset.tags().get(QUANTIZATION_TAG)
        self.quantized = tag is not None
        if self.quantized and json.loads(tag).get("scheme") != SCHEME:
            raise ValueError(f"{dataset.name}: unknown embedding quantization {tag}; this engine reads {SCHEME}")
        self.count = dataset.count - 1 if self.quantized else dataset.count

    @property
    def dtypes(self) -> tuple[str, ...]:
        """``float32`` for every embedding band (what :meth:`read` returns)."""
        return ("float32",) * self.count

    @property
    def descriptions(self) -> tuple[Optional[str], ...]:
        """The embedding bands' descriptions."""
        return tuple(self.dataset.descriptions[: self.count])

    def read(self, indexes: Optional[Union[int, Sequence[int]]] = None, window: Any = None,
             out_shape: Optional[Sequence[int]] = None, resampling: Any = None) -> np.ndarray:
        """Embeddings as float32 ``[D, h, w]`` (or ``[h, w]`` for one index), NaN where nodata.

        Args:
            indexes: 1-based embedding bands (default all D).
            window: A rasterio window (default the whole raster).
            out_shape: ``(bands, h, w)`` to read decimated (int8 rasters: nearest neighbour only, so that a cell's
                values and its scale come from the same cell).
            resampling: rasterio resampling of a decimated read.

        Raises:
            ValueError: A decimated int8 read with a resampling other than nearest.
        """
        kwargs: dict[str, Any] = {"window": window}
        if out_shape is not None:
            kwargs["out_shape"] = (self.dataset.count if self.quantized else out_shape[0], *out_shape[-2:])
        if resampling is not None:
            kwargs["resampling"] = resampling
        if not self.quantized:
            data = self.dataset.read(indexes, **kwargs) if indexes is not None else self.dataset.read(**kwargs)
            return data.astype(np.float32, copy=False)
        if out_shape is not None and resampling is not None and getattr(resampling, "name", resampling) != "nearest":
            raise ValueError("an int8 embedding raster is read decimated with nearest neighbour only")
        values = dequantize(self.dataset.read(**kwargs))
        if indexes is None:
            return values
        if isinstance(indexes, int):
            return values[indexes - 1]
        return values[[i - 1 for i in indexes]]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)


@contextlib.contextmanager
def open_embeddings(path: Union[str, Path]) -> Iterator[EmbeddingRaster]:
    """Open an embedding raster (float32, float16 or int8) for reading as float32; closes it on exit.

    Raises:
        rasterio.errors.RasterioIOError: The file cannot be opened.
        ValueError: An int8 raster of an unknown quantization scheme.
    """
    import rasterio

    with rasterio.open(path) as dataset:
        yield EmbeddingRaster(dataset)
