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

:func:`open_embeddings` opens any embedding raster as a dataset whose ``read`` returns float32 ``[D, h, w]`` with NaN
nodata; k-means, similarity, PCA, pixel-resolution upsampling and the random forest all read through it. Besides ours
(float32, float16, or this int8 scheme) it reads embedding rasters made elsewhere (:data:`ENCODINGS`), detected from
the file or named by the caller (``embedding_format``):

- ``alphaearth``: Google's Satellite Embedding dataset (AlphaEarth Foundations annual embeddings) exported as int8:
  64 bands ``A00`` … ``A63``, nodata −128, de-quantised as ``sign(v) · (|v| / 127.5)²`` into unit-length vectors (the
  dataset's description of its int8 export);
- ``tessera``: TESSERA embeddings as its tools store them: int8 values with one float32 scale per pixel, value =
  ``q · scale``; as GeoTIFFs, the int8 bands in one file and the scales in ``<name>_scales.tif`` beside it (one float32
  band; NaN or 0 = nodata);
- ``float``: any float raster whose bands are the embedding's dimensions (NaN or the nodata value = nodata).

Which document each layout follows, and what was checked here, is in docs/inference.md ("Embedding rasters made
elsewhere").
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from ..errors import InputRasterError, SettingsError

__all__ = ("ENCODINGS", "EmbeddingRaster", "EmbeddingStorage", "MAX_VALUE", "QUANTIZATION_TAG", "SCHEME",
           "decode_alphaearth", "dequantize", "detect_encoding", "open_embeddings", "quantize", "tessera_scales")

#: The scheme's name, in the ``MSFM_QUANTIZATION`` tag.
SCHEME = "msfm-int8-log2-v1"
#: The dataset tag that describes the scheme.
QUANTIZATION_TAG = "MSFM_QUANTIZATION"
_NODATA = -128
_STEPS_PER_OCTAVE = 8
#: How an embedding raster stores its values: ``msfm`` (ours: float, or int8 of :data:`SCHEME`), ``alphaearth``,
#: ``tessera``, ``float`` (module docstring).
ENCODINGS = ("msfm", "alphaearth", "tessera", "float")
#: AlphaEarth's dimensions and band names (A00 … A63).
_ALPHAEARTH_BANDS = tuple(f"A{i:02d}" for i in range(64))
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


def detect_encoding(dataset: Any, embedding_format: Optional[str] = None) -> str:
    """How an open embedding raster stores its values (:data:`ENCODINGS`).

    Detected from the file (tags, data type, band names, a scales file beside it), or checked against the format the
    caller names.

    Args:
        dataset: An open rasterio dataset.
        embedding_format: The format the caller says the file has (None: detect it).

    Returns:
        ``"msfm"``, ``"msfm-int8"``, ``"alphaearth"``, ``"tessera"`` or ``"float"``.

    Raises:
        engine.errors.SettingsError: An unknown format.
        engine.errors.InputRasterError: A file that does not have the layout of the format named (with the reason),
            or an integer raster whose encoding the file does not say (the message lists the formats to name).
    """
    if embedding_format not in (None, *ENCODINGS):
        raise SettingsError(f"unknown embedding format {embedding_format!r}; give one of {', '.join(ENCODINGS)}")
    tags, name = dataset.tags(), dataset.name
    dtype, count = np.dtype(dataset.dtypes[0]), dataset.count
    ours = QUANTIZATION_TAG in tags or "MSFM_MODEL" in tags
    if embedding_format in (None, "msfm") and QUANTIZATION_TAG in tags:
        if json.loads(tags[QUANTIZATION_TAG]).get("scheme") != SCHEME:
            raise InputRasterError(f"{name}: unknown embedding quantization {tags[QUANTIZATION_TAG]}; this engine "
                                   f"reads {SCHEME}")
        return "msfm-int8"
    if embedding_format == "msfm" and not ours:
        raise InputRasterError(f"{name} is not an msfm embedding raster (no MSFM_MODEL or {QUANTIZATION_TAG} tag); "
                               "name its format: alphaearth, tessera or float")
    aligned = tuple(dataset.descriptions) == _ALPHAEARTH_BANDS
    if embedding_format == "alphaearth" or (embedding_format is None and dtype == np.int8 and aligned):
        if dtype != np.int8 or count != 64:
            raise InputRasterError(f"{name} is not an AlphaEarth int8 export: it has {count} {dtype} band(s), "
                                   "AlphaEarth has 64 int8 bands (A00 … A63)")
        return "alphaearth"
    scales = tessera_scales(name)
    if embedding_format == "tessera" or (embedding_format is None and dtype == np.int8 and scales.is_file()):
        if dtype != np.int8 or not scales.is_file():
            missing = ([] if dtype == np.int8 else [f"int8 bands (it has {dtype})"]) + \
                ([] if scales.is_file() else [f"its per-pixel scales in {scales.name} beside it (missing)"])
            raise InputRasterError(f"{name} is not a TESSERA embedding raster: it needs " + " and ".join(missing))
        return "tessera"
    if np.issubdtype(dtype, np.floating):
        return "msfm" if ours and embedding_format != "float" else "float"
    raise InputRasterError(f"{name}: {count} {dtype} band(s) that do not say how they encode an embedding; name the "
                           "format (embedding format alphaearth, tessera, float or msfm): an AlphaEarth export has "
                           "64 int8 bands A00 … A63, TESSERA int8 bands with <name>_scales.tif beside them")


def tessera_scales(path: Union[str, Path]) -> Path:
    """Where the per-pixel scales of a TESSERA int8 embedding GeoTIFF are: ``<name>_scales.tif`` beside it."""
    path = Path(str(path))
    return path.with_name(f"{path.stem}_scales.tif")


def decode_alphaearth(q: np.ndarray) -> np.ndarray:
    """AlphaEarth's int8 values as float32: ``sign(v) · (|v| / 127.5)²``; a cell with −128 in any band is NaN.

    Args:
        q: ``int8 [D, h, w]``.

    Returns:
        ``float32 [D, h, w]`` (unit-length vectors, as AlphaEarth's float embeddings are, up to rounding).
    """
    v = q.astype(np.float32)
    values = np.sign(v) * np.square(np.abs(v) / 127.5)
    values[:, (q == _NODATA).any(axis=0)] = np.nan
    return values


class EmbeddingRaster:
    """An open embedding raster whose ``read`` returns float32 embeddings, whatever the file stores.

    Everything but ``count``, ``dtypes``, ``descriptions`` and ``read`` is the wrapped rasterio dataset's
    (``width``, ``height``, ``transform``, ``crs``, ``tags()``, ``name``, …).

    Args:
        dataset: An open rasterio dataset of an embedding raster.
        embedding_format: Its format (:data:`ENCODINGS`; None: detected, :func:`detect_encoding`).

    Attributes:
        encoding: What :func:`detect_encoding` found.
        quantized: True for an int8 raster of :data:`SCHEME`.
        count: The embedding's dimensions D (the int8 raster's scale band excluded).

    Raises:
        ValueError: As :func:`detect_encoding`.
    """

    def __init__(self, dataset: Any, embedding_format: Optional[str] = None) -> None:
        self.dataset = dataset
        self.encoding = detect_encoding(dataset, embedding_format)
        self.quantized = self.encoding == "msfm-int8"
        self.count = dataset.count - 1 if self.quantized else dataset.count
        self._scales: Any = None
        if self.encoding == "tessera":
            import rasterio

            self._scales = rasterio.open(tessera_scales(dataset.name))
            if (self._scales.width, self._scales.height) != (dataset.width, dataset.height):
                raise ValueError(f"{self._scales.name} is {self._scales.width} × {self._scales.height} px, the "
                                 f"embeddings {dataset.width} × {dataset.height}: they are not one raster's")

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
        if self.encoding in ("msfm", "float"):
            data = self.dataset.read(indexes, **kwargs) if indexes is not None else self.dataset.read(**kwargs)
            data = data.astype(np.float32, copy=False)
            nodata = self.dataset.nodata
            if nodata is not None and not np.isnan(nodata):
                data = np.where(data == nodata, np.float32(np.nan), data)
            return data
        if out_shape is not None and resampling is not None and getattr(resampling, "name", resampling) != "nearest":
            raise ValueError("an int8 embedding raster is read decimated with nearest neighbour only")
        if self.quantized:
            values = dequantize(self.dataset.read(**kwargs))
        elif self.encoding == "alphaearth":
            if out_shape is not None:
                kwargs["out_shape"] = (self.count, *out_shape[-2:])
            values = decode_alphaearth(self.dataset.read(**kwargs))
        else:  # tessera: q · scale, one scale per pixel
            if out_shape is not None:
                kwargs["out_shape"] = (self.count, *out_shape[-2:])
            q = self.dataset.read(**kwargs)
            scale_kwargs = {**kwargs, "out_shape": (1, *q.shape[-2:])} if out_shape is not None else kwargs
            scale = self._scales.read(1, **scale_kwargs).astype(np.float32)
            values = q.astype(np.float32) * scale
            values[:, ~np.isfinite(scale) | (scale == 0)] = np.nan
        if indexes is None:
            return values
        if isinstance(indexes, int):
            return values[indexes - 1]
        return values[[i - 1 for i in indexes]]

    def close(self) -> None:
        """Close the scales file of a TESSERA raster (the dataset is its opener's)."""
        if self._scales is not None:
            self._scales.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)


@contextlib.contextmanager
def open_embeddings(path: Union[str, Path], embedding_format: Optional[str] = None) -> Iterator[EmbeddingRaster]:
    """Open an embedding raster for reading as float32 (ours, or made elsewhere: module docstring); closes it on exit.

    Args:
        path: The embedding raster.
        embedding_format: Its format (:data:`ENCODINGS`); None: detected from the file.

    Raises:
        rasterio.errors.RasterioIOError: The file cannot be opened.
        ValueError: A file that is not in the format named, or whose format cannot be told (:func:`detect_encoding`).
    """
    import rasterio

    with rasterio.open(path) as dataset:
        grid = EmbeddingRaster(dataset, embedding_format)
        try:
            yield grid
        finally:
            grid.close()
