"""MSAD, the Multi-Sensor Alignment Dense loss of X-STARS (docs/xstars.md §3), written from the paper and
docs/xstars.md.

Token ``i`` of sensor ``a`` is contrasted with token ``i`` of sensor ``b`` (the same ground cell on the shared 14×14
grid) across the local batch, with CLIP-style soft targets (X-STARS, Marsocci et al., arXiv 2405.09922; IEEE JSTARS 18,
2025). For one token position and an ordered sensor pair ``(a, b)`` with embeddings ``e_a = Q1(P(h_a))``,
``e_b = Q2(P(h_b))`` ``[B, E]`` (docs/xstars.md §3.3)::

    L   = e_b e_aᵀ / τ                                   [B, B] rows: sensor-b samples, columns: sensor-a samples
    T   = row-softmax(τ (e_a e_aᵀ + e_b e_bᵀ) / 2)         soft targets; τ *multiplies* here (as the reference code)
    CEε(x, t)_j = −Σ_k [(1 − ε) t_jk + ε / B] log softmax(x_j)_k
    l   = mean_j ( CEε(Lᵀ, Tᵀ)_j + CEε(L, T)_j ) / 2         Tᵀ rows are *not* re-normalised

Pretraining sums ``l`` over the sensor pairs ``a < b`` (in sensor order) and averages over token positions; continual
pretraining has a single pair (old sensor through the frozen network as ``a``, new sensor through the student as
``b``). Everything is vectorised over tokens: features are permuted to ``[N, B, D]`` token-major, the heads act on the
last dimension and the ``[B, B]`` matrices come from batched matmuls ``[N, B, B]`` (docs/xstars.md §3.3, B9).
Log-softmax keeps the computation stable although the logits are in the hundreds (``‖e‖² ≈ 1024``).

Modes (docs/xstars.md §3.4-§3.5): ``"paper"`` (default) keeps the graph, so the backbone and the heads ``P``, ``Q1``,
``Q2`` get gradients (the heads must be in the optimiser and the checkpoint); ``"compat"`` computes the same value under
``torch.no_grad`` like the released code (B1: its tensor-from-list detaches it), so MSAD is only logged.
"""

from __future__ import annotations

import itertools
from typing import Literal, Sequence

import torch
from torch import nn

from ..models.msad_heads import MSAD_DROPOUT, MSAD_PROJ_DIM, MSADHeads

__all__ = ("MSADLoss", "msad_pair_loss", "soft_cross_entropy")

MSADMode = Literal["paper", "compat"]
PairAggregation = Literal["sum", "single"]

#: Label smoothing of the MSAD cross-entropies (docs/xstars.md §3.3; hard-coded 0.3 in the released code, B8).
MSAD_LABEL_SMOOTHING = 0.3
#: MSAD temperature τ (docs/xstars.md §3.3; 1.0 in the released code).
MSAD_TAU = 1.0


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Row-wise cross-entropy against soft targets with label smoothing ``ε/K`` on every one of the ``K`` classes.

    Same value as ``torch.nn.functional.cross_entropy(logits, targets, reduction="none", label_smoothing=ε)`` with
    probability targets: ``−Σ_k [(1 − ε) t_k + ε/K] log softmax(x)_k``. The targets are used as given (not
    re-normalised), so a column-normalised matrix may be passed transposed (docs/xstars.md §3.3, ``Tᵀ``).

    Args:
        logits: ``[..., K]`` float.
        targets: ``[..., K]`` float, same shape.
        label_smoothing: ε in [0, 1].

    Returns:
        ``[...]`` loss per row, in the dtype of ``logits``.
    """
    k = logits.shape[-1]
    smoothed = targets * (1.0 - label_smoothing) + label_smoothing / k
    return -(smoothed * torch.log_softmax(logits, dim=-1)).sum(dim=-1)


def msad_pair_loss(
    e1: torch.Tensor, e2: torch.Tensor, tau: float = MSAD_TAU, label_smoothing: float = MSAD_LABEL_SMOOTHING
) -> torch.Tensor:
    """Symmetric soft-target contrastive loss of one sensor pair at every token position (docs/xstars.md §3.3).

    Args:
        e1: ``[..., B, E]`` embeddings of the ``sat1`` sensor (after ``Q1``), e.g. ``[N, B, E]`` token-major.
        e2: ``[..., B, E]`` embeddings of the ``sat2`` sensor (after ``Q2``), same shape.
        tau: Temperature; divides the logits and **multiplies** the target similarities (reference behaviour).
        label_smoothing: ε (0.3 in the reference); the smoothing mass per class is ε/B.

    Returns:
        ``[...]`` float32: per position, ``mean_j (CEε(Lᵀ, Tᵀ)_j + CEε(L, T)_j) / 2``.

    Raises:
        ValueError: ``e1`` and ``e2`` differ in shape.
    """
    if e1.shape != e2.shape:
        raise ValueError(f"MSAD embeddings differ in shape: {tuple(e1.shape)} vs {tuple(e2.shape)}")
    e1, e2 = e1.float(), e2.float()
    logits = e2 @ e1.transpose(-1, -2) / tau  # [..., B, B]: rows sat2 samples, columns sat1 samples
    sim = (e1 @ e1.transpose(-1, -2) + e2 @ e2.transpose(-1, -2)) / 2
    targets = torch.softmax(sim * tau, dim=-1)
    loss2 = soft_cross_entropy(logits, targets, label_smoothing)
    loss1 = soft_cross_entropy(logits.transpose(-1, -2), targets.transpose(-1, -2), label_smoothing)
    return ((loss1 + loss2) / 2).mean(dim=-1)


class MSADLoss(nn.Module):
    """MSAD over all token positions and sensor pairs, with its trainable heads (docs/xstars.md §3.2-§3.5).

    The heads are a registered submodule (``self.heads``, an :class:`~training.models.msad_heads.MSADHeads`), so
    ``.to()``/``.train()`` reach them; save ``loss.heads.state_dict()`` under ``msad_heads`` and put
    ``loss.heads.parameters()`` in the optimiser in ``"paper"`` mode.

    Args:
        embed_dim: Backbone token width D (input of ``P``).
        proj_dim: Head width (1024).
        dropout: Head dropout (0.2; active in train mode).
        tau: Temperature τ (1.0).
        label_smoothing: ε (0.3).
        include_cls: Include token 0 (the cls token) as one more position, as the reference does (default True).
        mode: ``"paper"`` (differentiable) or ``"compat"`` (same value, computed without a graph).
        aggregation: ``"sum"``: sum over every sensor pair ``a < b`` (pretraining; 1 pair for 2 sensors, 3 for 3);
            ``"single"``: exactly two inputs required (continual pretraining: frozen old sensor, student new sensor).
        heads: Existing heads to use (e.g. restored from a checkpoint) instead of freshly initialised ones.

    Raises:
        ValueError: Unknown ``mode``/``aggregation``, or ``heads`` of another width than ``embed_dim``.
    """

    def __init__(
        self,
        embed_dim: int,
        proj_dim: int = MSAD_PROJ_DIM,
        dropout: float = MSAD_DROPOUT,
        tau: float = MSAD_TAU,
        label_smoothing: float = MSAD_LABEL_SMOOTHING,
        include_cls: bool = True,
        mode: MSADMode = "paper",
        aggregation: PairAggregation = "sum",
        heads: MSADHeads | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("paper", "compat"):
            raise ValueError(f"MSAD mode must be 'paper' or 'compat', got {mode!r}")
        if aggregation not in ("sum", "single"):
            raise ValueError(f"MSAD aggregation must be 'sum' or 'single', got {aggregation!r}")
        if heads is not None and heads.embed_dim != embed_dim:
            raise ValueError(f"MSAD heads take width {heads.embed_dim}, the backbone gives {embed_dim}")
        self.heads = heads if heads is not None else MSADHeads(embed_dim, proj_dim, dropout)
        self.tau = tau
        self.label_smoothing = label_smoothing
        self.include_cls = include_cls
        self.mode: MSADMode = mode
        self.aggregation: PairAggregation = aggregation

    def per_token(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Loss per token position, summed over the sensor pairs.

        Args:
            features: One ``[B, N, D]`` all-token backbone output per sensor, in sensor order (index 0 = cls),
                e.g. ``[B, 197, D]`` for 224-px views with patch 16. For continual pretraining:
                ``(frozen network on the old sensor, student on the new sensor)``.

        Returns:
            float32 ``[N]`` (``[N − 1]`` with ``include_cls=False``); no graph in ``"compat"`` mode.

        Raises:
            ValueError: Fewer than 2 inputs, not exactly 2 with ``aggregation="single"``, or mismatched shapes.
        """
        if self.mode == "compat":
            with torch.no_grad():
                return self._per_token(features)
        return self._per_token(features)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``L_MSAD``: :meth:`per_token` averaged over token positions; float32 scalar."""
        return self.per_token(features).mean()

    def _per_token(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        n_sensors = len(features)
        if n_sensors < 2:
            raise ValueError(f"MSAD needs features of at least 2 sensors, got {n_sensors}")
        if self.aggregation == "single" and n_sensors != 2:
            raise ValueError(f"MSAD aggregation 'single' takes exactly 2 feature tensors, got {n_sensors}")
        shape = features[0].shape
        for f in features:
            if f.ndim != 3 or f.shape != shape:
                raise ValueError("MSAD features must all be [B, N, D] of one shape, got "
                                 f"{[tuple(x.shape) for x in features]}")
        start = 0 if self.include_cls else 1
        # token-major [N, B, D]: one contrastive problem per position, batched
        z = [self.heads.P(f[:, start:].transpose(0, 1)) for f in features]
        q1: dict[int, torch.Tensor] = {}
        q2: dict[int, torch.Tensor] = {}
        total = None
        for a, b in itertools.combinations(range(n_sensors), 2):
            if a not in q1:
                q1[a] = self.heads.Q.sat1_projection(z[a])
            if b not in q2:
                q2[b] = self.heads.Q.sat2_projection(z[b])
            term = msad_pair_loss(q1[a], q2[b], self.tau, self.label_smoothing)
            total = term if total is None else total + term
        assert total is not None
        return total
