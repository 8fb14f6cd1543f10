"""The SMARTIES spectral registry: 20 wavelength ranges and the projections that embed a band.

SMARTIES embeds every band of a 16×16 patch with a linear projection chosen by the band's wavelength range
(docs/smarties.md §1.1–§1.2, table §2, shipped here as ``data/spectrum.json``). Of the 20 ranges, 17 own a
projection ``Linear(p², D)`` ("base" projections, indices 0..16), 2 are parameter-free weighted averages of base
projections (17 ``thermal_infrared_1``, 18 ``blue_2``), and 1 is disabled (index −1, Sentinel-2 B10 cirrus).

Every way of embedding a band is expressed here as a :class:`Projection`: a short list of
``(base index, weight)`` pairs. A base range is one pair with weight 1; an averaged range has two pairs. Because the
projections are linear, ``Σ_k w_k (W_k x + b_k) = (Σ_k w_k W_k) x + Σ_k w_k b_k``, so the encoder folds the weights
into one effective weight per band.

Averaging weights (docs/smarties.md §1.2, bug §8.2):

- ``"linear"`` (default, the paper's intent): linear interpolation by central wavelength, the *nearer* range weighs
  more (``blue_2`` = 0.21·aerosol + 0.79·B02).
- ``"reference"`` (compat): the exact weights of the reference code, where the *farther* range weighs more
  (``blue_2`` = 0.79·aerosol + 0.21·B02); needed to reproduce the reference's outputs bit for bit.

Bands whose central wavelength falls in no range get an *interpolated* projection (ours, not the paper's): linear
interpolation between the two base projections whose central wavelengths bracket the band's, by wavelength. It adds no
parameters, so it works with every SMARTIES checkpoint.
"""

from __future__ import annotations

import bisect
import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, Sequence, Union

import numpy as np

from ..errors import BandResolutionError

__all__ = (
    "Averaging",
    "BandSpec",
    "MICROWAVE_MIN_NM",
    "NUM_BASE_PROJECTIONS",
    "PROJECTION_SCALER",
    "Projection",
    "SpectralRange",
    "band_mix",
    "get_range",
    "interpolated_projection",
    "match_wavelength",
    "projection_for",
    "spectral_ranges",
)

#: Number of projection Linears in every SMARTIES checkpoint (indices 0..16), docs/smarties.md §1.2.
NUM_BASE_PROJECTIONS = 17
#: Band fusion constant: token = 12 · mean over bands of the per-band embeddings (docs/smarties.md §1.1 step 3).
PROJECTION_SCALER = 12.0

Averaging = Literal["linear", "reference"]

#: Wavelengths at or above this are microwave (SAR); the SMARTIES table puts C-band at 5.5e7–5.6e7 nm. VV and VH
#: share one wavelength, so a wavelength alone cannot pick a SAR projection.
MICROWAVE_MIN_NM = 1.0e6


@dataclass(frozen=True)
class SpectralRange:
    """One entry of the SMARTIES spectrum table (docs/smarties.md §2).

    Attributes:
        key: Stable identifier used everywhere (``"red_2"``, ``"microwave_1"``).
        name: Human label from the reference table (``"B04 (red)"``).
        min_nm: Lower wavelength bound, nm.
        max_nm: Upper wavelength bound, nm.
        projection_idx: Index of the projection; 0..16 base Linears, 17/18 averages, −1 disabled.
        agg_projections: Base indices averaged by this range (empty for base ranges).
        reference_weights: The reference code's averaging weights, aligned with ``agg_projections``.
        sensors: Sensors the reference associates with this range (metadata only).
    """

    key: str
    name: str
    min_nm: float
    max_nm: float
    projection_idx: int
    agg_projections: tuple[int, ...] = ()
    reference_weights: tuple[float, ...] = ()
    sensors: tuple[str, ...] = ()

    @property
    def center_nm(self) -> float:
        """Central wavelength in nm: ``(min_nm + max_nm) / 2`` as in the reference."""
        return (self.min_nm + self.max_nm) / 2.0

    @property
    def is_disabled(self) -> bool:
        """True for the range with projection index −1 (S2 B10 cirrus): such bands are dropped."""
        return self.projection_idx < 0

    @property
    def is_averaged(self) -> bool:
        """True for parameter-free ranges that average base projections (indices 17 and 18)."""
        return bool(self.agg_projections)


@dataclass(frozen=True)
class Projection:
    """How one band is embedded: a weighted sum of base projections.

    Attributes:
        terms: ``((base_index, weight), ...)`` with base indices in ``0..16`` and weights summing to 1.
        label: Short human-readable description (``"red_2"``, ``"interp 590nm: green_2 0.66 + red_1 0.34"``).
    """

    terms: tuple[tuple[int, float], ...]
    label: str

    def __post_init__(self) -> None:
        for index, _ in self.terms:
            if not 0 <= index < NUM_BASE_PROJECTIONS:
                raise BandResolutionError(
                    f"projection term uses base index {index}; valid base indices are 0..{NUM_BASE_PROJECTIONS - 1}"
                )


#: What an encoder accepts for one band: a range key (``"red_2"``), a projection index 0..18, or a :class:`Projection`.
BandSpec = Union[str, int, Projection]


@lru_cache(maxsize=1)
def spectral_ranges() -> tuple[SpectralRange, ...]:
    """Return the 20 SMARTIES ranges in table order (docs/smarties.md §2), loaded from the package data."""
    text = resources.files(__package__).joinpath("data/spectrum.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    return tuple(
        SpectralRange(
            key=r["key"],
            name=r["name"],
            min_nm=float(r["min_nm"]),
            max_nm=float(r["max_nm"]),
            projection_idx=int(r["projection_idx"]),
            agg_projections=tuple(int(i) for i in r["agg_projections"]),
            reference_weights=tuple(float(w) for w in r.get("reference_weights", ())),
            sensors=tuple(r["sensors"]),
        )
        for r in raw["ranges"]
    )


@lru_cache(maxsize=1)
def _by_key() -> dict[str, SpectralRange]:
    return {r.key: r for r in spectral_ranges()}


@lru_cache(maxsize=1)
def _by_index() -> dict[int, SpectralRange]:
    return {r.projection_idx: r for r in spectral_ranges() if not r.is_disabled}


@lru_cache(maxsize=1)
def _base_ranges_by_center() -> tuple[SpectralRange, ...]:
    base = [r for r in spectral_ranges() if not r.is_disabled and not r.is_averaged]
    return tuple(sorted(base, key=lambda r: (r.center_nm, r.projection_idx)))


def get_range(key: str) -> SpectralRange:
    """Return the range with this key.

    Raises:
        BandResolutionError: The key is unknown; the message lists the closest valid keys.
    """
    try:
        return _by_key()[key]
    except KeyError:
        close = difflib.get_close_matches(key, list(_by_key()), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise BandResolutionError(
            f"unknown spectral range key {key!r}.{hint} Valid keys: {', '.join(_by_key())}."
        ) from None


def _averaging_terms(rng: SpectralRange, averaging: Averaging) -> tuple[tuple[int, float], ...]:
    if averaging == "reference":
        return tuple(zip(rng.agg_projections, rng.reference_weights))
    if averaging != "linear":
        raise ValueError(f"averaging must be 'linear' or 'reference', got {averaging!r}")
    # Linear interpolation by centre wavelength: the nearer range gets the larger weight (paper's intent).
    centers = [_by_index()[i].center_nm for i in rng.agg_projections]
    distances = [abs(rng.center_nm - c) for c in centers]
    total = sum(distances)
    if len(distances) == 2:
        weights = [distances[1] / total, distances[0] / total]
    else:  # inverse-distance weights for any other count (the table only has pairs)
        inverse = [1.0 / max(d, 1e-9) for d in distances]
        weights = [v / sum(inverse) for v in inverse]
    return tuple(zip(rng.agg_projections, weights))


def projection_for(band: BandSpec, averaging: Averaging = "linear") -> Projection:
    """Return the :class:`Projection` that embeds a band given as range key, projection index or Projection.

    Args:
        band: A range key (``"red_2"``), a projection index (0..18), or an existing :class:`Projection`.
        averaging: Weights of the averaged ranges 17/18: ``"linear"`` (paper intent, default) or
            ``"reference"`` (the reference code's inverted weights, docs/smarties.md §1.2 / §8.2).

    Raises:
        BandResolutionError: Unknown key, index outside 0..18, or the disabled range (−1, S2 B10 cirrus), which
            the reference would silently alias to index 18 (docs/smarties.md §8.3).
    """
    if isinstance(band, Projection):
        return band
    if isinstance(band, bool) or not isinstance(band, (str, int)):
        raise BandResolutionError(f"a band must be a range key, a projection index or a Projection, got {band!r}")
    if isinstance(band, int):
        if band == -1:
            raise BandResolutionError(
                "projection index -1 (short_wave_infrared_2, Sentinel-2 B10 cirrus) has no projection; drop the band"
            )
        if band not in _by_index():
            raise BandResolutionError(f"projection index {band} is out of range; valid indices are 0..18")
        rng = _by_index()[band]
    else:
        rng = get_range(band)
        if rng.is_disabled:
            raise BandResolutionError(
                f"range {rng.key!r} ({rng.name}) is disabled in SMARTIES (projection index -1); drop the band"
            )
    if rng.is_averaged:
        return Projection(_averaging_terms(rng, averaging), rng.key)
    return Projection(((rng.projection_idx, 1.0),), rng.key)


def interpolated_projection(wavelength_nm: float) -> Projection:
    """Projection for a band outside every range: linear interpolation between the two bracketing base ranges.

    The two base ranges whose central wavelengths are nearest below and above ``wavelength_nm`` are mixed with
    linear-interpolation weights (the nearer one weighs more); beyond the first/last centre the nearest range is used
    alone. This is the project's own rule (docs/smarties.md §2 allows averaged entries; the paper describes
    interpolation for unseen bands), not part of the reference code.

    Args:
        wavelength_nm: Central wavelength of the band, nm (optical 400–15000 or microwave ≥ 1e6).

    Raises:
        BandResolutionError: The value looks like µm (< 100), or is microwave (VV/VH share one wavelength, so a SAR
            polarisation must be named explicitly).
    """
    _check_wavelength(wavelength_nm)
    if wavelength_nm >= MICROWAVE_MIN_NM:
        raise BandResolutionError(
            f"{wavelength_nm:g} nm is a microwave wavelength: SAR polarisations share one wavelength, so name the "
            "band explicitly (microwave_1 for VV, microwave_2 for VH)"
        )
    base = _base_ranges_by_center()
    centers = [r.center_nm for r in base]
    pos = bisect.bisect_left(centers, wavelength_nm)
    if pos == 0:
        return Projection(((base[0].projection_idx, 1.0),), f"nearest {wavelength_nm:g}nm: {base[0].key}")
    below, above = base[pos - 1], base[min(pos, len(base) - 1)]
    span = above.center_nm - below.center_nm
    if span <= 0:
        return Projection(((below.projection_idx, 1.0),), f"nearest {wavelength_nm:g}nm: {below.key}")
    w_above = (wavelength_nm - below.center_nm) / span
    w_below = 1.0 - w_above
    label = f"interp {wavelength_nm:g}nm: {below.key} {w_below:.2f} + {above.key} {w_above:.2f}"
    return Projection(((below.projection_idx, w_below), (above.projection_idx, w_above)), label)


def match_wavelength(wavelength_nm: float) -> tuple[SpectralRange | None, str]:
    """Find the range a band of this central wavelength belongs to.

    Preference: a base range containing the wavelength (nearest centre), then an averaged range containing it, then
    the disabled range (the caller drops the band). ``None`` means no range contains it (interpolate instead).

    Args:
        wavelength_nm: Central wavelength, nm.

    Returns:
        ``(range or None, reason)`` where reason explains the choice in words.

    Raises:
        BandResolutionError: The value looks like µm (< 100 nm).
    """
    _check_wavelength(wavelength_nm)
    if wavelength_nm >= MICROWAVE_MIN_NM:
        return None, "microwave wavelength: polarisation must be named (VV/VH)"
    containing = [r for r in spectral_ranges() if r.min_nm <= wavelength_nm <= r.max_nm]
    for group, what in (
        ([r for r in containing if not r.is_averaged and not r.is_disabled], "base range"),
        ([r for r in containing if r.is_averaged], "averaged range"),
        ([r for r in containing if r.is_disabled], "disabled range"),
    ):
        if group:
            best = min(group, key=lambda r: (abs(r.center_nm - wavelength_nm), r.max_nm - r.min_nm))
            return best, f"{wavelength_nm:g} nm lies in {what} {best.key} ({best.min_nm:g}-{best.max_nm:g} nm)"
    return None, f"{wavelength_nm:g} nm lies in no SMARTIES range"


def _check_wavelength(wavelength_nm: float) -> None:
    if not wavelength_nm > 0:
        raise BandResolutionError(f"wavelength must be positive (nm), got {wavelength_nm!r}")
    if wavelength_nm < 100:
        raise BandResolutionError(
            f"wavelength {wavelength_nm:g} nm looks like micrometres; give wavelengths in nm "
            f"({wavelength_nm * 1000:g} nm?)"
        )


def band_mix(projections: Sequence[Projection]) -> Any:
    """The spectral fusion as a matrix: ``[C, 17]`` float32.

    Row c = band c's weights over the 17 base projections (one-hot for a range key, two or three terms for
    averaged/interpolated bands) times ``12 / C``, so that a token is ``Σ_c Σ_k mix[c, k] (W_k · patch_c + b_k)`` = 12 ×
    the mean of the per-band embeddings (docs/smarties.md §1.2).

    It is the projection's one input besides the pixels, in eager mode and in the exported ONNX graph
    (:mod:`engine.export`), where it lets one graph serve every band combination. Needs numpy only.
    """
    mix = np.zeros((len(projections), NUM_BASE_PROJECTIONS), np.float32)
    for c, projection in enumerate(projections):
        for index, w in projection.terms:
            mix[c, index] += w
    return mix * np.float32(PROJECTION_SCALER / max(1, len(projections)))
