"""Co-registered multi-sensor pairs and ground-aligned paired crops (docs/smarties.md §5, docs/xstars.md §5).

A :class:`Pair` is one place seen by several sensors: one raster per sensor over (about) the same footprint, at each
sensor's own GSD (BigEarthNet S1 10 m ↔ S2 10 m, Landsat-8 pan 15 m ↔ multispectral 30 m, SPOT 1.5 m ↔ Sentinel-2
10 m ↔ Landsat 30 m in MSC-France), with optional labels. Constructors:

- :func:`pairs_from_folder` — the MSC-France layout ``<root>/<Sensor>/<City>/<tile>``, paired on the tile's path
  below the sensor folder (``(city, filename)``), never by replacing sensor names in path strings (X-STARS bugs
  B4–B6, docs/xstars.md §7: any sensor folder names, extra top-level folders ignored, any path separator);
- :func:`pairs_from_csv` — one path column per sensor plus optional label columns;
- :func:`bigearthnet_pairs` — BigEarthNet-MM S1/S2 patches with their CORINE multi-labels;
- :func:`pan_ms_pairs` — panchromatic / multispectral pairs of one scene;
- :func:`pairs_from_config` — one of the above, as a recipe config's ``data.pairs`` section (:class:`PairsConfig`)
  names it.

:class:`PairedCropSampler` draws SMARTIES' paired random-resized crop (§5) *in ground coordinates*: a square window
covering a random fraction U(0.25, 1) of the pair's common footprint, read from every sensor at its own resolution
(rasterio window from bounds; fractional offsets honoured with cubic resampling; parts outside a raster are read as
invalid), normalised with the engine's statistics for the sensor's resolved bands
(:func:`engine.spectral.resolve_bands`, :func:`engine.raster.band_statistics`, :func:`engine.spectral.normalize`;
invalid pixels → 0 = the band mean, as :class:`training.data.rasters.PretrainSampler`), resized to the model input size
(bicubic, anti-aliased, ``torch.nn.functional.interpolate``) and flipped/rotated identically for all sensors. The
reference maps the crop position proportionally between the two images' pixel grids (§5); with georeferenced rasters
the same ground window is the exact equivalent, and it stays exact when the footprints differ by a few pixels.
Rasters without a CRS (PNG/JPEG tiles, as MSC-France ships) are taken to cover the same footprint by construction:
their frame is the image itself scaled to the unit square, which is the reference's proportional mapping.

Why not :class:`training.data.rasters.RasterSource`: it drops bands with an interpolated projection (panchromatic bands
have no MAE range), resamples bilinearly straight to the output size (no anti-aliasing when a 1000-px pan window
becomes 224 px) on the grid of its first file, and keeps every file open. :func:`folder_sources` still builds
:class:`~training.data.rasters.RasterSource` s for single-sensor tiles, through its public
:func:`training.data.rasters.raster_source`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window, from_bounds

from engine.errors import InputRasterError
from engine.models import model_statistics
from engine.raster import band_statistics, open_raster, read_valid
from engine.spectral import BandMapping, BandStats, Projection, resolve_bands, select_band_families

from ..config import ConfigError
from .rasters import NOT_TRAINED, PretrainSampler, RasterSource, raster_source

logger = logging.getLogger(__name__)

__all__ = (
    "BEN19_CLASSES",
    "BEN43_CLASSES",
    "BEN43_TO_19",
    "Pair",
    "PairImages",
    "PairedBatch",
    "PairedCrop",
    "PairedCropSampler",
    "PairsConfig",
    "bigearthnet_pairs",
    "collate_crops",
    "folder_sources",
    "pairs_from_config",
    "pairs_from_csv",
    "pairs_from_folder",
    "pan_ms_pairs",
)

PathLike = Union[str, "os.PathLike[str]"]
#: What a band is embedded with: its SMARTIES range key, or the interpolated :class:`~engine.spectral.Projection`
#: for bands in no range (panchromatic, Landsat B11); both are accepted by ``SmartiesEncoder.encode``.
BandSpec = Union[str, Projection]
#: (left, bottom, right, top) of a window in a pair's frame (CRS units, or image fractions for unreferenced rasters).
Bounds = tuple[float, float, float, float]

#: File suffixes :func:`pairs_from_folder` treats as raster tiles (GDAL-readable; MSC-France tiles are PIL images).
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt"})
#: SMARTIES paired random-resized crop (docs/smarties.md §5): area fraction range and tries before the centre-crop
#: fallback.
CROP_SCALE = (0.25, 1.0)
_CROP_TRIES = 10
#: Window redraws when a crop has too few valid pixels (as :class:`training.data.rasters.PretrainSampler`).
_VALID_TRIES = 20

# ---------------------------------------------------------------------------------------------------- labels
#: BigEarthNet v1 CORINE Land Cover level-3 nomenclature, 43 classes, in the official index order (Sumbul et al.,
#: "BigEarthNet: a large-scale benchmark archive for remote sensing image understanding", IGARSS 2019; the
#: ``original_labels`` table of the BigEarthNet team's ``label_indices.json``). ``*_labels_metadata.json`` files use
#: these names.
BEN43_CLASSES: tuple[str, ...] = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports", "Mineral extraction sites", "Dump sites",
    "Construction sites", "Green urban areas", "Sport and leisure facilities", "Non-irrigated arable land",
    "Permanently irrigated land", "Rice fields", "Vineyards", "Fruit trees and berry plantations", "Olive groves",
    "Pastures", "Annual crops associated with permanent crops", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation", "Agro-forestry areas",
    "Broad-leaved forest", "Coniferous forest", "Mixed forest", "Natural grassland", "Moors and heathland",
    "Sclerophyllous vegetation", "Transitional woodland/shrub", "Beaches, dunes, sands", "Bare rock",
    "Sparsely vegetated areas", "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes", "Salines",
    "Intertidal flats", "Water courses", "Water bodies", "Coastal lagoons", "Estuaries", "Sea and ocean",
)
#: BigEarthNet 19-class nomenclature (Sumbul et al., "BigEarthNet-MM", IEEE GRSM 2021; ``BigEarthNet-19_labels`` of
#: ``label_indices.json``), used by SMARTIES' BigEarthNet probes (docs/smarties.md §6, ``Linear(2D, 19)``).
BEN19_CLASSES: tuple[str, ...] = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation", "Agro-forestry areas",
    "Broad-leaved forest", "Coniferous forest", "Mixed forest", "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation", "Transitional woodland, shrub", "Beaches, dunes, sands",
    "Inland wetlands", "Coastal wetlands", "Inland waters", "Marine waters",
)
_BEN19_FROM_43 = (  # ``label_conversion`` of label_indices.json: 43-class indices of each 19-class label
    (0, 1), (2,), (11, 12, 13), (14, 15, 16, 18), (17,), (19,), (20,), (21,), (22,), (23,), (24,), (25, 31), (26, 27),
    (28,), (29,), (33, 34), (35, 36), (38, 39), (40, 41, 42),
)
#: 43-class name → 19-class name; the 10 classes absent here (urban green, roads, ports, bare rock, burnt areas,
#: intertidal flats, …) have no 19-class counterpart and are dropped by the conversion.
BEN43_TO_19: dict[str, str] = {BEN43_CLASSES[i]: new for new, olds in zip(BEN19_CLASSES, _BEN19_FROM_43) for i in olds}


# ---------------------------------------------------------------------------------------------------- pairs
@dataclass
class Pair:
    """One place seen by one or more sensors.

    Attributes:
        id: Identifier (``"Bordeaux/tile_0012.tif"``, a BigEarthNet S2 patch name, a CSV row).
        paths: Sensor name → raster path, in sensor order (sensor names are the caller's: ``"Sentinel"``, ``"s1"``).
        presets: Sensor name → engine sensor preset id (``"sentinel2_l2a"``, ``"rgb"``…) for files whose metadata
            does not tell the bands (see ``msfm sensors``); a missing entry or ``None`` lets the resolver guess.
        labels: Class names of the place (one for single-label datasets, several for multi-label ones, none when
            unlabelled).
        overrides: Sensor name → band overrides for :func:`engine.spectral.resolve_bands` (``{4: "red_2", "B8":
            842.5}``, as ``msfm embed --band``), for files whose metadata and preset do not tell the bands.

    Raises:
        ValueError: No sensor, or a preset or overrides for a sensor that has no path.
    """

    id: str
    paths: dict[str, Path]
    presets: dict[str, Optional[str]] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.paths:
            raise ValueError(f"pair {self.id!r} has no sensor; give at least one path")
        self.paths = {str(k): Path(v) for k, v in self.paths.items()}
        for what, given in (("presets", self.presets), ("overrides", self.overrides)):
            unknown = set(given) - set(self.paths)
            if unknown:
                raise ValueError(f"pair {self.id!r}: {what} for sensors without a path: {sorted(unknown)}; "
                                 f"its sensors are {list(self.paths)}")
        self.labels = tuple(self.labels)

    @property
    def sensors(self) -> tuple[str, ...]:
        """Sensor names in order."""
        return tuple(self.paths)


def _list_missing(what: str, items: Sequence[str], limit: int = 20) -> str:
    shown = "\n  ".join(items[:limit])
    more = f"\n  … and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {what}:\n  {shown}{more}"


def pairs_from_folder(
    root: PathLike,
    sensors: Optional[Sequence[str]] = None,
    presets: Optional[Mapping[str, Optional[str]]] = None,
    strict: bool = True,
) -> list[Pair]:
    """Pairs of an MSC-France-like folder ``<root>/<Sensor>/<City>/<tile>`` (docs/xstars.md §5).

    Tiles are matched on their path below the sensor folder — ``(city, filename)`` in the MSC-France layout, also
    deeper or flatter layouts — compared as path parts, so sensor names may be anything (also substrings of each
    other or of city names) and the OS path separator does not matter (fixes X-STARS B5/B6, docs/xstars.md §7).
    Top-level folders not named in ``sensors`` are ignored. Files are those with a :data:`RASTER_SUFFIXES` suffix.

    Args:
        root: Dataset root.
        sensors: Sensor folder names, in the order the pairs list them; ``None`` = every sub-folder of ``root``
            (sorted).
        presets: Sensor folder name → engine sensor preset id (MSC-France RGB 8-bit tiles: ``"rgb"``).
        strict: ``True``: a tile without a partner in every sensor is an error; ``False``: such tiles are skipped
            with a warning (pairs then hold only complete places).

    Returns:
        One :class:`Pair` per place, sorted by id (``"<City>/<tile>"``), paths keyed by sensor folder name.

    Raises:
        FileNotFoundError: ``root`` or a sensor folder does not exist (the message lists the folders found), or no
            tile was found.
        ValueError: ``strict`` and some tiles lack a partner (the message lists each missing partner path).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a folder")
    found_dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    sensors = list(found_dirs if sensors is None else sensors)
    if not sensors:
        raise FileNotFoundError(f"{root} has no sensor sub-folder (expected <root>/<Sensor>/<City>/<tile>)")
    missing_dirs = [s for s in sensors if not (root / s).is_dir()]
    if missing_dirs:
        raise FileNotFoundError(f"sensor folder(s) {missing_dirs} not found in {root}; it has {found_dirs}")
    tiles: dict[str, dict[tuple[str, ...], Path]] = {}
    for sensor in sensors:
        base = root / sensor
        tiles[sensor] = {
            p.relative_to(base).parts: p
            for p in sorted(base.rglob("*"))
            if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
        }
    places = sorted(set().union(*(t.keys() for t in tiles.values())))
    if not places:
        suffixes = ", ".join(sorted(RASTER_SUFFIXES))
        raise FileNotFoundError(f"no raster tile ({suffixes}) under the sensor folders {sensors} of {root}")
    missing = [
        f"{root.joinpath(s, *place)} (partner of {next(tiles[o][place] for o in sensors if place in tiles[o])})"
        for place in places for s in sensors if place not in tiles[s]
    ]
    if missing and strict:
        raise ValueError(_list_missing("missing partner tile(s); add them, or pass strict=False to skip incomplete "
                                       "places", missing))
    if missing:
        logger.warning("%s: skipping incomplete places; %s", root, _list_missing("missing partner tile(s)", missing))
    presets = dict(presets or {})
    return [
        Pair("/".join(place), {s: tiles[s][place] for s in sensors}, {s: presets[s] for s in sensors if s in presets})
        for place in places
        if all(place in tiles[s] for s in sensors)
    ]


#: Column names :func:`pairs_from_csv` reads as labels / identifiers unless told otherwise.
_LABEL_COLUMNS = ("label", "labels")
_ID_COLUMN = "id"


def pairs_from_csv(
    csv_path: PathLike,
    sensors: Optional[Sequence[str]] = None,
    label_columns: Optional[Sequence[str]] = None,
    presets: Optional[Mapping[str, Optional[str]]] = None,
    separator: str = "|",
) -> list[Pair]:
    """Pairs listed in a CSV file: one path column per sensor, optional label columns and ``id`` column.

    Args:
        csv_path: The CSV (header row required). Relative paths are resolved against the CSV's folder.
        sensors: Path columns, in order; ``None`` = every column that is neither a label column nor ``id``.
        label_columns: Columns holding class names (``separator``-separated for multi-label rows, empty for none);
            ``None`` = those of ``label`` / ``labels`` present.
        presets: Sensor column → engine sensor preset id.
        separator: Separator of several labels in one cell (``"|"``, as BigEarthNet's ``index.csv``).

    Returns:
        One :class:`Pair` per row; ids from the ``id`` column, else ``"row<N>"`` (N = 1-based data row).

    Raises:
        FileNotFoundError: The CSV, or any listed raster, does not exist (the message lists every missing one).
        ValueError: No sensor column, a named column is absent, or a path cell is empty.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"pair list {csv_path} does not exist")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if label_columns is None:
        label_columns = [c for c in columns if c.strip().lower() in _LABEL_COLUMNS]
    if sensors is None:
        sensors = [c for c in columns if c not in label_columns and c.strip().lower() != _ID_COLUMN]
    absent = [c for c in [*sensors, *label_columns] if c not in columns]
    if absent:
        raise ValueError(f"{csv_path}: column(s) {absent} not in the header {columns}")
    if not sensors:
        raise ValueError(f"{csv_path}: no path column; the header is {columns}")
    id_column = next((c for c in columns if c.strip().lower() == _ID_COLUMN), None)
    pairs, missing = [], []
    for n, row in enumerate(rows, start=1):
        paths = {}
        for s in sensors:
            cell = (row.get(s) or "").strip()
            if not cell:
                raise ValueError(f"{csv_path}: row {n} has no path in column {s!r}")
            path = Path(cell).expanduser()
            path = path if path.is_absolute() else csv_path.parent / path
            if not path.exists():
                missing.append(f"{path} (row {n}, column {s!r})")
            paths[s] = path
        labels = tuple(
            lab.strip() for c in label_columns for lab in (row.get(c) or "").split(separator) if lab.strip()
        )
        pid = row[id_column].strip() if id_column and row.get(id_column) else f"row{n}"
        pairs.append(Pair(pid, paths, {s: p for s, p in (presets or {}).items()}, labels))
    if missing:
        raise FileNotFoundError(f"{csv_path}: " + _list_missing("listed raster(s) not found", missing))
    return pairs


def bigearthnet_pairs(folder: PathLike, nomenclature: int = 43) -> list[Pair]:
    """BigEarthNet-MM S1/S2 pairs of a folder with ``index.csv`` (as ``../shared/data/bigearthnet_mm``).

    Each row of ``index.csv`` (``s2_patch``, ``s1_patch``) names ``<s2_patch>_s2_12band.tif`` (Sentinel-2 L2A, 12
    bands, 10 m, preset ``sentinel2_l2a``) and ``<s1_patch>_s1_vv_vh.tif`` (Sentinel-1 GRD σ0 in dB, preset
    ``sentinel1_grd_db``), on the same 120 × 120 grid. Labels are read from ``<s2_patch>_labels_metadata.json``: the
    **43-class** CORINE names of BigEarthNet v1 (:data:`BEN43_CLASSES`); these files carry no 19-class labels.
    ``nomenclature=19`` converts them with the official mapping (:data:`BEN43_TO_19`) to the 19 classes of
    :data:`BEN19_CLASSES` that SMARTIES' BigEarthNet probes use (labels without a counterpart are dropped).

    Returns:
        One :class:`Pair` per row, id = the S2 patch name, sensors ``"s1"`` and ``"s2"``.

    Raises:
        FileNotFoundError: ``index.csv``, a raster or a label file is missing (all missing files are listed).
        ValueError: ``nomenclature`` is not 43 or 19, a label is not a BigEarthNet 43-class name, or the S1 and S2
            label files of a pair disagree.
    """
    if nomenclature not in (43, 19):
        raise ValueError(f"nomenclature must be 43 (as stored) or 19 (converted), got {nomenclature!r}")
    folder = Path(folder)
    index = folder / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found; bigearthnet_pairs needs the folder holding index.csv")
    with open(index, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    names = set(BEN43_CLASSES)
    pairs, missing = [], []
    for row in rows:
        s2, s1 = row["s2_patch"], row["s1_patch"]
        paths = {"s1": folder / f"{s1}_s1_vv_vh.tif", "s2": folder / f"{s2}_s2_12band.tif"}
        label_files = [folder / f"{s2}_labels_metadata.json", folder / f"{s1}_labels_metadata.json"]
        lost = [str(p) for p in [*paths.values(), label_files[0]] if not p.exists()]
        if lost:
            missing += lost
            continue
        labels = json.loads(label_files[0].read_text(encoding="utf-8"))["labels"]
        unknown = [lab for lab in labels if lab not in names]
        if unknown:
            raise ValueError(f"{label_files[0]}: {unknown} are not BigEarthNet 43-class names (BEN43_CLASSES)")
        if label_files[1].exists():
            s1_labels = json.loads(label_files[1].read_text(encoding="utf-8"))["labels"]
            if sorted(s1_labels) != sorted(labels):
                raise ValueError(f"S1 and S2 labels of pair {s2} disagree: {s1_labels} vs {labels}")
        if nomenclature == 19:
            labels = sorted({BEN43_TO_19[lab] for lab in labels if lab in BEN43_TO_19}, key=BEN19_CLASSES.index)
        pairs.append(Pair(s2, paths, {"s1": "sentinel1_grd_db", "s2": "sentinel2_l2a"}, tuple(labels)))
    if missing:
        raise FileNotFoundError(f"{folder}: " + _list_missing("file(s) named by index.csv not found", missing))
    return pairs


def pan_ms_pairs(
    ms: Union[PathLike, Sequence[PathLike]],
    pan: Union[PathLike, Sequence[PathLike]],
    ms_preset: Optional[str] = None,
    pan_preset: Optional[str] = None,
) -> list[Pair]:
    """Panchromatic / multispectral pairs of the same scenes (sensors ``"ms"`` and ``"pan"``).

    Args:
        ms: Multispectral raster(s).
        pan: Panchromatic raster(s), one per ``ms`` (same order).
        ms_preset, pan_preset: Engine sensor preset ids for files without band metadata (the pan band of a
            ``landsat8_oli_tirs`` file is ``B8``; generic pan is ``panchromatic``); ``None`` = guessed.

    Returns:
        One :class:`Pair` per scene, id = the multispectral file's stem. The footprints are checked when the sampler
        first reads a pair (same CRS, overlapping).

    Raises:
        ValueError: Different numbers of ``ms`` and ``pan`` files.
        FileNotFoundError: A file does not exist.
    """
    ms_list = [ms] if isinstance(ms, (str, os.PathLike)) else list(ms)
    pan_list = [pan] if isinstance(pan, (str, os.PathLike)) else list(pan)
    if len(ms_list) != len(pan_list):
        raise ValueError(f"{len(ms_list)} multispectral but {len(pan_list)} panchromatic files; give one pan per ms")
    lost = [str(p) for p in [*ms_list, *pan_list] if not Path(p).exists()]
    if lost:
        raise FileNotFoundError(_list_missing("raster(s) not found", lost))
    presets = {k: v for k, v in (("ms", ms_preset), ("pan", pan_preset)) if v is not None}
    return [Pair(Path(m).stem, {"ms": Path(m), "pan": Path(p)}, dict(presets)) for m, p in zip(ms_list, pan_list)]


# ---------------------------------------------------------------------------------------------------- configured pairs
@dataclass(frozen=True)
class PairsConfig:
    """The ``data.pairs`` section of a recipe config: co-registered pairs (``smarties-mae`` with ``data.source: pairs``,
    ``smarties-align``), read by :func:`pairs_from_config`.

    Attributes:
        kind: ``bigearthnet`` (a folder with ``index.csv``, :func:`bigearthnet_pairs`), ``csv`` (one path column per
            sensor, :func:`pairs_from_csv`) or ``folder`` (``<root>/<Sensor>/<City>/<tile>``,
            :func:`pairs_from_folder`).
        path: The folder or CSV file (relative to the working directory).
        sensors: ``[view 1, view 2]`` sensor names (BigEarthNet: ``s2``, ``s1`` as the reference; empty = the
            pairs' own order).
        presets: Sensor → engine preset id for files whose metadata does not tell (``csv``/``folder`` kinds).
        scale: Area of the paired random-resized crop as a fraction of the common footprint (U(0.25, 1),
            docs/smarties.md §5).
    """

    kind: Literal["bigearthnet", "csv", "folder"] = "bigearthnet"
    path: Optional[str] = None
    sensors: tuple[str, ...] = ()
    presets: dict[str, str] = field(default_factory=dict)
    scale: tuple[float, float] = (0.25, 1.0)


def pairs_from_config(pc: PairsConfig) -> list[Pair]:
    """The :class:`Pair` s of a ``data.pairs`` config section.

    Raises:
        training.config.ConfigError: ``data.pairs.path`` is missing, or the pairs do not have the named sensors.
        FileNotFoundError: As the constructors (:func:`bigearthnet_pairs`, :func:`pairs_from_csv`,
            :func:`pairs_from_folder`).
    """
    if pc.path is None:
        raise ConfigError("data.source is 'pairs' but data.pairs.path is not set")
    presets = dict(pc.presets) or None
    if pc.kind == "bigearthnet":
        found = bigearthnet_pairs(pc.path)
    elif pc.kind == "csv":
        found = pairs_from_csv(pc.path, sensors=list(pc.sensors) or None, presets=presets)
    else:
        found = pairs_from_folder(pc.path, sensors=list(pc.sensors) or None, presets=presets)
    if not found:
        raise ConfigError(f"data.pairs: no pair found in {pc.path}")
    sensors = list(found[0].sensors)
    if pc.sensors and not set(pc.sensors) <= set(sensors):
        raise ConfigError(f"data.pairs.sensors {list(pc.sensors)}: the pairs have {sensors}")
    return found


def folder_sources(folder: PathLike, sensor: Optional[str] = None, pattern: str = "*.tif",
                   **kw: object) -> list[RasterSource]:
    """Single-sensor sources for :class:`training.data.rasters.PretrainSampler` from every GeoTIFF of a folder.

    Each file becomes :func:`training.data.rasters.raster_source` (bands resolved by the engine, statistics of the
    preset or estimated per file when the sampler opens it). Files without a trainable band (a panchromatic-only file:
    its projection is interpolated, see :mod:`training.data.rasters`) are skipped with a warning. The sampler keeps
    every file open: meant for tens of files, not thousands.

    Args:
        folder: Folder searched recursively with ``pattern``.
        sensor: Engine sensor preset id for files without band metadata; ``None`` = guessed per file.
        pattern: Glob pattern (``"*.tif"``).
        **kw: Other :class:`~training.data.rasters.RasterSource` fields (``weight``, ``license``, ``scale``…).

    Returns:
        Sources named by the file's path relative to ``folder``, sorted.

    Raises:
        FileNotFoundError: ``folder`` is not a folder, or no file matches / has a trainable band.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    out, skipped = [], []
    for path in sorted(folder.rglob(pattern)):
        keys = resolve_bands(path, sensor=sensor).keys
        if not any(k is not None and k not in NOT_TRAINED for k in keys):
            skipped.append(f"{path} (range keys {keys})")
            continue
        out.append(raster_source(str(path.relative_to(folder)), path, sensor=sensor, **kw))
    if skipped:
        logger.warning("%s", _list_missing("file(s) without a trainable band skipped", skipped))
    if not out:
        raise FileNotFoundError(f"no {pattern} file with a trainable band under {folder}")
    return out


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class _FileInfo:
    """What the sampler needs of one raster: bands, statistics and its pixel ↔ frame transform."""

    mapping: BandMapping
    stats: list[BandStats]
    crs: object
    transform: Affine  # pixel (col, row) → frame (x, y)
    width: int
    height: int

    @property
    def bounds(self) -> Bounds:
        x0, y0 = self.transform * (0, 0)
        x1, y1 = self.transform * (self.width, self.height)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


@contextmanager
def _open(path: Path) -> Iterator[Any]:
    """:func:`engine.raster.open_raster`, quiet about rasters without georeferencing (they are expected here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        ds = open_raster(path)
    try:
        yield ds
    finally:
        ds.close()


def _band_spec(band: Any) -> BandSpec:
    return band.key if band.key is not None else band.projection


@dataclass
class PairedCrop:
    """One paired crop: every sensor's image of the same ground window.

    Attributes:
        id: The pair's id.
        bounds: The window in the pair's frame, ``(left, bottom, right, top)`` (CRS units, or image fractions for
            rasters without a CRS), before flips.
        images: Sensor → ``[C, S, S]`` float32 normalised image (invalid pixels 0).
        valid: Sensor → ``[S, S]`` bool, True where the pixel holds data.
        bands: Sensor → C band specs for ``encode`` (range key, or :class:`~engine.spectral.Projection` for an
            interpolated band such as panchromatic).
        labels: The pair's labels.
        flips: ``(vertical flip, horizontal flip, k)`` applied to every image (then ``rot90`` k times).
    """

    id: str
    bounds: Bounds
    images: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    bands: dict[str, list[BandSpec]]
    labels: tuple[str, ...]
    flips: tuple[bool, bool, int]


@dataclass
class PairedBatch:
    """A batch of :class:`PairedCrop` s.

    Attributes:
        images: Sensor → ``[B, C, S, S]`` float32.
        valid: Sensor → ``[B, S, S]`` bool.
        bands: Sensor → C band specs shared by the batch.
        ids: Pair id of every sample.
        labels: Labels of every sample.
    """

    images: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    bands: dict[str, list[BandSpec]]
    ids: list[str]
    labels: list[tuple[str, ...]]


class PairedCropSampler:
    """Ground-aligned paired random-resized crops over :class:`Pair` s (see the module docstring).

    Args:
        pairs: The pairs; every pair must list the same sensors.
        size_px: Output side S in model-input pixels (224, docs/smarties.md §5), or sensor → S.
        scale: Range of the window's area as a fraction of the common footprint (U(0.25, 1), docs/smarties.md §5).
        flips: Apply a random v-flip (p 0.5), h-flip (p 0.5) and rot90·k (k uniform in 0..3), the same for every
            sensor (docs/smarties.md §5).
        min_valid: Minimum fraction of valid pixels in every sensor's crop; windows are redrawn up to 20 times, then
            the best one is kept.
        select: Sensor → range keys to keep, in that order (e.g. ``{"s2": ["red_2", "green_2", "blue_1"]}``);
            other sensors keep every band the resolver embeds.
        families: Sensor → range families to keep, one band each, in that order, chosen by
            :func:`engine.spectral.select_band_families` (``{"Sentinel": ("red", "green", "blue")}`` for a 3-channel
            RGB model such as X-STARS'); a sensor is in ``select`` or ``families``, not both.
        seed: Seed of the sampler's own RNG (independent of torch's): same seed, same crops.
        model: An encoder whose input conventions the crops follow, as :func:`engine.maps.embed_raster` does:
            bands resolved with its ``averaging``; a model with fixed input channels (``band_families``, the
            X-STARS RGB ViT) gets one band of each family for every sensor not in ``select``/``families``; its
            ``input_norm`` replaces the mean/std after the p1/p99 stretch (:func:`engine.models.model_statistics`).
            ``None`` (training crops): every band the resolver embeds, normalised with the bands' own statistics.

    Raises:
        ValueError: No pair, pairs with different sensors, a bad ``scale``/``size_px``, a sensor in ``size_px`` or
            ``select``/``families`` that the pairs do not have, or a sensor in both.

    Reading a pair can raise :class:`engine.errors.InputRasterError` (unreadable raster, different CRSs, rotated
    grids, footprints that do not overlap, a selected key the raster does not have) and
    :class:`engine.errors.BandResolutionError` (bands the resolver cannot map: give the pair a preset; a family
    without a band).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        size_px: Union[int, Mapping[str, int]] = 224,
        scale: tuple[float, float] = CROP_SCALE,
        flips: bool = True,
        min_valid: float = 0.9,
        select: Optional[Mapping[str, Sequence[str]]] = None,
        families: Optional[Mapping[str, Sequence[str]]] = None,
        seed: int = 0,
        model: Any = None,
    ) -> None:
        if not pairs:
            raise ValueError("no pair to sample")
        self.pairs = list(pairs)
        self.sensors = self.pairs[0].sensors
        odd = [p.id for p in self.pairs if set(p.sensors) != set(self.sensors)]
        if odd:
            raise ValueError(f"pairs {odd[:5]} do not have the sensors {list(self.sensors)} of pair "
                             f"{self.pairs[0].id!r}; sample pairs of one sensor set together")
        sizes = dict(size_px) if isinstance(size_px, Mapping) else {s: size_px for s in self.sensors}
        for name, what in (("size_px", sizes), ("select", select or {}), ("families", families or {})):
            extra = set(what) - set(self.sensors)
            if extra:
                raise ValueError(f"{name} names sensors {sorted(extra)}; the pairs have {list(self.sensors)}")
        if set(sizes) != set(self.sensors) or any(int(v) < 1 for v in sizes.values()):
            raise ValueError(f"size_px must be a positive int or give one for every sensor {list(self.sensors)}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1 (area fractions), got {scale}")
        self.size_px = {s: int(v) for s, v in sizes.items()}
        self.scale = (float(scale[0]), float(scale[1]))
        self.flips = flips
        self.min_valid = min_valid
        self.select = {s: list(k) for s, k in (select or {}).items()}
        self.families = {s: tuple(f) for s, f in (families or {}).items()}
        both = set(self.select) & set(self.families)
        if both:
            raise ValueError(f"sensors {sorted(both)} are in both select and families; use one of them")
        self.model = model
        model_families = model.band_families if model is not None else None
        if model_families:
            for s in self.sensors:
                if s not in self.select and s not in self.families:
                    self.families[s] = tuple(model_families)
        self.rng = random.Random(seed)
        self._files: dict[Path, _FileInfo] = {}
        self._footprints: dict[int, Bounds] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    # -------------------------------------------------------------- per-file information
    def file_info(self, path: Path, preset: Optional[str], overrides: Any = None) -> _FileInfo:
        """Resolved bands, statistics and frame transform of one raster (computed once, then cached).

        ``preset`` and ``overrides`` go to :func:`engine.spectral.resolve_bands` (with the model's ``averaging``).
        """
        path = Path(path)
        if path not in self._files:
            with _open(path) as ds:
                mapping = resolve_bands(ds, sensor=preset, overrides=overrides or None,
                                        averaging=getattr(self.model, "averaging", "linear"))
                stats = band_statistics(ds, mapping)
                if ds.crs is None:
                    # No georeferencing: the image is its own footprint, scaled to the unit square (y up).
                    transform = Affine(1.0 / ds.width, 0.0, 0.0, 0.0, -1.0 / ds.height, 1.0)
                else:
                    transform = ds.transform
                    if transform.b != 0 or transform.d != 0:
                        raise InputRasterError(f"{path} has a rotated/sheared geotransform; warp it north-up "
                                               "first (gdalwarp)")
                self._files[path] = _FileInfo(mapping, stats, ds.crs, transform, ds.width, ds.height)
        return self._files[path]

    def footprint(self, index: int) -> Bounds:
        """Common footprint of pair ``index`` in its frame, ``(left, bottom, right, top)``.

        Raises:
            engine.errors.InputRasterError: Some rasters of the pair have a CRS and others none, their CRSs differ,
                or their footprints do not overlap.
        """
        if index not in self._footprints:
            pair = self.pairs[index]
            infos = {s: self.file_info(p, pair.presets.get(s), pair.overrides.get(s)) for s, p in pair.paths.items()}
            crss = {s: i.crs for s, i in infos.items()}
            first = next(iter(crss.values()))
            if any((c is None) != (first is None) or (c is not None and c != first) for c in crss.values()):
                listing = ", ".join(f"{s}: {c}" for s, c in crss.items())
                raise InputRasterError(f"pair {pair.id!r}: the rasters are not in one CRS ({listing}); reproject "
                                       "them to one CRS (gdalwarp -t_srs) or strip the georeferencing of all")
            b = [i.bounds for i in infos.values()]
            fp = (max(x[0] for x in b), max(x[1] for x in b), min(x[2] for x in b), min(x[3] for x in b))
            if not (fp[2] > fp[0] and fp[3] > fp[1]):
                listing = ", ".join(f"{s}: {i.bounds}" for s, i in infos.items())
                raise InputRasterError(f"pair {pair.id!r}: the footprints do not overlap ({listing}); these rasters "
                                       "are not a co-registered pair")
            self._footprints[index] = fp
        return self._footprints[index]

    def band_specs(self, index: int, sensor: str) -> list[BandSpec]:
        """Band specs of ``sensor`` in pair ``index`` as the crops return them (after ``select``/``families``)."""
        pair = self.pairs[index]
        info = self.file_info(pair.paths[sensor], pair.presets.get(sensor), pair.overrides.get(sensor))
        return [_band_spec(info.mapping.bands[c]) for c in self._channels(pair, sensor, info)]

    def _channels(self, pair: Pair, sensor: str, info: _FileInfo) -> list[int]:
        if sensor in self.families:
            chosen = select_band_families(info.mapping, self.families[sensor]).bands
            return [info.mapping.bands.index(b) for b in chosen]
        if sensor not in self.select:
            return list(range(len(info.mapping.bands)))
        keys = info.mapping.keys
        lost = [k for k in self.select[sensor] if k not in keys]
        if lost:
            raise InputRasterError(f"{pair.paths[sensor]} ({sensor}) has no band {lost}; its range keys are {keys}")
        return [keys.index(k) for k in self.select[sensor]]

    # -------------------------------------------------------------- reading
    @staticmethod
    def _read_boundless(ds: Any, indexes: list[int], win: Window,
                        shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """:func:`engine.raster.read_valid` of a fractional window; parts outside the raster are invalid zeros."""
        c0, r0 = max(win.col_off, 0.0), max(win.row_off, 0.0)
        c1, r1 = min(win.col_off + win.width, ds.width), min(win.row_off + win.height, ds.height)
        eps = 1e-6 * max(1.0, win.width, win.height)
        if c0 - win.col_off <= eps and r0 - win.row_off <= eps and win.col_off + win.width - c1 <= eps \
                and win.row_off + win.height - r1 <= eps:
            inside = Window(c0, r0, c1 - c0, r1 - r0)
            return read_valid(ds, indexes, inside, shape, resampling=Resampling.cubic)
        values = np.zeros((len(indexes), *shape), np.float64)
        valid = np.zeros(shape, bool)
        h, w = shape
        oc0, oc1 = round((c0 - win.col_off) / win.width * w), round((c1 - win.col_off) / win.width * w)
        or0, or1 = round((r0 - win.row_off) / win.height * h), round((r1 - win.row_off) / win.height * h)
        if oc1 > oc0 and or1 > or0:
            part, ok = read_valid(ds, indexes, Window(c0, r0, c1 - c0, r1 - r0), (or1 - or0, oc1 - oc0),
                                  resampling=Resampling.cubic)
            values[:, or0:or1, oc0:oc1] = part
            valid[or0:or1, oc0:oc1] = ok
        return values, valid

    def read(self, index: int, sensor: str, bounds: Bounds,
             size_px: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, list[BandSpec]]:
        """Read one sensor of pair ``index`` over a window of its frame, normalised and resized (no flips).

        The window is read at the sensor's native resolution (``round(side / GSD)`` pixels, fractional offsets
        resampled cubically by GDAL), normalised with the statistics of the resolved bands
        (:func:`engine.spectral.normalize`; invalid pixels 0), then resized to ``size_px`` with bicubic
        anti-aliased interpolation; the validity mask is resized by area (valid where ≥ 50 % of the area is). With a
        ``model``, its ``input_norm`` mean/std replace the bands' (:func:`engine.models.model_statistics`).

        Args:
            index: Pair index.
            sensor: Sensor name.
            bounds: ``(left, bottom, right, top)`` in the pair's frame (see :meth:`footprint`); may extend beyond
                the raster (read as invalid).
            size_px: Output side; default the sampler's for this sensor.

        Returns:
            ``(image [C, S, S] float32, valid [S, S] bool, band specs)``.
        """
        pair = self.pairs[index]
        path = pair.paths[sensor]
        info = self.file_info(path, pair.presets.get(sensor), pair.overrides.get(sensor))
        chans = self._channels(pair, sensor, info)
        stats = [info.stats[c] for c in chans]
        if self.model is not None:
            stats = model_statistics(self.model, stats)
        size = self.size_px[sensor] if size_px is None else int(size_px)
        win = from_bounds(*bounds, transform=info.transform)
        native = (max(1, round(win.height)), max(1, round(win.width)))
        with _open(path) as ds:
            values, valid = self._read_boundless(ds, [info.mapping.indexes[c] for c in chans], win, native)
        x = PretrainSampler._normalise(values, valid, stats)
        x_t = F.interpolate(torch.from_numpy(x)[None], size=(size, size), mode="bicubic", antialias=True,
                            align_corners=False)[0]
        if valid.all():
            ok = torch.ones((size, size), dtype=torch.bool)
        else:
            ok = F.interpolate(torch.from_numpy(valid.astype(np.float32))[None, None], size=(size, size),
                               mode="area")[0, 0] >= 0.5
            x_t.masked_fill_(~ok, 0.0)
        return x_t.contiguous(), ok, [_band_spec(info.mapping.bands[c]) for c in chans]

    # -------------------------------------------------------------- sampling
    def random_window(self, index: int) -> Bounds:
        """A random square window of pair ``index``: area U(scale) of the footprint, torchvision-style retries.

        Up to 10 draws of an area fraction a ~ U(scale) give a square of side √(a·W·H); the first that fits in the
        footprint (W × H) is placed uniformly; after 10 misses the largest centred square is used (docs/smarties.md §5).
        """
        left, bottom, right, top = self.footprint(index)
        width, height = right - left, top - bottom
        for _ in range(_CROP_TRIES):
            side = math.sqrt(self.rng.uniform(*self.scale) * width * height)
            if side <= width and side <= height:
                x0 = left + self.rng.uniform(0.0, width - side)
                y0 = bottom + self.rng.uniform(0.0, height - side)
                return x0, y0, x0 + side, y0 + side
        side = min(width, height)
        x0, y0 = left + (width - side) / 2, bottom + (height - side) / 2
        return x0, y0, x0 + side, y0 + side

    def crop(self, index: int, bounds: Bounds, flips: tuple[bool, bool, int] = (False, False, 0)) -> PairedCrop:
        """Every sensor of pair ``index`` over one window, with the given flips (deterministic)."""
        images, valid, bands = {}, {}, {}
        for sensor in self.sensors:
            x, ok, specs = self.read(index, sensor, bounds)
            images[sensor] = torch.from_numpy(PretrainSampler._augment(x.numpy(), flips))
            valid[sensor] = torch.from_numpy(PretrainSampler._augment(ok.numpy()[None], flips)[0])
            bands[sensor] = specs
        pair = self.pairs[index]
        return PairedCrop(pair.id, bounds, images, valid, bands, pair.labels, flips)

    def sample(self, index: Optional[int] = None) -> PairedCrop:
        """One random paired crop of pair ``index`` (a uniformly drawn pair when ``None``)."""
        if index is None:
            index = self.rng.randrange(len(self.pairs))
        flips = (self.rng.random() < 0.5, self.rng.random() < 0.5, self.rng.randrange(4)) if self.flips \
            else (False, False, 0)
        best = None
        for _ in range(_VALID_TRIES):
            crop = self.crop(index, self.random_window(index), flips)
            frac = min(int(v.count_nonzero()) / v.numel() for v in crop.valid.values())
            if best is None or frac > best[0]:
                best = (frac, crop)
            if frac >= self.min_valid:
                break
        return best[1]

    def batch(self, batch_size: int) -> PairedBatch:
        """``batch_size`` random paired crops, stacked per sensor.

        Raises:
            ValueError: The crops of one sensor have different band lists (pass ``select`` to keep common bands).
        """
        crops = [self.sample() for _ in range(batch_size)]
        return collate_crops(crops)


def collate_crops(crops: Sequence[PairedCrop]) -> PairedBatch:
    """Stack :class:`PairedCrop` s into a :class:`PairedBatch` (see :meth:`PairedCropSampler.batch`)."""
    first = crops[0]
    for crop in crops[1:]:
        for s, specs in crop.bands.items():
            if specs != first.bands[s]:
                raise ValueError(f"sensor {s}: pairs {first.id!r} and {crop.id!r} have different bands "
                                 f"({first.bands[s]} vs {specs}); pass select= or families= to keep common bands")
    return PairedBatch(
        images={s: torch.stack([c.images[s] for c in crops]) for s in first.images},
        valid={s: torch.stack([c.valid[s] for c in crops]) for s in first.valid},
        bands=dict(first.bands),
        ids=[c.id for c in crops],
        labels=[c.labels for c in crops],
    )


class PairImages:
    """One sensor of every pair as a whole-footprint image with its label, for frozen-encoder evaluation.

    Item ``i`` is ``(image [C, S, S] float32, band specs, label)``: pair ``i``'s common footprint (the largest centred
    square of it when it is not square) read by :meth:`PairedCropSampler.read` — no random crop, no flips — and the
    label as a multi-hot float32 vector ``[len(classes)]`` (``multilabel=True``), the class index (int, single-label),
    or ``None`` without ``classes``. This is the input :func:`training.evaluation.protocols.extract_features` takes.

    Args:
        pairs: The pairs.
        sensor: Which sensor's image to return.
        size_px: Output side S (224, docs/smarties.md §6).
        classes: Class names, in label-vector order (e.g. :data:`BEN43_CLASSES`); ``None`` = no labels.
        multilabel: Multi-hot vectors (``True``) or one class index per pair (``False``).
        select: Range keys to keep for ``sensor`` (see :class:`PairedCropSampler`).
        families: Range families to keep for ``sensor`` (see :class:`PairedCropSampler`).
        model: The encoder the images are for: its band families and input normalisation are applied (see
            :class:`PairedCropSampler`; needed for the X-STARS RGB ViT, harmless for SMARTIES).

    Raises:
        ValueError: Unknown sensor; a pair label not in ``classes``; ``multilabel=False`` and a pair without
            exactly one label.
    """

    def __init__(self, pairs: Sequence[Pair], sensor: str, size_px: int = 224, classes: Optional[Sequence[str]] = None,
                 multilabel: bool = True, select: Optional[Sequence[str]] = None,
                 families: Optional[Sequence[str]] = None, model: Any = None) -> None:
        if pairs and sensor not in pairs[0].sensors:
            raise ValueError(f"sensor {sensor!r} not in the pairs' sensors {list(pairs[0].sensors)}")
        self.sampler = PairedCropSampler(pairs, size_px=size_px, flips=False,
                                         select=None if select is None else {sensor: select},
                                         families=None if families is None else {sensor: families}, model=model)
        self.sensor = sensor
        self.classes = None if classes is None else list(classes)
        self.multilabel = multilabel
        if self.classes is not None:
            known = set(self.classes)
            for p in pairs:
                unknown = [lab for lab in p.labels if lab not in known]
                if unknown:
                    raise ValueError(f"pair {p.id!r}: labels {unknown} are not in classes")
                if not multilabel and len(p.labels) != 1:
                    raise ValueError(f"pair {p.id!r} has {len(p.labels)} labels; multilabel=False needs exactly one")

    def __len__(self) -> int:
        return len(self.sampler)

    def label(self, index: int) -> Union[np.ndarray, int, None]:
        """The label of pair ``index`` (see the class docstring)."""
        labels = self.sampler.pairs[index].labels
        if self.classes is None:
            return None
        if not self.multilabel:
            return self.classes.index(labels[0])
        vec = np.zeros(len(self.classes), np.float32)
        vec[[self.classes.index(lab) for lab in labels]] = 1.0
        return vec

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[BandSpec], Union[np.ndarray, int, None]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"pair index {index} out of range for {len(self)} pairs")
        index %= len(self)
        left, bottom, right, top = self.sampler.footprint(index)
        side = min(right - left, top - bottom)
        x0, y0 = left + (right - left - side) / 2, bottom + (top - bottom - side) / 2
        x, _, specs = self.sampler.read(index, self.sensor, (x0, y0, x0 + side, y0 + side))
        return x, specs, self.label(index)

    def __iter__(self) -> Iterable:
        return (self[i] for i in range(len(self)))
