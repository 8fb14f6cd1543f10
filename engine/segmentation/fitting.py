"""Fitting a segmentation head on a raster and its labels (a dozen polygons are enough for a usable map).

The QGIS plugin trains heads on the analyst's desktop and ships the engine only, so fitting lives here; it is
inference-scale work (minutes on a CPU), unlike the pretraining recipes of ``training/``.

Procedure (:func:`fit_head`):

1. Labels are burnt onto the raster's model-input grid (:func:`engine.segmentation.label_grid`) and their groups
   (polygons, or blocks of a label raster) are split into train and validation **by group**, stratified by class: a
   class with n ≥ 2 polygons gives ``max(1, round(n · val_fraction))`` of them to validation; a class with one polygon
   stays in training (reported). Pixels are never split, so validation pixels are not neighbours of training pixels.
2. Training chips (``tile_size_px`` squares) are centred on random labelled pixels of each training group, with a
   random flip/rotation each (dihedral group D4, applied to image and labels) when ``augment``; validation chips tile
   the validation groups without overlap, so each validation pixel is scored once.
3. With a frozen encoder the chips are encoded once and the block grids cached (float16); the head then trains for
   ``steps`` AdamW steps on batches of cached grids (cosine learning rate with 5 % warm-up), with a pixel-wise
   cross-entropy on logits upsampled to the chip's pixels, weighted by class (``class_weighting``: inverse class
   frequency by default — polygon areas reflect how the analyst drew, not how common a class is — so a rare class
   such as roads counts as much as the background) and ignoring unlabelled pixels
   (:data:`engine.segmentation.IGNORE`). With ``finetune=True`` the encoder trains too (learning rate × 0.1) and is
   encoded every step.
4. The linear head learns on standardised grids (per-channel mean/std of the training grids), folded into its 1×1
   convolution afterwards, so the file keeps the published ``head.0`` layout and reads raw pre-norm tokens.
5. Validation: confusion matrix over validation pixels → per-class IoU / F1, mIoU, macro F1, overall accuracy
   (:func:`segmentation_scores`), stored in the card with the class table, bands, statistics, scale and GSD.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union, cast

import numpy as np
from rasterio.windows import transform as window_transform

from ..callbacks import CancelFn, ProgressFn, check_canceled
from ..errors import LabelError, SettingsError
from ..models import BlockEncoder, Encoder, open_reader, save_encoder, tiles_per_batch, torch_device
from ..outputs import check_outputs
from ..provenance import file_sha256
from ..raster import RasterReader, Region, batched, open_raster, pixel_size_m
from ..settings import InferenceSettings
from ..spectral import BandMapping, Overrides
from .card import HeadType, card_path, require_block_grids
from .heads import SegmentationHead, build_head, save_head
from .labels import IGNORE, LabelGrid, LabelRaster, PolygonLabels, label_grid
from .validation import segmentation_scores, split_groups

__all__ = ("FitResult", "HeadFitSettings", "fit_head")

log = logging.getLogger(__name__)

ClassWeighting = Literal["balanced", "sqrt-balanced", "none"]
_WEIGHTINGS = ("balanced", "sqrt-balanced", "none")


@dataclass(frozen=True)
class HeadFitSettings:
    """How :func:`fit_head` trains a head (the raster is read with :class:`engine.InferenceSettings`).

    Attributes:
        head_type: ``"pixel"`` (default: two blocks and the input bands at full resolution,
            :class:`engine.segmentation.PixelHead`; the best few-shot maps measured, docs/segmentation.md),
            ``"linear"`` (1×1 conv, last block: 10× faster to fit, the published SMARTIES probe layout) or
            ``"upernet"`` (four blocks; thin classes from many labels).
        blocks: Encoder blocks read (default: last for linear, :func:`engine.models.dense_blocks` for UPerNet).
        channels: UPerNet width (default ``min(256, max(64, D // 2))``), pixel-head width (default 32).
        steps: Optimisation steps (≥ 1).
        batch_size: Chips per step (≥ 1).
        lr: Peak learning rate (default 3e-3 linear and pixel, 1e-3 UPerNet).
        weight_decay: AdamW weight decay.
        val_fraction: Share of each class's polygons (or of label-raster blocks) kept for validation, in [0, 1);
            0 = none.
        max_chips: At most this many training chips.
        class_weighting: ``"balanced"`` (default: weight ``N / (K · n_c)``, scikit-learn's ``class_weight=
            "balanced"``, so every class counts equally whatever the area its polygons cover), ``"sqrt-balanced"``
            (the square root of that: milder) or ``"none"``.
        augment: Random D4 flips/rotations of training chips.
        finetune: Train the encoder too (slower: encoded every step; saved beside the head).
        seed: Random seed (split, chips, initialisation).

    Raises:
        SettingsError: (on creation) an unknown head type or class weighting, steps/batch size/max chips below 1,
            or a validation fraction outside [0, 1).
    """

    head_type: HeadType = "pixel"
    blocks: Optional[tuple[int, ...]] = None
    channels: Optional[int] = None
    steps: int = 300
    batch_size: int = 8
    lr: Optional[float] = None
    weight_decay: float = 1e-4
    val_fraction: float = 0.25
    max_chips: int = 256
    class_weighting: ClassWeighting = "balanced"
    augment: bool = True
    finetune: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head_type not in ("linear", "upernet", "pixel"):
            raise SettingsError(f"head_type must be 'linear', 'upernet' or 'pixel', got {self.head_type!r}")
        if not 0 <= self.val_fraction < 1:
            raise SettingsError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.class_weighting not in _WEIGHTINGS:
            raise SettingsError(f"class_weighting must be one of {_WEIGHTINGS}, got {self.class_weighting!r}")
        for name in ("steps", "batch_size", "max_chips"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise SettingsError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.seed < 2**32:
            raise SettingsError(f"seed must be between 0 and 2**32 - 1 (numpy and scikit-learn seeds), got {self.seed}")
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_head` produced.

    Attributes:
        head: The trained :class:`SegmentationHead` (eval mode, CPU).
        path: The head file written (None when no output was asked for).
        metrics: Validation metrics (:func:`segmentation_scores`), ``{}`` without validation groups.
        train_chips: Training chips encoded.
        val_chips: Validation chips.
        losses: Training loss per step.
        seconds: Wall time.
        notes: Warnings about the split (classes kept out of validation).
    """

    head: SegmentationHead
    path: Optional[Path]
    metrics: dict[str, Any]
    train_chips: int
    val_chips: int
    losses: list[float]
    seconds: float
    notes: tuple[str, ...] = ()

    @property
    def card(self) -> Optional[Path]:
        """The JSON card written beside the head file (None without a file)."""
        return card_path(self.path) if self.path is not None else None


def _chip_labels(grid: LabelGrid, row: int, col: int, size: int, keep: np.ndarray) -> np.ndarray:
    """``uint8 [size, size]`` labels of the chip at view pixel (row, col), IGNORE outside ``keep`` groups."""
    out = np.full((size, size), IGNORE, np.uint8)
    r0, c0 = row - int(grid.window.row_off), col - int(grid.window.col_off)
    h, w = grid.labels.shape
    rs, cs = max(0, r0), max(0, c0)
    re, ce = min(h, r0 + size), min(w, c0 + size)
    if re <= rs or ce <= cs:
        return out
    lab = grid.labels[rs:re, cs:ce]
    ok = keep[grid.groups[rs:re, cs:ce] + 1]
    out[rs - r0 : re - r0, cs - c0 : ce - c0] = np.where(ok, lab, IGNORE)
    return out


def _group_mask(groups: set[int], n_groups: int) -> np.ndarray:
    """Lookup ``keep[group + 1]`` (index 0 = group −1, never kept)."""
    keep = np.zeros(n_groups + 2, bool)
    for g in groups:
        keep[g + 1] = True
    return keep


def _train_origins(grid: LabelGrid, groups: set[int], size: int, max_chips: int, view_hw: tuple[int, int],
                   rng: np.random.Generator) -> list[tuple[int, int]]:
    """Chip origins centred on random labelled pixels of each training group (∝ √area, 1…16 per group)."""
    ids = sorted(groups)
    if not ids:
        return []
    rows_cols = {}
    flat = grid.groups.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_groups = flat[order]
    for g in ids:
        lo, hi = np.searchsorted(sorted_groups, [g, g + 1])
        rows_cols[g] = order[lo:hi]
    area = np.array([len(rows_cols[g]) for g in ids], np.float64)
    want = np.clip(np.sqrt(area) / (size / 4), 1, 16)
    if want.sum() > max_chips:
        want = np.maximum(1, want * max_chips / want.sum())
    height, width = view_hw
    w = grid.labels.shape[1]
    origins = []
    for g, n in zip(ids, np.round(want).astype(int)):
        picks = rng.choice(rows_cols[g], size=int(n), replace=len(rows_cols[g]) < n)
        for flat_idx in picks:
            r = int(flat_idx // w) + int(grid.window.row_off) - size // 2 + int(rng.integers(-size // 8, size // 8 + 1))
            c = int(flat_idx % w) + int(grid.window.col_off) - size // 2 + int(rng.integers(-size // 8, size // 8 + 1))
            origins.append((min(max(0, r), max(0, height - size)), min(max(0, c), max(0, width - size))))
    rng.shuffle(origins)
    return origins[:max_chips]


def _val_origins(grid: LabelGrid, keep: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Non-overlapping chips over the label window that hold validation pixels."""
    h, w = grid.labels.shape
    origins = []
    for r in range(0, h, size):
        for c in range(0, w, size):
            if keep[grid.groups[r : r + size, c : c + size] + 1].any():
                origins.append((r + int(grid.window.row_off), c + int(grid.window.col_off)))
    return origins


#: A pixel head trains on ``_CROP_PX`` squares drawn inside the central ``_STORE_PX`` square of each chip.
_STORE_PX, _CROP_PX = 128, 96


def _stored_span(size: int) -> tuple[int, int]:
    """``(first, end)`` pixel of the central square of a ``size`` chip that a pixel head keeps."""
    keep = min(size, _STORE_PX)
    lo = (size - keep) // 2
    return lo, lo + keep


def _d4(a: np.ndarray, k: int) -> np.ndarray:
    """Dihedral transform ``k`` (0..7) of the last two axes: k % 4 quarter turns, then a flip if k ≥ 4."""
    a = np.rot90(a, k % 4, axes=(-2, -1))
    return np.ascontiguousarray(a[..., ::-1] if k >= 4 else a)


def _class_weights(counts: np.ndarray, kind: ClassWeighting) -> np.ndarray:
    """Cross-entropy class weights from training pixel counts; 0 for classes without training pixels.

    ``N / (K · n_c)`` ("balanced", scikit-learn's formula), its square root ("sqrt-balanced") or ones.
    """
    present = counts > 0
    balanced = np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)
    if kind == "balanced":
        w = balanced
    elif kind == "sqrt-balanced":
        w = np.sqrt(balanced)
    elif kind == "none":
        w = present.astype(np.float64)
    else:
        raise SettingsError(f"class_weighting must be 'balanced', 'sqrt-balanced' or 'none', got {kind!r}")
    return w.astype(np.float32)


def fit_head(
    source: Union[str, Path],
    labels: Union[PolygonLabels, LabelRaster],
    model: Encoder,
    *,
    fit: Optional[HeadFitSettings] = None,
    output: Optional[Union[str, Path]] = None,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    region: Optional[Region] = None,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
    overwrite: bool = False,
) -> FitResult:
    """Train a segmentation head for ``model`` on a raster and its labels, validate it, write the head file.

    Args:
        source: The image raster.
        labels: :class:`engine.segmentation.PolygonLabels` (polygons + class values + CRS) or
            :class:`engine.segmentation.LabelRaster`.
        model: A loaded encoder (:func:`engine.load_model`).
        fit: How the head is trained (:class:`HeadFitSettings`; defaults when None).
        output: Head file (``.safetensors``; the card ``.json`` is written beside it), written only on success.
        settings: ``tile_size_px`` (chip side), ``batch_size`` (encoding), ``device``, ``threads``, ``scale``.
        sensor: Sensor preset for the band mapping, as :func:`engine.spectral.resolve_bands`.
        overrides: Band mapping overrides, as :func:`engine.spectral.resolve_bands`.
        region: Train only on the labels inside this :class:`engine.raster.Region` (the raster is read over its
            window; pixels outside its polygons are left out of training and validation).
        progress: Called with the completed fraction.
        is_canceled: Polled every batch/step; True stops with :class:`InferenceCancelled`, writing nothing.
        overwrite: Replace an existing head file (and card).

    Returns:
        :class:`FitResult`.

    Raises:
        engine.errors.LabelError: Label problems (:func:`engine.segmentation.label_grid`), no training chip.
        engine.errors.BandResolutionError: A band cannot be mapped.
        engine.errors.ModelMismatchError: An encoder without block grids (the ONNX encoder).
        engine.errors.OutputError: An output that is not ``.safetensors``, is an input, exists (without
            ``overwrite``) or cannot be written (:func:`engine.outputs.check_outputs`).
        engine.errors.InferenceCancelled: Cancelled.
    """
    import torch  # the ONNX Runtime path of the engine never reaches here; keep torch out of its imports

    started = time.perf_counter()
    fit = fit or HeadFitSettings()
    settings = settings or InferenceSettings()
    report = progress or (lambda f: None)
    if output is not None:
        fine_tuned = _encoder_path(Path(output)) if fit.finetune else None
        check_outputs(
            {"head file": output, "head card": card_path(output), "fine-tuned encoder": fine_tuned},
            {"input raster": source, "labels": labels.source if isinstance(labels, PolygonLabels) else labels.path},
            overwrite=overwrite, suffixes={"head file": (".safetensors",)},
        )
    encoder = require_block_grids(model)
    torch.manual_seed(fit.seed)
    rng = np.random.default_rng(fit.seed)
    dataset = open_raster(source)
    try:
        reader, mapping = open_reader(dataset, encoder, settings, sensor=sensor, overrides=overrides, region=region)
        with reader:
            grid = label_grid(labels, dataset.crs, reader.transform, (reader.height_px, reader.width_px))
            if region:
                _keep_inside(grid, region, reader)
            train_g, val_g, notes = split_groups(grid, fit.val_fraction, fit.seed)
            for note in notes:
                log.warning(note)
            size = settings.tile_size_px
            n_groups = int(grid.groups.max()) + 1
            keep_train, keep_val = _group_mask(train_g, n_groups), _group_mask(val_g, n_groups)
            train_at = _train_origins(grid, train_g, size, fit.max_chips, (reader.height_px, reader.width_px), rng)
            val_at = _val_origins(grid, keep_val, size) if val_g else []
            if not train_at:
                raise LabelError("no training chip: every labelled group went to validation; lower "
                                 "val_fraction or draw more polygons")
            card_fields = _card_fields(dataset, reader, mapping, encoder, settings, grid, fit.head_type, region)
            head = build_head(fit.head_type, encoder, grid.classes, blocks=fit.blocks, channels=fit.channels,
                              encoder=card_fields.pop("encoder"), **card_fields)
            device = torch_device(settings)
            if settings.precision in ("bf16", "int8"):
                log.info("the head is fitted in fp32 (precision %s applies to segment, embed, cluster and "
                         "similarity)", settings.precision)
            fitter = _Fitter(encoder, head, reader, mapping, size, device, fit.finetune, tiles_per_batch(settings),
                             is_canceled)
            train_lab = [_chip_labels(grid, r, c, size, keep_train) for r, c in train_at]
            turns = rng.integers(0, 8, len(train_at)) if fit.augment else np.zeros(len(train_at), int)
            train_lab = [_d4(lab, int(k)) for lab, k in zip(train_lab, turns)]
            fitter.cache(train_at, turns, lambda f: report(0.4 * f))
            counts = np.bincount(np.concatenate([lab[lab != IGNORE] for lab in train_lab]),
                                 minlength=len(grid.classes))[: len(grid.classes)]
            weights = _class_weights(counts, fit.class_weighting)
            lr = fit.lr if fit.lr is not None else (1e-3 if fit.head_type == "upernet" else 3e-3)
            losses = fitter.train(train_lab, weights, fit.steps, fit.batch_size, lr, fit.weight_decay, rng,
                                  lambda f: report(0.4 + 0.5 * f))
            metrics: dict[str, Any] = {}
            if val_at:
                val_lab = [_chip_labels(grid, r, c, size, keep_val) for r, c in val_at]
                confusion = fitter.confusion(val_at, val_lab, len(grid.classes))
                metrics = segmentation_scores(confusion, [c.name for c in grid.classes])
                metrics["split"] = (f"{len(val_g)} validation / {len(train_g)} training "
                                    f"{'polygons' if grid.group_class else 'blocks'}")
            report(1.0)
    finally:
        dataset.close()
    head.card.metrics = metrics
    head.card.training.update({
        "steps": fit.steps, "batch_size": fit.batch_size, "lr": lr, "weight_decay": fit.weight_decay,
        "class_weighting": fit.class_weighting, "class_weights": [round(float(w), 4) for w in weights],
        "train_pixels": [int(c) for c in counts], "train_chips": len(train_at), "val_chips": len(val_at),
        "augment": fit.augment, "finetune": fit.finetune, "seed": fit.seed, "notes": notes,
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)] if losses else None,
        "seconds": round(time.perf_counter() - started, 1),
    })
    head = head.cpu().eval()
    path = None
    if output is not None:
        path = Path(output)
        if fit.finetune:
            enc = _encoder_path(path)
            save_encoder(fitter.model.cpu(), enc)
            head.card.encoder.update({"file": enc.name, "sha256": file_sha256(enc)})
        save_head(head, path)
    return FitResult(head, path, metrics, len(train_at), len(val_at), losses, time.perf_counter() - started,
                     tuple(notes))


def _encoder_path(head: Path) -> Path:
    """Where a head trained with ``finetune`` keeps its fine-tuned encoder (beside the head file)."""
    return head.with_name(head.stem + ".encoder.safetensors")


def _keep_inside(grid: LabelGrid, region: Region, reader: RasterReader) -> None:
    """Unlabel the pixels of ``grid`` whose centre is outside the region's polygons.

    Raises:
        LabelError: No labelled pixel is left.
    """
    shape = cast("tuple[int, int]", grid.labels.shape)  # [h, w]; numpy's types do not carry the rank
    inside = region.pixel_mask(window_transform(grid.window, reader.transform), shape)
    if inside is None:
        return
    grid.labels[~inside] = IGNORE
    grid.groups[~inside] = -1
    if not grid.pixel_counts().any():
        raise LabelError(f"none of the labels of {grid.source} lies inside the region's polygons; draw the region "
                         "around the labels, or leave it out")


def _card_fields(dataset: Any, reader: RasterReader, mapping: BandMapping, model: Encoder,
                 settings: InferenceSettings, grid: LabelGrid, head_type: str,
                 region: Optional[Region]) -> dict[str, Any]:
    weights = model.provenance.weights_path
    training: dict[str, Any] = {
        "raster": str(dataset.name),
        "labels": grid.source,
        "label_pixels": {c.name: int(n) for c, n in zip(grid.classes, grid.pixel_counts())},
        "head": head_type,
    }
    if region:
        training["region"] = region.record()
    return {
        "encoder": {
            "name": model.provenance.label,
            "sha256": file_sha256(weights) if weights and Path(weights).is_file() else None,
        },
        "bands": [{"index": b.index, "projection": b.projection.label, "key": b.key, "wavelength_nm": b.wavelength_nm,
                   "description": b.description} for b in mapping.bands],
        "sensor": mapping.sensor,
        "stats": [[s.p1, s.p99, s.mean, s.std] for s in reader.stats],
        "scale": float(reader.scale),
        "gsd_m": pixel_size_m(dataset),
        "tile_size_px": settings.tile_size_px,
        "training": training,
    }


class _Fitter:
    """Encodes chips (once, when the encoder is frozen) and trains the head on them."""

    def __init__(self, model: BlockEncoder, head: SegmentationHead, reader: RasterReader, mapping: BandMapping,
                 size: int, device: str, finetune: bool, encode_batch: int, is_canceled: Optional[CancelFn]) -> None:
        # never alter a shared encoder; a torch encoder (require_block_grids), which the protocol does not say
        self.model = (copy.deepcopy(model) if finetune else model).to(device)  # type: ignore[attr-defined]
        self.head = head.to(device)
        self.reader = reader
        self.projections = list(mapping.projections)
        self.size = size
        self.device = device
        self.finetune = finetune
        self.encode_batch = max(1, encode_batch)
        self.is_canceled = is_canceled
        self.images: Optional[np.ndarray] = None  # training chips, kept only when the encoder is fine-tuned
        self.grids: list[Any] = []  # cached block grids, one float16 tensor [N, D, h, w] per block
        self.pixels: Any = None  # a pixel head's cached bands, float16 [N, C, s, s] (the central square of chips)
        self.mean: Any = None
        self.std: Any = None

    def _check_cancel(self, what: str) -> None:
        check_canceled(self.is_canceled, f"while {what}", "no head written")

    def _read(self, origins: Sequence[tuple[int, int]], turns: Union[Sequence[int], np.ndarray]) -> np.ndarray:
        return np.stack([_d4(self.reader.read(r, c, self.size)[0], int(k)) for (r, c), k in zip(origins, turns)])

    def _encode(self, x: np.ndarray) -> list[Any]:
        import torch

        return self.model.encode_blocks(torch.from_numpy(x).to(self.device), self.projections, self.head.blocks)

    def cache(self, origins: Sequence[tuple[int, int]], turns: Union[Sequence[int], np.ndarray],
              report: ProgressFn) -> None:
        """Read (and, for a frozen encoder, encode) the training chips; compute the grid standardisation.

        A pixel head also keeps the chips' normalised bands (float16), only the central ``_STORE_PX`` square where
        its training crops fall.
        """
        import torch

        parts: list[list[Any]] = []
        images = []
        pixels = []
        lo, hi = _stored_span(self.size)
        self.model.eval()
        batches = batched(list(zip(origins, turns)), self.encode_batch)
        for b, batch in enumerate(batches):
            self._check_cancel("encoding training chips")
            x = self._read(*zip(*batch))
            report((b + 1) / len(batches))
            if self.head.reads_image and not self.finetune:
                pixels.append(torch.from_numpy(x[:, :, lo:hi, lo:hi]).to(torch.float16))
            if self.finetune:
                images.append(x)
                if b:  # the encoder changes as it trains: the first batch's grids only set the standardisation
                    continue
            with torch.inference_mode():
                parts.append([g.to(torch.float16).cpu() for g in self._encode(x)])
        self.images = np.concatenate(images) if self.finetune else None
        self.pixels = torch.cat(pixels) if pixels else None
        stacked = [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))]
        last = stacked[-1].float()
        self.mean = last.mean(dim=(0, 2, 3)).to(self.device)
        self.std = last.std(dim=(0, 2, 3)).clamp_min(1e-6).to(self.device)
        self.grids = [] if self.finetune else stacked

    def _standardise(self, grids: list[Any]) -> list[Any]:
        if self.head.card.head_type != "linear":
            return grids
        return [(g - self.mean[None, :, None, None]) / self.std[None, :, None, None] for g in grids]

    def train(self, labels: Sequence[np.ndarray], class_weights: np.ndarray, steps: int, batch_size: int, lr: float,
              weight_decay: float, rng: np.random.Generator, report: ProgressFn) -> list[float]:
        import torch
        import torch.nn.functional as F

        params = [{"params": self.head.parameters(), "lr": lr}]
        if self.finetune:
            self.model.train()
            params.append({"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr * 0.1})
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        base = [g["lr"] for g in opt.param_groups]
        warmup = max(1, steps // 20)
        target = torch.from_numpy(np.stack(labels))  # uint8 [N, size, size]; a batch becomes int64 when used
        weight = torch.from_numpy(class_weights).to(self.device)
        n = len(labels)
        self.head.train()
        losses = []
        for step in range(steps):
            self._check_cancel(f"training (step {step} of {steps})")
            if step < warmup:
                f = (step + 1) / warmup
            else:
                f = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * f
            idx = rng.choice(n, size=min(batch_size, n), replace=False)
            labels_b = target[torch.from_numpy(idx)].to(self.device).long()
            if self.finetune:
                x = cast(np.ndarray, self.images)[idx]  # kept by cache() when fine-tuning
                grids = self._encode(x)
                logits = self.head.pixel_logits(self._standardise(grids), (self.size, self.size),
                                                torch.from_numpy(x).to(self.device))
            else:
                grids = [g[torch.from_numpy(idx)].to(self.device).float() for g in self.grids]
                if self.head.reads_image:
                    logits, labels_b = self._pixel_crop(grids, idx, labels_b, rng)
                else:
                    logits = self.head.pixel_logits(self._standardise(grids), (self.size, self.size))
            if not bool((labels_b != IGNORE).any()):  # a crop beside the labels (chips clamped at the raster's edge)
                report((step + 1) / steps)
                continue
            loss = F.cross_entropy(logits, labels_b, weight=weight, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            report((step + 1) / steps)
        self.head.eval()
        self.model.eval()
        if self.head.card.head_type == "linear":
            self._fold_standardisation()
        return losses

    def _pixel_crop(self, grids: list[Any], idx: np.ndarray, labels: Any, rng: np.random.Generator) -> tuple[Any, Any]:
        """A pixel head's logits and labels on one random ``_CROP_PX`` square of the cached central bands.

        Training on crops keeps the full-resolution convolutions affordable on a CPU; the crops hold the chips'
        labelled centre (chips are centred on labelled pixels ± size/8).
        """
        import torch

        lo, hi = _stored_span(self.size)
        crop = min(_CROP_PX, hi - lo)
        r, c = (int(v) for v in rng.integers(0, hi - lo - crop + 1, size=2))
        image = self.pixels[torch.from_numpy(idx)][:, :, r : r + crop, c : c + crop].to(self.device).float()
        logits = self.head.net(grids, image, tile_px=self.size, offset=(lo + r, lo + c))
        return logits, labels[:, lo + r : lo + r + crop, lo + c : lo + c + crop]

    def _fold_standardisation(self) -> None:
        """``W·(x − μ)/σ + b`` = ``(W/σ)·x + (b − W·μ/σ)``: the head reads raw grids again."""
        import torch

        conv = self.head.net[0]  # type: ignore[index]  # a linear head's net is a LinearHead (nn.Sequential)
        with torch.no_grad():
            w = conv.weight[:, :, 0, 0] / self.std[None, :]
            conv.bias.sub_(w @ self.mean)
            conv.weight.copy_(w[:, :, None, None])

    def confusion(self, origins: Sequence[tuple[int, int]], labels: Sequence[np.ndarray], k: int) -> np.ndarray:
        """Confusion matrix ``[K, K]`` of the head's argmax on the validation chips' labelled pixels."""
        import torch

        cm = np.zeros((k, k), np.int64)
        for batch in batched(list(zip(origins, labels)), self.encode_batch):
            self._check_cancel("validating")
            x = self._read([o for o, _ in batch], [0] * len(batch))
            with torch.inference_mode():
                image = torch.from_numpy(x).to(self.device)
                pred = self.head.pixel_logits(self._encode(x), (self.size, self.size), image).argmax(1).cpu().numpy()
            for p, (_, lab) in zip(pred, batch):
                ok = lab != IGNORE
                cm += np.bincount(lab[ok].astype(np.int64) * k + p[ok], minlength=k * k).reshape(k, k)
        return cm
