"""The SMARTIES spectral registry (docs/smarties.md §1.2 and §2)."""

from __future__ import annotations

import pytest

from engine.errors import BandResolutionError
from engine.spectral import (
    NUM_BASE_PROJECTIONS,
    Projection,
    get_range,
    interpolated_projection,
    match_wavelength,
    projection_for,
    spectral_ranges,
)

# Spec §2, in yaml order: key → (min nm, max nm, projection index).
SPEC_TABLE = {
    "aerosol": (422, 463, 0),
    "blue_1": (427, 558, 1),
    "blue_2": (452, 512, 18),
    "blue_3": (430, 545, 2),
    "green_1": (466, 620, 3),
    "green_2": (524, 595, 4),
    "red_1": (590, 710, 5),
    "red_2": (634, 696, 6),
    "red_edge_1": (689, 719, 7),
    "red_edge_2": (726, 755, 8),
    "near_infrared_1": (728, 938, 9),
    "near_infrared_2": (761, 802, 10),
    "near_infrared_3": (843, 886, 11),
    "short_wave_infrared_1": (923, 964, 12),
    "short_wave_infrared_2": (1345, 1406, -1),
    "short_wave_infrared_3": (1516, 1704, 13),
    "short_wave_infrared_4": (2002, 2376, 14),
    "thermal_infrared_1": (10600, 11190, 17),
    "microwave_1": (5.5e7, 5.6e7, 15),
    "microwave_2": (5.5e7, 5.6e7, 16),
}


def _weights_by_formula(key: str) -> list[float]:
    """Spec §1.2: w_k = |λc(self) − λc(k)| / Σ_k |λc(self) − λc(k)|, with λc = (min + max) / 2."""
    by_index = {r.projection_idx: r for r in spectral_ranges()}
    rng = get_range(key)
    distances = [abs(rng.center_nm - by_index[k].center_nm) for k in rng.agg_projections]
    return [d / sum(distances) for d in distances]


def test_registry_is_the_spec_table_in_order() -> None:
    ranges = spectral_ranges()
    assert len(ranges) == 20
    assert [r.key for r in ranges] == list(SPEC_TABLE)
    for r in ranges:
        assert (r.min_nm, r.max_nm, r.projection_idx) == SPEC_TABLE[r.key], r.key


def test_projection_indices() -> None:
    ranges = spectral_ranges()
    base = sorted(r.projection_idx for r in ranges if not r.is_averaged and not r.is_disabled)
    assert base == list(range(NUM_BASE_PROJECTIONS)) == list(range(17))
    averaged = {r.key: (r.projection_idx, r.agg_projections) for r in ranges if r.is_averaged}
    assert averaged == {"thermal_infrared_1": (17, (14, 15)), "blue_2": (18, (0, 1))}
    assert [r.key for r in ranges if r.is_disabled] == ["short_wave_infrared_2"]
    assert get_range("microwave_2").center_nm == pytest.approx(5.55e7)


@pytest.mark.parametrize("key", ["blue_2", "thermal_infrared_1"])
def test_reference_weights_follow_the_formula(key: str) -> None:
    rng = get_range(key)
    expected = _weights_by_formula(key)
    assert rng.reference_weights == pytest.approx(expected, abs=1e-12)
    terms = projection_for(key, "reference").terms
    assert [i for i, _ in terms] == list(rng.agg_projections)
    assert [w for _, w in terms] == pytest.approx(expected, abs=1e-12)


def test_reference_weight_values_from_the_spec() -> None:
    (i0, w0), (i1, w1) = projection_for("blue_2", "reference").terms
    assert (i0, i1) == (0, 1)
    assert (w0, w1) == pytest.approx((0.79, 0.21), abs=1e-12)
    (i14, w14), (i15, w15) = projection_for("thermal_infrared_1", "reference").terms
    assert (i14, i15) == (14, 15)
    assert w14 == pytest.approx(1.5687105208527955e-4, abs=1e-12)
    assert w15 == pytest.approx(0.9998431289479147, abs=1e-12)


@pytest.mark.parametrize("key", ["blue_2", "thermal_infrared_1"])
def test_linear_mode_swaps_the_reference_weights(key: str) -> None:
    reference = [w for _, w in projection_for(key, "reference").terms]
    linear = projection_for(key, "linear").terms
    assert [i for i, _ in linear] == list(get_range(key).agg_projections)
    assert [w for _, w in linear] == pytest.approx(reference[::-1], abs=1e-12)
    assert sum(w for _, w in linear) == pytest.approx(1.0, abs=1e-12)
    # The default is the paper's intent: the nearer range (B02 for blue_2) weighs more.
    assert projection_for(key) == projection_for(key, "linear")
    if key == "blue_2":
        assert dict(linear)[1] == pytest.approx(0.79, abs=1e-12)


def test_base_ranges_are_single_terms() -> None:
    assert projection_for("red_2") == Projection(((6, 1.0),), "red_2")
    assert projection_for(15).terms == ((15, 1.0),)
    assert projection_for(18, "reference").terms == projection_for("blue_2", "reference").terms


def test_disabled_and_invalid_indices_are_rejected() -> None:
    with pytest.raises(BandResolutionError, match="drop the band"):
        projection_for(-1)
    with pytest.raises(BandResolutionError, match="disabled"):
        projection_for("short_wave_infrared_2")
    with pytest.raises(BandResolutionError, match="0..18"):
        projection_for(19)
    with pytest.raises(BandResolutionError, match="base index"):
        Projection(((17, 1.0),), "not a base projection")
    with pytest.raises(ValueError, match="averaging"):
        projection_for("blue_2", "nearest")  # type: ignore[arg-type]


def test_unknown_key_suggests_close_matches() -> None:
    with pytest.raises(BandResolutionError, match="Did you mean red_2"):
        get_range("red2")


@pytest.mark.parametrize("call", [match_wavelength, interpolated_projection])
def test_micrometre_looking_wavelengths_are_rejected(call) -> None:
    with pytest.raises(BandResolutionError, match="micrometres.*665 nm"):
        call(0.665)
    with pytest.raises(BandResolutionError, match="positive"):
        call(-5.0)


@pytest.mark.parametrize(
    ("wavelength_nm", "below", "above"),
    [
        (724.0, "red_edge_1", "red_edge_2"),  # WorldView-2 red edge: between B05 (704) and B06 (740.5)
        (590.0, "green_2", "red_1"),  # Landsat 8 pan centre: between 559.5 and 650
        (12005.0, "short_wave_infrared_4", "microwave_1"),  # Landsat TIRS-2: past every optical centre
    ],
)
def test_interpolation_brackets_and_weights(wavelength_nm: float, below: str, above: str) -> None:
    projection = interpolated_projection(wavelength_nm)
    (i_below, w_below), (i_above, w_above) = projection.terms
    lo, hi = get_range(below), get_range(above)
    assert (i_below, i_above) == (lo.projection_idx, hi.projection_idx)
    assert lo.center_nm <= wavelength_nm <= hi.center_nm
    assert w_below + w_above == pytest.approx(1.0, abs=1e-12)
    assert w_above == pytest.approx((wavelength_nm - lo.center_nm) / (hi.center_nm - lo.center_nm), abs=1e-12)
    assert projection.label.startswith(f"interp {wavelength_nm:g}nm")


def test_interpolation_below_the_first_centre_uses_the_nearest_range() -> None:
    assert interpolated_projection(410.0).terms == ((0, 1.0),)


def test_interpolation_rejects_microwave() -> None:
    with pytest.raises(BandResolutionError, match="microwave_1 for VV"):
        interpolated_projection(5.55e7)


@pytest.mark.parametrize(
    ("wavelength_nm", "key"),
    [
        (442.7, "aerosol"),  # S2 B01
        (492.4, "blue_1"),  # S2 B02: blue_1's centre is nearer than blue_3's
        (482.0, "blue_3"),  # Landsat B2: base ranges win over the averaged blue_2
        (664.6, "red_2"),
        (655.0, "red_1"),  # Landsat B4 by wavelength alone (its description maps it to red_2)
        (782.8, "near_infrared_2"),  # S2 B07 (the table's names are swapped: B07 is near_infrared_2)
        (832.8, "near_infrared_1"),  # S2 B08
        (864.7, "near_infrared_3"),  # S2 B8A
        (10895.0, "thermal_infrared_1"),  # averaged range when no base range contains it
        (1373.5, "short_wave_infrared_2"),  # disabled range: the caller drops the band
        (724.0, None),
        (12005.0, None),
        (5.55e7, None),  # microwave: the polarisation must be named
    ],
)
def test_match_wavelength_examples(wavelength_nm: float, key: str | None) -> None:
    rng, reason = match_wavelength(wavelength_nm)
    assert (None if rng is None else rng.key) == key
    assert ("microwave" if wavelength_nm > 1e6 else f"{wavelength_nm:g} nm") in reason
