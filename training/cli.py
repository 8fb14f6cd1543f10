"""Training commands: ``msfm train RECIPE CONFIG`` and ``python -m training train RECIPE CONFIG``.

``msfm`` finds them through the ``msfm.commands`` entry point ``train = "training.cli:register"`` (``pyproject.toml``),
so the engine never imports this package. Importing this module imports nothing heavy; a recipe's module is imported
when its command runs.

Recipes (:data:`RECIPES`): a name → ``"module:load_function:train_function"`` of a module of
:mod:`training.recipes`: ``load_function(path, overrides)`` reads the YAML config strictly
(:func:`training.config.load_config`), ``train_function(cfg)`` runs it on :class:`training.runner.Runner` and returns
its :class:`~training.runner.RunResult`. A new recipe adds one line (docs/training.md, "Adding a recipe").

Examples::

    msfm train smarties-mae training/configs/smarties-mae-tiny-cpu.yaml --set run.steps=3 --out-dir /tmp/tiny
    msfm train smarties-mae smarties-mae-tiny-cpu --resume --out-dir /tmp/tiny      # bare names: training/configs/
    torchrun --nproc_per_node 2 -m training train smarties-mae smarties-mae-tiny-cpu  # 2-process CPU DDP (gloo)
    accelerate launch --multi_gpu --num_processes 8 -m training train smarties-mae smarties-mae-vitb
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from engine.errors import EngineError

__all__ = ("RECIPES", "add_train_parser", "register", "run_train")

#: Recipe name → ``"module:load_config_function:train_function"``.
RECIPES: dict[str, str] = {
    "smarties-mae": "training.recipes.smarties_mae:load_mae_config:train_smarties_mae",
    "xstars": "training.recipes.xstars:load_xstars_config:train_xstars",
    "xstars-continual": "training.recipes.xstars:load_xstars_config:train_xstars",
    "smarties-align": "training.recipes.smarties_align:load_align_config:train_smarties_align",
}
_HELP = {
    "smarties-mae": "SMARTIES masked-autoencoder pretraining (docs/smarties.md §5): token mixup, 75 %% masking",
    "xstars": "X-STARS pretraining (docs/xstars.md): DINO + multi-sensor alignment distillation (MSAD)",
    "xstars-continual": "X-STARS continual pretraining of a pretrained encoder on a new sensor (docs/xstars.md §4)",
    "smarties-align": "align a SMARTIES encoder onto a new sensor: MAE + MSAD to a frozen copy on the old sensor",
}


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` command (one sub-command per recipe) to an ``argparse`` sub-parsers action."""
    p = subparsers.add_parser(
        "train", help="train a model from a YAML recipe config (SMARTIES MAE, ...)",
        description="Train from a YAML config (training/configs/). The run folder (run.out_dir) receives "
        "checkpoints, exports (export/*.safetensors, loadable by `msfm embed --model`), log.csv and the resolved "
        "config. Multi-GPU: `accelerate launch --multi_gpu -m training train ...`.")
    rsub = p.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    for name in RECIPES:
        q = rsub.add_parser(name, help=_HELP.get(name, name))
        q.add_argument("config",
                       help="YAML config: a path, or a name in training/configs/ (e.g. smarties-mae-tiny-cpu)")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, YAML-parsed (repeatable), e.g. --set run.steps=3 "
                       "--set optim.lr=5e-4")
        q.add_argument("--out-dir", help="run folder (= --set run.out_dir=...)")
        q.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint in the run folder (= --set run.resume=true)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar (= --set run.progress=false)")
        q.set_defaults(func=run_train)
    return p


def register(subparsers: Any) -> None:
    """Entry point of the ``msfm.commands`` group: adds ``msfm train``."""
    add_train_parser(subparsers)


def _load(spec: str) -> tuple[Any, Any]:
    module, load_name, train_name = spec.split(":")
    mod = importlib.import_module(module)
    return getattr(mod, load_name), getattr(mod, train_name)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_train(args: argparse.Namespace) -> int:
    """Run ``train RECIPE CONFIG``; returns the exit status (0 done, 1 diverged, 2 bad config/folder)."""
    from .config import ConfigError  # PyYAML (the [train] extra): not at msfm start-up
    from .runner import NonFiniteLossError  # torch, accelerate: not at msfm start-up

    overrides = list(args.overrides)
    if args.out_dir:
        overrides.append(f"run.out_dir={args.out_dir}")
    if args.resume:
        overrides.append("run.resume=true")
    if args.no_progress:
        overrides.append("run.progress=false")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if logging.getLogger("training").level == logging.NOTSET:
        logging.getLogger("training").setLevel(logging.INFO)
    load, train = _load(RECIPES[args.recipe])
    try:
        cfg = load(args.config, overrides)
        if getattr(cfg, "recipe", args.recipe) != args.recipe:
            raise ConfigError(f"{args.config} is a {cfg.recipe!r} config, not {args.recipe!r}")
        result = train(cfg)
    except (ConfigError, EngineError, FileNotFoundError, FileExistsError) as exc:  # EngineError: model.init file
        print(f"msfm train: error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"msfm train: {exc}", file=sys.stderr)
        return 1
    if _is_main_process():
        tail = [v for _, v in result.history[-10:]]
        final = f"{sum(tail) / len(tail):.4f}" if tail else "n/a"
        print(f"done: step {result.steps}/{result.total_steps} ({result.stopped_because}), "
              f"{result.steps - result.start_step} steps in {result.wall_s:.1f} s ({result.steps_per_s:.2f} steps/s), "
              f"loss (mean of the last {len(tail)}) {final}")
        checkpoint = result.checkpoint.name if result.checkpoint else ""
        print(f"run folder: {result.out_dir} (log.csv, checkpoints/{checkpoint})")
        for path in result.exports:
            print(f"exported: {path}")
    return 0
