"""SMARTIES spectrum-aware ViT encoder in plain PyTorch (docs/smarties.md §1).

Sumbul et al., "SMARTIES: Spectrum-Aware Multi-Sensor Auto-Encoder for Remote Sensing Images", ICCV 2025
(arXiv 2506.19585). Written from the paper and docs/smarties.md, not from the reference code.

Data flow (docs/smarties.md §1.1): every band of a p×p patch is embedded by the projection of its spectral range
(:mod:`engine.spectral.ranges`), the per-band embeddings are fused as ``12 · mean``, a CLS token is prepended, the fixed
2-D sin-cos position table stored in the checkpoint is added, then pre-norm transformer blocks run (LayerNorm eps 1e-6,
fused qkv, exact GELU MLP). Module attribute names are the checkpoint contract (docs/smarties.md §1.6).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..spectral import (
    NUM_BASE_PROJECTIONS,
    PROJECTION_SCALER,
    Averaging,
    BandSpec,
    ChannelNorm,
    Projection,
    band_mix,
    projection_for,
)
from .protocol import Provenance
from .vit import LN_EPS, Block, block_grids, check_blocks

__all__ = ("SmartiesEncoder", "init_from_scratch", "sincos_pos_embed")


class _RangeProjection(nn.Module):
    """Holds one base projection so the key reads ``spectrum_embeds.{r}.proj.weight`` (docs/smarties.md §1.6)."""

    def __init__(self, patch_area: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(patch_area, dim, bias=True)


class SpectrumProjection(nn.Module):
    """The 17 base projections ``Linear(p², D)``; averaged/interpolated bands combine them (no extra keys)."""

    def __init__(self, patch_area: int, dim: int) -> None:
        super().__init__()
        self.spectrum_embeds = nn.ModuleList(_RangeProjection(patch_area, dim) for _ in range(NUM_BASE_PROJECTIONS))

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return all base weights ``[17, D, p²]`` and biases ``[17, D]``."""
        embeds = cast("Sequence[_RangeProjection]", self.spectrum_embeds)  # nn.ModuleList is not generic
        weight = torch.stack([m.proj.weight for m in embeds])
        bias = torch.stack([m.proj.bias for m in embeds])
        return weight, bias



def sincos_pos_embed(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position table of MAE/SMARTIES (docs/smarties.md §1.3).

    The first half of each vector encodes the column, the second half the row; ``ω_k = 10000^(−k/(d/2))``; CLS row is
    zeros. Computed in float64, returned float32.

    Args:
        dim: Embedding dimension D (divisible by 4).
        grid_size: Tokens per side G.
        cls_token: Prepend a zero row for the CLS token.

    Returns:
        ``[1, G² (+1), D]`` float32.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half // 2, dtype=torch.float64) / (half / 2.0))
    pos = torch.arange(grid_size, dtype=torch.float64)

    def emb_1d(p: torch.Tensor) -> torch.Tensor:
        out = p[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(pos, pos, indexing="ij")
    table = torch.cat([emb_1d(cols.reshape(-1)), emb_1d(rows.reshape(-1))], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0)
    return table[None].float()


class SmartiesEncoder(nn.Module):
    """Spectrum-aware ViT encoder with the exact SMARTIES state-dict layout.

    Args:
        embed_dim: Token dimension D (768 ViT-B, 1024 ViT-L).
        depth: Number of transformer blocks.
        num_heads: Attention heads (D must be divisible by it).
        patch_size: Patch side p in pixels (16 for the published models).
        grid_size: Tokens per side of the position table G (14 for 224-px inputs).
        mlp_ratio: MLP hidden size as a multiple of D.
        averaging: Weights of the averaged ranges 17/18, see :mod:`engine.spectral.ranges` (``"reference"`` = compat).

    Attributes:
        cls_token: ``[1, 1, D]``.
        pos_embed: ``[1, 1 + G², D]`` (read from the checkpoint; fixed sin-cos at init).
        provenance: Where the weights come from (:class:`Provenance`; set by :func:`engine.models.load_model`).

    The class implements :class:`engine.models.BlockEncoder`: it takes any bands (``band_families`` None) and
    normalises with the bands' own statistics (``input_norm`` None).
    """

    backend = "torch"
    band_families: Optional[tuple[str, ...]] = None
    input_norm: Optional[ChannelNorm] = None
    grid_output = "last-block patch tokens before the final norm"

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 16,
        grid_size: int = 14,
        mlp_ratio: float = 4.0,
        averaging: Averaging = "linear",
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.grid_size = grid_size
        self.mlp_hidden = int(embed_dim * mlp_ratio)
        self.averaging: Averaging = averaging
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(embed_dim, grid_size), requires_grad=False)
        self.spectrum_projection = SpectrumProjection(patch_size * patch_size, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, self.mlp_hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.provenance = Provenance()

    # ------------------------------------------------------------------ token embedding
    def projections(self, bands: Sequence[BandSpec]) -> list[Projection]:
        """Resolve a band list (keys, indices 0..18 or Projections) with this encoder's averaging mode."""
        return [projection_for(b, self.averaging) for b in bands]

    def embed_bands(self, x: torch.Tensor, bands: Sequence[BandSpec]) -> torch.Tensor:
        """Spectral projection + band fusion for one band list shared by all tokens.

        Equivalent to applying, per band, ``W_r · vec(patch) + b_r`` then ``12 · mean`` over bands; computed as one
        strided convolution with the per-band weights stacked as input channels.

        Args:
            x: ``[B, C, H, W]`` float, normalised; H and W multiples of the patch size.
            bands: C band specs in channel order.

        Returns:
            Patch tokens ``[B, h·w, D]`` in row-major order (h = H/p, w = W/p).
        """
        b, c, height, width = x.shape
        p = self.patch_size
        if len(bands) != c:
            raise ValueError(f"got {c} image channels but {len(bands)} band specs; give one spec per channel")
        if height % p or width % p:
            raise ValueError(f"image size {height}×{width} px is not a multiple of the patch size {p}")
        return self.embed_mix(x, torch.from_numpy(band_mix(self.projections(bands))).to(x.device))

    def embed_mix(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        """The spectral projection of :meth:`embed_bands` from a band-mix matrix.

        ``x [B, C, H, W]``, ``mix [C, 17]`` (:func:`engine.spectral.band_mix`) → tokens ``[B, h·w, D]``.

        ``Σ_c Σ_k m_ck (W_k·patch_c + b_k)`` is computed as ``(Σ_k m_ck W_k)·patch_c + Σ_ck m_ck b_k``: the mix is
        folded into the stacked base weights once per call (a ``[D, C·p²]`` matrix), then every patch of all bands is
        embedded by one matrix product. That is 1.7–2.2× faster than mixing the bands at full resolution and
        convolving (bench/precision.py machine, fp32 and bf16), and bf16 convolutions with few input channels are
        wrong in some oneDNN builds, which matrix products avoid. No Python-side band logic, so it exports to ONNX
        with a dynamic band count.
        """
        p = self.patch_size
        weight, bias = self.spectrum_projection.stacked()
        mix = mix.to(weight.dtype)
        b, c, height, width = x.shape
        kernel = torch.einsum("ck,kdq->dcq", mix, weight).reshape(self.embed_dim, c * p * p)
        h, w = height // p, width // p
        patches = x.to(weight.dtype).reshape(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p)
        return F.linear(patches, kernel, mix.sum(0) @ bias)

    def embed_patches(self, patches: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Spectral projection + fusion with per-token projection indices (mixup / heterogeneous inputs).

        Args:
            patches: ``[B, h, w, C, p, p]`` float, normalised.
            indices: ``[B, h, w, C]`` integer projection indices 0..18 (−1 is rejected).

        Returns:
            Patch tokens ``[B, h·w, D]``.
        """
        b, h, w, c, p, _ = patches.shape
        flat = patches.reshape(-1, p * p)
        idx = indices.reshape(-1).long()
        weight, bias = self.spectrum_projection.stacked()
        out = flat.new_zeros(flat.shape[0], self.embed_dim, dtype=weight.dtype)
        for r in torch.unique(idx).tolist():
            projection = projection_for(int(r), self.averaging)
            sel = idx == r
            # a projection has at least one term, so the sums are tensors (never the start value 0)
            w_r = cast(torch.Tensor, sum(weight[k] * wk for k, wk in projection.terms))
            b_r = cast(torch.Tensor, sum(bias[k] * wk for k, wk in projection.terms))
            out[sel] = F.linear(flat[sel].to(weight.dtype), w_r, b_r)
        return out.reshape(b, h * w, c, self.embed_dim).mean(2) * PROJECTION_SCALER

    # ------------------------------------------------------------------ transformer
    def pos_embed_for(self, h: int, w: int) -> torch.Tensor:
        """Position table ``[1, 1 + h·w, D]`` for an h×w token grid (bicubic resize of the stored grid if needed)."""
        g = self.grid_size
        if (h, w) == (g, g):
            return self.pos_embed
        key = (h, w)
        cached = self._pos_cache.get(key)
        if cached is None or cached.device != self.pos_embed.device or self.training:
            grid = self.pos_embed[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False)
            cached = torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)
            if not self.training:
                self._pos_cache[key] = cached.detach()
        return cached

    def forward_tokens(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Add CLS + positions and run all blocks.

        Args:
            tokens: Patch tokens ``[B, h·w, D]``.
            h: Token rows.
            w: Token columns.

        Returns:
            ``[B, 1 + h·w, D]`` output of the last block, *before* the final norm.
        """
        x = self._with_cls(tokens, h, w)
        for block in self.blocks:
            x = block(x)
        return x

    def _with_cls(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Prepend the CLS token and add positions: ``[B, h·w, D]`` → ``[B, 1 + h·w, D]``."""
        pos = self.pos_embed_for(h, w)
        cls = (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens + pos[:, 1:]], dim=1)

    def encode(
        self,
        x: torch.Tensor,
        bands: Union[Sequence[BandSpec], torch.Tensor],
        output: Literal["cls", "grid", "tokens"] = "cls",
    ) -> torch.Tensor:
        """Encode normalised images.

        Args:
            x: ``[B, C, H, W]`` float32 images already normalised (docs/smarties.md §4), H and W multiples of the patch
                size (224 = the stored 14×14 position grid; other sizes use a bicubically resized grid).
            bands: C band specs in channel order — range keys (``"red_2"``), projection indices (0..18) or
                :class:`~engine.spectral.Projection` objects — or an integer tensor ``[B, h, w, C]`` of per-token
                projection indices.
            output: ``"cls"`` → ``[B, D]`` CLS token after the final LayerNorm; ``"grid"`` → ``[B, D, H/p, W/p]`` patch
                tokens of the last block *before* the final norm (the reference's ``all_tokens``, docs/smarties.md
                §1.1); ``"tokens"`` → ``[B, 1 + (H/p)·(W/p), D]`` every token *after* the final norm, CLS first, patches
                in row-major order (the X-STARS backbone's ``return_all_tokens`` output, what MSAD aligns, spec
                docs/xstars.md §3).

        Returns:
            The requested tensor (float32).

        Raises:
            ValueError: Shape mismatch between ``x`` and ``bands``, or a size not divisible by the patch size.
            engine.errors.BandResolutionError: Unknown band key/index, or the disabled index −1.
        """
        if output not in ("cls", "grid", "tokens"):
            raise ValueError(f"output must be 'cls', 'grid' or 'tokens', got {output!r}")
        tokens, h, w = self._patch_tokens(x, bands)
        out = self.forward_tokens(tokens, h, w)
        if output == "cls":
            return self.norm(out[:, 0])
        if output == "tokens":
            return self.norm(out)
        return out[:, 1:].transpose(1, 2).reshape(out.shape[0], self.embed_dim, h, w)

    def encode_blocks(
        self, x: torch.Tensor, bands: Union[Sequence[BandSpec], torch.Tensor], blocks: Sequence[int]
    ) -> list[torch.Tensor]:
        """Patch-token grids of several blocks, for dense heads.

        E.g. UPerNet on blocks 3/5/7/11 of a ViT-B (docs/smarties.md §6).

        Args:
            x: ``[B, C, H, W]`` normalised images, as :meth:`encode`.
            bands: As :meth:`encode`.
            blocks: 0-based block indices, increasing (``depth − 1`` = the last block, whose output is
                ``encode(..., output="grid")``).

        Returns:
            One ``[B, D, H/p, W/p]`` tensor per listed block: that block's patch tokens *before* the final norm.

        Raises:
            ValueError: As :meth:`encode`, or block indices that are not increasing within ``0..depth − 1``.
        """
        check_blocks(blocks, self.depth)
        tokens, h, w = self._patch_tokens(x, bands)
        return self.token_grids(tokens, h, w, blocks)

    def token_grids(self, tokens: torch.Tensor, h: int, w: int, blocks: Sequence[int]) -> list[torch.Tensor]:
        """:meth:`encode_blocks` from patch tokens ``[B, h·w, D]`` (:meth:`embed_mix`).

        Args:
            tokens: Patch tokens ``[B, h·w, D]``, without CLS token or positions.
            h: Patch-grid rows.
            w: Patch-grid columns.
            blocks: 0-based block indices, increasing (checked by the caller).

        Returns:
            One ``[B, D, h, w]`` grid per listed block.
        """
        return block_grids(self.blocks, self._with_cls(tokens, h, w), blocks, h, w, self.embed_dim)

    def _patch_tokens(
        self, x: torch.Tensor, bands: Union[Sequence[BandSpec], torch.Tensor]
    ) -> tuple[torch.Tensor, int, int]:
        """Validated spectral projection of ``x``: ``(tokens [B, h·w, D], h, w)``."""
        if x.ndim != 4:
            raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
        p = self.patch_size
        h, w = x.shape[2] // p, x.shape[3] // p
        if isinstance(bands, torch.Tensor):
            b, c = x.shape[:2]
            if x.shape[2] % p or x.shape[3] % p:
                raise ValueError(f"image size {x.shape[2]}×{x.shape[3]} px is not a multiple of the patch size {p}")
            if tuple(bands.shape) != (b, h, w, c):
                raise ValueError(
                    f"per-token band indices must be [B, h, w, C] = {(b, h, w, c)}, got {tuple(bands.shape)}"
                )
            patches = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5)
            return self.embed_patches(patches, bands), h, w
        return self.embed_bands(x, list(bands)), h, w

    def forward(self, x: torch.Tensor, bands: Union[Sequence[BandSpec], torch.Tensor]) -> torch.Tensor:
        """Alias of ``encode(x, bands, output="cls")``."""
        return self.encode(x, bands, "cls")

    def num_parameters(self) -> int:
        """Number of parameters including the position table (docs/smarties.md §1.4 counts it)."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        """The architecture and averaging, shown in the module's ``repr``."""
        return (
            f"embed_dim={self.embed_dim}, depth={self.depth}, num_heads={self.num_heads}, "
            f"patch_size={self.patch_size}, grid_size={self.grid_size}, averaging={self.averaging!r}"
        )


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_from_scratch(model: SmartiesEncoder, seed: Optional[int] = None) -> SmartiesEncoder:
    """MAE-style initialisation (docs/smarties.md §1.5).

    Xavier-uniform Linears, zero biases, LayerNorm 1/0, CLS token ~ N(0, 0.02).
    """
    if seed is not None:
        torch.manual_seed(seed)
    model.apply(_init_weights)
    nn.init.normal_(model.cls_token, std=0.02)
    with torch.no_grad():
        model.pos_embed.copy_(sincos_pos_embed(model.embed_dim, model.grid_size))
    return model

