"""The training runner: one loop for every recipe (SMARTIES MAE, X-STARS), built on Hugging Face ``accelerate``.

A recipe builds a :class:`TrainTask` — the model, its optimiser parameter groups, a per-step loss function, an
iterable of batches and a per-step learning-rate function — and :meth:`Runner.fit` owns everything else:

- **device** (:attr:`RunConfig.device`): CUDA when available (``auto``), else CPU;
- **precision** (:attr:`RunConfig.mixed_precision`): ``auto`` = bf16 autocast on CUDA GPUs that support it, fp16
  autocast + gradient scaler on older GPUs, fp32 on CPU (bf16 matmuls are ~500× slower than fp32 on CPUs without
  AMX, measured on our build machines); the reference pretrained with fp16 (docs/smarties.md §5);
- **distribution**: launched with ``accelerate launch`` (``--multi_gpu``, ``--num_machines``, ``--cpu`` for gloo)
  the model is wrapped in DDP, each process draws its own batches, gradients are averaged. Every collective of
  the loop (the per-step loss/stop reduction, barriers around checkpoints) is skipped when there is one process, so
  a plain ``python`` run needs no process group;
- **optimisation**: AdamW over the task's parameter groups (a group's ``lr_scale`` multiplies the scheduled LR),
  LR (and optionally weight decay) set every step from the task's schedule functions, gradient accumulation,
  gradient-norm clipping (after unscaling under fp16), an optional ``after_step`` hook (EMA teachers);
- **non-finite guard**: a NaN/Inf loss on any process stops every process with :class:`NonFiniteLossError` naming
  the step, the learning rate and the metric values; the last checkpoint is kept;
- **checkpoints** (``out_dir/checkpoints/step_NNNNNNN/``): :meth:`accelerate.Accelerator.save_state` (model
  weights as safetensors, optimiser, gradient scaler, RNG states of python/numpy/torch/CUDA of every process) plus
  one ``loop_state_<rank>.pt`` per process (step, samples, the data stream's ``state_dict()``). A checkpoint is
  written into ``.tmp-step_NNNNNNN`` and renamed when every process has finished, so a folder named ``step_*`` is
  always complete; the newest ``keep_checkpoints`` are kept. ``resume=True`` restarts from the newest one and, on
  CPU, continues bit for bit (same batches, masks, losses and weights as an uninterrupted run);
- **exports**: the task's ``export`` hook (e.g. :func:`engine.models.save_encoder`) runs on the main
  process with every checkpoint and at the end;
- **logs**: ``out_dir/log.csv`` (``step, elapsed_s, lr, loss, grad_norm, samples`` + the task's metrics; means over
  processes), TensorBoard (``out_dir/tensorboard``) only when the ``tensorboard`` package is installed, a tqdm bar on
  the main process, ``config.yaml`` (the resolved configuration, git commit in its header) and ``run_info.json``
  (versions, device, precision, processes, effective batch).

Batches may be anything: tensors, tuples/lists/dicts of tensors, dataclasses with tensor fields, or objects with a
``to(device)`` method; they are moved to the device before the loss function sees them. A data stream that has
``state_dict()``/``load_state_dict()`` is checkpointed with the loop (exact resume, also with background prefetching);
other iterables are fast-forwarded by the number of batches already consumed on resume (exact only if they are
deterministic).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import json
import logging
import math
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Optional, Sequence, Union

import accelerate
import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from torch import nn
from tqdm import tqdm

from engine.atomic import atomic_output, write_text
from engine.provenance import git_sha

from .config import ConfigError, config_to_dict, dump_config

__all__ = (
    "LOG_COLUMNS",
    "NonFiniteLossError",
    "RunConfig",
    "RunResult",
    "Runner",
    "StepOutput",
    "TrainTask",
    "latest_checkpoint",
    "resolve_mixed_precision",
    "run_recipe",
)

logger = logging.getLogger(__name__)

#: Fixed leading columns of ``log.csv`` (the task's metric columns follow).
LOG_COLUMNS = ("step", "elapsed_s", "lr", "loss", "grad_norm", "samples")
_CKPT_RE = re.compile(r"^step_(\d{7,})$")
_TMP_PREFIX = ".tmp-"
#: Fields of the ``run`` section that may change between a run and its resumption.
_RESUMABLE_CHANGES = frozenset(
    {"resume", "max_minutes", "progress", "log_every", "checkpoint_every", "keep_checkpoints", "threads"}
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step, the learning rate and the metrics."""


@dataclass(frozen=True)
class RunConfig:
    """The ``run`` section of every recipe config: loop mechanics, not the recipe's maths.

    Attributes:
        out_dir: Run folder (checkpoints, exports, logs, resolved config). A folder that already holds a run is
            refused unless ``resume`` is set. Multi-node runs need it on a filesystem every node sees.
        steps: Optimiser steps of the whole run; the LR schedule spans them. Give ``steps`` or ``epochs``.
        epochs: Alternative to ``steps``: passes over ``samples_per_epoch`` samples of the recipe's data, converted
            with the effective batch (per-process batch × ``grad_accum_steps`` × processes), rounded up.
        max_minutes: Wall-clock budget of this invocation; the run stops cleanly (checkpoint + export) when it is
            spent and ``resume`` continues it. The schedule does not shrink to fit it.
        seed: Seed of python/numpy/torch; process ``r`` trains with ``seed + r`` after the (identical) model init.
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
        mixed_precision: ``auto`` (bf16 on CUDA with bf16 support, else fp16 on CUDA; fp32 on CPU), ``no``, ``fp16``
            (CUDA only) or ``bf16``.
        threads: torch CPU threads per process (``None`` = torch's default).
        grad_accum_steps: Micro-batches accumulated per optimiser step.
        checkpoint_every: Save the full training state every this many steps (and always at the end).
        keep_checkpoints: Newest checkpoints kept (the reference keeps 2, docs/smarties.md §5).
        log_every: Write a ``log.csv`` row every this many steps.
        progress: Show a tqdm bar on the main process.
        resume: Continue from the newest checkpoint in ``out_dir`` (a fresh start when there is none).
    """

    out_dir: str = "runs/untitled"
    steps: Optional[int] = None
    epochs: Optional[float] = None
    max_minutes: Optional[float] = None
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    threads: Optional[int] = None
    grad_accum_steps: int = 1
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 1
    progress: bool = True
    resume: bool = False

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("run: give exactly one of steps and epochs")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"run.steps must be ≥ 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"run.epochs must be > 0, got {self.epochs}")
        for name in ("grad_accum_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"run.threads must be ≥ 1, got {self.threads}")


@dataclass
class StepOutput:
    """What a task's loss function returns for one micro-batch.

    Attributes:
        loss: Scalar tensor to minimise (the runner divides it by ``grad_accum_steps``).
        metrics: Extra values to log (floats or 0-d tensors; NaN = not applicable to this batch). Keys must be in
            :attr:`TrainTask.metric_names`.
    """

    loss: torch.Tensor
    metrics: Mapping[str, Union[float, torch.Tensor]] = field(default_factory=dict)


@dataclass
class TrainTask:
    """Everything recipe-specific the runner needs.

    Attributes:
        model: The module to train (its trainable parameters must all be in ``param_groups``).
        param_groups: AdamW parameter groups (``params``, ``weight_decay``, optional ``lr_scale`` multiplying the
            scheduled LR); frozen parameters must not be listed.
        loss_fn: ``loss_fn(model, batch, step) → StepOutput | Tensor``: ``model`` is the prepared (possibly DDP-
            wrapped) module — call it, do not reach into it (use :meth:`Runner.unwrap`); ``batch`` is on the device;
            ``step`` is the 0-based optimiser step. It runs under the run's autocast.
        data: Iterable of batches for *this* process (build it with :attr:`Runner.process_index` /
            :attr:`Runner.num_processes`). Re-iterated when exhausted. Optional ``state_dict()``/``load_state_dict()``
            make resuming exact.
        lr_at: ``lr_at(step) → learning rate`` for the 0-based optimiser step (absolute value, before ``lr_scale``).
        batch_size: Samples per batch of ``data`` (per process, per micro-step), for the sample count.
        betas: AdamW betas.
        eps: AdamW epsilon.
        clip_grad: Max global gradient L2 norm, or ``None`` for no clipping.
        wd_at: Optional ``wd_at(step) → weight decay`` applied to the groups created with ``weight_decay > 0``.
        before_step: Optional ``before_step(model, step)`` called after backward and gradient clipping, before the
            optimiser step, with the unwrapped model and the 0-based step. It sees the accumulated, DDP-averaged and
            (under fp16) unscaled gradients: DINO's per-tensor clipping, or its frozen last layer during the first
            epoch (set those gradients to ``None`` so AdamW skips them).
        after_step: Optional ``after_step(model, step)`` called after each optimiser step with the unwrapped model and
            the number of steps done (EMA teachers, logit-scale clamps, ...).
        export: Optional ``export(model, folder, step) → written paths`` (main process, unwrapped model) run with every
            checkpoint and at the end, e.g. an encoder-only ``.safetensors`` for :func:`engine.load_model`.
        metric_names: Names of the extra metrics :attr:`StepOutput.metrics` may hold (``log.csv`` columns).
        samples_per_epoch: Samples in one pass over the data (all processes), needed only with ``run.epochs``.
        find_unused_parameters: DDP option: True when some parameters get no gradient in some steps (the MAE's
            per-range projections and pixel heads of bands absent from a batch; the reference sets it,
            docs/smarties.md §5).
        name: Run name (TensorBoard, logs).
    """

    model: nn.Module
    param_groups: list[dict[str, Any]]
    loss_fn: Callable[[nn.Module, Any, int], Union[StepOutput, torch.Tensor]]
    data: Iterable[Any]
    lr_at: Callable[[int], float]
    batch_size: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: Optional[float] = None
    wd_at: Optional[Callable[[int], float]] = None
    before_step: Optional[Callable[[nn.Module, int], None]] = None
    after_step: Optional[Callable[[nn.Module, int], None]] = None
    export: Optional[Callable[[nn.Module, Path, int], Sequence[Path]]] = None
    metric_names: Sequence[str] = ()
    samples_per_epoch: Optional[int] = None
    find_unused_parameters: bool = False
    name: str = "run"


@dataclass
class RunResult:
    """What :meth:`Runner.fit` did.

    Attributes:
        steps: Optimiser steps done in total (including those before a resume).
        start_step: Step this invocation started from (0, or the resumed checkpoint's step).
        total_steps: Length of the schedule.
        samples: Samples seen in total, all processes.
        wall_s: Wall-clock seconds of this invocation's loop (start-up excluded).
        stopped_because: ``"steps"`` or ``"time budget"``.
        history: ``(step, loss)`` of every step of this invocation (mean over processes).
        checkpoint: The last checkpoint folder.
        exports: Paths written by the task's export hook at the end.
        out_dir: The run folder.
        log_csv: The CSV log.
    """

    steps: int
    start_step: int
    total_steps: int
    samples: int
    wall_s: float
    stopped_because: str
    history: list[tuple[int, float]]
    checkpoint: Optional[Path]
    exports: list[Path]
    out_dir: Path
    log_csv: Path

    @property
    def steps_per_s(self) -> float:
        """Optimiser steps per second of this invocation."""
        done = self.steps - self.start_step
        return done / self.wall_s if self.wall_s > 0 else float("nan")


def resolve_mixed_precision(setting: str, device_type: str) -> str:
    """The accelerate ``mixed_precision`` value for a config setting on a device type.

    Args:
        setting: ``auto``, ``no``, ``fp16`` or ``bf16``.
        device_type: ``"cuda"`` or ``"cpu"``.

    Returns:
        ``"no"``, ``"fp16"`` or ``"bf16"``: ``auto`` gives bf16 on CUDA with bf16 support, fp16 on other CUDA GPUs,
        ``"no"`` (fp32) on CPU.

    Raises:
        ValueError: Unknown setting, or ``fp16`` on CPU (no CPU fp16 autocast with a gradient scaler).
    """
    if setting not in ("auto", "no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be auto, no, fp16 or bf16, got {setting!r}")
    if setting == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    if setting == "fp16" and device_type != "cuda":
        raise ValueError("mixed_precision fp16 needs a CUDA device; use 'no' (or 'bf16') on CPU")
    if setting == "bf16" and device_type == "cpu":
        logger.warning("bf16 on CPU: matmuls may be far slower than fp32 on CPUs without AMX")
    return setting


def latest_checkpoint(out_dir: Union[str, os.PathLike]) -> Optional[Path]:
    """The newest complete checkpoint folder (``checkpoints/step_*``) of a run folder, or ``None``."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def _to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors inside ``obj`` (tensor, dataclass, mapping, list/tuple, object with ``to``) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _to_device(getattr(obj, f.name), device)
                                          for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, Mapping):
        return type(obj)({k: _to_device(v, device) for k, v in obj.items()})
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    if hasattr(obj, "to") and callable(obj.to):
        return obj.to(device)
    return obj


def _is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def _as_float(value: Union[float, torch.Tensor, None]) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


def _fmt(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


class _Batches:
    """Endless iterator over a task's data (re-iterates finite iterables, calling ``set_epoch`` when present)."""

    def __init__(self, data: Iterable[Any]) -> None:
        self.data = data
        self.epoch = 0
        self._it: Optional[Iterator[Any]] = None

    def __next__(self) -> Any:
        for attempt in range(2):
            if self._it is None:
                if hasattr(self.data, "set_epoch"):
                    self.data.set_epoch(self.epoch)
                self._it = iter(self.data)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
        raise RuntimeError("the task's data yielded no batch")


class Runner:
    """Runs :class:`TrainTask` s with one :class:`RunConfig` (see the module docstring).

    Creating a runner sets up the process state (``accelerate.PartialState``: the process group when launched with
    ``accelerate launch``/``torchrun``, nothing for a single process), the CPU threads and the seed — build the
    task's model *after* it, so every process starts from the same weights.

    Args:
        cfg: Loop settings.
        config: The full recipe config (a dataclass), written to ``out_dir/config.yaml`` and compared on resume.

    Raises:
        ValueError: CUDA requested but not available; fp16 on CPU.
    """

    def __init__(self, cfg: RunConfig, config: Any = None) -> None:
        self.cfg = cfg
        self.config = config if config is not None else cfg
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("run.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
        self._cpu = cfg.device == "cpu" or not torch.cuda.is_available()
        self.state = PartialState(cpu=self._cpu)
        self.mixed_precision = resolve_mixed_precision(cfg.mixed_precision, "cpu" if self._cpu else "cuda")
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        set_seed(cfg.seed)
        self.out_dir = Path(cfg.out_dir)
        self.accelerator: Any = None

    # ------------------------------------------------------------------ process facts
    @property
    def process_index(self) -> int:
        """Rank of this process (0 … ``num_processes`` − 1)."""
        return self.state.process_index

    @property
    def num_processes(self) -> int:
        """Number of training processes (1 without ``accelerate launch``)."""
        return self.state.num_processes

    @property
    def is_main_process(self) -> bool:
        """True on rank 0."""
        return self.state.is_main_process

    @property
    def device(self) -> torch.device:
        """The device of this process."""
        return self.state.device

    def effective_batch(self, batch_size: int) -> int:
        """Samples per optimiser step over all processes: ``batch_size × grad_accum_steps × num_processes``."""
        return batch_size * self.cfg.grad_accum_steps * self.num_processes

    def total_steps(self, batch_size: int, samples_per_epoch: Optional[int] = None) -> int:
        """Length of the run in optimiser steps (``run.steps``, or ``run.epochs`` converted; see :class:`RunConfig`).

        Raises:
            ConfigError: ``run.epochs`` is set but ``samples_per_epoch`` is unknown.
        """
        if self.cfg.steps is not None:
            return self.cfg.steps
        if not samples_per_epoch:
            raise ConfigError("run.epochs needs the number of samples per epoch (data.samples_per_epoch); "
                              "or give run.steps")
        return max(1, math.ceil(self.cfg.epochs * samples_per_epoch / self.effective_batch(batch_size)))

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The bare module inside a DDP/compiled wrapper."""
        if self.accelerator is not None:
            return self.accelerator.unwrap_model(model)
        return model

    def _barrier(self) -> None:
        if self.num_processes > 1:
            self.state.wait_for_everyone()

    # ------------------------------------------------------------------ run folder
    def _prepare_out_dir(self) -> Optional[Path]:
        """Check/create the run folder; returns the checkpoint to resume from (main process decides, all read)."""
        # Every process checks (same files, read only) so that all of them raise together.
        ckpt = latest_checkpoint(self.out_dir)
        config_path = self.out_dir / "config.yaml"
        if not self.cfg.resume and (ckpt is not None or (self.out_dir / "log.csv").exists()):
            raise FileExistsError(
                f"{self.out_dir} already holds a run; resume it (run.resume=true, --resume) or choose another out_dir")
        if self.cfg.resume and ckpt is not None and config_path.exists():
            self._check_resumable(config_path)
        self._barrier()
        if self.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for stale in (self.out_dir / "checkpoints").glob(_TMP_PREFIX + "*"):
                shutil.rmtree(stale, ignore_errors=True)  # a checkpoint interrupted while being written
            sha = git_sha()
            dump_config(self.config, config_path, header=f"resolved config; git {sha or 'unknown'}")
        self._barrier()
        if self.cfg.resume and ckpt is None:
            logger.info("resume: no checkpoint in %s, starting from scratch", self.out_dir)
        return ckpt if self.cfg.resume else None

    def _check_resumable(self, config_path: Path) -> None:
        saved = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        now = config_to_dict(self.config)
        diffs = sorted(_diff(saved, now))
        prefix = self._run_prefix()
        diffs = [d for d in diffs if not (d.startswith(prefix) and d[len(prefix):] in _RESUMABLE_CHANGES)]
        if diffs:
            raise ConfigError(
                f"cannot resume {self.out_dir}: the config differs from the run's config.yaml in {', '.join(diffs)} "
                f"(only {prefix}{{{', '.join(sorted(_RESUMABLE_CHANGES))}}} may change); restore them or use a new "
                "out_dir")

    def _run_prefix(self) -> str:
        """Dotted path of the :class:`RunConfig` inside the full config (``"run."``, or ``""`` when it is the
        config)."""
        if self.config is self.cfg:
            return ""
        if dataclasses.is_dataclass(self.config):
            for f in dataclasses.fields(self.config):
                if getattr(self.config, f.name) is self.cfg:
                    return f"{f.name}."
        return "run."

    def _write_run_info(self, task: TrainTask, total: int, start_step: int) -> None:
        info = {
            "name": task.name,
            "started_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "git_sha": git_sha(),
            "resumed_from_step": start_step,
            "total_steps": total,
            "device": str(self.device),
            "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                            else _cpu_name()),
            "mixed_precision": self.mixed_precision,
            "num_processes": self.num_processes,
            "distributed_type": str(self.state.distributed_type),
            "batch_size_per_process": task.batch_size,
            "grad_accum_steps": self.cfg.grad_accum_steps,
            "effective_batch": self.effective_batch(task.batch_size),
            "torch_threads": torch.get_num_threads(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "accelerate": accelerate.__version__},
        }
        path = self.out_dir / "run_info.json"
        history = []
        if path.exists():
            try:
                old = json.loads(path.read_text())
                history = old.get("invocations", [old])
            except (ValueError, OSError):
                history = []
        write_text(path, json.dumps({**info, "invocations": history + [info]}, indent=2) + "\n")

    # ------------------------------------------------------------------ accelerator
    def _make_accelerator(self, task: TrainTask) -> Any:
        if AcceleratorState._shared_state and self.state.distributed_type == DistributedType.NO:
            # A previous run in this (single) process: allow other precision settings for this one.
            AcceleratorState._reset_state()
            GradientState._reset_state()
        log_with = "tensorboard" if _tensorboard_available() else None
        return Accelerator(
            cpu=self._cpu,
            mixed_precision=self.mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=task.find_unused_parameters)],
            log_with=log_with,
            project_dir=str(self.out_dir),
        )

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, step: int, loop_state: dict[str, Any]) -> Path:
        folder = self.out_dir / "checkpoints"
        final = folder / f"step_{step:07d}"
        tmp = folder / f"{_TMP_PREFIX}step_{step:07d}"
        if self.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self._barrier()
        self.accelerator.save_state(str(tmp))
        torch.save(loop_state, tmp / f"loop_state_{self.process_index}.pt")
        self._barrier()
        if self.is_main_process:
            if final.exists():  # the same step saved again; until the rename the older checkpoints remain
                shutil.rmtree(final)
            os.replace(tmp, final)
            done = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name)))
            for _, old in done[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return final

    def _export(self, task: TrainTask, model: nn.Module, step: int) -> list[Path]:
        paths: list[Path] = []
        if task.export is not None and self.is_main_process:
            paths = [Path(p) for p in task.export(self.unwrap(model), self.out_dir / "export", step)]
        self._barrier()
        return paths

    # ------------------------------------------------------------------ the loop
    def fit(self, task: TrainTask) -> RunResult:
        """Train ``task`` for ``run.steps`` (or ``run.epochs``) optimiser steps, resuming when asked.

        Returns:
            :class:`RunResult`.

        Raises:
            NonFiniteLossError: A loss became NaN/Inf on some process (all processes raise; checkpoints kept).
            FileExistsError: ``out_dir`` holds a run and ``resume`` is off.
            ConfigError: Resuming with a config that differs outside the resumable ``run`` fields.
            ValueError: A metric key not declared in ``task.metric_names``; a trainable parameter missing from the
                parameter groups.
        """
        cfg = self.cfg
        total = self.total_steps(task.batch_size, task.samples_per_epoch)
        resume_from = self._prepare_out_dir()
        self._check_groups(task)
        acc = self.accelerator = self._make_accelerator(task)
        for group in task.param_groups:
            group.setdefault("lr_scale", 1.0)
            group["_wd_scheduled"] = group.get("weight_decay", 0.0) > 0
        optimizer = torch.optim.AdamW(task.param_groups, lr=0.0, betas=tuple(task.betas), eps=task.eps)
        model, optimizer = acc.prepare(task.model, optimizer)
        batches = _Batches(task.data)

        step = samples = 0
        elapsed_before = 0.0
        if resume_from is not None:
            acc.load_state(str(resume_from))
            loop = torch.load(resume_from / f"loop_state_{self.process_index}.pt", map_location="cpu",
                              weights_only=True)
            step, samples = int(loop["step"]), int(loop["samples"])
            elapsed_before = float(loop.get("elapsed_s", 0.0))
            batches.epoch = int(loop.get("epoch", 0))
            if loop.get("data") is not None and _is_stateful(task.data):
                task.data.load_state_dict(loop["data"])
            else:
                if loop.get("data") is None and not _is_stateful(task.data):
                    logger.warning("resume: the data stream is not stateful; skipping %d batches",
                                   loop["batches"])
                for _ in range(int(loop["batches"])):
                    next(batches)
            logger.info("resumed %s at step %d/%d", resume_from, step, total)
        else:
            set_seed(cfg.seed, device_specific=True)
        start_step = step
        if self.is_main_process:
            self._write_run_info(task, total, start_step)
        if acc.log_with:
            acc.init_trackers(task.name)
        log = _CsvLog(self.out_dir / "log.csv", list(task.metric_names), start_step, self.is_main_process)
        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, mininterval=2.0,
                   disable=not (cfg.progress and self.is_main_process))
        metric_index = {name: i for i, name in enumerate(task.metric_names)}
        batches_consumed = step * cfg.grad_accum_steps
        samples_per_step = self.effective_batch(task.batch_size)
        history: list[tuple[int, float]] = []
        checkpoint: Optional[Path] = resume_from
        stopped = "steps"
        model.train()
        start = time.monotonic()
        budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes is not None else None
        try:
            while step < total:
                if budget_s is not None and self._agree(time.monotonic() - start >= budget_s):
                    stopped = "time budget"
                    break
                lr = float(task.lr_at(step))
                wd = float(task.wd_at(step)) if task.wd_at is not None else None
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                    if wd is not None and group["_wd_scheduled"]:
                        group["weight_decay"] = wd
                stats = self._accumulate(task, model, batches, step, metric_index)
                batches_consumed += cfg.grad_accum_steps
                metrics = {name: (stats[2 + 2 * i] / stats[3 + 2 * i]).item() if stats[3 + 2 * i] > 0 else float("nan")
                           for name, i in metric_index.items()}
                if stats[1] > 0:
                    optimizer.zero_grad(set_to_none=True)
                    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step + 1} (lr={lr:.3g}{', ' + shown if shown else ''}; "
                        f"{int(stats[1])} micro-batch(es) over {self.num_processes} process(es)); stopping — the last "
                        f"checkpoint ({checkpoint or 'none'}) is kept; lower the learning rate or check the data")
                loss = float(stats[0]) / self.num_processes
                grad_norm = float("nan")
                if task.clip_grad is not None:
                    grad_norm = _as_float(acc.clip_grad_norm_(model.parameters(), task.clip_grad))
                if task.before_step is not None:
                    if task.clip_grad is None and self.mixed_precision == "fp16":
                        acc.unscale_gradients()  # (clip_grad_norm_ has unscaled them otherwise)
                    task.before_step(self.unwrap(model), step)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                samples += samples_per_step
                if task.after_step is not None:
                    task.after_step(self.unwrap(model), step)
                history.append((step, loss))
                elapsed = elapsed_before + time.monotonic() - start
                if step % cfg.log_every == 0 or step == total:
                    log.write(step, elapsed, lr, loss, grad_norm, samples, metrics)
                    if acc.log_with:
                        acc.log({"loss": loss, "lr": lr, **{k: v for k, v in metrics.items() if math.isfinite(v)}},
                                step=step)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                if step % cfg.checkpoint_every == 0 and step < total:
                    checkpoint = self._save_checkpoint(step, self._loop_state(task, step, samples, batches,
                                                                              batches_consumed, elapsed))
                    self._export(task, model, step)
        finally:
            bar.close()
            log.close()
        wall = time.monotonic() - start
        if checkpoint is None or checkpoint.name != f"step_{step:07d}":
            state = self._loop_state(task, step, samples, batches, batches_consumed, elapsed_before + wall)
            checkpoint = self._save_checkpoint(step, state)
        exports = self._export(task, model, step)
        if acc.log_with:
            acc.end_training()
        return RunResult(step, start_step, total, samples, wall, stopped, history, checkpoint, exports, self.out_dir,
                         self.out_dir / "log.csv")

    def _accumulate(self, task: TrainTask, model: nn.Module, batches: _Batches, step: int,
                    metric_index: Mapping[str, int]) -> torch.Tensor:
        """Forward/backward of the step's micro-batches; returns the sums, over micro-batches and processes, of
        ``[loss / accumulation, non-finite count, (metric, count) per metric]`` (float64)."""
        acc, accum = self.accelerator, self.cfg.grad_accum_steps
        stats = torch.zeros(2 + 2 * len(metric_index), dtype=torch.float64)
        for micro in range(accum):
            batch = _to_device(next(batches), acc.device)
            sync = micro == accum - 1 or self.num_processes == 1
            with (contextlib.nullcontext() if sync else acc.no_sync(model)), acc.autocast():
                out = task.loss_fn(model, batch, step)
                if isinstance(out, torch.Tensor):
                    out = StepOutput(out)
                value = _as_float(out.loss)
                finite = math.isfinite(value)
                if finite or self.num_processes > 1:  # every DDP process must join the gradient all-reduce
                    acc.backward(out.loss / accum)
            stats[0] += value / accum if finite else 0.0
            stats[1] += 0.0 if finite else 1.0
            for key, raw in out.metrics.items():
                if key not in metric_index:
                    raise ValueError(f"metric {key!r} is not in the task's metric_names {tuple(metric_index)}")
                v = _as_float(raw)
                if math.isfinite(v):
                    stats[2 + 2 * metric_index[key]] += v
                    stats[3 + 2 * metric_index[key]] += 1
            if not finite and self.num_processes == 1:
                break
        if self.num_processes > 1:
            stats = acc.reduce(stats.to(acc.device), reduction="sum").cpu()
        return stats

    def _agree(self, flag: bool) -> bool:
        """True when ``flag`` is True on any process (one all-reduce; none with a single process)."""
        if self.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    @staticmethod
    def _loop_state(task: TrainTask, step: int, samples: int, batches: _Batches, consumed: int,
                    elapsed_s: float) -> dict[str, Any]:
        return {"step": step, "samples": samples, "batches": consumed, "epoch": batches.epoch, "elapsed_s": elapsed_s,
                "data": task.data.state_dict() if _is_stateful(task.data) else None}

    @staticmethod
    def _check_groups(task: TrainTask) -> None:
        listed = {id(p) for g in task.param_groups for p in g["params"]}
        missing = [n for n, p in task.model.named_parameters() if p.requires_grad and id(p) not in listed]
        if missing:
            raise ValueError(f"trainable parameters missing from the parameter groups: {', '.join(missing[:10])}")
        frozen = [n for n, p in task.model.named_parameters() if not p.requires_grad and id(p) in listed]
        if frozen:
            raise ValueError(f"frozen parameters listed in the parameter groups: {', '.join(frozen[:10])}")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(sub)
            else:
                out.extend(_diff(a[key], b[key], sub))
        return out
    return [] if a == b else [prefix]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class _CsvLog:
    """``log.csv`` on the main process; on resume, rows after the resumed step (a crashed tail) are dropped."""

    def __init__(self, path: Path, metric_names: list[str], start_step: int, active: bool) -> None:
        self.path, self.metric_names, self.fh, self.writer = path, metric_names, None, None
        if not active:
            return
        header = [*LOG_COLUMNS, *metric_names]
        rows: list[list[str]] = []
        if start_step > 0 and path.exists():
            with open(path, newline="") as fh:
                reader = csv.reader(fh)
                old_header = next(reader, None)
                if old_header == header:
                    rows = [r for r in reader if r and int(r[0]) <= start_step]
        with atomic_output(path, sidecars=()) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        self.fh = open(path, "a", newline="")
        self.writer = csv.writer(self.fh)

    def write(self, step: int, elapsed: float, lr: float, loss: float, grad_norm: float, samples: int,
              metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        self.writer.writerow([step, f"{elapsed:.2f}", _fmt(lr), _fmt(loss), _fmt(grad_norm), samples,
                              *(_fmt(metrics.get(n, float("nan"))) for n in self.metric_names)])
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def run_recipe(cfg: Any, build_task: Callable[[Any, "Runner", Optional[Any]], TrainTask],
               data: Optional[Any] = None) -> RunResult:
    """Run a recipe config on a :class:`Runner`: ``build_task(cfg, runner, data)`` then :meth:`Runner.fit`.

    Args:
        cfg: A recipe config with a ``run`` section (:class:`RunConfig`); saved with the run.
        build_task: Makes the recipe's :class:`TrainTask` (e.g. :func:`training.recipes.smarties_mae.mae_task`).
        data: Optional iterable of batches for this process, passed on; when None the task opens its own stream,
            which is closed when the run ends (also on an error).

    Returns:
        The runner's :class:`RunResult`.

    Raises:
        NonFiniteLossError: The loss diverged.
        FileExistsError: ``run.out_dir`` holds a run and ``run.resume`` is off.
    """
    runner = Runner(cfg.run, cfg)
    task = build_task(cfg, runner, data)
    try:
        return runner.fit(task)
    finally:
        if data is None and hasattr(task.data, "close"):
            task.data.close()
