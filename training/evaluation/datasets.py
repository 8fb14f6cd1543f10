"""Labelled image patches for frozen-encoder evaluation (``msfm eval knn | linear-probe``).

A :class:`LabelledPatches` is a list of one-sensor :class:`training.data.pairs.Pair` s (one raster patch each, with its
class names), the class list that fixes the label order, and whether the labels are multi-label. Images come from
:class:`training.data.pairs.PairImages` (the whole patch, normalised with the engine's statistics for its resolved
bands, resized to the model's input side), so bands are resolved exactly as ``msfm embed`` resolves them: band
descriptions and wavelength tags through :func:`engine.spectral.resolve_bands`, a sensor preset, and band overrides.

Sources (:func:`load_labelled` tells them apart):

- a **folder with one sub-folder per class**, ``<root>/<class>/*.tif`` (any suffix of
  :data:`training.data.pairs.RASTER_SUFFIXES`, searched recursively below the class folder): single-label;
- a **CSV** with a ``path`` column and a ``label`` column (single-label) or a ``labels`` column holding
  ``;``-separated class names (multi-label); relative paths are resolved against the CSV's folder
  (:func:`training.data.pairs.pairs_from_csv`);
- a **BigEarthNet-MM folder** (``index.csv`` with ``s2_patch``/``s1_patch`` columns,
  :func:`training.data.pairs.bigearthnet_pairs`): the S2 or the S1 patches, multi-label, 43 or 19 classes.

:func:`split_patches` makes a deterministic train/test split: stratified by class for single-label data
(:func:`sklearn.model_selection.train_test_split`), a plain seeded random split for multi-label data (each label
combination is usually unique, so there is nothing to stratify on).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from sklearn.model_selection import train_test_split

from ..data.pairs import (
    BEN19_CLASSES,
    BEN43_CLASSES,
    RASTER_SUFFIXES,
    Pair,
    PairImages,
    bigearthnet_pairs,
    pairs_from_csv,
)

logger = logging.getLogger(__name__)

__all__ = (
    "LabelledPatches",
    "is_bigearthnet_folder",
    "labelled_bigearthnet",
    "labelled_csv",
    "labelled_folder",
    "load_labelled",
    "split_patches",
    "with_common_classes",
)

PathLike = Union[str, Path]
#: Sensor name of the one-sensor pairs of folder and CSV datasets.
PATCH = "image"
#: Separator of several class names in the ``labels`` column of a multi-label CSV.
LABEL_SEPARATOR = ";"


@dataclass(frozen=True)
class LabelledPatches:
    """Labelled raster patches.

    Attributes:
        pairs: One :class:`~training.data.pairs.Pair` per patch, each with the single sensor :attr:`sensor` and its
            class names in ``labels``.
        sensor: The sensor name of the pairs (``"image"``, or ``"s2"``/``"s1"`` for BigEarthNet).
        classes: Class names; a label's index is its position here.
        multilabel: Multi-hot labels ``[N, C]`` (True) or one class index per patch ``[N]`` (False).
        source: Where the patches come from (for messages and the JSON report).
    """

    pairs: tuple[Pair, ...]
    sensor: str
    classes: tuple[str, ...]
    multilabel: bool
    source: str

    def __len__(self) -> int:
        return len(self.pairs)

    def labels(self) -> np.ndarray:
        """``[N]`` int64 class indices (single-label) or ``[N, C]`` float32 multi-hot (multi-label)."""
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return np.array([index[p.labels[0]] for p in self.pairs], np.int64)
        out = np.zeros((len(self.pairs), len(self.classes)), np.float32)
        for row, p in enumerate(self.pairs):
            out[row, [index[lab] for lab in p.labels]] = 1.0
        return out

    def subset(self, indices: Sequence[int]) -> "LabelledPatches":
        """The patches at ``indices`` (same classes)."""
        return replace(self, pairs=tuple(self.pairs[i] for i in indices))

    def images(self, size_px: int = 224, model: Any = None) -> PairImages:
        """The patches as ``(image [C, S, S] float32, band specs, label)`` items for
        :func:`training.evaluation.protocols.extract_features`, prepared for ``model`` (its band families and input
        normalisation, see :class:`training.data.pairs.PairedCropSampler`)."""
        return PairImages(self.pairs, self.sensor, size_px, self.classes, self.multilabel, model=model)


def _check(patches: LabelledPatches) -> LabelledPatches:
    """Reject datasets no metric can be computed on, with the fix in the message."""
    if not patches.pairs:
        raise ValueError(f"{patches.source}: no labelled patch")
    if not any(p.labels for p in patches.pairs):
        raise ValueError(f"{patches.source}: no patch has a label; give every patch its class name(s)")
    if not patches.multilabel and len(patches.classes) < 2:
        raise ValueError(f"{patches.source}: only one class ({', '.join(patches.classes)}); classification needs at "
                         "least two")
    return patches


def _sensor_options(sensor: str, preset: Optional[str], overrides: Any) -> dict[str, Any]:
    return {"presets": {sensor: preset} if preset else {}, "overrides": {sensor: overrides} if overrides else {}}


def labelled_folder(root: PathLike, preset: Optional[str] = None, overrides: Any = None) -> LabelledPatches:
    """Single-label patches of a folder with one sub-folder per class: ``<root>/<class>/<patch>.tif``.

    Args:
        root: The dataset folder. Every sub-folder is a class (its name is the class name); its raster files (any
            :data:`~training.data.pairs.RASTER_SUFFIXES` suffix, searched recursively) are its patches. Files directly
            in ``root`` are ignored.
        preset: Engine sensor preset id for files whose metadata does not tell the bands (``msfm sensors``).
        overrides: Band overrides for :func:`engine.spectral.resolve_bands` (``{4: "red_2"}``, as ``--band``).

    Returns:
        The patches, sorted by class then path; classes sorted by name.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or has no class sub-folder.
        ValueError: A class folder holds no raster (the message lists them), or there is only one class.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {root} is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise FileNotFoundError(f"{root} has no class sub-folder; expected <root>/<class>/<patch>.tif")
    pairs, empty = [], []
    for folder in class_dirs:
        files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)
        if not files:
            empty.append(str(folder))
        pairs += [Pair(f"{folder.name}/{f.relative_to(folder).as_posix()}", {PATCH: f},
                       labels=(folder.name,), **_sensor_options(PATCH, preset, overrides)) for f in files]
    if empty:
        suffixes = ", ".join(sorted(RASTER_SUFFIXES))
        raise ValueError(f"{root}: class folder(s) without a raster patch ({suffixes}): {', '.join(empty)}; add "
                         "patches or remove the folder(s)")
    return _check(LabelledPatches(tuple(pairs), PATCH, tuple(d.name for d in class_dirs), False, str(root)))


def labelled_csv(csv_path: PathLike, preset: Optional[str] = None, overrides: Any = None) -> LabelledPatches:
    """Patches listed in a CSV: ``path,label`` (single-label) or ``path,labels`` with ``;``-separated names.

    Args:
        csv_path: The CSV, with a header row holding ``path`` and exactly one of ``label``/``labels`` (other
            columns are ignored). Relative paths are resolved against the CSV's folder.
        preset, overrides: As :func:`labelled_folder`.

    Returns:
        One patch per row, in file order; classes = the sorted set of names found.

    Raises:
        FileNotFoundError: The CSV or a listed raster does not exist (every missing one is listed).
        ValueError: No ``path`` column, not exactly one label column, an empty path, a single-label row without
            exactly one label, no label at all, or only one class.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"labelled patch list {csv_path} does not exist")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        header = [c.strip() for c in next(csv.reader(fh), [])]
    label_columns = [c for c in header if c in ("label", "labels")]
    if "path" not in header or len(label_columns) != 1:
        raise ValueError(f"{csv_path}: the header must hold 'path' and one of 'label' (single-label) or 'labels' "
                         f"(multi-label, {LABEL_SEPARATOR!r}-separated); it is {header}")
    multilabel = label_columns[0] == "labels"
    pairs = pairs_from_csv(csv_path, sensors=["path"], label_columns=label_columns, separator=LABEL_SEPARATOR)
    if not multilabel:
        bad = [f"{p.id} ({len(p.labels)} labels)" for p in pairs if len(p.labels) != 1]
        if bad:
            raise ValueError(f"{csv_path}: single-label rows need exactly one class in 'label': {', '.join(bad[:10])}"
                             f"{' …' if len(bad) > 10 else ''}; for several classes per patch name the column "
                             f"'labels' and separate them with {LABEL_SEPARATOR!r}")
    pairs = [Pair(p.id, {PATCH: p.paths["path"]}, labels=p.labels, **_sensor_options(PATCH, preset, overrides))
             for p in pairs]
    classes = tuple(sorted({lab for p in pairs for lab in p.labels}))
    return _check(LabelledPatches(tuple(pairs), PATCH, classes, multilabel, str(csv_path)))


def is_bigearthnet_folder(path: PathLike) -> bool:
    """True when ``path`` is a folder whose ``index.csv`` has BigEarthNet-MM's ``s2_patch``/``s1_patch`` columns."""
    index = Path(path) / "index.csv"
    if not index.is_file():
        return False
    with open(index, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    return {"s2_patch", "s1_patch"} <= {c.strip() for c in header}


def labelled_bigearthnet(folder: PathLike, sensor: str = "s2", nomenclature: int = 19,
                         preset: Optional[str] = None, overrides: Any = None) -> LabelledPatches:
    """One side of BigEarthNet-MM pairs (:func:`training.data.pairs.bigearthnet_pairs`) as multi-label patches.

    Args:
        folder: Folder with ``index.csv`` (e.g. ``../shared/data/bigearthnet_mm``).
        sensor: ``"s2"`` (Sentinel-2 L2A, 12 bands) or ``"s1"`` (Sentinel-1 VV, VH in dB).
        nomenclature: 19 (SMARTIES' probes, :data:`~training.data.pairs.BEN19_CLASSES`) or 43 (as stored,
            :data:`~training.data.pairs.BEN43_CLASSES`).
        preset: Replaces the pair's preset (``sentinel2_l2a`` / ``sentinel1_grd_db``) when given.
        overrides: Band overrides for the chosen side.

    Returns:
        Multi-label patches with all 19 (or 43) classes, in the official order.

    Raises:
        ValueError: ``sensor`` not s1/s2, a bad nomenclature, or bad label files (see ``bigearthnet_pairs``).
        FileNotFoundError: Files named by ``index.csv`` are missing.
    """
    if sensor not in ("s1", "s2"):
        raise ValueError(f"BigEarthNet sensor must be 's2' or 's1', got {sensor!r}")
    pairs = [
        Pair(p.id, {sensor: p.paths[sensor]}, {sensor: preset or p.presets[sensor]}, p.labels,
             {sensor: overrides} if overrides else {})
        for p in bigearthnet_pairs(folder, nomenclature)
    ]
    classes = BEN19_CLASSES if nomenclature == 19 else BEN43_CLASSES
    return _check(LabelledPatches(tuple(pairs), sensor, classes, True, f"{folder} ({sensor}, {nomenclature} classes)"))


def load_labelled(source: PathLike, preset: Optional[str] = None, overrides: Any = None,
                  bigearthnet_sensor: str = "s2", nomenclature: int = 19) -> LabelledPatches:
    """Labelled patches of a CSV file, a BigEarthNet-MM folder or a class-per-folder folder (see the module doc).

    Args:
        source: A ``.csv`` file (:func:`labelled_csv`), a folder whose ``index.csv`` is BigEarthNet-MM's
            (:func:`labelled_bigearthnet`), or a folder of class sub-folders (:func:`labelled_folder`).
        preset, overrides: Sensor preset id and band overrides for the patches' bands.
        bigearthnet_sensor, nomenclature: BigEarthNet only: which side, 19 or 43 classes.

    Raises:
        FileNotFoundError: ``source`` does not exist, or see the readers.
        ValueError: See the readers.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist; give a folder of class sub-folders, a CSV "
                                "(path,label or path,labels) or a BigEarthNet-MM folder")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"dataset {path} is a file but not a .csv; give a folder of class sub-folders, a CSV "
                             "(path,label or path,labels) or a BigEarthNet-MM folder")
        return labelled_csv(path, preset, overrides)
    if is_bigearthnet_folder(path):
        return labelled_bigearthnet(path, bigearthnet_sensor, nomenclature, preset, overrides)
    return labelled_folder(path, preset, overrides)


def with_common_classes(train: LabelledPatches, test: LabelledPatches) -> tuple[LabelledPatches, LabelledPatches]:
    """Give separately read train and test sets one class list (the union, sorted unless both are equal).

    Raises:
        ValueError: One set is single-label and the other multi-label.
    """
    if train.multilabel != test.multilabel:
        kinds = {True: "multi-label", False: "single-label"}
        raise ValueError(f"the training set {train.source} is {kinds[train.multilabel]} but the test set "
                         f"{test.source} is {kinds[test.multilabel]}; both must be of one kind")
    if train.classes == test.classes:
        return train, test
    classes = tuple(sorted(set(train.classes) | set(test.classes)))
    return replace(train, classes=classes), replace(test, classes=classes)


def split_patches(patches: LabelledPatches, test_fraction: float,
                  seed: int = 0) -> tuple[LabelledPatches, LabelledPatches]:
    """Deterministic train/test split: stratified by class (single-label), seeded random (multi-label).

    The test set holds ``ceil(test_fraction · N)`` patches (scikit-learn's rule); both sets keep the original order.

    Args:
        patches: The dataset.
        test_fraction: Share of the patches held out, 0 < f < 1.
        seed: Seed of the shuffle (same seed, same split).

    Returns:
        ``(train, test)``.

    Raises:
        ValueError: ``test_fraction`` outside (0, 1); a split with an empty side; single-label classes with fewer
            than 2 patches (cannot be stratified), or fewer test/train patches than classes (the message names the
            fix).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction:g}")
    n = len(patches)
    n_test = math.ceil(test_fraction * n)
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"--test-fraction {test_fraction:g} of {n} patches leaves {n - n_test} for training and "
                         f"{n_test} for testing; both need at least one: change --test-fraction or add patches")
    index = np.arange(n)
    if patches.multilabel:
        logger.info("multi-label data: random split (label combinations are too rare to stratify on)")
        train, test = train_test_split(index, test_size=n_test, random_state=seed, shuffle=True)
    else:
        labels = patches.labels()
        counts = np.bincount(labels, minlength=len(patches.classes))
        lonely = [f"{patches.classes[c]} ({counts[c]})" for c in range(len(counts)) if counts[c] < 2]
        if lonely:
            raise ValueError(f"{patches.source}: a stratified split needs at least 2 patches per class; too few in "
                             f"{', '.join(lonely)}: add patches, drop the class, or give --train and --test")
        present = int((counts > 0).sum())
        if n_test < present or n - n_test < present:
            raise ValueError(f"--test-fraction {test_fraction:g} of {n} patches gives {n - n_test} training and "
                             f"{n_test} test patches, but a stratified split needs at least one per class in each "
                             f"({present} classes): change --test-fraction")
        train, test = train_test_split(index, test_size=n_test, random_state=seed, shuffle=True, stratify=labels)
    return patches.subset(sorted(train.tolist())), patches.subset(sorted(test.tolist()))
