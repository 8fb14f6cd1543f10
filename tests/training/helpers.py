"""Helpers shared by the recipe tests: fit a recipe with a simulated crash, read its CSV log."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn

from training.runner import Runner, StepOutput, TrainTask


def fit_recipe(cfg: Any, build_task: Callable[[Any, Runner], TrainTask],
               crash_at: Optional[int] = None) -> tuple[Any, TrainTask]:
    """Fit ``build_task(cfg, runner)``; ``crash_at`` raises KeyboardInterrupt in that (0-based) step.

    Returns:
        ``(RunResult or None after a crash, task)``; the task's data stream is closed either way.
    """
    runner = Runner(cfg.run, cfg)
    task = build_task(cfg, runner)
    if crash_at is not None:
        inner = task.loss_fn

        def loss_fn(model: nn.Module, batch: Any, step: int) -> StepOutput:
            if step == crash_at:
                raise KeyboardInterrupt("simulated crash")
            return inner(model, batch, step)

        task.loss_fn = loss_fn
    try:
        return runner.fit(task), task
    except KeyboardInterrupt:
        return None, task
    finally:
        task.data.close()


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``log.csv``."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
