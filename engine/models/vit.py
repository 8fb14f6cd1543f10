"""The transformer parts both encoder families share: attention, MLP, the pre-norm block, block grids.

One implementation serves the SMARTIES encoder (:mod:`engine.models.smarties`) and the DINO / X-STARS ViT
(:mod:`engine.models.dino`): pre-norm blocks with LayerNorm eps 1e-6, a fused ``qkv`` Linear with bias, exact (erf)
GELU and optional stochastic depth (docs/smarties.md §1.1, docs/xstars.md §1). Module attribute names follow timm
(``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``): they are the checkpoint contract of
both families, so their state dicts load strictly.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = (
    "Attention",
    "Block",
    "LN_EPS",
    "Mlp",
    "block_grids",
    "check_blocks",
    "dense_blocks",
    "drop_path",
)

#: LayerNorm epsilon of both encoder families (docs/smarties.md §1.1, docs/xstars.md §1).
LN_EPS = 1e-6


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv Linear (timm layout ``qkv``/``proj``).

    Args:
        dim: Token dimension D.
        num_heads: Attention heads (a divisor of D).

    Raises:
        ValueError: ``num_heads`` does not divide D.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [B, N, D] → [B, N, D]."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """``fc1`` → exact (erf) GELU → ``fc2``.

    Args:
        dim: Token dimension D (input and output width).
        hidden: Hidden width.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [..., D] → [..., D]."""
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``, rescale the rest.

    Args:
        x: ``[B, ...]`` branch output.
        rate: Drop probability in [0, 1).
        training: Only active in training mode.

    Returns:
        ``x`` unchanged when inactive, else ``x / (1 − rate) · bernoulli(1 − rate)`` per sample.
    """
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * mask


class Block(nn.Module):
    """Pre-norm transformer block: ``x += dp(attn(norm1(x))); x += dp(mlp(norm2(x)))``.

    Args:
        dim: Token dimension D.
        num_heads: Attention heads (a divisor of D).
        mlp_hidden: Hidden width of the MLP.
        drop_path_rate: Stochastic depth of this block (:func:`drop_path`; 0 = off, as in every SMARTIES block and
            at inference).
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_hidden)
        self.drop_path_rate = float(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [B, N, D] → [B, N, D]."""
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)

    def extra_repr(self) -> str:
        """The stochastic depth, shown in the module's ``repr``."""
        return f"drop_path_rate={self.drop_path_rate:g}"


def check_blocks(blocks: Sequence[int], depth: int) -> None:
    """Raise ValueError unless ``blocks`` are strictly increasing 0-based block indices below ``depth``."""
    if not blocks or list(blocks) != sorted(set(blocks)) or blocks[0] < 0 or blocks[-1] >= depth:
        raise ValueError(
            f"blocks must be increasing indices in 0..{depth - 1} (0-based; {depth - 1} = the last block), got "
            f"{list(blocks)}"
        )


def block_grids(blocks: Union[nn.ModuleList, Sequence[nn.Module]], tokens: torch.Tensor, wanted: Sequence[int],
                h: int, w: int, dim: int) -> list[torch.Tensor]:
    """The patch tokens after each wanted block, as grids ``[B, D, h, w]`` (before any final norm).

    Runs ``tokens`` through ``blocks`` up to the last ``wanted`` one. Shared by the SMARTIES and DINO encoders'
    ``encode_blocks``.

    Args:
        blocks: The encoder's transformer blocks.
        tokens: ``[B, 1 + h·w, D]``, CLS token first, positions added.
        wanted: 0-based block indices, increasing (:func:`check_blocks`).
        h: Patch-grid rows.
        w: Patch-grid columns.
        dim: D as a Python int, so an ONNX trace keeps static grid shapes.

    Returns:
        One ``[B, D, h, w]`` grid per wanted block, in order.
    """
    grids = []
    for i, block in enumerate(blocks[: wanted[-1] + 1]):
        tokens = block(tokens)
        if i in wanted:
            grids.append(tokens[:, 1:].transpose(1, 2).reshape(-1, dim, h, w))
    return grids


def dense_blocks(depth: int) -> tuple[int, int, int, int]:
    """The four blocks a multi-level dense head reads: ``(d/3, d/2, 2d/3, d) − 1``.

    3/5/7/11 for a ViT-B (depth 12) and 7/11/15/23 for a ViT-L (24), the convention of UPerNet probing of ViTs
    (docs/smarties.md §6, PANGAEA); 1/2/3/5 for the 6-block demo model.
    """
    if depth < 4:
        raise ValueError(f"a multi-level head needs at least 4 blocks, the encoder has {depth}")
    return (max(0, depth // 3 - 1), depth // 2 - 1, 2 * depth // 3 - 1, depth - 1)
