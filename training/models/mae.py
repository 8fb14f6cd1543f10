"""SMARTIES masked-autoencoder pretraining model (docs/smarties.md §1.5, §1.6, §5), written from the paper and
docs/smarties.md.

:class:`SmartiesMAE` wraps an :class:`engine.models.SmartiesEncoder` and adds the MAE decoder. The encoder's
modules are registered on the MAE module *under their own names* (``cls_token``, ``pos_embed``,
``spectrum_projection``, ``blocks``, ``norm``), so ``SmartiesMAE.state_dict()`` is exactly the encoder's key set at top
level plus the MAE-only keys of docs/smarties.md §1.6 (``mask_token``, ``decoder_pos_embed``, ``decoder_embed``,
``decoder_blocks.{i}``, ``decoder_norm``, ``decoder_preds.{0..16}``). The parameters are *shared* with the wrapped
encoder, so :attr:`SmartiesMAE.encoder` is always the trained encoder (for saving encoder-only files).

Inputs are pre-patchified like the reference: ``patches [B, h, w, C, p, p]`` with per-token projection indices
``[B, h, w, C]`` (``[B, L, C, p²]`` / ``[B, L, C]`` also accepted). Unlike the reference, the band count may differ
between tokens and samples: index :data:`PAD` (−1) marks an absent band slot (its pixels are ignored by the embedding
(12 · mean over the *present* bands), the prediction and the loss). With no padding the computation is exactly the
reference's. :func:`images_to_mae_batch` builds these inputs from ``[B, C, H, W]`` images and range keys
(:class:`MAEBatch`, the batch contract of the SMARTIES recipes).

Forward pass (docs/smarties.md §5):

1. optional cross-sensor token mixup of two co-registered views (``torch.rand(B, L)`` → argsort; the first
   ``int(L·(1−mixup_ratio))`` positions keep view-1 tokens, the rest take view-2 tokens; patches, targets and indices
   are mixed together). ``compat=False`` (default, the paper's intent) mixes symmetrically: view 2 gets the
   complementary mix. ``compat=True`` reproduces the reference code (docs/smarties.md §8.1), where view 2 stays the pure
   second sensor;
2. random masking with one noise ``torch.rand(B, L)`` shared by both views: keep ``int(L·(1−mask_ratio))`` tokens;
3. encoder on the kept tokens only (equal to embedding everything and then masking, because the embedding is per
   token; it saves ~75 % of the spectral-projection cost);
4. decoder per view; band ``c`` of a token is predicted by ``decoder_preds[index of c]``. Averaged ranges (17
   ``thermal_infrared_1``, 18 ``blue_2``) have no head of their own: their prediction is the same weighted sum of base
   heads as their embedding (``Σ_k w_k · decoder_preds[k]``, weights from the encoder's ``averaging`` mode);
5. norm-pix loss on masked tokens: per token, mean and unbiased variance over all its band-pixel values,
   ``(t − μ)/√(σ² + 1e-6)``, MSE averaged over the values, then over the masked tokens; two views → ½(L₁ + L₂).

The loss (:func:`norm_pix_loss`) lives here, not in :mod:`training.losses`: it is part of the forward pass — it needs
the mask, the mixed targets and the padded band slots that only the forward knows, and the reference (and its parity
fixtures) returns it from ``forward``.

Checkpoints: ``SmartiesMAE.state_dict()`` *is* the official structure (docs/smarties.md §1.6: the 182/326 encoder keys +
the 136 MAE keys for the published decoder), so :meth:`SmartiesMAE.from_checkpoint` loads the official
``smarties-v1-vit*.safetensors`` (or any encoder-only / full-MAE file the engine reads strictly) and
:meth:`SmartiesMAE.save` writes a file the official code and :func:`engine.load_model` both read (layout ``"mae"``).

The RNG consumption is the reference's (one ``torch.rand(B, L)`` for mixup when two views are given, then one for the
mask), so after the same seed the mask, predictions and loss equal the reference's (tested against
``fixtures/smarties/tiny_mae*.safetensors``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import CheckpointError
from engine.models import (
    Block,
    SmartiesEncoder,
    init_from_scratch,
    load_model,
    read_checkpoint,
    save_encoder,
    sincos_pos_embed,
)
from engine.spectral import NUM_BASE_PROJECTIONS, PROJECTION_SCALER, get_range, projection_for

__all__ = ("PAD", "MAEBatch", "MAEOutput", "SmartiesMAE", "images_to_mae_batch", "norm_pix_loss", "patchify")

#: Projection index marking an absent band slot (padding) in MAE inputs.
PAD = -1

_LN_EPS = 1e-6


@dataclass
class MAEOutput:
    """Result of :meth:`SmartiesMAE.forward`.

    Attributes:
        loss: Scalar loss (½(L₁+L₂) with two views, L₁ otherwise).
        mask: ``[B, L]`` float, 1 = masked (predicted) token, 0 = kept.
        pred1: ``[B, L, C·p²]`` predictions of view 1 (band-major, zeros in padded slots), or ``None`` when only the
            masked tokens were predicted (``all_preds=False``).
        pred2: Same for view 2 (``None`` with one view).
        loss1: Loss of view 1.
        loss2: Loss of view 2 (``None`` with one view).
        indices1: ``[B, L, C]`` projection indices of view 1 after mixup.
        indices2: Same for view 2 (``None`` with one view).
    """

    loss: torch.Tensor
    mask: torch.Tensor
    pred1: Optional[torch.Tensor]
    pred2: Optional[torch.Tensor]
    loss1: torch.Tensor
    loss2: Optional[torch.Tensor]
    indices1: torch.Tensor
    indices2: Optional[torch.Tensor]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, h, w, C, p, p]``: patch (i, j) of band c holds rows i·p.., cols j·p..
    (docs/smarties.md §1.1)."""
    b, c, height, width = images.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"image size {height}×{width} px is not a multiple of the patch size {p}")
    return images.reshape(b, c, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5).contiguous()


def norm_pix_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-token norm-pix MSE.

    Args:
        pred: ``[N, C, p²]`` predictions.
        target: ``[N, C, p²]`` normalised input pixels.
        valid: ``[N, C]`` bool, False for padded band slots.

    Returns:
        ``[N]``: per token, the MSE between ``pred`` and ``(t − μ)/√(σ² + 1e-6)`` where μ and the unbiased σ² run over
        all valid band-pixel values of the token.
    """
    w = valid[..., None].to(target.dtype).expand_as(target)
    n = w.sum(dim=(1, 2))
    mean = (target * w).sum(dim=(1, 2)) / n
    centred = (target - mean[:, None, None]) * w
    var = (centred**2).sum(dim=(1, 2)) / (n - 1).clamp_min(1)
    normed = centred / (var[:, None, None] + 1e-6).sqrt()
    return (((pred - normed) * w) ** 2).sum(dim=(1, 2)) / n


# ---------------------------------------------------------------------------------------------------- inputs
class MAEBatch(Protocol):
    """What the SMARTIES recipes train on (:mod:`training.recipes.smarties_mae`, the batch contract): the inputs of
    :meth:`SmartiesMAE.forward` as attributes (:class:`training.data.rasters.Batch`) or mapping keys
    (:func:`images_to_mae_batch`)."""

    patches: torch.Tensor
    indices: torch.Tensor
    second_patches: Optional[torch.Tensor]
    second_indices: Optional[torch.Tensor]


def images_to_mae_batch(
    images: torch.Tensor,
    keys: Sequence[str],
    patch_size: int,
    second_images: Optional[torch.Tensor] = None,
    second_keys: Optional[Sequence[str]] = None,
) -> dict[str, Optional[torch.Tensor]]:
    """``[B, C, H, W]`` images + their SMARTIES range keys → a batch of the recipe's contract.

    Args:
        images: View 1, float32 normalised, ``H`` and ``W`` multiples of ``patch_size``.
        keys: C range keys of view 1 (``"red_2"``, ``"microwave_1"``, …), shared by the batch.
        patch_size: Patch side p.
        second_images: Optional view 2 of the same windows (same ``H``, ``W``).
        second_keys: Its range keys.

    Returns:
        ``{"patches", "indices", "second_patches", "second_indices"}`` (``[B, h, w, C, p, p]`` / ``[B, h, w, C]``).

    Raises:
        ValueError: A key is not a trainable range (an interpolated projection or a disabled range has no MAE head),
            the counts differ, or only one of ``second_images``/``second_keys`` is given.
    """

    def one(x: torch.Tensor, ks: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != len(ks):
            raise ValueError(f"images {tuple(x.shape)} do not match {len(ks)} band keys (expected [B, C, H, W])")
        idx = []
        for k in ks:
            if not isinstance(k, str):
                raise ValueError(f"band {k!r} is not a SMARTIES range key: the MAE has no pixel head for it")
            r = get_range(k)
            if r.is_disabled:
                raise ValueError(f"range {k} is disabled in SMARTIES")
            idx.append(r.projection_idx)
        patches = patchify(x.float(), patch_size)
        b, h, w, c = patches.shape[:4]
        return patches, torch.tensor(idx, dtype=torch.long).expand(b, h, w, c).contiguous()

    if (second_images is None) != (second_keys is None):
        raise ValueError("give both second_images and second_keys, or neither")
    p1, i1 = one(images, keys)
    p2 = i2 = None
    if second_images is not None:
        p2, i2 = one(second_images, second_keys)
    return {"patches": p1, "indices": i1, "second_patches": p2, "second_indices": i2}


class SmartiesMAE(nn.Module):
    """SMARTIES MAE: spectrum-aware encoder + lightweight decoder with one pixel head per base range.

    Args:
        encoder: The encoder to pretrain (its parameters are shared, not copied).
        decoder_dim: Decoder width (512 in SMARTIES).
        decoder_depth: Decoder blocks (8 in SMARTIES).
        decoder_heads: Decoder attention heads (16 in SMARTIES).
        mlp_ratio: Decoder MLP ratio.
        mask_ratio: Fraction of masked tokens (0.75).
        mixup_ratio: Fraction of view-1 tokens replaced by view-2 tokens (0.5).
        compat: Reproduce the reference's asymmetric mixup (view 2 never mixed, docs/smarties.md §8.1).
    """

    def __init__(
        self,
        encoder: SmartiesEncoder,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        mixup_ratio: float = 0.5,
        compat: bool = False,
    ) -> None:
        super().__init__()
        # Not registered as a submodule (that would prefix every key with "encoder."): the encoder's own modules are
        # registered below under their checkpoint names and shared with it.
        self.__dict__["_encoder"] = encoder
        self.cls_token = encoder.cls_token
        self.pos_embed = encoder.pos_embed
        self.spectrum_projection = encoder.spectrum_projection
        self.blocks = encoder.blocks
        self.norm = encoder.norm

        self.decoder_dim = decoder_dim
        self.mask_ratio = mask_ratio
        self.mixup_ratio = mixup_ratio
        self.compat = compat
        p2 = encoder.patch_size**2
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(decoder_dim, encoder.grid_size), requires_grad=False)
        hidden = int(decoder_dim * mlp_ratio)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, hidden) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=_LN_EPS)
        self.decoder_preds = nn.ModuleList(nn.Linear(decoder_dim, p2, bias=True) for _ in range(NUM_BASE_PROJECTIONS))

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 16,
        grid_size: int = 14,
        averaging: str = "linear",
        seed: Optional[int] = None,
        **kwargs,
    ) -> "SmartiesMAE":
        """New encoder + decoder with MAE initialisation (docs/smarties.md §1.5); ``kwargs`` go to the constructor."""
        encoder = SmartiesEncoder(embed_dim, depth, num_heads, patch_size, grid_size, averaging=averaging)
        model = cls(encoder, **kwargs)
        model.init_weights(seed)
        return model

    def init_weights(self, seed: Optional[int] = None) -> "SmartiesMAE":
        """xavier-uniform Linears, zero biases, LN 1/0, CLS and mask token N(0, 0.02), fixed sin-cos tables."""
        if seed is not None:
            torch.manual_seed(seed)
        init_from_scratch(self.encoder)
        return self._init_decoder()

    def _init_decoder(self) -> "SmartiesMAE":
        """MAE initialisation of the decoder only (docs/smarties.md §1.5), from torch's current RNG state."""
        for module in [self.decoder_embed, self.decoder_norm, *self.decoder_blocks.modules(), *self.decoder_preds]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)
        with torch.no_grad():
            self.decoder_pos_embed.copy_(sincos_pos_embed(self.decoder_dim, self.encoder.grid_size))
        return self

    @property
    def encoder(self) -> SmartiesEncoder:
        """The wrapped encoder (shares its parameters with this module)."""
        return self.__dict__["_encoder"]

    # Encoder geometry, so that engine.models.save_encoder records it for a full-MAE file too.
    @property
    def embed_dim(self) -> int:
        """Encoder token dimension D."""
        return self.encoder.embed_dim

    @property
    def depth(self) -> int:
        """Encoder blocks."""
        return self.encoder.depth

    @property
    def num_heads(self) -> int:
        """Encoder attention heads."""
        return self.encoder.num_heads

    @property
    def patch_size(self) -> int:
        """Patch side p in pixels."""
        return self.encoder.patch_size

    @property
    def grid_size(self) -> int:
        """Tokens per side G of the position tables."""
        return self.encoder.grid_size

    @property
    def mlp_hidden(self) -> int:
        """Encoder MLP hidden width."""
        return self.encoder.mlp_hidden

    @property
    def averaging(self) -> str:
        """Weights of the averaged ranges 17/18 (:mod:`engine.spectral`)."""
        return self.encoder.averaging

    @property
    def decoder_depth(self) -> int:
        """Decoder blocks."""
        return len(self.decoder_blocks)

    @property
    def decoder_heads(self) -> int:
        """Decoder attention heads."""
        return self.decoder_blocks[0].attn.num_heads if len(self.decoder_blocks) else 0

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_checkpoint(
        cls,
        path_or_name: Union[str, "os.PathLike[str]"],
        num_heads: Optional[int] = None,
        averaging: Optional[str] = None,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: Optional[int] = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> "SmartiesMAE":
        """An MAE continued from a SMARTIES checkpoint: the official files, ours, encoder-only or full MAE.

        The file is read strictly by the engine (:func:`engine.load_model`, docs/smarties.md §1.6). A full-MAE file
        (layout ``"mae"``: the official ``smarties-v1-vit*.safetensors`` when it carries the decoder, or one written by
        :meth:`save`) restores the decoder too, its width and depth read from the tensors; an encoder-only file gets a
        freshly initialised decoder of ``decoder_dim``/``decoder_depth`` (MAE init, docs/smarties.md §1.5; seeded with
        ``seed``).

        Args:
            path_or_name: ``.safetensors`` file, folder or registry name (``"smarties-vit-b"``).
            num_heads: Encoder heads (default: the file's config, the registry, or D/64 — see
                :func:`engine.load_model`).
            averaging: Averaged-range weights (default: the file's config, else ``"linear"``).
            decoder_dim: Width of a new decoder (encoder-only files; 512 in SMARTIES, docs/smarties.md §1.5).
            decoder_depth: Depth of a new decoder (8 in SMARTIES).
            decoder_heads: Decoder heads (default: the file's config ``decoder_heads``, else 16 as published).
            seed: Seed of a new decoder's initialisation.
            **kwargs: ``mask_ratio``, ``mixup_ratio``, ``compat``, ``mlp_ratio``.

        Returns:
            The MAE in train mode, float32 on CPU.

        Raises:
            engine.errors.ModelNotAvailableError: Unknown name or missing file.
            engine.errors.CheckpointError: The file breaks the strict key rule, or carries a head instead of a
                decoder, or ``decoder_heads`` does not divide the decoder width.
        """
        encoder = load_model(path_or_name, num_heads=num_heads, averaging=averaging)
        layout = encoder.provenance.layout
        if layout not in ("encoder", "mae"):
            raise CheckpointError(f"{encoder.provenance.weights_path}: layout {layout!r} holds a task head, not an MAE "
                                  "decoder; continue pretraining from an encoder-only or full-MAE checkpoint")
        if getattr(encoder, "global_pool", False):
            raise CheckpointError(f"{encoder.provenance.weights_path}: a global-pool (fc_norm) checkpoint is not an "
                                  "MAE encoder")
        extra: Mapping[str, torch.Tensor] = {}
        config: Mapping[str, Any] = {}
        if layout == "mae":
            ckpt = read_checkpoint(encoder.provenance.weights_path)
            extra, config = ckpt.extra_state, ckpt.config
            decoder_dim, decoder_depth = ckpt.decoder.embed_dim, ckpt.decoder.depth
            kwargs.setdefault("mlp_ratio", ckpt.decoder.mlp_hidden / ckpt.decoder.embed_dim)
        heads = decoder_heads or config.get("decoder_heads") or 16
        if decoder_dim % heads:
            raise CheckpointError(f"decoder_heads={heads} does not divide the decoder width {decoder_dim}; pass "
                                  "decoder_heads=")
        encoder.train()
        model = cls(encoder, decoder_dim=decoder_dim, decoder_depth=decoder_depth, decoder_heads=heads, **kwargs)
        if layout == "mae":
            model.load_state_dict({**encoder.state_dict(), **extra}, strict=True)
        else:
            if seed is not None:
                torch.manual_seed(seed)
            model._init_decoder()
        return model.train()

    def save(self, path: Union[str, "os.PathLike[str]"], config: Optional[Mapping[str, Any]] = None,
             dtype: Optional[torch.dtype] = None) -> Path:
        """Write the full MAE (encoder + decoder, the official key layout of docs/smarties.md §1.6) as ``.safetensors``.

        Written atomically and checked with the strict reader by :func:`engine.models.save_encoder`; the
        JSON ``config`` metadata records the encoder geometry, ``decoder_heads`` and ``config``. The file loads in
        :func:`engine.load_model` (encoder) and :meth:`from_checkpoint` (everything).

        Args:
            path: Destination ``.safetensors``.
            config: Extra JSON-serialisable metadata.
            dtype: Storage dtype of floating tensors (float32 when None).

        Returns:
            The written path.
        """
        meta = {**(config or {}), "decoder_heads": self.decoder_heads, "decoder_dim": self.decoder_dim,
                "decoder_depth": self.decoder_depth}
        return save_encoder(self, path, meta, dtype=dtype)

    def train(self, mode: bool = True) -> "SmartiesMAE":
        super().train(mode)
        self.encoder.train(mode)
        return self

    # ------------------------------------------------------------------ pieces
    def _embed(self, patches: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``[B, n, C, p²]`` + ``[B, n, C]`` (PAD allowed) → tokens ``[B, n, D]`` = 12 · mean over present bands."""
        b, n, c, p2 = patches.shape
        enc = self.encoder
        weight, bias = self.spectrum_projection.stacked()
        flat = patches.reshape(-1, p2)
        idx = indices.reshape(-1).long()

        def embed_group(r: int, rows: torch.Tensor) -> torch.Tensor:
            projection = projection_for(r, enc.averaging)
            if len(projection.terms) == 1 and projection.terms[0][1] == 1.0:
                w_r, b_r = weight[projection.terms[0][0]], bias[projection.terms[0][0]]
            else:
                w_r = sum(weight[k] * wk for k, wk in projection.terms)
                b_r = sum(bias[k] * wk for k, wk in projection.terms)
            return F.linear(flat[rows].to(weight.dtype), w_r, b_r)

        emb = _grouped(idx, embed_group, enc.embed_dim, weight.dtype)
        valid = (indices != PAD).to(emb.dtype)
        count = valid.sum(-1, keepdim=True)
        if bool((count == 0).any()):
            raise ValueError("a token has no band (all projection indices are PAD)")
        return emb.reshape(b, n, c, enc.embed_dim).sum(2) / count * PROJECTION_SCALER

    def _predict(self, tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Decoder tokens ``[N, Dd]`` + indices ``[N, C]`` → per-band pixels ``[N, C, p²]`` (zeros where PAD)."""
        n, c = indices.shape
        p2 = self.decoder_preds[0].out_features
        idx = indices.reshape(-1).long()
        rows = torch.arange(n, device=tokens.device).repeat_interleave(c)

        def predict_group(r: int, sel: torch.Tensor) -> torch.Tensor:
            src = tokens[rows[sel]]
            terms = projection_for(r, self.encoder.averaging).terms
            if len(terms) == 1 and terms[0][1] == 1.0:
                return self.decoder_preds[terms[0][0]](src)
            return sum(self.decoder_preds[k](src) * wk for k, wk in terms)

        return _grouped(idx, predict_group, p2, tokens.dtype).reshape(n, c, p2)

    def _encode_kept(self, patches: torch.Tensor, indices: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Embed and encode the kept tokens: ``[B, L, C, p²]`` → latent ``[B, 1 + keep, D]`` (after ``norm``)."""
        b, _, c, p2 = patches.shape
        kp = torch.gather(patches, 1, ids_keep[:, :, None, None].expand(-1, -1, c, p2))
        ki = torch.gather(indices, 1, ids_keep[:, :, None].expand(-1, -1, c))
        x = self._embed(kp, ki)
        pos = self.pos_embed[:, 1:].expand(b, -1, -1)
        x = x + torch.gather(pos, 1, ids_keep[:, :, None].expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def _decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Latent ``[B, 1 + keep, D]`` → decoder patch tokens ``[B, L, Dd]`` (CLS dropped)."""
        x = self.decoder_embed(latent)
        b, length = ids_restore.shape
        masked = self.mask_token.expand(b, length + 1 - x.shape[1], -1)
        seq = torch.cat([x[:, 1:], masked], dim=1)
        seq = torch.gather(seq, 1, ids_restore[:, :, None].expand(-1, -1, seq.shape[-1]))
        x = torch.cat([x[:, :1], seq], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_norm(x)[:, 1:]

    # ------------------------------------------------------------------ forward
    @staticmethod
    def _flatten(patches: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if patches.ndim == 6:
            b, h, w, c, p, _ = patches.shape
            patches = patches.reshape(b, h * w, c, p * p)
        if indices.ndim == 4:
            b, h, w, c = indices.shape
            indices = indices.reshape(b, h * w, c)
        if patches.shape[:3] != indices.shape:
            raise ValueError(f"patches {tuple(patches.shape)} and indices {tuple(indices.shape)} do not match")
        return patches, indices.long()

    @staticmethod
    def _pad_bands(patches: torch.Tensor, indices: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        extra = c - patches.shape[2]
        if extra <= 0:
            return patches, indices
        return F.pad(patches, (0, 0, 0, extra)), F.pad(indices, (0, extra), value=PAD)

    def random_masking(self, b: int, length: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ``torch.rand(B, L)`` → ``(ids_keep [B, keep], ids_restore [B, L], mask [B, L])`` (1 = masked)."""
        keep = int(length * (1 - self.mask_ratio))
        noise = torch.rand(b, length, device=device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones(b, length, device=device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return ids_shuffle[:, :keep], ids_restore, mask

    def mixup_selector(self, b: int, length: int, device: torch.device) -> torch.Tensor:
        """One ``torch.rand(B, L)`` → bool ``[B, L]``, True where view 1 takes the view-2 token."""
        keep = int(length * (1 - self.mixup_ratio))
        ids = torch.argsort(torch.rand(b, length, device=device), dim=1)
        take = torch.zeros(b, length, dtype=torch.bool, device=device)
        return take.scatter(1, ids[:, keep:], True)

    def forward(
        self,
        patches: torch.Tensor,
        indices: torch.Tensor,
        second_patches: Optional[torch.Tensor] = None,
        second_indices: Optional[torch.Tensor] = None,
        all_preds: bool = True,
    ) -> MAEOutput:
        """MAE forward on one view, or on two co-registered views with cross-sensor token mixup.

        Args:
            patches: ``[B, h, w, C, p, p]`` (or ``[B, L, C, p²]``) normalised pixels of view 1.
            indices: ``[B, h, w, C]`` (or ``[B, L, C]``) projection indices 0..18, :data:`PAD` for absent bands.
            second_patches: Optional view 2 (same grid; its band count may differ, it is padded).
            second_indices: Projection indices of view 2.
            all_preds: Predict every token (``pred1``/``pred2`` filled, reference layout); False predicts only the
                masked tokens (faster, same loss).

        Returns:
            :class:`MAEOutput`.
        """
        x1, i1 = self._flatten(patches, indices)
        b, length, _, p2 = x1.shape
        if length != self.encoder.grid_size**2:
            raise ValueError(f"got {length} tokens, the position tables hold {self.encoder.grid_size ** 2}")
        device = x1.device
        views = [(x1, i1)]
        if second_patches is not None:
            if second_indices is None:
                raise ValueError("second_patches needs second_indices")
            x2, i2 = self._flatten(second_patches, second_indices)
            c = max(x1.shape[2], x2.shape[2])
            x1, i1 = self._pad_bands(x1, i1, c)
            x2, i2 = self._pad_bands(x2, i2, c)
            take = self.mixup_selector(b, length, device)
            t_x, t_i = take[:, :, None, None], take[:, :, None]
            mixed1 = (torch.where(t_x, x2, x1), torch.where(t_i, i2, i1))
            mixed2 = (x2, i2) if self.compat else (torch.where(t_x, x1, x2), torch.where(t_i, i1, i2))
            views = [mixed1, mixed2]
        ids_keep, ids_restore, mask = self.random_masking(b, length, device)
        masked = mask.bool()

        losses, preds = [], []
        for x, idx in views:
            dec = self._decode(self._encode_kept(x, idx, ids_keep), ids_restore)
            if all_preds:
                pred = self._predict(dec.reshape(b * length, -1), idx.reshape(b * length, -1))
                per_token = norm_pix_loss(pred, x.reshape(b * length, -1, p2), idx.reshape(b * length, -1) != PAD)
                loss = (per_token.reshape(b, length) * mask).sum() / mask.sum()
                preds.append(pred.reshape(b, length, -1))
            else:
                pred = self._predict(dec[masked], idx[masked])
                loss = norm_pix_loss(pred, x[masked], idx[masked] != PAD).mean()
                preds.append(None)
            losses.append(loss)
        total = losses[0] if len(losses) == 1 else 0.5 * (losses[0] + losses[1])
        two = len(views) == 2
        return MAEOutput(
            loss=total,
            mask=mask,
            pred1=preds[0],
            pred2=preds[1] if two else None,
            loss1=losses[0],
            loss2=losses[1] if two else None,
            indices1=views[0][1],
            indices2=views[1][1] if two else None,
        )

    @torch.no_grad()
    def knn_features(self, patches: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """CLS after the final norm of the *unmasked* encoder (the reference's ``knn_feats=True``): ``[B, D]``."""
        x, idx = self._flatten(patches, indices)
        length = x.shape[1]
        ids = torch.arange(length, device=x.device).expand(x.shape[0], -1)
        return self._encode_kept(x, idx, ids)[:, 0]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's state dict (exactly the encoder keys, no prefix)."""
        return self.encoder.state_dict()


def _grouped(idx: torch.Tensor, fn, width: int, dtype: torch.dtype) -> torch.Tensor:
    """Apply ``fn(r, positions) → [len(positions), width]`` to each group of equal index ``r`` (PAD rows → 0).

    Groups are computed on the sorted order and put back with one gather (no per-group copy of the whole output).
    """
    order = torch.argsort(idx, stable=True)
    sorted_idx = idx[order]
    values, counts = torch.unique_consecutive(sorted_idx, return_counts=True)
    parts, start = [], 0
    for r, count in zip(values.tolist(), counts.tolist()):
        sel = order[start : start + count]
        start += count
        if r == PAD:
            parts.append(torch.zeros(count, width, dtype=dtype, device=idx.device))
        else:
            parts.append(fn(int(r), sel))
    out_sorted = torch.cat(parts, dim=0)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return out_sorted[inverse]
