"""DINO / X-STARS Vision Transformer, DINO projection head and multi-crop wrapper (docs/xstars.md §1).

X-STARS (Marsocci et al., IEEE JSTARS 2025, arXiv 2405.09922) trains DINO's ViT on RGB images of several sensors.
Written from the papers and docs/xstars.md, not from the X-STARS or DINO code. Parameter names are DINO's, so a
DINO/X-STARS state dict (``backbone.*`` without the prefix) loads with ``load_state_dict(strict=True)``:

- :class:`DinoViT`: ``cls_token`` [1, 1, D], ``pos_embed`` [1, 1 + G², D] (learned), ``patch_embed.proj``
  (Conv2d 3 → D, kernel = stride = p), ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
  ``norm``. Pre-norm blocks, qkv bias, LayerNorm eps 1e-6, exact GELU, MLP ratio 4, stochastic depth rising linearly
  from 0 to ``drop_path_rate`` over the blocks, no dropout, trunc-normal(0.02) init (docs/xstars.md §1).
- :class:`DINOHead`: ``mlp`` (Linear → GELU → … → Linear to the bottleneck) → L2-normalise → ``last_layer``
  (weight-normed Linear without bias). The weight norm uses :func:`torch.nn.utils.parametrizations.weight_norm`, so
  its tensors are ``last_layer.parametrizations.weight.original0`` (g, DINO's ``weight_g``) and ``.original1``
  (v, DINO's ``weight_v``); :mod:`engine.models.dino_checkpoint` maps the names both ways.
- :class:`MultiCropWrapper`: ``backbone`` + ``head``; consecutive crops of equal width share one backbone forward,
  the CLS features are concatenated and the head runs once (docs/xstars.md §1).

For the engine, :meth:`DinoViT.encode` has the signature of the SMARTIES encoder's ``encode``: the band list only
checks that the channels are red, green and blue in that order (the model declares them in
:attr:`DinoViT.band_families`; :func:`engine.spectral.select_band_families` reduces a raster's mapping to them), and the
per-channel normalisation the model expects is :attr:`DinoViT.input_norm` (:class:`ChannelNorm`).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..errors import BandResolutionError
from ..spectral import Averaging, ChannelNorm, projection_for
from .protocol import Provenance
from .vit import LN_EPS, Block, block_grids, check_blocks

__all__ = (
    "ARCHS",
    "DINOHead",
    "DinoViT",
    "MultiCropWrapper",
    "dino_vit",
    "xstars_norm",
)

#: DINO architectures: name → (D, depth, heads); docs/xstars.md §1 table. All use patch 16 and MLP ratio 4.
ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}

#: Input channels of every DINO/X-STARS backbone: RGB (docs/xstars.md §1, §5).
IN_CHANS = 3
#: DINO's offset added to the target grid size before bicubic resizing of the position grid (docs/xstars.md §1).
_POS_OFFSET = 0.1
_STATS_FILE = Path(__file__).resolve().parent / "data" / "xstars_stats.json"


# ---------------------------------------------------------------------------------------------------- normalisation
@lru_cache(maxsize=1)
def _stats_table() -> dict[str, Any]:
    return json.loads(_STATS_FILE.read_text(encoding="utf-8"))


def xstars_norm(name: Optional[str] = None) -> ChannelNorm:
    """An X-STARS normalisation preset (docs/xstars.md §5, stored in ``engine/data/xstars_stats.json``).

    X-STARS normalises the RGB images of every sensor with one joint mean/std (the run's ``--mean/--std``); use the
    preset of the run that trained the weights when the checkpoint does not record it.

    Args:
        name: ``"sentinel"``, ``"landsat"``, ``"spot"``, ``"sentinel_landsat"`` (the README's pooled values, the
            default) or ``"spot_sentinel"`` (``pretraining.py``'s argparse default).

    Returns:
        Means and standard deviations of red, green, blue on [0, 1].

    Raises:
        ValueError: Unknown preset name (the message lists the names).
    """
    table = _stats_table()
    key = table["default"] if name is None else str(name).strip().lower()
    preset = table["presets"].get(key)
    if preset is None:
        raise ValueError(f"unknown X-STARS normalisation preset {name!r}; use one of {', '.join(table['presets'])}")
    return ChannelNorm(tuple(preset["mean"]), tuple(preset["std"]), f"preset {key} (docs/xstars.md §5)")


# ---------------------------------------------------------------------------------------------------- layers
class PatchEmbed(nn.Module):
    """``proj``: Conv2d(3, D, kernel p, stride p); [B, 3, H, W] → tokens [B, (H/p)·(W/p), D] in row-major order."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(IN_CHANS, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _init_linear_layernorm(module: nn.Module) -> None:
    """DINO init (docs/xstars.md §1): Linear weights trunc-normal(0.02), biases 0; LayerNorm 1/0.

    Conv2d keeps torch's initialisation.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


_FAMILY_RE = re.compile(r"^(red|green|blue)_\d+$")


# ---------------------------------------------------------------------------------------------------- backbone
class DinoViT(nn.Module):
    """DINO's Vision Transformer as used by X-STARS (docs/xstars.md §1), with the exact DINO parameter names.

    Args:
        embed_dim: Token dimension D (192 tiny, 384 small, 768 base, 1024 large).
        depth: Number of blocks.
        num_heads: Attention heads (a divisor of D).
        patch_size: Patch side p in pixels (16 for X-STARS).
        img_size: Side of the images the position table was learned for (224 → a 14 × 14 grid); other sizes that
            are multiples of p use the table resized bicubically with DINO's +0.1 offset.
        mlp_ratio: MLP hidden width as a multiple of D (4).
        drop_path_rate: Stochastic depth of the last block; block i uses ``rate · i / (depth − 1)`` (0.1 for the
            X-STARS student, 0 for the teacher and for inference; only active in training mode).

    Attributes:
        cls_token: ``[1, 1, D]`` float32.
        pos_embed: ``[1, 1 + G², D]`` float32, learned, G = img_size / p.
        band_families: ``("red", "green", "blue")``: the range families of the 3 input channels, in order; the
            engine selects one raster band of each (:func:`engine.spectral.select_band_families`).
        input_norm: :class:`ChannelNorm` applied after scaling inputs to [0, 1] (the checkpoint's ``args.mean/std``
            once loaded; :func:`xstars_norm` ``("sentinel_landsat")`` until then).
        averaging: ``"linear"``; unused (no spectral projections), present so the engine's band resolver is called
            the same way for every model.
        grid_output: What ``encode(..., "grid")`` returns, recorded in embedding rasters.

    Raises:
        ValueError: ``num_heads`` does not divide D, ``img_size`` is not a multiple of p, or a negative rate.
    """

    backend = "torch"
    band_families: Optional[tuple[str, ...]] = ("red", "green", "blue")
    averaging: Averaging = "linear"
    grid_output = "last-block patch tokens after the final norm"
    num_heads_source: str  # set by engine.models.build_dino_model

    def __init__(
        self,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        patch_size: int = 16,
        img_size: int = 224,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.mlp_hidden = int(embed_dim * mlp_ratio)
        self.input_norm: Optional[ChannelNorm] = xstars_norm()
        self.provenance = Provenance()
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size**2, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # DINO's float32 schedule
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, self.mlp_hidden, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_linear_layernorm)

    # ------------------------------------------------------------------ tokens
    def pos_embed_for(self, rows: int, cols: int) -> torch.Tensor:
        """Position table ``[1, 1 + rows·cols, D]`` for a token grid: the stored one, or DINO's bicubic resize.

        The patch part of the stored G × G table is resized with ``scale_factor = ((rows + 0.1) / G, (cols + 0.1) / G)``
        (bicubic, align_corners False), as DINO does; a 96-px crop gives 6 × 6 + 1 = 37 positions (docs/xstars.md §1).
        """
        g = self.grid_size
        if (rows, cols) == (g, g):
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        grid = self.pos_embed[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, scale_factor=((rows + _POS_OFFSET) / g, (cols + _POS_OFFSET) / g), mode="bicubic",
            align_corners=False,
        )
        if tuple(grid.shape[-2:]) != (rows, cols):  # cannot happen for grids below ~10⁴ tokens per side
            raise RuntimeError(f"position grid resized to {tuple(grid.shape[-2:])}, expected {(rows, cols)}")
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)], dim=1)

    def forward(self, x: torch.Tensor, return_all_tokens: bool = False) -> torch.Tensor:
        """Run the backbone.

        Args:
            x: ``[B, 3, H, W]`` float normalised RGB; H and W multiples of the patch size.
            return_all_tokens: Return every token instead of the CLS token (X-STARS' ``patchwise_msad``).

        Returns:
            After the final LayerNorm: the CLS token ``[B, D]``, or all tokens ``[B, 1 + (H/p)·(W/p), D]`` with
            index 0 = CLS and the patch tokens in row-major order.

        Raises:
            ValueError: Not 4-D, not 3 channels, or a side that is not a multiple of the patch size.
        """
        tokens = self._input_tokens(x)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return tokens if return_all_tokens else tokens[:, 0]

    def _input_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Checked patch embedding + CLS + positions: ``[B, 3, H, W]`` → ``[B, 1 + (H/p)·(W/p), D]``."""
        if x.ndim != 4 or x.shape[1] != IN_CHANS:
            raise ValueError(f"x must be [B, 3, H, W] (RGB), got shape {tuple(x.shape)}")
        p = self.patch_size
        if x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"image size {x.shape[2]}×{x.shape[3]} px is not a multiple of the patch size {p}")
        tokens = self.patch_embed(x.to(self.cls_token.dtype))
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.pos_embed_for(x.shape[2] // p, x.shape[3] // p)

    def encode_blocks(self, x: torch.Tensor, bands: Sequence[Any], blocks: Sequence[int]) -> list[torch.Tensor]:
        """Patch-token grids ``[B, D, H/p, W/p]`` of the listed 0-based blocks, before the final norm.

        The same contract as :meth:`engine.models.smarties.SmartiesEncoder.encode_blocks`, for dense heads.

        Raises:
            ValueError: Bad shape or block indices. engine.errors.BandResolutionError: ``bands`` not red, green, blue.
        """
        check_blocks(blocks, len(self.blocks))
        self.check_bands(list(bands))
        rows, cols = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        return block_grids(self.blocks, self._input_tokens(x), blocks, rows, cols, self.embed_dim)

    # ------------------------------------------------------------------ engine interface
    def check_bands(self, bands: Sequence[Any]) -> None:
        """Check that a band list is one red, one green and one blue band, in that order.

        Args:
            bands: Range keys (``"red_2"``), projection indices or :class:`~engine.spectral.Projection` objects, as
                :func:`engine.maps.embed_raster` passes them.

        Raises:
            engine.errors.BandResolutionError: Wrong count, order or family (interpolated bands have none).
        """
        labels = [projection_for(b).label for b in bands]
        families = [m.group(1) if (m := _FAMILY_RE.match(label)) else label for label in labels]
        # always set for this model; Optional only because the Encoder protocol declares it so
        wanted = cast("tuple[str, ...]", self.band_families)
        if tuple(families) != wanted:
            raise BandResolutionError(
                f"this X-STARS/DINO model takes {len(wanted)} bands, "
                f"{', '.join(wanted)} in that order (range keys red_*, green_*, blue_*), got "
                f"{labels}; select them with engine.spectral.select_band_families(mapping, model.band_families)"
            )

    def encode(
        self,
        x: torch.Tensor,
        bands: Sequence[Any],
        output: Literal["cls", "grid", "tokens"] = "cls",
    ) -> torch.Tensor:
        """Encode normalised RGB images (the engine's model interface, as ``SmartiesEncoder.encode``).

        Args:
            x: ``[B, 3, H, W]`` float32, red/green/blue scaled to [0, 1] then normalised with :attr:`input_norm`;
                H and W multiples of the patch size (224 uses the stored position grid).
            bands: The 3 band specs of the channels; they must be red, green, blue in that order
                (:meth:`check_bands`). The backbone has one RGB stem, so they select nothing else.
            output: ``"cls"`` → ``[B, D]`` CLS token after the final norm; ``"grid"`` → ``[B, D, H/p, W/p]`` patch
                tokens of the last block **after** the final norm (what X-STARS' MSAD aligns and DINO's dense
                features use; SMARTIES' grid is before its norm); ``"tokens"`` → ``[B, 1 + (H/p)·(W/p), D]`` every
                token after the final norm, CLS first (``forward(x, return_all_tokens=True)``).

        Returns:
            The requested float tensor.

        Raises:
            ValueError: Bad shape or ``output``.
            engine.errors.BandResolutionError: ``bands`` are not red, green, blue.
        """
        if output not in ("cls", "grid", "tokens"):
            raise ValueError(f"output must be 'cls', 'grid' or 'tokens', got {output!r}")
        self.check_bands(list(bands))
        tokens = self.forward(x, return_all_tokens=output != "cls")
        if output != "grid":
            return tokens
        p = self.patch_size
        rows, cols = x.shape[2] // p, x.shape[3] // p
        return tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], self.embed_dim, rows, cols)

    def num_parameters(self) -> int:
        """Number of parameters, position table included (docs/xstars.md §1 table: 5.52 M for vit_tiny)."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        """The architecture, shown in the module's ``repr``."""
        return (
            f"embed_dim={self.embed_dim}, depth={self.depth}, num_heads={self.num_heads}, "
            f"patch_size={self.patch_size}, grid_size={self.grid_size}"
        )


def dino_vit(arch: str, patch_size: int = 16, drop_path_rate: float = 0.0, img_size: int = 224) -> DinoViT:
    """A DINO ViT by architecture name (docs/xstars.md §1 table).

    Args:
        arch: ``"vit_tiny"`` (D 192, 12 blocks, 3 heads), ``"vit_small"`` (384, 12, 6), ``"vit_base"`` (768, 12, 12)
            or ``"vit_large"`` (1024, 24, 16).
        patch_size: Patch side in pixels.
        drop_path_rate: Stochastic depth of the last block (0.1 for the X-STARS student).
        img_size: Side of the learned position grid's images in pixels.

    Returns:
        A freshly initialised :class:`DinoViT`.

    Raises:
        ValueError: Unknown ``arch`` (the message lists the names).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown DINO architecture {arch!r}; use one of {', '.join(ARCHS)}")
    dim, depth, heads = ARCHS[arch]
    return DinoViT(dim, depth, heads, patch_size, img_size, drop_path_rate=drop_path_rate)


# ---------------------------------------------------------------------------------------------------- head, wrapper
class DINOHead(nn.Module):
    """DINO projection head (docs/xstars.md §1): MLP → L2-normalise → weight-normed Linear without bias.

    With the defaults: Linear(D, 2048) → GELU → Linear(2048, 2048) → GELU → Linear(2048, 256) → L2 → last_layer
    (256 → out_dim). ``nlayers = 1`` is a single Linear(D, bottleneck) (key ``mlp.weight``); otherwise the Linears
    are ``mlp.0``, ``mlp.2``, …, ``mlp.{2(nlayers − 1)}``. No batch norm (X-STARS leaves it off).

    Args:
        in_dim: Input width D.
        out_dim: Output width K (65536 for X-STARS).
        hidden_dim: Hidden width of the MLP (2048).
        bottleneck_dim: Width before the last layer (256).
        nlayers: Linear layers in the MLP (3; ≥ 1).
        norm_last_layer: Freeze the weight-norm gain g at 1 (True for the X-STARS student and always for the teacher).

    Attributes:
        last_layer: ``nn.Linear(bottleneck_dim, out_dim, bias=False)`` parametrised with ``weight_norm`` (dim 0):
            ``parametrizations.weight.original0`` = g ``[K, 1]`` (filled with 1), ``original1`` = v ``[K, bottleneck]``.

    Raises:
        ValueError: ``nlayers < 1``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be ≥ 1, got {nlayers}")
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden_dim
        self.bottleneck_dim, self.nlayers, self.norm_last_layer = bottleneck_dim, nlayers, norm_last_layer
        self.mlp: nn.Module
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_linear_layernorm)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [B, D] → [B, out_dim] (float)."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))

    def extra_repr(self) -> str:
        """The head's widths and options, shown in the module's ``repr``."""
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, hidden_dim={self.hidden_dim}, "
            f"bottleneck_dim={self.bottleneck_dim}, nlayers={self.nlayers}, norm_last_layer={self.norm_last_layer}"
        )


class MultiCropWrapper(nn.Module):
    """DINO's multi-crop wrapper: ``backbone`` then ``head`` over a list of crops (docs/xstars.md §1).

    Consecutive crops of equal width are concatenated and encoded in one backbone forward (2 globals, then the
    locals), the CLS features of all groups are concatenated in crop order, and the head runs once. Its state dict is
    the DINO layout ``backbone.*`` / ``head.*`` (with the new weight-norm names; see
    :mod:`engine.models.dino_checkpoint`).

    Args:
        backbone: A :class:`DinoViT` (any module mapping [B, 3, H, W] to [B, D]).
        head: A :class:`DINOHead` (or ``nn.Identity()``).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """Encode crops.

        Args:
            crops: One ``[B, 3, H, W]`` tensor or a list of them (crop-major: crop c is rows c·B … (c+1)·B − 1 of the
                output when all crops have batch B).

        Returns:
            ``[Σ B_c, out_dim]`` head outputs, in crop order.

        Raises:
            ValueError: An empty list.
        """
        crops = [crops] if isinstance(crops, torch.Tensor) else list(crops)
        if not crops:
            raise ValueError("crops must hold at least one [B, 3, H, W] tensor")
        features, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(features))
