"""MSAD projection heads (docs/xstars.md §3.2), written from the paper and docs/xstars.md.

Three heads of one structure (a residual two-layer MLP with LayerNorm) sit on top of the backbone's tokens:

* ``P`` (:class:`MSADProjection`, ``D → 1024``), shared by every sensor;
* ``Q1`` / ``Q2`` (:class:`MSADPairHeads`, ``1024 → 1024`` each), one per sensor *slot* of a pair: ``sat1`` is the
  earlier sensor of the pair (or the old sensor through the frozen network in continual pretraining), ``sat2`` the
  later one (the new sensor through the student).

:class:`MSADHeads` groups them under the attribute names of the original modules, so its state dict has the keys
``P.projection.*``, ``P.fc.*``, ``P.layer_norm.*`` and ``Q.sat{1,2}_projection.{projection,fc,layer_norm}.*`` of
``fixtures/xstars/msad_io.safetensors`` and can be saved in a checkpoint under ``msad_heads`` (docs/xstars.md §3.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ("MSADHeads", "MSADPairHeads", "MSADProjection")

#: Width of the MSAD projections (docs/xstars.md §3.2: ``msad_proj_dim`` 1024; the pair heads are hard-coded at 1024).
MSAD_PROJ_DIM = 1024
#: Dropout inside every MSAD head (docs/xstars.md §3.2, B8).
MSAD_DROPOUT = 0.2
#: LayerNorm eps of the MSAD heads: the PyTorch default 1e-5, not the ViT's 1e-6 (docs/xstars.md §3.2).
MSAD_LN_EPS = 1e-5


class MSADProjection(nn.Module):
    """Residual projection head: ``u = W1 h``, ``x = Dropout(W2 GELU(u)) + u``, ``out = LayerNorm(x)``.

    GELU is the exact (erf) form, every Linear has a bias and the LayerNorm has eps 1e-5 (docs/xstars.md §3.2).
    Submodule names ``projection`` (W1), ``fc`` (W2) and ``layer_norm`` are the checkpoint contract.

    Args:
        in_dim: Input width (the backbone width D for ``P``; 1024 for ``Q1``/``Q2``).
        proj_dim: Output width (1024). Widths above 1024 (a two-layer W1 in the original) are not supported.
        dropout: Dropout probability on the W2 branch (0.2; active in train mode only).

    Raises:
        ValueError: ``proj_dim > 1024``.
    """

    def __init__(self, in_dim: int, proj_dim: int = MSAD_PROJ_DIM, dropout: float = MSAD_DROPOUT) -> None:
        super().__init__()
        if proj_dim > MSAD_PROJ_DIM:
            raise ValueError(f"proj_dim > {MSAD_PROJ_DIM} (a two-layer W1 in the original) is not supported, "
                             f"got {proj_dim}")
        self.projection = nn.Linear(in_dim, proj_dim)
        self.fc = nn.Linear(proj_dim, proj_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(proj_dim, eps=MSAD_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in_dim]`` float → ``[..., proj_dim]`` (any leading dims: ``[N, B, D]`` token-major batches)."""
        u = self.projection(x)
        return self.layer_norm(self.dropout(self.fc(F.gelu(u))) + u)


class MSADPairHeads(nn.Module):
    """The per-slot heads ``Q1`` (``sat1_projection``) and ``Q2`` (``sat2_projection``) of one sensor pair.

    Args:
        dim: Width in and out (1024: ``P``'s output width).
        dropout: Dropout of both heads (0.2).
    """

    def __init__(self, dim: int = MSAD_PROJ_DIM, dropout: float = MSAD_DROPOUT) -> None:
        super().__init__()
        self.sat1_projection = MSADProjection(dim, dim, dropout)
        self.sat2_projection = MSADProjection(dim, dim, dropout)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q1(z1), Q2(z2))``, each ``[..., dim]``; no L2 normalisation (docs/xstars.md §3.3)."""
        return self.sat1_projection(z1), self.sat2_projection(z2)


class MSADHeads(nn.Module):
    """``P`` (shared, ``embed_dim → proj_dim``) and ``Q`` (:class:`MSADPairHeads`): every trainable MSAD parameter.

    Parameter counts (docs/xstars.md §3.2): ``P`` 1.25 M for D = 192; ``Q1 + Q2`` 4.20 M.

    Args:
        embed_dim: Backbone token width D (the original's ``msad_embedding_dim``, which must equal D, B8).
        proj_dim: Projection width (1024).
        dropout: Dropout of every head (0.2).
    """

    def __init__(self, embed_dim: int, proj_dim: int = MSAD_PROJ_DIM, dropout: float = MSAD_DROPOUT) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.P = MSADProjection(embed_dim, proj_dim, dropout)
        self.Q = MSADPairHeads(proj_dim, dropout)
