"""Area-weighted resampling of per-pixel values from the model-pixel grid onto the input's grid, row band by row band.

A raster is read at ``scale`` model pixels per native pixel (2 for the Sentinel-1/-2 and Landsat presets, the scale
SMARTIES was trained at; docs/smarties.md §4). Class probabilities computed on that grid are brought back to the
input's pixels here, *before* the argmax: each native pixel takes the mean of the model pixels it covers, weighted by
the area of overlap and by their validity,

``p(i, j) = Σ a(i, r) a(j, c) v(r, c) p(r, c) / Σ a(i, r) a(j, c) v(r, c)``,

with ``a(i, r)`` the share of native row ``i`` covered by model row ``r`` (so the weights of a native pixel sum to
1) and ``v`` the model pixels' valid fraction; the native pixel's valid fraction is the denominator. For an integer
scale this is the mean of the ``scale × scale`` model pixels of each native pixel; any scale works.

Averaging probabilities and then taking the argmax is the standard way to change the resolution of a soft
segmentation (resampling the labels after the argmax would be a majority vote that ignores confidence).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

__all__ = ("RowAreaResampler", "area_weights")


def area_weights(n_out: int, n_in: int) -> Any:
    """Sparse ``[n_out, n_in]`` matrix of area weights from a fine axis of ``n_in`` cells to ``n_out`` cells.

    Output cell ``i`` spans ``[i·s, (i+1)·s)`` input cells with ``s = n_in / n_out``; its weight on input cell ``j``
    is the length of ``[j, j+1) ∩ [i·s, (i+1)·s)`` divided by ``s``, so every row sums to 1.

    Returns:
        ``scipy.sparse.csr_matrix`` float32.

    Raises:
        ValueError: ``n_out`` or ``n_in`` below 1.
    """
    from scipy.sparse import csr_matrix

    if n_out < 1 or n_in < 1:
        raise ValueError(f"axis sizes must be at least 1, got {n_out} and {n_in}")
    s = n_in / n_out
    rows, cols, vals = [], [], []
    for i in range(n_out):
        start, end = i * s, (i + 1) * s
        for j in range(int(np.floor(start)), min(n_in, int(np.ceil(end - 1e-9)))):
            overlap = min(end, j + 1) - max(start, j)
            if overlap > 1e-9:
                rows.append(i)
                cols.append(j)
                vals.append(overlap / s)
    return csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(n_out, n_in))


class RowAreaResampler:
    """Streams ``[K, h, W_in]`` row bands of a fine grid out as ``[K, h', W_out]`` row bands of a coarser one.

    Rows must be pushed top to bottom, without gaps; a native row is released as soon as every model row it covers
    has arrived, so memory holds a few rows whatever the raster's height.

    Args:
        channels: Values per pixel K.
        in_shape: ``(height, width)`` of the fine (model-pixel) grid.
        out_shape: ``(height, width)`` of the output (native) grid.
    """

    def __init__(self, channels: int, in_shape: tuple[int, int], out_shape: tuple[int, int]) -> None:
        self.channels = channels
        self.in_shape, self.out_shape = in_shape, out_shape
        self.rows = area_weights(out_shape[0], in_shape[0])
        self.cols_t = area_weights(out_shape[1], in_shape[1]).T.tocsr()  # [W_in, W_out]
        self.step = in_shape[0] / out_shape[0]
        self.numerator = np.zeros((channels, 0, out_shape[1]), np.float32)  # column-resampled v·p of held rows
        self.denominator = np.zeros((0, out_shape[1]), np.float32)  # column-resampled v of held rows
        self.first = 0  # model row held at index 0
        self.next_out = 0  # next native row to release

    def push(self, values: np.ndarray, valid: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Add the next model rows; yield the native rows they complete.

        Args:
            values: ``[K, h, W_in]`` float32 (NaN allowed where ``valid`` is 0).
            valid: ``[h, W_in]`` valid fraction (0..1).

        Yields:
            ``(values [K, h', W_out], valid_fraction [h', W_out])``; values are NaN where no valid model pixel is
            covered.
        """
        h = valid.shape[0]
        if h:
            v = valid.astype(np.float32)
            weighted = np.nan_to_num(values, nan=0.0) * v[None]
            num = (weighted.reshape(-1, weighted.shape[-1]) @ self.cols_t).reshape(self.channels, h, -1)
            den = np.asarray(v @ self.cols_t, np.float32)
            self.numerator = np.concatenate([self.numerator, num.astype(np.float32)], axis=1)
            self.denominator = np.concatenate([self.denominator, den], axis=0)
        held_until = self.first + self.denominator.shape[0]
        ready = self.next_out
        while ready < self.out_shape[0] and min(self.in_shape[0], int(np.ceil((ready + 1) * self.step - 1e-9))) \
                <= held_until:
            ready += 1
        if ready == self.next_out:
            return
        block = self.rows[self.next_out : ready, self.first : held_until]  # [h', held rows]
        num = np.stack([block @ self.numerator[k] for k in range(self.channels)])
        den = np.asarray(block @ self.denominator, np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (num / den[None]).astype(np.float32)
        out[:, den <= 0] = np.nan
        self.next_out = ready
        drop = max(0, min(int(np.floor(ready * self.step + 1e-9)), held_until) - self.first)
        self.numerator = self.numerator[:, drop:]
        self.denominator = self.denominator[drop:]
        self.first += drop
        yield out, den
