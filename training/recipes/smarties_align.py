"""Recipe ``smarties-align``: continual alignment of a SMARTIES encoder onto a new sensor with MSAD.

Neither paper has this combination: SMARTIES (docs/smarties.md) pretrains a spectrum-aware encoder with a masked
autoencoder on sensor pairs; X-STARS (docs/xstars.md §4) aligns a pretrained 3-channel DINO ViT onto a new sensor by
distilling a frozen copy of itself through the dense MSAD loss (§3). This recipe does X-STARS' continual stage for a
SMARTIES encoder, with SMARTIES' own objective in place of DINO:

- **Networks.** One SMARTIES checkpoint (``model.init``: the bundled ``smarties-demo-tiny``, the official
  ``smarties-vit-b``/``-l``, any encoder-only or full-MAE ``.safetensors``, or a pickled state dict ``.pth``/``.pt``/
  ``.bin``/``.ckpt`` read with ``weights_only=True``) is copied into the trainable *student* (a
  :class:`training.models.mae.SmartiesMAE`: the encoder plus the checkpoint's MAE decoder when it has one, a fresh
  one otherwise, :meth:`~training.models.mae.SmartiesMAE.from_checkpoint`) and a frozen *domain teacher* (an
  :class:`engine.models.SmartiesEncoder`: eval mode, ``requires_grad`` False, run under ``torch.no_grad``,
  never in the optimiser — the fix of X-STARS bug B7, whose frozen copy ran in train mode with drop-path).
- **Data.** Co-registered pairs (:mod:`training.data.pairs`: a BigEarthNet-MM folder, a pairs CSV — also pan/MS
  pairs — or an MSC-France-like folder) through :class:`training.data.pairs.PairedCropSampler`, in the resumable
  :class:`training.data.stream.SamplerStream`. ``align.old_sensor`` is what the teacher sees (e.g. Sentinel-2),
  ``align.new_sensor`` what the student learns (e.g. Sentinel-1). Each sample is one ground window read from both
  sensors at their native GSDs, normalised with the engine's statistics, resized to the same ``p · G`` pixels
  (224 for a 14 × 14 grid) and flipped/rotated identically, so patch token ``t`` (row ``t // G``, column ``t % G``)
  covers the same ground in both views whatever the two GSDs are (X-STARS matches its views the same way, by
  resizing both to 224 px, docs/xstars.md §3.1; ``tests/training/test_smarties_align.py`` checks it on the Landsat-8
  15 m pan ↔ 30 m multispectral pair).
- **Loss** (one forward of :class:`training.models.smarties_align.SmartiesAlignModel`, so that DDP sees every
  parameter use, X-STARS B14)::

      L = mae_weight · L_MAE(student, new-sensor view) + alpha · L_MSAD(teacher(old view), student(new view))

  ``L_MAE`` is the SMARTIES norm-pix MAE loss (docs/smarties.md §5: 75 % masking, masked tokens only; one view, so no
  token mixup) on the new sensor: it keeps the student's features grounded in the new sensor's own pixels
  (``mae_weight: 0`` turns it off; needed when the new sensor has bands without an MAE pixel head, e.g.
  panchromatic). ``L_MSAD`` is :class:`training.losses.msad.MSADLoss` in continual mode (docs/xstars.md §3.3, §4:
  one pair, ``sat1`` = the teacher on the old sensor, ``sat2`` = the student on the new sensor, mean over token
  positions) on the all-token outputs *after the final LayerNorm* ``[B, 1 + G², D]`` (index 0 = CLS, kept with
  ``msad.include_cls``) of a full, unmasked forward (``encoder.encode(x, bands, "tokens")``) — what X-STARS feeds
  MSAD; the engine's ``"grid"`` output is SMARTIES' pre-norm ``all_tokens`` instead. ``msad.mode: paper`` keeps the
  graph, so the student and the MSAD heads ``P``, ``Q1``, ``Q2`` get gradients (heads in the optimiser, checkpoint and
  export); ``compat`` computes the same value without a graph, as the released X-STARS code (B1/B2), so only the MAE
  term trains.
- **Optimisation** (as ``smarties-mae``, docs/smarties.md §5): AdamW, weight decay on parameters with ``ndim ≥ 2``,
  per-step linear warm-up then cosine (:func:`training.optim.lr_schedule`); the heads' groups get
  ``msad.lr_scale``. With ``mae_weight: 0`` the decoder is frozen (it would get no gradient).
- **Loop**: :class:`training.runner.Runner` (device, precision, DDP, resumable checkpoints holding the student,
  decoder, MSAD heads, teacher, optimiser, RNG and data position; ``log.csv`` with ``mae_loss`` and ``msad_loss``).
- **Exports** (``run.out_dir/export/``): ``<model.name>.safetensors`` (the aligned encoder, loads in
  :func:`engine.load_model`) and ``<model.name>-mae.safetensors`` (encoder + decoder, to continue from) through
  :func:`training.export.mae_exporter`; in ``paper`` mode also ``<model.name>-msad-heads.safetensors`` (the heads,
  :func:`training.export.save_msad_heads` / :func:`training.export.load_msad_heads`; a separate file because the
  engine's strict key rule refuses foreign keys next to an encoder, docs/smarties.md §1.6).

Config: :class:`SmartiesAlignConfig` (``training/configs/smarties-align-*.yaml``, read strictly)::

    msfm train smarties-align smarties-align-tiny-cpu --set run.out_dir=/tmp/align
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import torch
from safetensors.torch import save_file
from torch import nn

from engine.models import is_dino_checkpoint, safe_torch_load
from engine.spectral import BandSpec, get_range

from ..config import CONFIG_DIR, ConfigError, find_config, load_config
from ..data.pairs import PairedCropSampler, PairsConfig, pairs_from_config
from ..data.stream import SamplerStream
from ..export import ExportConfig, mae_exporter, save_msad_heads
from ..losses.msad import MSADLoss
from ..models.mae import SmartiesMAE, images_to_mae_batch
from ..models.smarties_align import SmartiesAlignModel
from ..optim import OptimConfig, lr_schedule, param_groups
from ..runner import RunConfig, Runner, RunResult, StepOutput, TrainTask, run_recipe

__all__ = (
    "AlignConfig",
    "AlignDataConfig",
    "AlignModelConfig",
    "AlignMSADConfig",
    "SmartiesAlignConfig",
    "align_param_groups",
    "align_task",
    "build_align_model",
    "build_stream",
    "load_align_config",
    "main",
    "train_smarties_align",
)

METRICS = ("mae_loss", "msad_loss")
#: Suffixes read as pickled state dicts (``torch.load(weights_only=True)``: tensors and containers only).
PICKLE_SUFFIXES = frozenset({".pth", ".pt", ".bin", ".ckpt"})
#: Wrapper keys under which training scripts store the state dict of a pickled checkpoint.
_STATE_KEYS = ("model", "state_dict", "model_state_dict")


# ---------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class AlignModelConfig:
    """The checkpoint to align; the geometry (D, depth, patch, grid, MLP) is read from its tensors.

    Attributes:
        init: SMARTIES checkpoint copied into student and teacher: a registry name (``smarties-demo-tiny``,
            ``smarties-vit-b``), a ``.safetensors`` file (encoder-only or full MAE) or a pickled state dict
            (``.pth``/``.pt``/``.bin``/``.ckpt``, optionally under ``model``/``state_dict`` and with a ``module.``
            prefix).
        name: Name of the exported files (``export/<name>.safetensors``).
        num_heads: Encoder attention heads (default: the file's config, the registry, or D/64).
        averaging: Weights of the averaged ranges 17/18 (default: the file's config, else ``linear``).
        decoder_dim: Width of a fresh MAE decoder, used when the checkpoint has none (512 in SMARTIES,
            docs/smarties.md §1.5).
        decoder_depth: Depth of a fresh decoder (8 in SMARTIES).
        decoder_heads: Decoder heads (default: the file's config, else 16).
    """

    init: str
    name: str = "smarties-aligned"
    num_heads: Optional[int] = None
    averaging: Optional[Literal["linear", "reference"]] = None
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: Optional[int] = None


@dataclass(frozen=True)
class AlignConfig:
    """Which sensor is which, and the weight of the MAE term.

    Attributes:
        old_sensor: Sensor the frozen domain teacher sees (one the checkpoint knows, e.g. ``s2``); MSAD's ``sat1``.
        new_sensor: Sensor the student learns (e.g. ``s1``); MSAD's ``sat2`` and the MAE's input.
        mae_weight: Weight of the SMARTIES MAE loss on the new-sensor view (≥ 0; 0 = MSAD only).
        mask_ratio: MAE masking ratio (0.75, docs/smarties.md §5).

    Raises:
        training.config.ConfigError: Same sensor on both sides, a negative weight, a bad mask ratio.
    """

    old_sensor: str
    new_sensor: str
    mae_weight: float = 1.0
    mask_ratio: float = 0.75

    def __post_init__(self) -> None:
        if self.old_sensor == self.new_sensor:
            raise ConfigError(f"align.old_sensor and align.new_sensor are both {self.old_sensor!r}: the frozen teacher "
                              "must see the sensor the checkpoint knows and the student the new one; name two sensors "
                              "of the pairs")
        if self.mae_weight < 0:
            raise ConfigError(f"align.mae_weight must be ≥ 0, got {self.mae_weight}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"align.mask_ratio must lie in [0, 1), got {self.mask_ratio}")


@dataclass(frozen=True)
class AlignMSADConfig:
    """The MSAD term (docs/xstars.md §3.5; X-STARS' values as defaults).

    Attributes:
        mode: ``paper`` (differentiable, heads trained and exported) or ``compat`` (value logged only, B1/B2).
        alpha: Weight of MSAD (0.1 in X-STARS, relative to its DINO loss).
        tau: Temperature τ (1.0).
        label_smoothing: ε (0.3).
        dropout: Head dropout (0.2).
        proj_dim: Head width (1024; ≤ 1024).
        include_cls: Token 0 (CLS) is one more aligned position (True, as X-STARS).
        lr_scale: LR multiplier of the heads' parameter groups.
    """

    mode: Literal["paper", "compat"] = "paper"
    alpha: float = 0.1
    tau: float = 1.0
    label_smoothing: float = 0.3
    dropout: float = 0.2
    proj_dim: int = 1024
    include_cls: bool = True
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ConfigError(f"msad.alpha must be ≥ 0, got {self.alpha}")
        if not 0 < self.proj_dim <= 1024:
            raise ConfigError(f"msad.proj_dim must lie in 1..1024 (docs/xstars.md §3.2), got {self.proj_dim}")


@dataclass(frozen=True)
class AlignDataConfig:
    """Co-registered pairs (:mod:`training.data.pairs`).

    Attributes:
        pairs: Where the pairs are (:class:`training.data.pairs.PairsConfig`: ``kind`` bigearthnet/csv/folder,
            ``path``, ``sensors`` = the CSV columns / folders to read, ``presets``, crop ``scale``).
        batch_size: Samples per batch per process.
        prefetch: Batches built ahead in a background thread (0 = in the loop).
        samples_per_epoch: Samples in one epoch for ``run.epochs`` / ``optim.warmup_epochs`` (``null`` = the number
            of pairs: one crop per pair per epoch).
        overfit_one_batch: Repeat the first batch forever (sanity check: the losses must fall).
    """

    pairs: PairsConfig = field(default_factory=PairsConfig)
    batch_size: int = 64
    prefetch: int = 2
    samples_per_epoch: Optional[int] = None
    overfit_one_batch: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ConfigError(f"data.batch_size must be ≥ 2 (MSAD contrasts the samples of a batch), got "
                              f"{self.batch_size}")


@dataclass(frozen=True)
class SmartiesAlignConfig:
    """The ``smarties-align`` recipe: one YAML file (``training/configs/smarties-align-*.yaml``).

    Raises:
        training.config.ConfigError: Nothing would train (``mae_weight: 0`` with ``msad.mode: compat`` or
            ``alpha: 0``), or see the sections.
    """

    recipe: Literal["smarties-align"]
    run: RunConfig
    optim: OptimConfig
    model: AlignModelConfig
    align: AlignConfig
    data: AlignDataConfig
    msad: AlignMSADConfig = field(default_factory=AlignMSADConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        msad_trains = self.msad.mode == "paper" and self.msad.alpha > 0
        if self.align.mae_weight == 0 and not msad_trains:
            raise ConfigError("align.mae_weight is 0 and MSAD gives no gradient (msad.mode compat or msad.alpha 0): "
                              "nothing would train; set align.mae_weight > 0, or msad.mode: paper with alpha > 0")


def load_align_config(path: Union[str, "os.PathLike[str]"], overrides: Sequence[str] = ()) -> SmartiesAlignConfig:
    """Read a ``smarties-align`` YAML config (a bare name is one of ``training/configs/smarties-*.yaml``).

    Raises:
        FileNotFoundError: No such file.
        training.config.ConfigError: Unknown key, wrong type, inconsistent values.
    """
    return load_config(SmartiesAlignConfig, find_config(path, CONFIG_DIR, "smarties-align*.yaml", "smarties-*.yaml"),
                       overrides)


# ---------------------------------------------------------------------------------------------------- building
def _state_from_pickle(path: Path) -> dict[str, torch.Tensor]:
    """The flat state dict of a pickled checkpoint, unpickled safely by the engine's DINO reader
    (``torch.load(weights_only=True)`` under its allow-list; a refused global is named, never executed)."""
    obj = safe_torch_load(path)
    if isinstance(obj, Mapping) and ("student" in obj or "teacher" in obj):
        return dict(obj)  # a DINO / X-STARS training checkpoint: reported by the caller
    for key in _STATE_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"model.init {path}: expected a state dict of tensors (optionally under "
                          f"{'/'.join(_STATE_KEYS)}), got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):  # saved from a DDP-wrapped model
        return {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _is_dino(keys: Sequence[str]) -> bool:
    return any(k.endswith("patch_embed.proj.weight") for k in keys) or any(k in ("student", "teacher") for k in keys)


def _dino_error(init: str) -> ConfigError:
    return ConfigError(f"model.init {init} is a DINO / X-STARS checkpoint (3-channel patch embedding), not a SMARTIES "
                       "encoder; align it with `msfm train xstars-continual`, or give a SMARTIES checkpoint")


def _load_student(cfg: SmartiesAlignConfig) -> SmartiesMAE:
    """``model.init`` as a :class:`SmartiesMAE` (decoder restored or fresh); pickles go through a temporary
    ``.safetensors`` so the engine's strict reader checks them like any other file."""
    m = cfg.model
    kw = dict(num_heads=m.num_heads, averaging=m.averaging, decoder_dim=m.decoder_dim, decoder_depth=m.decoder_depth,
              decoder_heads=m.decoder_heads, mask_ratio=cfg.align.mask_ratio)
    path = Path(m.init)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"model.init {path} does not exist")
        state = _state_from_pickle(path)
        if _is_dino(list(state)):
            raise _dino_error(m.init)
        with tempfile.TemporaryDirectory(prefix="smarties-align-init-") as tmp:
            converted = Path(tmp) / f"{path.stem}.safetensors"
            save_file({k: v.contiguous() for k, v in state.items()}, str(converted))
            return SmartiesMAE.from_checkpoint(converted, **kw)
    if path.suffix.lower() == ".safetensors" and path.is_file() and is_dino_checkpoint(path):
        raise _dino_error(m.init)
    return SmartiesMAE.from_checkpoint(m.init, **kw)


def build_align_model(cfg: SmartiesAlignConfig) -> SmartiesAlignModel:
    """Student, teacher and MSAD of a config: ``model.init`` copied twice, fresh MSAD heads (torch's current RNG).

    Raises:
        training.config.ConfigError: ``model.init`` is a DINO/X-STARS file, or a pickle without a state dict.
        engine.errors.CheckpointError, engine.errors.ModelNotAvailableError: As
            :meth:`training.models.mae.SmartiesMAE.from_checkpoint` (unknown name, strict key rule, a task head), or a
            pickle that is damaged or calls a global outside the engine's allow-list (named, never executed).
        FileNotFoundError: A pickle path that does not exist.
    """
    student = _load_student(cfg)
    teacher = copy.deepcopy(student.encoder)
    if cfg.align.mae_weight == 0:  # the decoder would get no gradient: keep it as loaded (exported unchanged)
        for name, p in student.named_parameters():
            if name.startswith(("decoder_", "mask_token")):
                p.requires_grad_(False)
    s = cfg.msad
    msad = MSADLoss(student.embed_dim, s.proj_dim, s.dropout, s.tau, s.label_smoothing, s.include_cls, s.mode,
                    "single")
    if s.mode == "compat":
        msad.heads.requires_grad_(False)  # X-STARS B2: never optimised
    return SmartiesAlignModel(student.train(), teacher, msad, s.alpha, cfg.align.mae_weight)


def align_param_groups(model: SmartiesAlignModel, weight_decay: float,
                       heads_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: the student's (:func:`training.optim.param_groups`: ``weight_decay`` on ``ndim ≥ 2``, 0 on
    1-D), then the MSAD heads' (same rule, ``lr_scale = heads_lr_scale``) when they train. Frozen parameters (the
    teacher, the position tables, a frozen decoder, compat heads) are left out; empty groups are dropped.

    Returns:
        Groups ``{"params", "weight_decay", "lr_scale", "name"}``.
    """
    groups = []
    for prefix, module, scale in (("student", model.student, 1.0), ("msad_heads", model.msad.heads, heads_lr_scale)):
        for group, kind in zip(param_groups(module, weight_decay), ("decay", "no_decay")):
            if group["params"]:
                groups.append({**group, "lr_scale": scale, "name": f"{prefix}.{kind}"})
    return groups


def _check_sensors(cfg: SmartiesAlignConfig, pairs: Sequence[Any]) -> None:
    """Check ``align.old_sensor``/``new_sensor`` against the pairs' sensors (listed in the error)."""
    sensors = list(pairs[0].sensors)
    a = cfg.align
    lost = [s for s in (a.old_sensor, a.new_sensor) if s not in sensors]
    if lost:
        raise ConfigError(f"align sensors {lost} are not in the pairs of {cfg.data.pairs.path}: they have {sensors} "
                          "(BigEarthNet-MM: s1, s2; pan/MS pairs: ms, pan; CSV/folder: the column/folder names)")


def _mae_bands_ok(cfg: SmartiesAlignConfig, bands: Sequence[BandSpec]) -> None:
    bad = [str(getattr(b, "label", b)) for b in bands if not isinstance(b, str) or get_range(b).is_disabled]
    if bad:
        raise ConfigError(f"align.new_sensor {cfg.align.new_sensor!r} has bands without an MAE pixel head ({bad}: "
                          "interpolated projections, e.g. panchromatic); set align.mae_weight: 0 (MSAD only)")


def build_stream(cfg: SmartiesAlignConfig, patch_size: int, grid_size: int, rank: int = 0) -> tuple[SamplerStream, int]:
    """The resumable batch stream of ``cfg.data`` for process ``rank`` and the number of pairs.

    Batches are dicts: ``old``/``new`` ``[B, C, S, S]`` images with S = ``patch_size · grid_size``,
    ``old_bands``/``new_bands``, and ``patches``/``indices`` of the new view when ``align.mae_weight > 0``.

    Raises:
        training.config.ConfigError: ``data.pairs.path`` unset, no pair, sensors not in the pairs, new-sensor bands
            without an MAE head while ``mae_weight > 0``.
        FileNotFoundError: As the :mod:`training.data.pairs` constructors (missing folder, index.csv or raster).
    """
    if cfg.data.pairs.path is None:
        raise ConfigError("data.pairs.path is not set: give the pairs folder (BigEarthNet-MM: the folder holding "
                          "index.csv) or CSV file")
    found = pairs_from_config(cfg.data.pairs)
    _check_sensors(cfg, found)
    old, new = cfg.align.old_sensor, cfg.align.new_sensor
    sampler = PairedCropSampler(found, size_px=patch_size * grid_size, scale=tuple(cfg.data.pairs.scale),
                                seed=cfg.run.seed)
    with_mae = cfg.align.mae_weight > 0
    if with_mae:
        _mae_bands_ok(cfg, sampler.band_specs(0, new))

    def to_batch(b: Any) -> dict[str, Any]:
        out = {"old": b.images[old], "old_bands": list(b.bands[old]), "new": b.images[new],
               "new_bands": list(b.bands[new])}
        if with_mae:
            mae = images_to_mae_batch(b.images[new], b.bands[new], patch_size)
            out["patches"], out["indices"] = mae["patches"], mae["indices"]
        return out

    d = cfg.data
    stream = SamplerStream(sampler, d.batch_size, seed=cfg.run.seed, rank=rank, prefetch=d.prefetch,
                           overfit_one_batch=d.overfit_one_batch, transform=to_batch)
    return stream, len(found)


# ---------------------------------------------------------------------------------------------------- the task
def align_task(cfg: SmartiesAlignConfig, runner: Runner, data: Optional[Any] = None) -> TrainTask:
    """The :class:`~training.runner.TrainTask` of the recipe (model built now: create ``runner`` first, it seeds).

    Args:
        cfg: The recipe config.
        runner: The runner that will fit the task.
        data: Iterable of batches of :meth:`SmartiesAlignModel.forward`'s contract for this process; ``None`` = the
            pairs of ``cfg.data`` (:func:`build_stream`).

    Raises:
        training.config.ConfigError, FileNotFoundError, engine.errors.CheckpointError: See :func:`build_stream` and
            :func:`build_align_model`.
    """
    model = build_align_model(cfg)
    n_pairs = None
    if data is None:
        data, n_pairs = build_stream(cfg, model.student.patch_size, model.student.grid_size, runner.process_index)
    epoch_size = cfg.data.samples_per_epoch or n_pairs
    total = runner.total_steps(cfg.data.batch_size, epoch_size)
    schedule = lr_schedule(cfg.optim, total, runner.effective_batch(cfg.data.batch_size), epoch_size)
    a, s = cfg.align, cfg.msad

    def loss_fn(net: nn.Module, batch: Any, step: int) -> StepOutput:
        loss, mae, msad = net(batch)
        return StepOutput(loss, {"mae_loss": mae, "msad_loss": msad})

    meta = {"recipe": "smarties-align", "init": cfg.model.init, "old_sensor": a.old_sensor,
            "new_sensor": a.new_sensor, "mae_weight": a.mae_weight, "msad_mode": s.mode, "msad_alpha": s.alpha}
    export_mae = mae_exporter(cfg.model.name, cfg.export, meta)

    def export(net: nn.Module, folder: Path, step: int) -> list[Path]:
        assert isinstance(net, SmartiesAlignModel)
        paths = export_mae(net.student, folder, step)
        if net.msad.mode == "paper":
            heads_meta = {**meta, "steps": step, "sat1": a.old_sensor, "sat2": a.new_sensor,
                          "include_cls": s.include_cls, "tau": s.tau, "label_smoothing": s.label_smoothing}
            paths.append(save_msad_heads(net.msad.heads, folder / f"{cfg.model.name}-msad-heads.safetensors",
                                         heads_meta))
        return paths

    last = total - 1
    return TrainTask(
        model=model,
        param_groups=align_param_groups(model, cfg.optim.weight_decay, s.lr_scale),
        loss_fn=loss_fn,
        data=data,
        lr_at=lambda step: float(schedule[min(step, last)]),
        batch_size=cfg.data.batch_size,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        clip_grad=cfg.optim.clip_grad,
        export=export,
        metric_names=METRICS,
        samples_per_epoch=epoch_size,
        find_unused_parameters=True,  # projections of ranges absent from the batch, a frozen/unused decoder
        name=cfg.model.name,
    )


def train_smarties_align(cfg: SmartiesAlignConfig, data: Optional[Any] = None) -> RunResult:
    """Run the recipe: :class:`~training.runner.Runner` + :func:`align_task`; closes the stream it opened.

    Args:
        cfg: The config.
        data: Optional iterable of batches for this process (see :func:`align_task`).

    Returns:
        The runner's :class:`~training.runner.RunResult`.

    Raises:
        training.runner.NonFiniteLossError: The loss diverged.
        FileExistsError: ``run.out_dir`` holds a run and ``run.resume`` is off.
        training.config.ConfigError, FileNotFoundError, engine.errors.EngineError: Bad config, data or weights.
    """
    return run_recipe(cfg, align_task, data)


def main(config: Union[str, "os.PathLike[str]"], overrides: Sequence[str] = ()) -> RunResult:
    """Load a ``smarties-align`` config (a path or a shipped name, with ``KEY=VALUE`` overrides) and run it
    (= ``msfm train smarties-align``).

    Raises:
        As :func:`load_align_config` and :func:`train_smarties_align`.
    """
    return train_smarties_align(load_align_config(config, overrides))
