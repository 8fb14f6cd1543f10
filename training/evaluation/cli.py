"""Evaluation commands: ``msfm eval knn | linear-probe | retrieval`` (and ``python -m training eval ...``).

Frozen-encoder evaluation on CLS features (the CLS token after the final norm, ``model.encode(x, bands,
output="cls")``) with SMARTIES' protocols (docs/smarties.md §6, :mod:`training.evaluation.protocols`):

- ``knn``: k = 20 nearest training patches by cosine similarity, votes weighted ``exp(sim / 0.07)``;
- ``linear-probe``: ``BatchNorm1d(D, affine=False) → Linear(D, C)`` trained on the frozen features (100 epochs);
- ``retrieval``: cross-sensor retrieval among co-located pairs, A → B and B → A top-1 / top-5.

Both classifiers print top-1 accuracy (%) for single-label data and micro-averaged average precision (%) for
multi-label data (:func:`training.evaluation.protocols.classification_metric`). Labelled patches are read by
:mod:`training.evaluation.datasets` (a folder of class sub-folders, a ``path,label``/``path,labels`` CSV, or one side of
a BigEarthNet-MM folder); pairs by :mod:`training.data.pairs` (a BigEarthNet-MM folder, a CSV with one path column per
sensor, or an MSC-France-like ``<root>/<Sensor>/<City>/<tile>`` folder). Bands are resolved by the engine as for
``msfm embed`` (band descriptions / wavelength tags, ``--sensor`` preset, ``--band`` overrides), images are the whole
patch resized to ``--size-px`` (224) and normalised with the engine's statistics, or with the model's own input
normalisation and RGB bands for an X-STARS / DINO ViT.

``msfm`` finds the command through the ``msfm.commands`` entry point ``eval = "training.evaluation.cli:register"``
(``pyproject.toml``). Importing this module imports nothing heavy (no torch, no scikit-learn): the protocols and the
datasets are imported when a command runs.

Examples::

    msfm eval knn ../shared/data/bigearthnet_mm --test-fraction 0.33 --seed 0          # S2 side, 19 classes
    msfm eval linear-probe --train train_patches/ --test test_patches/ --model smarties-vit-b --device cuda
    msfm eval knn patches.csv --sensor naip_rgbn --band 4=near_infrared_1 --json knn.json
    msfm eval retrieval ../shared/data/bigearthnet_mm                                    # S1 → S2 and S2 → S1
    msfm eval retrieval MSC-France --sensors Sentinel SPOT --preset Sentinel=rgb --preset SPOT=rgb \\
        --model xstars_checkpoint.pth

Exit status: 0 done, 2 bad input (missing or unreadable dataset, no labels, a split that cannot be made, a model
that cannot be found or loaded, bands the model cannot take), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from engine.atomic import write_text
from engine.cli import DEMO_MODEL, add_band_options, band_overrides
from engine.errors import EngineError
from engine.models import load_model, select_device
from engine.spectral import get_sensor

__all__ = ("add_eval_parser", "load_pairs", "register", "run_eval")

#: Default share of a single dataset held out for testing.
DEFAULT_TEST_FRACTION = 0.2


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEMO_MODEL,
                   help=f"model name (`msfm models list`), a .safetensors file, or an X-STARS/DINO .pth checkpoint "
                   f"(default {DEMO_MODEL})")
    p.add_argument("--num-heads", type=int, help="attention heads, if the checkpoint does not say")
    p.add_argument("--size-px", type=int, default=224,
                   help="side of the model input in pixels; each patch is resized to it (default 224, "
                   "docs/smarties.md §6)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch during the command (default: torch's; 1 is much faster for the "
                   "linear probe's small steps on a CPU busy with other work)")
    p.add_argument("--json", metavar="PATH", help="also write the metrics as JSON (atomically)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _classifier_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", nargs="?",
                   help="labelled patches, split with --test-fraction: a folder of class sub-folders "
                   "(<root>/<class>/*.tif), a CSV (path,label or path,labels with ';'-separated names; paths relative "
                   "to the CSV) or a BigEarthNet-MM folder (index.csv)")
    p.add_argument("--train", metavar="DATASET", help="training patches (with --test, instead of DATASET)")
    p.add_argument("--test", metavar="DATASET", help="test patches (with --train)")
    p.add_argument("--test-fraction", type=float,
                   help=f"share of DATASET held out for testing, 0 < F < 1 (default {DEFAULT_TEST_FRACTION}); "
                   "stratified by class for single-label data, random for multi-label data")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (and of the linear probe) (default 0)")
    p.add_argument("--bigearthnet-sensor", choices=["s2", "s1"], default="s2",
                   help="BigEarthNet-MM folders: evaluate the Sentinel-2 (12 bands) or Sentinel-1 (VV, VH) patches "
                   "(default s2)")
    p.add_argument("--nomenclature", type=int, choices=[19, 43], default=19,
                   help="BigEarthNet-MM folders: 19 classes (SMARTIES' probes) or the 43 stored CORINE classes "
                   "(default 19)")
    add_band_options(p)
    _common_options(p)


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` command (``knn``, ``linear-probe``, ``retrieval``) to an ``argparse`` sub-parsers action."""
    p = subparsers.add_parser(
        "eval", help="evaluate a frozen encoder: kNN, linear probe, cross-sensor retrieval",
        description="Frozen-encoder evaluation on CLS features (docs/smarties.md §6): kNN and linear probe on "
        "labelled patches (top-1 %% single-label, micro mAP %% multi-label), cross-sensor retrieval among co-located "
        "pairs (top-1/top-5 %%, both ways).")
    esub = p.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    # Defaults of None are the spec's values in training.evaluation.protocols (KNN_K, KNN_T, LP_EPOCHS), read when
    # the command runs: that module imports torch, which building the parser must not.
    q = esub.add_parser("knn", help="weighted kNN (k 20, T 0.07, docs/smarties.md §6) on labelled patches")
    _classifier_options(q)
    q.add_argument("--k", type=int, help="neighbours (default 20, docs/smarties.md §6)")
    q.add_argument("--temperature", type=float, help="vote temperature (default 0.07, docs/smarties.md §6)")
    q.set_defaults(func=run_eval)
    q = esub.add_parser("linear-probe", help="BatchNorm (no affine) + Linear head on frozen features")
    _classifier_options(q)
    q.add_argument("--epochs", type=int, help="training epochs of the head (default 100, docs/smarties.md §6)")
    q.add_argument("--lr", type=float, help="learning rate (default 1e-3 × 1024 / 256 = 4e-3, docs/smarties.md §6)")
    q.set_defaults(func=run_eval)
    q = esub.add_parser("retrieval", help="cross-sensor retrieval among co-located pairs: A→B and B→A top-1/top-5")
    q.add_argument("pairs", help="pairs: a BigEarthNet-MM folder (index.csv; sensors s1, s2), a CSV with one path "
                   "column per sensor (paths relative to the CSV), or an MSC-France-like folder "
                   "<root>/<Sensor>/<City>/<tile>")
    q.add_argument("--sensors", nargs=2, metavar=("A", "B"),
                   help="the two sensors to compare (default: s1 s2 for BigEarthNet, else the source's two sensors)")
    q.add_argument("--preset", action="append", default=[], metavar="SENSOR=PRESET",
                   help="engine sensor preset of one sensor's files (repeatable), e.g. --preset Sentinel=rgb")
    _common_options(q)
    q.set_defaults(func=run_eval)
    return p


def register(subparsers: Any) -> None:
    """Entry point of the ``msfm.commands`` group: adds ``msfm eval``."""
    add_eval_parser(subparsers)


# ---------------------------------------------------------------------------------------------------- helpers
def load_pairs(source: os.PathLike[str] | str, sensors: Optional[list[str]] = None,
               presets: Optional[dict[str, str]] = None) -> tuple[list[Any], tuple[str, str]]:
    """Co-located pairs for retrieval, and the two sensors to compare.

    Args:
        source: A BigEarthNet-MM folder (:func:`training.data.pairs.bigearthnet_pairs`, sensors ``s1``/``s2``), a CSV
            with one path column per sensor (:func:`training.data.pairs.pairs_from_csv`), or an MSC-France-like folder
            (:func:`training.data.pairs.pairs_from_folder`; tiles without a partner in both sensors are an error).
        sensors: The two sensors, A then B; default ``("s1", "s2")`` for BigEarthNet, else the source's sensors
            when it has exactly two.
        presets: Sensor → engine sensor preset id (replaces BigEarthNet's defaults).

    Returns:
        ``(pairs, (a, b))``.

    Raises:
        FileNotFoundError: ``source`` or files it names do not exist.
        ValueError: Not two sensors, an unknown sensor, fewer than 2 pairs, a file that is not a CSV.
    """
    from ..data.pairs import bigearthnet_pairs, pairs_from_csv, pairs_from_folder  # torch: not at start-up
    from .datasets import is_bigearthnet_folder  # torch, scikit-learn: not at start-up

    path = Path(source)
    presets = dict(presets or {})
    if not path.exists():
        raise FileNotFoundError(f"pairs source {path} does not exist; give a BigEarthNet-MM folder, a pairs CSV or "
                                "an MSC-France-like folder <root>/<Sensor>/<City>/<tile>")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"pairs source {path} is a file but not a .csv")
        pairs = pairs_from_csv(path, sensors=sensors, presets=presets)
    elif is_bigearthnet_folder(path):
        pairs = bigearthnet_pairs(path)
        sensors = sensors or ["s1", "s2"]
        if presets:
            unknown = sorted(set(presets) - {"s1", "s2"})
            if unknown:
                raise ValueError(f"--preset names {unknown}; BigEarthNet's sensors are s1 and s2")
            pairs = [dataclasses.replace(p, presets={**p.presets, **presets}) for p in pairs]
    else:
        pairs = pairs_from_folder(path, sensors, presets)
    available = list(pairs[0].sensors) if pairs else []
    chosen = list(sensors) if sensors else available
    if len(chosen) != 2 or len(set(chosen)) != 2:
        raise ValueError(f"{path} has the sensors {available}; choose two different ones with --sensors A B")
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise ValueError(f"sensor(s) {unknown} not in {path}; its sensors are {available}")
    if len(pairs) < 2:
        raise ValueError(f"{path} holds {len(pairs)} pair(s); retrieval needs at least 2")
    return pairs, (chosen[0], chosen[1])


def _parse_presets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        sensor, sep, preset = (s.strip() for s in item.partition("="))
        if not sep or not sensor or not preset:
            raise ValueError(f"--preset {item!r} is not SENSOR=PRESET, e.g. --preset Sentinel=rgb")
        out[sensor] = preset
    return out


def _features(model: Any, images: Any, args: argparse.Namespace, desc: str) -> tuple[Any, Any]:
    """:func:`training.evaluation.protocols.extract_features` over ``images`` with a progress bar."""
    from .protocols import extract_features  # torch: not at start-up (every msfm command builds this parser)

    items = tqdm(images, total=len(images), desc=desc, unit="img", leave=False, disable=args.no_progress)
    return extract_features(model, items, batch_size=args.batch_size)


def _load_model(args: argparse.Namespace) -> Any:
    if args.batch_size < 1 or args.size_px < 1:
        raise ValueError(f"--batch-size and --size-px must be >= 1, got {args.batch_size} and {args.size_px}")
    device = select_device(args.device)
    return load_model(args.model, num_heads=args.num_heads, device=device)


def _datasets(args: argparse.Namespace) -> tuple[Any, Any, Optional[Any], dict[str, Any]]:
    """``(train, test, whole or None, split description)`` from DATASET + --test-fraction or --train + --test."""
    from .datasets import load_labelled, split_patches, with_common_classes  # torch, scikit-learn: not at start-up

    if args.sensor:
        get_sensor(args.sensor)  # unknown preset: fail before reading anything
    options = dict(preset=args.sensor, overrides=band_overrides(args.band),
                   bigearthnet_sensor=args.bigearthnet_sensor, nomenclature=args.nomenclature)
    if args.dataset and (args.train or args.test):
        raise ValueError("give either DATASET (split with --test-fraction) or --train and --test, not both")
    if args.dataset:
        fraction = DEFAULT_TEST_FRACTION if args.test_fraction is None else args.test_fraction
        whole = load_labelled(args.dataset, **options)
        train, test = split_patches(whole, fraction, args.seed)
        how = "stratified" if not whole.multilabel else "random (multi-label)"
        return train, test, whole, {"test_fraction": fraction, "seed": args.seed, "kind": how}
    if not (args.train and args.test):
        raise ValueError("no dataset: give DATASET (split with --test-fraction) or both --train and --test")
    if args.test_fraction is not None:
        raise ValueError("--test-fraction splits a single DATASET; with --train and --test leave it out")
    train, test = with_common_classes(load_labelled(args.train, **options), load_labelled(args.test, **options))
    return train, test, None, {}


def _classify(args: argparse.Namespace) -> dict[str, Any]:
    from .protocols import (  # torch: not at start-up
        KNN_K,
        KNN_T,
        LP_EPOCHS,
        classification_metric,
        knn_classify,
        linear_probe,
    )

    if args.protocol == "knn":
        k = KNN_K if args.k is None else args.k
        temperature = KNN_T if args.temperature is None else args.temperature
        if k < 1 or not temperature > 0:
            raise ValueError(f"--k must be >= 1 and --temperature > 0, got {k} and {temperature:g}")
    else:
        epochs = LP_EPOCHS if args.epochs is None else args.epochs
        if epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {epochs}")
    train, test, whole, split = _datasets(args)
    kind = "multi-label" if train.multilabel else "single-label"
    split_text = f", {split['kind']} split of {whole.source} (seed {split['seed']})" if whole is not None else ""
    print(f"data: {len(train)} training / {len(test)} test patches, {len(train.classes)} classes, {kind}{split_text}")
    model = _load_model(args)
    if whole is not None:  # one pass over the data; the split indexes rows
        feats, labels = _features(model, whole.images(args.size_px, model), args, "features")
        rows = {id(p): i for i, p in enumerate(whole.pairs)}  # (the split's pairs are the dataset's objects)
        tr = np.array([rows[id(p)] for p in train.pairs])
        te = np.array([rows[id(p)] for p in test.pairs])
        xtr, ytr, xte, yte = feats[tr], labels[tr], feats[te], labels[te]
    else:
        xtr, ytr = _features(model, train.images(args.size_px, model), args, "train features")
        xte, yte = _features(model, test.images(args.size_px, model), args, "test features")
    n_classes = None if train.multilabel else len(train.classes)
    if args.protocol == "knn":
        value = classification_metric(knn_classify(xtr, ytr, xte, k=k, T=temperature, num_classes=n_classes), yte)
        params: dict[str, Any] = {"k": k, "k_used": min(k, len(train)), "temperature": temperature}
        what = f"kNN (k {min(k, len(train))}, T {temperature:g})"
    else:
        value = linear_probe(xtr, ytr, xte, yte, epochs=epochs, lr=args.lr, num_classes=n_classes, seed=args.seed)
        params = {"epochs": epochs, "lr": args.lr if args.lr is not None else "1e-3 * 1024 / 256"}
        what = f"linear probe ({epochs} epochs)"
    metric = "micro_map" if train.multilabel else "top1_accuracy"
    print(f"{what}: {'micro mAP' if train.multilabel else 'top-1 accuracy'} {value:.1f} % on {len(test)} test "
          f"patches")
    return {
        "protocol": args.protocol, "metric": metric, "value": value, "params": params,
        "train": {"source": train.source, "n": len(train), "ids": [p.id for p in train.pairs]},
        "test": {"source": test.source, "n": len(test), "ids": [p.id for p in test.pairs]},
        "split": split or None, "classes": list(train.classes), "multilabel": train.multilabel,
        "embed_dim": int(xtr.shape[1]),
    }


def _retrieval(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.pairs import PairImages  # torch: not at start-up
    from .protocols import cross_sensor_retrieval  # torch: not at start-up

    pairs, (a, b) = load_pairs(args.pairs, args.sensors, _parse_presets(args.preset))
    print(f"data: {len(pairs)} pairs of {args.pairs}, sensors {a} and {b}")
    model = _load_model(args)
    fa, _ = _features(model, PairImages(pairs, a, args.size_px, model=model), args, f"{a} features")
    fb, _ = _features(model, PairImages(pairs, b, args.size_px, model=model), args, f"{b} features")
    result = cross_sensor_retrieval(fa, fb, ks=(1, 5))
    chance = {k: min(k, len(pairs)) / len(pairs) * 100.0 for k in (1, 5)}
    for src, dst, key in ((a, b, "a_to_b"), (b, a, "b_to_a")):
        print(f"{src} → {dst}: top-1 {result[f'{key}@1']:.1f} %, top-5 {result[f'{key}@5']:.1f} % "
              f"(chance {chance[1]:.1f} % / {chance[5]:.1f} %)")
    return {
        "protocol": "retrieval", "sensors": [a, b], "n_pairs": len(pairs), "source": str(args.pairs),
        "metrics": {f"{src}_to_{dst}@{k}": result[f"{key}@{k}"]
                    for src, dst, key in ((a, b, "a_to_b"), (b, a, "b_to_a")) for k in (1, 5)},
        "chance": {f"@{k}": v for k, v in chance.items()}, "embed_dim": int(fa.shape[1]),
    }


def run_eval(args: argparse.Namespace) -> int:
    """Run ``eval knn | linear-probe | retrieval``; returns the exit status (0 done, 2 bad input)."""
    started = time.perf_counter()
    threads = None
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            import torch  # only with --threads: not at start-up

            threads = torch.get_num_threads()
            torch.set_num_threads(args.threads)
        if args.json:
            folder = Path(args.json).resolve().parent
            if not folder.is_dir():
                raise ValueError(f"--json {args.json}: folder {folder} does not exist; create it or choose another "
                                 "path")
        report = _retrieval(args) if args.protocol == "retrieval" else _classify(args)
        report.update(model=str(args.model), size_px=args.size_px, seconds=round(time.perf_counter() - started, 2))
        if args.json:
            written = write_text(args.json, json.dumps(report, indent=2) + "\n")
            print(f"wrote {written}")
    except (EngineError, ValueError, OSError) as exc:  # OSError: missing files, unwritable --json folder
        print(f"msfm eval {args.protocol}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if threads is not None:  # (in-process callers keep their setting)
            import torch  # imported above when threads is set

            torch.set_num_threads(threads)
    return 0
