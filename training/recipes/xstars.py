"""Recipes ``xstars`` and ``xstars-continual``: X-STARS pretraining and continual pretraining on
:mod:`training.runner` (docs/xstars.md §2-§4).

**Pretraining** (recipe ``xstars``): DINO on the tiles of every selected sensor plus ``alpha · L_MSAD`` between the
student's all-token outputs on the un-augmented views of the same place in every sensor (sum over sensor pairs).

**Continual pretraining** (recipe ``xstars-continual``): a pretrained checkpoint is copied three ways — student, EMA
teacher and a frozen *domain teacher* — DINO runs on the new sensor's tiles only, and MSAD aligns the student on the
new sensor (``sat2``) with the frozen network on the partner (old) sensor (``sat1``), one pair. Unlike the released
code (B7), the domain teacher runs in eval mode under ``torch.no_grad`` (no drop-path noise in its targets), and the
EMA teacher starts from the checkpoint's *teacher* (``continual.teacher_from: student`` reproduces the original).

The step (:class:`training.models.xstars.XStarsModel`, one ``forward`` so that DDP sees every parameter use, B14)::

    teacher_out = teacher(globals)            no grad          [2B, K]
    student_out = student(globals + locals)                    [(2 + N)B, K]
    L = DINOLoss(student_out, teacher_out, epoch) + alpha · MSAD(tokens of the MSAD views)

Around it (docs/xstars.md §2): AdamW with DINO's groups (biases and 1-D tensors undecayed; ``cls_token``/``pos_embed``
decayed; the MSAD heads in the same groups in ``paper`` mode, scaled by ``msad.lr_scale``), per-iteration schedules
from :mod:`training.schedules` (LR: linear warm-up to ``lr · batch / 256`` then cosine to ``min_lr``; WD 0.04 → 0.4;
teacher momentum 0.996 → 1, EMA after every step over all parameters), gradient clipping at 3.0 **per parameter
tensor** (``optim.clip_mode: global`` = one global norm instead), and the student's ``head.last_layer`` gradients
dropped during the first ``dino.freeze_last_layer`` epochs.

**Backbone contract** (what a SMARTIES spectrum-aware encoder must offer to be plugged in later): ``backbone(x,
return_all_tokens=False)`` → ``[B, D]`` CLS after the final norm, or ``[B, 1 + n, D]`` all tokens (index 0 = CLS)
with ``True``; attribute ``embed_dim``. The student/teacher are :class:`engine.models.MultiCropWrapper`
(backbone + DINO head), the domain teacher a bare backbone. A SMARTIES adapter would bind each view's band list.

Outputs (``run.out_dir``): the runner's resumable checkpoints (student, teacher, MSAD heads, DINO centre, optimiser,
scaler, RNG, data position), ``log.csv`` (runner columns + ``dino_loss, msad_loss, wd, momentum``) and
``export/<model.name>.pth`` in the DINO/X-STARS layout (:func:`engine.models.save_dino_checkpoint`:
``student``, ``teacher``, ``epoch``, flat X-STARS-style ``args`` with ``mean``/``std``, ``dino_loss.center`` and the
new key ``msad_heads``), loadable by :func:`engine.load_model`.

Per-tensor clipping and the last-layer freeze run in the runner's ``before_step`` hook, which sees the accumulated,
DDP-averaged and (under fp16) unscaled gradients: the point where DINO clips.

Data: :mod:`training.data.xstars` (multi-crop samples of an MSC-France-like folder, :mod:`training.data.augment`);
losses: :mod:`training.losses.dino`, :mod:`training.losses.msad`. Config: :class:`XStarsConfig`
(``training/configs/xstars-*.yaml``, read strictly)::

    msfm train xstars xstars-tiny-cpu --set run.out_dir=/tmp/xstars
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Sequence, Union

import torch
from torch import nn

from engine.models import (
    ARCHS,
    DINOHead,
    DinoViT,
    MultiCropWrapper,
    build_dino_model,
    read_dino_checkpoint,
    save_dino_checkpoint,
    xstars_norm,
)
from engine.spectral import ChannelNorm

from ..config import CONFIG_DIR, ConfigError, config_to_dict, find_config, load_config
from ..data.augment import DINOMultiCrop
from ..data.pairs import pairs_from_folder
from ..data.xstars import XStarsSamples, XStarsStream
from ..losses.dino import DINOLoss
from ..losses.msad import MSADLoss
from ..models.xstars import XStarsModel
from ..runner import RunConfig, Runner, RunResult, StepOutput, TrainTask, run_recipe
from ..schedules import cosine_schedule, scaled_lr

__all__ = (
    "ContinualConfig",
    "DinoConfig",
    "MSADConfig",
    "XStarsConfig",
    "XStarsDataConfig",
    "XStarsModelConfig",
    "XStarsOptimConfig",
    "before_step",
    "build_samples",
    "build_xstars_model",
    "cancel_last_layer_gradients",
    "clip_gradients_per_tensor",
    "dino_param_groups",
    "joint_norm",
    "load_xstars_config",
    "main",
    "train_xstars",
    "xstars_task",
)

logger = logging.getLogger(__name__)

METRICS = ("dino_loss", "msad_loss", "wd", "momentum")


# ---------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class XStarsModelConfig:
    """Networks (docs/xstars.md §1). In continual pretraining the geometry comes from the checkpoint and these are
    ignored.

    Attributes:
        name: Model name (export file ``export/<name>.pth``).
        arch: DINO architecture (``vit_tiny`` in the X-STARS README; D/depth/heads from docs/xstars.md §1's table).
        embed_dim: Override D (small test models); ``null`` = the arch's.
        depth: Override the number of blocks.
        num_heads: Override the attention heads.
        patch_size: Patch side p (16).
        img_size: Side the position table is learned for (224 → 14 × 14).
        drop_path_rate: Student stochastic depth (0.1); the teacher uses 0.
        out_dim: DINO head output K (65536).
        head_hidden_dim: DINO head hidden width (2048).
        head_bottleneck_dim: DINO head bottleneck (256).
        head_nlayers: DINO head Linear layers (3).
        norm_last_layer: Freeze the student's weight-norm gain at 1 (True).
    """

    name: str = "xstars-vit-tiny"
    arch: Literal["vit_tiny", "vit_small", "vit_base", "vit_large"] = "vit_tiny"
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    patch_size: int = 16
    img_size: int = 224
    drop_path_rate: float = 0.1
    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_nlayers: int = 3
    norm_last_layer: bool = True


@dataclass(frozen=True)
class DinoConfig:
    """DINO views, loss and teacher (docs/xstars.md §2; defaults are X-STARS').

    Attributes:
        local_crops_number: Local views N (8).
        global_size_px: Global view side (224).
        local_size_px: Local view side (96).
        global_crops_scale: Area range of global crops.
        local_crops_scale: Area range of local crops.
        teacher_temp: Teacher temperature (0.04).
        warmup_teacher_temp: Initial teacher temperature (0.04).
        warmup_teacher_temp_epochs: Epochs of the temperature warm-up (0).
        momentum_teacher: Initial EMA momentum (0.996; DINO advises 0.9995 for small batches, docs/xstars.md B12).
        freeze_last_layer: Epochs during which the head's last layer gets no update (1).
    """

    local_crops_number: int = 8
    global_size_px: int = 224
    local_size_px: int = 96
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    momentum_teacher: float = 0.996
    freeze_last_layer: int = 1


@dataclass(frozen=True)
class MSADConfig:
    """The MSAD term (docs/xstars.md §3.5).

    Attributes:
        enabled: Add ``alpha · L_MSAD`` (X-STARS ``--use_msad``).
        mode: ``paper`` (differentiable, heads trained and saved) or ``compat`` (logged only, as released, B1/B2).
        alpha: Weight of MSAD (0.1).
        tau: Temperature (1.0).
        label_smoothing: ε (0.3).
        dropout: Head dropout (0.2).
        proj_dim: Head width (1024).
        include_cls: Token 0 is one more aligned position (True, as the reference).
        normalization: MSAD view normalisation: ``joint`` (same as the DINO views), ``per_sensor`` or ``double``
            (the released code, B3).
        size_px: MSAD view side (224: the same 14 × 14 grid for every sensor).
        lr_scale: LR multiplier of the heads' parameter groups (1 = the student's schedule).
    """

    enabled: bool = True
    mode: Literal["paper", "compat"] = "paper"
    alpha: float = 0.1
    tau: float = 1.0
    label_smoothing: float = 0.3
    dropout: float = 0.2
    proj_dim: int = 1024
    include_cls: bool = True
    normalization: Literal["joint", "per_sensor", "double"] = "joint"
    size_px: int = 224
    lr_scale: float = 1.0


@dataclass(frozen=True)
class XStarsOptimConfig:
    """AdamW and schedules (docs/xstars.md §2; DINO's defaults).

    Attributes:
        lr: LR for a batch of 256; peak = ``lr · effective_batch / 256`` (5e-4).
        min_lr: End of the LR cosine (1e-6).
        warmup_epochs: Linear LR warm-up from 0 (10 epochs).
        weight_decay: Initial weight decay (0.04).
        weight_decay_end: Final weight decay (0.4; a cosine rising to it).
        clip_grad: Gradient clipping threshold (3.0); ``null`` = none.
        clip_mode: ``per_tensor`` (DINO: each tensor's own L2 norm) or ``global`` (one norm over all tensors).
        betas: AdamW betas.
        eps: AdamW epsilon.
    """

    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: Optional[float] = 3.0
    clip_mode: Literal["per_tensor", "global"] = "per_tensor"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.weight_decay <= 0 < self.weight_decay_end:
            raise ConfigError("optim.weight_decay must be > 0 for the weight-decay schedule to apply (the runner "
                              "schedules the groups created with a positive weight decay); set both to 0 for none")


@dataclass(frozen=True)
class XStarsDataConfig:
    """Tiles and views (docs/xstars.md §5).

    Attributes:
        root: MSC-France-like folder ``<root>/<Sensor>/<City>/<tile>`` (8-bit RGB tiles).
        sensors: Sensor folders in MSAD order (the first is ``sat1``): README ``[Sentinel, Landsat]``.
        batch_size: Samples per batch per process (X-STARS README: 4 pretraining, 12 continual; argparse 64).
        norm: Joint normalisation preset (``engine/data/xstars_stats.json``: ``sentinel_landsat``, ...); ``null`` =
            the continual checkpoint's ``args.mean/std``, else ``sentinel_landsat``.
        mean: Explicit joint mean (overrides ``norm``).
        std: Explicit joint std.
        sensor_norms: Sensor folder → preset for ``per_sensor``/``double`` MSAD views (default: the lower-cased
            folder name: ``Sentinel`` → ``sentinel``).
        strict_pairs: A tile without a partner in every sensor is an error (False: such places are skipped).
        samples_per_epoch: Samples in one epoch (default: the number of anchor tiles).
        num_workers: Data-loader workers per process.
    """

    root: str = "data/MSC-France"
    sensors: tuple[str, ...] = ("Sentinel", "Landsat")
    batch_size: int = 64
    norm: Optional[str] = None
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None
    sensor_norms: dict[str, str] = field(default_factory=dict)
    strict_pairs: bool = True
    samples_per_epoch: Optional[int] = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ConfigError("data: give both mean and std, or neither")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be ≥ 1, got {self.batch_size}")


@dataclass(frozen=True)
class ContinualConfig:
    """Continual pretraining (docs/xstars.md §4).

    Attributes:
        pretrained: DINO/X-STARS checkpoint (``.pth`` or DINO-layout ``.safetensors``; read safely and strictly).
        adapt_sensor: The new sensor: DINO runs on its tiles, MSAD's ``sat2``.
        partner_sensor: The old sensor seen by the frozen domain teacher (``sat1``); default: the first entry of
            ``data.sensors`` other than ``adapt_sensor`` (as the original).
        student_from: Checkpoint network the student starts from (``student``, as the original).
        teacher_from: Network the EMA teacher starts from: ``teacher`` (default) or ``student`` (the original, B7).
        frozen_from: Network of the frozen domain teacher (``student``, as the original).
    """

    pretrained: str
    adapt_sensor: str
    partner_sensor: Optional[str] = None
    student_from: Literal["student", "teacher"] = "student"
    teacher_from: Literal["student", "teacher"] = "teacher"
    frozen_from: Literal["student", "teacher"] = "student"


@dataclass(frozen=True)
class XStarsConfig:
    """An X-STARS recipe: one YAML file (``training/configs/xstars*.yaml``).

    ``recipe`` ``xstars`` (pretraining) needs no ``continual`` section; ``xstars-continual`` requires it.
    """

    recipe: Literal["xstars", "xstars-continual"]
    run: RunConfig
    data: XStarsDataConfig
    model: XStarsModelConfig = field(default_factory=XStarsModelConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    msad: MSADConfig = field(default_factory=MSADConfig)
    optim: XStarsOptimConfig = field(default_factory=XStarsOptimConfig)
    continual: Optional[ContinualConfig] = None

    def __post_init__(self) -> None:
        if (self.recipe == "xstars-continual") != (self.continual is not None):
            raise ConfigError("recipe xstars-continual needs a continual section, and only it may have one")
        sensors = list(self.data.sensors)
        if len(set(sensors)) != len(sensors) or not sensors:
            raise ConfigError(f"data.sensors must be distinct sensor folder names, got {sensors}")
        if self.msad.enabled and len(sensors) < 2:
            raise ConfigError("msad.enabled needs at least 2 data.sensors")
        if self.continual is not None:
            c = self.continual
            if c.adapt_sensor not in sensors:
                raise ConfigError(f"continual.adapt_sensor {c.adapt_sensor!r} is not in data.sensors {sensors}")
            partner = c.partner_sensor
            if partner is not None and (partner not in sensors or partner == c.adapt_sensor):
                raise ConfigError(f"continual.partner_sensor {partner!r} must be another entry of data.sensors")


def load_xstars_config(path: Union[str, "os.PathLike[str]"], overrides: Sequence[str] = ()) -> XStarsConfig:
    """Read an X-STARS YAML config (a bare name is one of ``training/configs/xstars*.yaml``).

    Raises:
        FileNotFoundError: No such file.
        training.config.ConfigError: Unknown key, wrong type, inconsistent values.
    """
    return load_config(XStarsConfig, find_config(path, CONFIG_DIR, "xstars*.yaml"), overrides)


# ---------------------------------------------------------------------------------------------------- optimisation
def dino_param_groups(model: XStarsModel, weight_decay: float = 0.04,
                      heads_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups (docs/xstars.md §2): decayed = trainable tensors that are not 1-D and whose name does not end in
    ``.bias``.

    Student groups first, then the MSAD heads' groups (``lr_scale`` = ``heads_lr_scale``) when they are trainable.
    Decayed groups start at ``weight_decay`` (> 0); the runner replaces it with the scheduled value every step
    (``TrainTask.wd_at`` acts on the groups created with a positive weight decay). Frozen parameters (the teacher, the
    domain teacher, the student's weight-norm gain, the heads in ``compat`` mode) are left out.

    Returns:
        Non-empty groups, each ``{"params", "weight_decay", "lr_scale", "name"}``.
    """
    modules: list[tuple[str, nn.Module, float]] = [("student", model.student, 1.0)]
    if model.msad is not None:
        modules.append(("msad_heads", model.msad.heads, heads_lr_scale))
    groups = []
    for prefix, module, scale in modules:
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
        for params, wd, kind in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay")):
            if params:
                groups.append({"params": params, "weight_decay": wd, "lr_scale": scale, "name": f"{prefix}.{kind}"})
    return groups


@torch.no_grad()
def clip_gradients_per_tensor(parameters: Iterable[nn.Parameter], max_norm: float) -> list[float]:
    """DINO's clipping: each gradient whose own L2 norm exceeds ``max_norm`` is rescaled by ``max_norm/(norm+1e-6)``.

    Returns:
        The gradient norms before clipping (floats), in parameter order (parameters without a gradient skipped).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return []
    norms = torch.stack([g.detach().float().norm(2) for g in grads])
    coefs = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g, c in zip(grads, coefs):
        g.mul_(c.to(g.dtype))
    return norms.tolist()


def cancel_last_layer_gradients(student: nn.Module, epoch: int, freeze_last_layer: int) -> bool:
    """Drop the gradients of the student head's ``last_layer`` while ``epoch < freeze_last_layer`` (docs/xstars.md §2).

    Returns:
        True when gradients were dropped (AdamW then leaves those parameters and their moments untouched).
    """
    if epoch >= freeze_last_layer:
        return False
    head = getattr(student, "head", student)
    for p in head.last_layer.parameters():
        p.grad = None
    return True


def before_step(model: XStarsModel, step: int, iters_per_epoch: int, clip: Optional[float] = 3.0,
                per_tensor: bool = True, freeze_last_layer: int = 1) -> None:
    """What runs between the backward pass and the optimiser step (the runner's ``before_step``; docs/xstars.md §2).

    Per-tensor clipping at ``clip`` (when ``per_tensor``; a global norm is the runner's ``clip_grad``), then the
    student's last-layer gradients are dropped during the first ``freeze_last_layer`` epochs.

    Args:
        model: The (unwrapped) model, gradients accumulated and unscaled.
        step: 0-based optimiser step.
        iters_per_epoch: Optimiser steps per epoch (``epoch = step // iters_per_epoch``).
        clip: Clipping threshold, or ``None``.
        per_tensor: Clip each tensor by its own norm (DINO).
        freeze_last_layer: Epochs with a frozen last layer.
    """
    if clip is not None and per_tensor:
        clip_gradients_per_tensor(model.parameters(), clip)
    cancel_last_layer_gradients(model.student, step // iters_per_epoch, freeze_last_layer)


# ---------------------------------------------------------------------------------------------------- building
def joint_norm(cfg: XStarsConfig) -> ChannelNorm:
    """The joint input normalisation of a run: ``data.mean/std``, else the ``data.norm`` preset, else (continual) the
    checkpoint's ``args.mean/std``, else the ``sentinel_landsat`` preset (docs/xstars.md §5).

    Raises:
        ValueError: Unknown preset.
        engine.errors.CheckpointError: Continual checkpoint unreadable.
    """
    d = cfg.data
    if d.mean is not None and d.std is not None:
        return ChannelNorm(tuple(d.mean), tuple(d.std), "config data.mean/std")
    if d.norm is not None:
        return xstars_norm(d.norm)
    if cfg.continual is not None:
        norm = read_dino_checkpoint(cfg.continual.pretrained, which=cfg.continual.student_from,
                                    with_head=False).input_norm
        if norm is not None:
            return norm
    return xstars_norm("sentinel_landsat")


def _fresh_networks(cfg: XStarsConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    m = cfg.model
    dim, depth, heads = ARCHS[m.arch]
    dim, depth, heads = m.embed_dim or dim, m.depth or depth, m.num_heads or heads

    def network(drop_path_rate: float, norm_last_layer: bool) -> MultiCropWrapper:
        backbone = DinoViT(dim, depth, heads, m.patch_size, m.img_size, drop_path_rate=drop_path_rate)
        head = DINOHead(dim, m.out_dim, m.head_hidden_dim, m.head_bottleneck_dim, m.head_nlayers,
                        norm_last_layer=norm_last_layer)
        return MultiCropWrapper(backbone, head)

    student = network(m.drop_path_rate, m.norm_last_layer)
    teacher = network(0.0, True)
    teacher.load_state_dict(student.state_dict())
    return student, teacher


def _continual_networks(cfg: XStarsConfig) -> tuple[MultiCropWrapper, MultiCropWrapper, nn.Module]:
    """Student, EMA teacher (with DINO heads) and the frozen backbone, from the continual checkpoint
    (docs/xstars.md §4)."""
    c, m = cfg.continual, cfg.model
    assert c is not None
    checkpoints = {which: read_dino_checkpoint(c.pretrained, which=which)
                   for which in {c.student_from, c.teacher_from, c.frozen_from}}
    new_head: Optional[DINOHead] = None

    def own(which: str) -> Any:
        """The checkpoint with private tensor copies: build_dino_model assigns its tensors to the module, and the
        student, teacher and domain teacher must never share storage."""
        ckpt = checkpoints[which]
        return dataclasses.replace(ckpt, backbone_state={k: v.clone() for k, v in ckpt.backbone_state.items()},
                                   head_state={k: v.clone() for k, v in ckpt.head_state.items()})

    def network(which: str, drop_path_rate: float) -> MultiCropWrapper:
        nonlocal new_head
        ckpt = own(which)
        if ckpt.head is not None:
            return build_dino_model(ckpt, num_heads=m.num_heads, with_head=True, drop_path_rate=drop_path_rate)
        backbone = build_dino_model(ckpt, num_heads=m.num_heads, drop_path_rate=drop_path_rate)
        if new_head is None:  # a bare backbone: one new DINO head, shared by student and teacher at the start
            new_head = DINOHead(backbone.embed_dim, m.out_dim, m.head_hidden_dim, m.head_bottleneck_dim,
                                m.head_nlayers)
        return MultiCropWrapper(backbone, copy.deepcopy(new_head))

    student = network(c.student_from, m.drop_path_rate)
    teacher = network(c.teacher_from, 0.0)
    student.head.last_layer.parametrizations.weight.original0.requires_grad_(not m.norm_last_layer)
    frozen = build_dino_model(own(c.frozen_from), num_heads=m.num_heads)
    return student, teacher, frozen


def build_xstars_model(cfg: XStarsConfig, epochs: int, norm: Optional[ChannelNorm] = None) -> XStarsModel:
    """The :class:`XStarsModel` of a config: fresh networks, or three copies of the continual checkpoint.

    Args:
        cfg: The recipe config.
        epochs: Run length in epochs (teacher-temperature schedule length).
        norm: Joint input normalisation recorded on the backbones (exports); default :func:`joint_norm`.

    Raises:
        engine.errors.CheckpointError: Continual checkpoint unreadable or not a DINO network.
    """
    frozen = None
    if cfg.continual is None:
        student, teacher = _fresh_networks(cfg)
    else:
        student, teacher, frozen = _continual_networks(cfg)
    norm = norm or joint_norm(cfg)
    for net in (student.backbone, teacher.backbone, frozen):
        if net is not None:
            net.input_norm = norm
    d = cfg.dino
    dino_loss = DINOLoss(student.head.out_dim, 2 + d.local_crops_number, max(epochs, d.warmup_teacher_temp_epochs, 1),
                         d.teacher_temp, d.warmup_teacher_temp, d.warmup_teacher_temp_epochs)
    msad = None
    if cfg.msad.enabled:
        s = cfg.msad
        msad = MSADLoss(student.backbone.embed_dim, s.proj_dim, s.dropout, s.tau, s.label_smoothing, s.include_cls,
                        s.mode, "single" if cfg.continual is not None else "sum")
        if s.mode == "compat":
            msad.heads.requires_grad_(False)  # B2: never optimised
    return XStarsModel(student, teacher, dino_loss, msad, cfg.msad.alpha, frozen)


def _sensor_stats(cfg: XStarsConfig, sensors: Sequence[str]) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    if cfg.msad.normalization == "joint":
        return {}
    out = {}
    for s in sensors:
        norm = xstars_norm(cfg.data.sensor_norms.get(s, s.lower()))
        out[s] = (norm.mean, norm.std)
    return out


def _partner(cfg: XStarsConfig) -> str:
    c = cfg.continual
    assert c is not None
    return c.partner_sensor or next(s for s in cfg.data.sensors if s != c.adapt_sensor)


def build_samples(cfg: XStarsConfig, norm: ChannelNorm) -> Any:
    """The :class:`~training.data.xstars.XStarsSamples` of ``cfg.data`` (anchors and MSAD sensors by recipe).

    Raises:
        FileNotFoundError, ValueError: As :func:`training.data.pairs.pairs_from_folder`.
    """
    d, dino = cfg.data, cfg.dino
    if cfg.continual is None:
        anchors, msad_sensors = list(d.sensors), list(d.sensors) if cfg.msad.enabled else []
        folders = list(d.sensors)
    else:
        partner = _partner(cfg)
        anchors = [cfg.continual.adapt_sensor]
        msad_sensors = [partner, cfg.continual.adapt_sensor] if cfg.msad.enabled else []
        folders = list(dict.fromkeys([*anchors, *msad_sensors]))
    pairs = pairs_from_folder(d.root, folders, strict=d.strict_pairs)
    multicrop = DINOMultiCrop(norm.mean, norm.std, dino.local_crops_number, dino.global_size_px, dino.local_size_px,
                              dino.global_crops_scale, dino.local_crops_scale)
    return XStarsSamples(pairs, anchors, msad_sensors, multicrop, norm.mean, norm.std, cfg.msad.size_px,
                         cfg.msad.normalization, _sensor_stats(cfg, msad_sensors), cfg.run.seed)


def _flat_args(cfg: XStarsConfig, norm: ChannelNorm, batch_size_total: int) -> dict[str, Any]:
    """X-STARS-style flat ``args`` (DINO tooling and :func:`engine.models.read_dino_checkpoint` read
    ``mean``/``std``)."""
    m, d, s, o = cfg.model, cfg.dino, cfg.msad, cfg.optim
    args = {
        "recipe": cfg.recipe, "arch": m.arch, "patch_size": m.patch_size, "out_dim": m.out_dim,
        "norm_last_layer": m.norm_last_layer, "momentum_teacher": d.momentum_teacher,
        "warmup_teacher_temp": d.warmup_teacher_temp, "teacher_temp": d.teacher_temp,
        "warmup_teacher_temp_epochs": d.warmup_teacher_temp_epochs, "weight_decay": o.weight_decay,
        "weight_decay_end": o.weight_decay_end, "clip_grad": o.clip_grad, "clip_mode": o.clip_mode,
        "batch_size_per_gpu": cfg.data.batch_size, "batch_size_total": batch_size_total,
        "freeze_last_layer": d.freeze_last_layer, "lr": o.lr, "warmup_epochs": o.warmup_epochs, "min_lr": o.min_lr,
        "drop_path_rate": m.drop_path_rate, "sensors": list(cfg.data.sensors), "alpha": s.alpha,
        "use_msad": s.enabled, "msad_mode": s.mode, "msad_proj_dim": s.proj_dim,
        "global_crops_scale": list(d.global_crops_scale), "local_crops_number": d.local_crops_number,
        "local_crops_scale": list(d.local_crops_scale), "crop_size": d.local_size_px,
        "mean": list(norm.mean), "std": list(norm.std), "seed": cfg.run.seed,
        "xstars_config": config_to_dict(cfg),
    }
    if cfg.continual is not None:
        args.update(adapt_sensor=cfg.continual.adapt_sensor, partner_sensor=_partner(cfg),
                    pretrained_weights=cfg.continual.pretrained)
    return args


# ---------------------------------------------------------------------------------------------------- the task
def xstars_task(cfg: XStarsConfig, runner: Runner, data: Optional[Any] = None) -> TrainTask:
    """The runner task of an X-STARS config (model built now: create ``runner`` first, it seeds the init).

    Args:
        cfg: The recipe config.
        runner: The runner that will fit the task (build it first: it seeds the model init).
        data: Iterable of batches ``{"crops": [...], "msad": [...]}`` for this process; default: the samples of
            ``cfg.data`` in an :class:`~training.data.xstars.XStarsStream`.

    Raises:
        training.config.ConfigError: More warm-up than run.
    """
    eff_batch = runner.effective_batch(cfg.data.batch_size)
    norm = joint_norm(cfg)
    samples = build_samples(cfg, norm) if data is None else None
    samples_per_epoch = cfg.data.samples_per_epoch or (len(samples) if samples is not None else None)
    if samples_per_epoch is None:
        raise ConfigError("data.samples_per_epoch is needed when batches are passed in")
    iters_per_epoch = max(1, samples_per_epoch // eff_batch)
    total = runner.total_steps(cfg.data.batch_size, samples_per_epoch)
    model = build_xstars_model(cfg, math.ceil(total / iters_per_epoch), norm)
    if data is None:
        data = XStarsStream(samples, cfg.data.batch_size, cfg.run.seed, runner.process_index, runner.num_processes,
                            cfg.data.num_workers)

    o, d = cfg.optim, cfg.dino
    warmup = min(total, round(o.warmup_epochs * iters_per_epoch))
    lr = cosine_schedule(scaled_lr(o.lr, eff_batch), o.min_lr, total, warmup, 0.0)
    wd = cosine_schedule(o.weight_decay, o.weight_decay_end, total)
    momentum = cosine_schedule(d.momentum_teacher, 1.0, total)
    last = total - 1

    def loss_fn(net: nn.Module, batch: Any, step: int) -> StepOutput:
        loss, dino, msad = net(batch["crops"], batch["msad"], step // iters_per_epoch)
        return StepOutput(loss, {"dino_loss": dino, "msad_loss": msad if cfg.msad.enabled else float("nan"),
                                 "wd": float(wd[min(step, last)]), "momentum": float(momentum[min(step, last)])})

    def pre_step(net: nn.Module, step: int) -> None:
        assert isinstance(net, XStarsModel)
        before_step(net, step, iters_per_epoch, o.clip_grad, o.clip_mode == "per_tensor", d.freeze_last_layer)

    def after_step(net: nn.Module, steps_done: int) -> None:
        assert isinstance(net, XStarsModel)
        net.update_teacher(float(momentum[min(steps_done - 1, last)]))

    args = _flat_args(cfg, norm, eff_batch)

    def export(net: nn.Module, folder: Path, step: int) -> list[Path]:
        assert isinstance(net, XStarsModel)
        extra: dict[str, Any] = {"dino_loss": {"center": net.dino_loss.center}}
        if net.msad is not None and net.msad.mode == "paper":
            extra["msad_heads"] = net.msad.heads.state_dict()
        path = save_dino_checkpoint(folder / f"{cfg.model.name}.pth", net.teacher, net.student, args=args,
                                    epoch=step // iters_per_epoch, extra=extra)
        return [path]

    task = TrainTask(
        model=model,
        param_groups=dino_param_groups(model, o.weight_decay, cfg.msad.lr_scale),
        loss_fn=loss_fn,
        data=data,
        lr_at=lambda step: float(lr[min(step, last)]),
        batch_size=cfg.data.batch_size,
        betas=o.betas,
        eps=o.eps,
        clip_grad=o.clip_grad if o.clip_mode == "global" else None,
        wd_at=lambda step: float(wd[min(step, last)]),
        before_step=pre_step,
        after_step=after_step,
        export=export,
        metric_names=METRICS,
        samples_per_epoch=samples_per_epoch,
        find_unused_parameters=False,
        name=cfg.model.name,
    )
    return task


def train_xstars(cfg: XStarsConfig, data: Optional[Any] = None) -> RunResult:
    """Run an X-STARS recipe (pretraining or continual) on :class:`~training.runner.Runner`.

    Args:
        cfg: The config (``cfg.run``: out_dir, steps or epochs, resume, precision...).
        data: Optional iterable of batches for this process (see :func:`xstars_task`).

    Returns:
        The runner's :class:`~training.runner.RunResult`.

    Raises:
        training.runner.NonFiniteLossError: The loss diverged.
        FileExistsError: ``run.out_dir`` holds a run and ``run.resume`` is off.
        training.config.ConfigError, FileNotFoundError, engine.errors.CheckpointError: Bad config, data or weights.
    """
    return run_recipe(cfg, xstars_task, data)


def main(config: Union[str, "os.PathLike[str]"], overrides: Sequence[str] = ()) -> RunResult:
    """Load an X-STARS config (a path or a shipped name, with ``KEY=VALUE`` overrides) and run it (= ``msfm train``).

    Raises:
        As :func:`load_xstars_config` and :func:`train_xstars`.
    """
    return train_xstars(load_xstars_config(config, overrides))
