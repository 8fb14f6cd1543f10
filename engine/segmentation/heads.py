"""Segmentation heads on a frozen (or fine-tuned) encoder, and the head file: safetensors + a JSON model card.

Two heads read patch-token grids of the encoder's blocks (:meth:`SmartiesEncoder.encode_blocks`):

- :class:`LinearHead` — a 1×1 convolution on the last block's tokens (before the final norm), logits on the patch
  grid. Its parameters are ``head.0.weight`` ``[K, D, 1, 1]`` and ``head.0.bias`` ``[K]``: exactly the published
  ``smarties-v1-vitb-dfc2020-linprobe`` layout (docs/smarties.md §1.7, §6 "DFC2020 probing"), so that checkpoint's
  head loads strictly.
- :class:`UPerNetHead` — UPerNet (Xiao et al., ECCV 2018) on four blocks (3/5/7/11 of a ViT-B,
  :func:`engine.models.vit.dense_blocks`), made multi-scale as for plain ViTs (BEiT / ViTDet necks): the four
  grids are resampled to 4×, 2×, 1× and ½× the patch grid, then a pyramid-pooling module on the coarsest level, a
  top-down FPN, fusion of all levels at 4× and a 1×1 classifier: logits at 4 px per 16-px patch. This is the
  convention of UPerNet probing (docs/smarties.md §6), not SMARTIES code.
- :class:`PixelHead` — the encoder's context joined with the pixels' own bands: two blocks' grids projected,
  upsampled to the tile's pixels and concatenated with a small convolutional branch on the normalised input bands
  (the skip connection of U-Net decoders on ViT backbones, e.g. UNETR), then fused by a 3×3 convolution. It is the
  only head that can place a boundary inside a 16-px patch from the image itself; the default for few-shot maps
  (docs/segmentation.md has the measurements).

The linear and UPerNet logits are upsampled bilinearly to the tile's pixels by :meth:`SegmentationHead.pixel_logits`;
the pixel head's are at the tile's pixels already.

Head file (:func:`save_head` / :func:`load_head`): ``NAME.safetensors`` holds the head's tensors under ``head.``
(plus the card as the ``msfm_head`` metadata entry) and ``NAME.json`` beside it is the model card (:class:`HeadCard`):
encoder, blocks, bands, normalisation, classes with names and colours, GSD, validation metrics. A SMARTIES checkpoint
with the published segmentation head (encoder keys + ``head.0.*``) is read too; its card is then built from the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_output
from ..errors import CheckpointError, SettingsError
from ..models import BlockEncoder, Encoder, check_blocks, dense_blocks, load_model
from ..provenance import file_sha256
from ..raster import class_colors
from .card import ClassInfo, HeadCard, HeadType, card_path

__all__ = (
    "LinearHead",
    "PixelHead",
    "SegmentationHead",
    "UPerNetHead",
    "build_head",
    "load_head",
    "save_head",
)

_META_KEY = "msfm_head"


class LinearHead(nn.Sequential):
    """1×1 convolution on one patch-token grid: ``[B, D, h, w]`` → logits ``[B, K, h, w]``.

    The convolution is ``self[0]``, so the state dict keys are ``0.weight`` ``[K, D, 1, 1]`` and ``0.bias`` ``[K]``,
    i.e. ``head.0.*`` under the ``head.`` prefix: the published DFC2020 linear-probe layout (docs/smarties.md §1.7).
    Initialisation: weight trunc-normal std 0.01, bias 0 (SMARTIES' linear-probe init, docs/smarties.md §6).

    Args:
        embed_dim: Token dimension D of the encoder.
        num_classes: K.
    """

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        conv = nn.Conv2d(embed_dim, num_classes, kernel_size=1)
        super().__init__(conv)
        nn.init.trunc_normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # Optional in torch's types; the conv has a bias

    def forward(self, grids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, K, h, w]`` of the last grid ``[B, D, h, w]`` (a linear head reads one block)."""
        return self[0](grids[-1])


def _conv_norm_act(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Conv (no bias) → GroupNorm → ReLU. GroupNorm, not BatchNorm: few-shot heads train on batches of a few chips."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(min(32, cout // 4) or 1, cout),
        nn.ReLU(inplace=True),
    )


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` as two products with constant averaging matrices.

    ``[B, C, H, W]`` → ``[B, C, size, size]``. Same bins as PyTorch (output row i averages input rows ⌊i·H/s⌋ to
    ⌈(i+1)·H/s⌉ − 1). Written this way because the ONNX exporter supports adaptive pooling only for sizes dividing the
    input, and the pyramid pooling of a 224-px tile pools a 7 × 7 grid to 2, 3 and 6.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    return _bins(h, size, x) @ x @ _bins(w, size, x).T


def _bins(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """``[size, n]`` matrix whose row i averages the inputs of adaptive-pooling bin i."""
    m = torch.zeros(size, n, dtype=like.dtype, device=like.device)
    for i in range(size):
        start, end = (i * n) // size, -((-(i + 1) * n) // size)
        m[i, start:end] = 1.0 / (end - start)
    return m


class UPerNetHead(nn.Module):
    """UPerNet (pyramid pooling + FPN) on four ViT block grids made multi-scale.

    Args:
        embed_dim: Token dimension D of the encoder.
        num_classes: K.
        channels: Width of the FPN / fusion convolutions (UPerNet's 512 for a ViT-B; 128 suits the demo model).
        pool_scales: Pyramid-pooling bins (UPerNet: 1, 2, 3, 6).

    Input: four grids ``[B, D, h, w]``; output: logits ``[B, K, 4h, 4w]``.
    """

    def __init__(self, embed_dim: int, num_classes: int, channels: int = 256,
                 pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        d = embed_dim
        # ViT grids → 4×, 2×, 1×, ½× (the simple feature pyramid of ViTDet / BEiT's UPerNet neck)
        self.rescale = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(d, d, 2, stride=2), nn.GroupNorm(min(32, d // 4) or 1, d), nn.GELU(),
                          nn.ConvTranspose2d(d, d, 2, stride=2)),
            nn.ConvTranspose2d(d, d, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(2, ceil_mode=True),
        ])
        self.pool_scales = tuple(pool_scales)
        self.ppm = nn.ModuleList(_conv_norm_act(d, channels, 1) for _ in self.pool_scales)
        self.bottleneck = _conv_norm_act(d + len(self.pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(_conv_norm_act(d, channels, 1) for _ in range(3))
        self.fpn = nn.ModuleList(_conv_norm_act(channels, channels, 3) for _ in range(3))
        self.fuse = _conv_norm_act(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, grids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Four grids ``[B, D, h, w]`` (shallow to deep) → logits ``[B, K, 4h, 4w]``.

        Raises:
            ValueError: Not four grids.
        """
        if len(grids) != 4:
            raise ValueError(f"UPerNetHead takes 4 block grids, got {len(grids)}")
        levels = [op(g) for op, g in zip(self.rescale, grids)]
        top = levels[3]
        pooled = [top]
        for scale, conv in zip(self.pool_scales, self.ppm):
            p = conv(adaptive_avg_pool(top, scale))
            pooled.append(F.interpolate(p, size=top.shape[2:], mode="bilinear", align_corners=False))
        feats = [lat(x) for lat, x in zip(self.lateral, levels[:3])] + [self.bottleneck(torch.cat(pooled, 1))]
        for i in range(3, 0, -1):  # top-down pathway
            feats[i - 1] = feats[i - 1] + F.interpolate(feats[i], size=feats[i - 1].shape[2:], mode="bilinear",
                                                        align_corners=False)
        outs = [self.fpn[i](feats[i]) for i in range(3)] + [feats[3]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, 1))))


class PixelHead(nn.Module):
    """Encoder context ⊕ the pixels' own bands → logits at the tile's pixels.

    - context: each block grid ``[B, D, h, w]`` → 1×1 conv to ``channels``, GroupNorm, GELU; the blocks are summed,
      channel dropout (training only), upsampled bilinearly to the tile's pixels;
    - pixels: the normalised input bands ``[B, C, H, W]`` → 1×1 conv to ``pixel_channels`` (a learnt spectral
      index), GELU, 3×3 conv, GELU (local texture at the input's resolution);
    - fusion: concatenation → 3×3 conv to ``channels``, GroupNorm, GELU → 1×1 conv to K.

    The pixel branch is the skip connection of U-Net decoders on ViT backbones (UNETR, Hatamizadeh et al., WACV 2022),
    reduced to what a head trained from a dozen polygons in minutes on a CPU can afford.

    Args:
        embed_dim: Token dimension D of the encoder.
        in_bands: Input bands C (the card's bands).
        num_classes: K.
        num_blocks: Block grids read.
        channels: Width of the context and fusion features.
        pixel_channels: Width of the pixel branch.
        context_dropout: Share of context channels zeroed in training (``nn.Dropout2d``), so that a head trained on
            a few squares cannot tell them apart by their context alone and learns their spectra too (0.7 measured
            best of 0, 0.5, 0.7 on the Sen1Floods11 chips: docs/segmentation.md).
    """

    def __init__(self, embed_dim: int, in_bands: int, num_classes: int, num_blocks: int = 2, channels: int = 32,
                 pixel_channels: int = 16, context_dropout: float = 0.7) -> None:
        super().__init__()
        groups = min(8, channels // 4) or 1
        self.context = nn.ModuleList(
            nn.Sequential(nn.Conv2d(embed_dim, channels, 1, bias=False), nn.GroupNorm(groups, channels), nn.GELU())
            for _ in range(num_blocks)
        )
        self.pixels = nn.Sequential(
            nn.Conv2d(in_bands, pixel_channels, 1), nn.GELU(),
            nn.Conv2d(pixel_channels, pixel_channels, 3, padding=1), nn.GELU(),
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + pixel_channels, channels, 3, padding=1, bias=False), nn.GroupNorm(groups, channels),
            nn.GELU(),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.context_dropout = nn.Dropout2d(context_dropout)

    def forward(self, grids: Sequence[torch.Tensor], image: torch.Tensor, tile_px: Optional[int] = None,
                offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Logits ``[B, K, H, W]`` for ``image [B, C, H, W]``, a window of the tile the grids ``[B, D, h, w]`` encode.

        Args:
            grids: The block grids of the whole tile.
            image: Normalised bands of the tile, or of a window of it (training crops).
            tile_px: Side of the whole tile in pixels (default: the image's height, i.e. the image is the tile).
            offset: ``(row, col)`` of the image's window in the tile.

        Raises:
            ValueError: Not as many grids as context branches.
        """
        if len(grids) != len(self.context):
            raise ValueError(f"PixelHead takes {len(self.context)} block grids, got {len(grids)}")
        size = tile_px or int(image.shape[-2])
        ctx = self.context_dropout(sum(branch(g) for branch, g in zip(self.context, grids)))
        ctx = F.interpolate(ctx, size=(size, size), mode="bilinear", align_corners=False)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        ctx = ctx[..., offset[0] : offset[0] + h, offset[1] : offset[1] + w]
        return self.classifier(self.fuse(torch.cat([ctx, self.pixels(image)], 1)))


class SegmentationHead(nn.Module):
    """A head with its card: encoder block grids → per-pixel class logits.

    Args:
        card: The head's :class:`HeadCard` (head type, blocks, classes, encoder width and depth).

    Raises:
        CheckpointError: A card whose head type or block list does not describe a head.

    Attributes:
        card: The :class:`HeadCard`.
        net: :class:`LinearHead`, :class:`UPerNetHead` or :class:`PixelHead` (its state dict is stored under
            ``head.``).
    """

    def __init__(self, card: HeadCard) -> None:
        super().__init__()
        self.card = card
        d = int(card.encoder["embed_dim"])
        if card.head_type == "linear":
            if len(card.blocks) != 1:
                raise CheckpointError(f"a linear head reads one block, the card lists {card.blocks}")
            self.net: nn.Module = LinearHead(d, card.num_classes)
        elif card.head_type == "upernet":
            if len(card.blocks) != 4:
                raise CheckpointError(f"an UPerNet head reads four blocks, the card lists {card.blocks}")
            self.net = UPerNetHead(d, card.num_classes, channels=int(card.channels or 256))
        elif card.head_type == "pixel":
            if not card.bands:
                raise CheckpointError("a pixel head reads the input bands, but the card lists none")
            self.net = PixelHead(d, len(card.bands), card.num_classes, num_blocks=len(card.blocks),
                                 channels=int(card.channels or 32))
        else:
            raise CheckpointError(f"unknown head type {card.head_type!r}; use 'linear', 'upernet' or 'pixel'")
        check_blocks(card.blocks, int(card.encoder["depth"]))

    @property
    def blocks(self) -> list[int]:
        """The 0-based encoder blocks the head reads, increasing."""
        return list(self.card.blocks)

    @property
    def reads_image(self) -> bool:
        """Whether the head needs the normalised input tile besides the block grids (the pixel head)."""
        return isinstance(self.net, PixelHead)

    def forward(self, grids: Sequence[torch.Tensor], image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits at the head's own resolution.

        ``[B, K, h, w]`` (linear), ``[B, K, 4h, 4w]`` (UPerNet) or ``[B, K, H, W]`` (pixel head, which also takes
        the normalised tile ``image [B, C, H, W]``).

        Raises:
            ValueError: A pixel head called without ``image``.
        """
        dtype = next(self.parameters()).dtype
        grids = [g.to(dtype) for g in grids]
        if self.reads_image:
            if image is None:
                raise ValueError("a pixel head needs the normalised input tile (image=)")
            return self.net(grids, image.to(dtype))
        return self.net(grids)

    def pixel_logits(self, grids: Sequence[torch.Tensor], size: tuple[int, int],
                     image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits at the tile's pixels: ``[B, K, size[0], size[1]]``.

        Upsampled bilinearly for the linear and UPerNet heads; bilinear upsampling of logits (not of classes) keeps
        boundaries between patch centres smooth and is what the DFC2020 probe does (×96/14, docs/smarties.md §6).
        The pixel head's logits are at the pixels of ``image`` already.
        """
        logits = self(grids, image)
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def head_state(self) -> dict[str, torch.Tensor]:
        """The head's tensors under ``head.`` (file keys)."""
        return {f"head.{k}": v.detach().cpu().float().contiguous() for k, v in self.net.state_dict().items()}


def build_head(head_type: HeadType, model: BlockEncoder, classes: Sequence[ClassInfo], *,
               blocks: Optional[Sequence[int]] = None, channels: Optional[int] = None,
               encoder: Optional[Mapping[str, Any]] = None, **card_fields: Any) -> SegmentationHead:
    """A new, randomly initialised head for ``model``.

    Args:
        head_type: ``"linear"`` (last block), ``"upernet"`` (four blocks, :func:`dense_blocks`) or ``"pixel"`` (the
            middle and last blocks, and the input bands: ``card_fields["bands"]`` is required).
        model: The encoder (its ``embed_dim``, ``depth`` and ``patch_size`` go into the card).
        classes: Output classes (≥ 2).
        blocks: Override the blocks read.
        channels: UPerNet width (default ``min(256, max(64, D // 2))`` — 96 for the demo model, 256 for ViT-B);
            pixel head width (default 32).
        encoder: Extra encoder fields for the card (``name``, ``sha256``).
        card_fields: Other :class:`HeadCard` fields (bands, stats, scale, ...).

    Raises:
        ValueError: Fewer than 2 classes, or bad blocks.
    """
    if len(classes) < 2:
        raise ValueError(f"a segmentation head needs at least 2 classes, got {len(classes)}")
    depth = model.depth
    if blocks is None:
        blocks = {"linear": [depth - 1], "pixel": sorted({max(0, depth // 2 - 1), depth - 1})}.get(
            head_type, list(dense_blocks(depth)))
    if head_type == "upernet" and channels is None:
        channels = min(256, max(64, model.embed_dim // 2))
    if head_type == "pixel" and channels is None:
        channels = 32
    card = HeadCard(
        head_type=head_type, blocks=list(blocks), classes=list(classes), channels=channels,
        encoder={**dict(encoder or {}), "embed_dim": model.embed_dim, "depth": depth, "patch_size": model.patch_size},
        **card_fields,
    )
    return SegmentationHead(card)


def save_head(head: SegmentationHead, path: Union[str, Path]) -> Path:
    """Write ``path`` (``.safetensors``: ``head.*`` tensors, card in the metadata) and the card ``NAME.json``.

    Both files are written atomically (:func:`engine.atomic.atomic_output`); neither appears unless both were written.

    Raises:
        SettingsError: ``path`` does not end in ``.safetensors``, or its folder does not exist.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise SettingsError(f"a head file ends in .safetensors, got {path.name}")
    text = head.card.to_json()
    with atomic_output(path, sidecars=()) as tmp, atomic_output(card_path(path), sidecars=()) as tmp_card:
        save_file(head.head_state(), str(tmp), metadata={_META_KEY: text, "format": "pt"})
        tmp_card.write_text(text + "\n", encoding="utf-8")
    return path


def _published_card(path: Path, shapes: Mapping[str, Sequence[int]], model: Encoder) -> HeadCard:
    """Card of a SMARTIES checkpoint with the published ``head.0`` segmentation head (docs/smarties.md §1.7).

    The head reads the checkpoint's own encoder, last block; the classes are unnamed (the file does not say).
    """
    k, d = int(shapes["head.0.weight"][0]), int(shapes["head.0.weight"][1])
    colors = class_colors(k)
    return HeadCard(
        head_type="linear", blocks=[model.depth - 1],
        classes=[ClassInfo(i, f"class {i}", colors[i], i) for i in range(k)],
        encoder={"name": str(path), "sha256": file_sha256(path), "embed_dim": d, "depth": model.depth,
                 "patch_size": model.patch_size},
        training={"source": "published SMARTIES checkpoint with a 1×1-conv segmentation head (docs/smarties.md §1.7)"},
    )


def load_head(path: Union[str, Path], model: Optional[Encoder] = None) -> SegmentationHead:
    """Read a head file strictly.

    Accepts our head files (``head.*`` tensors + card) and SMARTIES checkpoints carrying the published segmentation
    head (encoder keys + ``head.0.weight`` ``[K, D, 1, 1]``, ``head.0.bias`` ``[K]``); for those, pass the encoder
    loaded from the same file as ``model`` (or it is loaded here) to build the card.

    Args:
        path: The ``.safetensors`` file.
        model: The encoder, only needed for a published checkpoint (read from ``path`` when None).

    Returns:
        :class:`SegmentationHead` in eval mode on the CPU.

    Raises:
        FileNotFoundError: No such file.
        engine.errors.CheckpointError: Missing/unexpected keys or shapes (names them), a card that disagrees with the
            tensors, or a file that is neither a head nor a checkpoint with a segmentation head.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"head file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            shapes = {k: f.get_slice(k).get_shape() for k in keys}
            head_keys = [k for k in keys if k.startswith("head.")]
            state = {k[len("head."):]: f.get_tensor(k) for k in head_keys}
    except Exception as exc:  # safetensors' own errors: not a safetensors file, truncated header or data
        raise CheckpointError(f"cannot read the head file {path}: {exc}") from exc
    if _META_KEY in meta:
        card = HeadCard.from_dict(json.loads(meta[_META_KEY]), str(path))
        foreign = sorted(set(keys) - set(head_keys))
        if foreign:
            raise CheckpointError(f"{path} holds keys outside 'head.': {foreign[:5]}; a head file holds the head only")
    elif set(head_keys) == {"head.0.weight", "head.0.bias"} and len(shapes["head.0.weight"]) == 4:
        if model is None:
            model = load_model(path, device="cpu")
        card = _published_card(path, shapes, model)
    else:
        raise CheckpointError(
            f"{path} is not a segmentation head: no '{_META_KEY}' card and no published 1×1-conv head "
            f"(head.0.weight [K, D, 1, 1] + head.0.bias); head keys found: {head_keys[:6] or 'none'}"
        )
    head = SegmentationHead(card)
    expected = {k: tuple(v.shape) for k, v in head.net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {['head.' + k for k in missing][:5]}" if missing else "",
            f"unexpected {['head.' + k for k in unexpected][:5]}" if unexpected else "",
            ", ".join(f"head.{k} {got[k]} (expected {expected[k]})" for k in wrong[:5]),
        ]))
        raise CheckpointError(f"{path}: the head tensors do not match its card ({card.head_type}, "
                              f"{card.num_classes} classes, D={card.encoder['embed_dim']}): {detail}")
    head.net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return head.eval()
