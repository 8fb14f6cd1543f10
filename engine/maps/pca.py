"""Principal components of an embedding raster: one fit, used by quicklooks and by the PCA raster.

The components are fitted on a spatially spread sample of valid cells (:func:`engine.maps.sample_embeddings`, the
sample k-means uses) by an eigen-decomposition of their covariance (float64, ``D × D``: cheap even for ViT-L's
D = 1024). Embeddings are centred, not L2-normalised, so the components follow the raw embedding space. Each
component's sign is fixed (its largest loading is positive), so colours do not flip between runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
from rasterio.enums import Resampling

from ..errors import InputRasterError
from ..outputs import GEOTIFF, check_outputs
from ..raster import GeoTiffWriter, check_png, decimated_shape, gtiff_profile, iter_windows, stretch, write_png
from .clustering import sample_embeddings
from .quantized import open_embeddings
from .tags import product_tags

__all__ = ("embedding_quicklook", "principal_components", "project", "write_pca_raster")

#: Values read per row band of :func:`write_pca_raster` (float32: 4 bytes each).
_BAND_VALUES = 1 << 24


def _fit(grid: Any, n: int, max_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean [D], components [n, D], explained variance ratio [n])`` of the sampled valid cells (float32)."""
    if not 1 <= n <= grid.count:
        raise InputRasterError(f"number of principal components must be between 1 and {grid.count} (the bands of "
                               f"{grid.name}), got {n}")
    samples = sample_embeddings(grid, max_samples, seed).astype(np.float64)
    if len(samples) < 2:
        raise InputRasterError(
            f"{grid.name} has {len(samples)} valid (finite) cells; principal components need at least 2. "
            "Is it an embedding raster of an area with data?"
        )
    mean = samples.mean(axis=0)
    x = samples - mean
    cov = x.T @ x / (len(x) - 1)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1][:n]
    components = vectors[:, order].T
    signs = np.sign(components[np.arange(n), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    total = max(float(values.clip(min=0).sum()), 1e-30)
    ratio = values[order].clip(min=0) / total
    return mean.astype(np.float32), components.astype(np.float32), ratio.astype(np.float32)


def principal_components(
    grid: Any, n: int = 3, max_samples: int = 50000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of an embedding raster, fitted on a spatially spread sample of its valid cells.

    Args:
        grid: Open embedding raster (rasterio dataset; D bands, NaN = nodata).
        n: Number of components, 1..D.
        max_samples: Cells sampled for the fit (:func:`engine.maps.sample_embeddings`).
        seed: Random offset of the sample grid.

    Returns:
        ``(mean [D] float32, components [n, D] float32)``: project with ``(x − mean) @ components.T``. Rows are
        unit vectors in decreasing order of explained variance, each with its largest loading positive.

    Raises:
        InputRasterError: ``n`` outside 1..D, or fewer than 2 valid cells.
    """
    mean, components, _ = _fit(grid, n, max_samples, seed)
    return mean, components


def project(values: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Project ``[D, ...]`` embeddings onto ``components [n, D]`` → ``[n, ...]`` float32 (NaN where a band is NaN)."""
    d = values.shape[0]
    x = values.reshape(d, -1).T
    ok = np.isfinite(x).all(axis=1)
    out = np.full((len(components), x.shape[0]), np.nan, np.float32)
    out[:, ok] = ((x[ok] - mean) @ components.T).T
    return out.reshape(len(components), *values.shape[1:])


def write_pca_raster(embeddings: Union[str, Path], output: Union[str, Path], n: int = 3, *,
                     overwrite: bool = False) -> Path:
    """Write the first ``n`` principal components of an embedding raster as an ``n``-band GeoTIFF.

    The raster is streamed row band by row band (memory bounded by ~64 MB of embeddings whatever its size) and written
    atomically (:class:`engine.raster.GeoTiffWriter`) on the embedding grid (same CRS, transform and size).

    Args:
        embeddings: Embedding raster (:func:`engine.maps.embed_raster`).
        output: Destination GeoTIFF: ``n`` float32 bands ``pc1``…``pcN`` (NaN = nodata), tags ``MSFM_KIND=pca`` and
            ``MSFM_PCA_EXPLAINED`` (JSON list of the explained variance ratios, 0..1) besides the embeddings' tags.
        n: Number of components, 1..D.
        overwrite: Replace ``output`` when it exists.

    Returns:
        ``output`` as a Path.

    Raises:
        InputRasterError: ``n`` outside 1..D, fewer than 2 valid cells, or an unreadable raster.
        engine.errors.OutputError: As :func:`engine.outputs.check_outputs`.
    """
    check_outputs({"output": output}, {"embeddings": embeddings}, overwrite=overwrite, suffixes={"output": GEOTIFF})
    output = Path(output)
    with open_embeddings(embeddings) as grid:
        mean, components, ratio = _fit(grid, n, 50000, 0)
        profile = gtiff_profile(width=grid.width, height=grid.height, count=n, dtype="float32", crs=grid.crs,
                                transform=grid.transform, nodata=float("nan"))
        tags = product_tags(grid.tags(), "pca", embeddings=str(embeddings),
                            pca_explained=[round(float(r), 6) for r in ratio])
        rows = max(1, _BAND_VALUES // (grid.count * grid.width))
        with GeoTiffWriter(output, profile, [f"pc{i + 1}" for i in range(n)], tags) as writer:
            for window in iter_windows(grid.height, grid.width, rows, grid.width):
                writer.write_rows(project(grid.read(window=window), mean, components))
    return output


def embedding_quicklook(embeddings: Union[str, Path], png: Union[str, Path], max_size_px: int = 1024, *,
                        overwrite: bool = False) -> Path:
    """Project an embedding raster on its first three principal components and save them as an RGB PNG.

    The components are :func:`principal_components` (fitted on a spread sample of the full-resolution cells); a
    raster with fewer than 2 valid cells gives a black picture.

    Args:
        embeddings: Embedding raster.
        png: Destination PNG (written atomically).
        max_size_px: Longest side of the picture in pixels.
        overwrite: Replace ``png`` when it exists.

    Returns:
        ``png`` as a Path.

    Raises:
        engine.errors.OutputError: As :func:`engine.outputs.check_outputs`.
    """
    check_png(png, {"embeddings": embeddings}, overwrite)
    with open_embeddings(embeddings) as ds:
        data = ds.read(out_shape=(ds.count, *decimated_shape(ds, max_size_px)), resampling=Resampling.nearest)
        try:
            mean, components = principal_components(ds, min(3, ds.count))
        except InputRasterError:
            components = None
    rgb = np.zeros((3, *data.shape[1:]), np.float32)
    if components is not None:
        rgb[: len(components)] = project(data, mean, components)
    return write_png(png, stretch(np.nan_to_num(rgb), np.isfinite(data).all(axis=0)))
