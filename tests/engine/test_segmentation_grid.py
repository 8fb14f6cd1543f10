"""Segmentation maps on the input's pixel grid, and the pixel head (issue 15), on real labelled rasters.

- ``segment`` writes class maps and probabilities on exactly the input's grid (CRS, transform, width, height), or
  on a region's window of it, whatever the scale the head reads at (2 for Sentinel-1/-2), and the model-pixel grid
  only on request; the probabilities are averaged before the argmax.
- The pixel head (encoder context ⊕ the input bands) round-trips through its file and its ONNX export, and beats the
  linear head on a labelled flood chip from 10 + 10 squares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from engine import Region
from engine.raster import RowAreaResampler
from engine.segmentation import HeadFitSettings, PolygonLabels, fit_head, load_head, segment_raster
from engine.settings import InferenceSettings
from tests.conftest import shared_file, water_iou

S2 = "sen1floods11_india_900498_s2_l1c.tif"
S1 = "sen1floods11_india_900498_s1_db.tif"
LABEL = "sen1floods11_india_900498_water_label.tif"
NAIP = "naip_rgbn_5m_north_dakota_2020.tif"
QUICK = InferenceSettings(overlap_px=0, threads=2)


def squares(label: np.ndarray, seed: int, n: int = 10, side: int = 9) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """``n`` non-overlapping ``side``² squares per class (water 1, land 0) whose pixels are all of that class.

    Returns ``[(row0, col0, class)]`` and the mask of their pixels.
    """
    rng = np.random.default_rng(seed)
    taken = np.zeros(label.shape, bool)
    out = []
    for cls in (1, 0):
        found = 0
        while found < n:
            r, c = (int(v) for v in rng.integers(0, np.array(label.shape) - side))
            if (label[r : r + side, c : c + side] == cls).all() and not taken[r : r + side, c : c + side].any():
                taken[r : r + side, c : c + side] = True
                out.append((r, c, cls))
                found += 1
    return out, taken


def polygons(boxes: list[tuple[int, int, int]], dataset, side: int = 9) -> PolygonLabels:
    """The squares as polygons in the raster's CRS."""
    t = dataset.transform
    geoms = []
    for r, c, _ in boxes:
        (x0, y0), (x1, y1) = t * (c, r), t * (c + side, r + side)
        geoms.append({"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]})
    return PolygonLabels(geoms, [cls for *_, cls in boxes], dataset.crs.to_wkt(), names={0: "land", 1: "water"})


def _fit(tmp_path, image: str, model, head_type: str, steps: int, seed: int = 0, label: str = LABEL,
         sensor: str | None = None):
    with rasterio.open(label if Path(label).is_absolute() else shared_file("data", label)) as ds:
        boxes, taken = squares(ds.read(1), seed)
    with rasterio.open(shared_file("data", image)) as ds:
        labels = polygons(boxes, ds)
    path = tmp_path / f"{Path(image).stem}-{head_type}-{seed}.safetensors"
    fit_head(shared_file("data", image), labels, model, fit=HeadFitSettings(head_type=head_type, steps=steps, seed=seed,
                                                                    val_fraction=0), output=path, settings=QUICK,
             sensor=sensor)
    return path, taken


def _same_grid(path, reference, window=None) -> None:
    with rasterio.open(path) as out, rasterio.open(reference) as ref:
        want_transform = ref.transform if window is None else ref.window_transform(window)
        want_shape = ref.shape if window is None else (int(window.height), int(window.width))
        assert out.crs == ref.crs
        assert out.transform == want_transform
        assert out.shape == want_shape


def test_area_resampler_streams_the_exact_area_mean() -> None:
    rng = np.random.default_rng(0)
    for fine, coarse in [((10, 8), (5, 4)), ((9, 7), (6, 5))]:
        values = rng.random((3, *fine)).astype(np.float32)
        valid = (rng.random(fine) > 0.2).astype(np.float32)
        resampler = RowAreaResampler(3, fine, coarse)
        parts = [out for r in range(0, fine[0], 3) for out in resampler.push(values[:, r : r + 3], valid[r : r + 3])]
        got = np.concatenate([p for p, _ in parts], axis=1)
        frac = np.concatenate([v for _, v in parts], axis=0)
        # reference: dense area weights, as a double sum over the fine cells
        ry = np.zeros((coarse[0], fine[0]))
        cx = np.zeros((coarse[1], fine[1]))
        for m, (n_out, n_in) in ((ry, (coarse[0], fine[0])), (cx, (coarse[1], fine[1]))):
            s = n_in / n_out
            for i in range(n_out):
                for j in range(n_in):
                    m[i, j] = max(0.0, min((i + 1) * s, j + 1) - max(i * s, j)) / s
        want_frac = ry @ valid @ cx.T
        want = np.einsum("ir,krc,jc->kij", ry, values * valid, cx) / want_frac
        assert got.shape == (3, *coarse)
        np.testing.assert_allclose(frac, want_frac, atol=1e-6)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_class_maps_sit_on_the_input_grid_for_s2_s1_naip_and_a_region(tmp_path, demo_model) -> None:
    head, _ = _fit(tmp_path, S2, demo_model, "linear", steps=10)
    out, probs = tmp_path / "s2.tif", tmp_path / "s2_p.tif"
    segment_raster(shared_file("data", S2), out, head, demo_model, settings=QUICK, probabilities_output=probs)
    _same_grid(out, shared_file("data", S2))
    _same_grid(probs, shared_file("data", S2))
    with rasterio.open(out) as c, rasterio.open(probs) as p:
        classes, p = c.read(1), p.read()
        assert c.tags()["MSFM_GRID"] == "input"
    ok = classes != 255
    assert ok.mean() > 0.99
    # probabilities are averaged before the argmax: the class is the argmax of the written probabilities
    assert (np.nanargmax(p[:, ok], axis=0) == classes[ok]).mean() > 0.999
    np.testing.assert_allclose(p[:, ok].sum(0), 1.0, atol=1e-4)

    model_grid = tmp_path / "s2_model.tif"
    segment_raster(shared_file("data", S2), model_grid, head, demo_model, settings=QUICK, grid="model")
    with rasterio.open(model_grid) as m, rasterio.open(shared_file("data", S2)) as src:
        assert m.shape == (2 * src.height, 2 * src.width)  # the S2 preset's scale 2
        assert m.tags()["MSFM_GRID"] == "model"

    with rasterio.open(shared_file("data", S2)) as src:
        left, top = src.transform * (100.5, 60.5)  # bounds through pixels: the window rounds outward
        right, bottom = src.transform * (300.25, 240.75)
        window = Region(bounds=(left, bottom, right, top)).window(src)
    region_out = tmp_path / "s2_region.tif"
    segment_raster(shared_file("data", S2), region_out, head, demo_model, settings=QUICK,
                   region=Region(bounds=(left, bottom, right, top)))
    _same_grid(region_out, shared_file("data", S2), window)

    for image in (S1, NAIP):  # S1 at the preset's scale 2; NAIP at scale 1 (a head trained on it)
        if image == NAIP:
            with rasterio.open(shared_file("data", NAIP)) as ds:
                nir = ds.read(4).astype(np.float32)
            label = tmp_path / "naip_label.tif"
            with rasterio.open(shared_file("data", NAIP)) as ds:
                profile = {**ds.profile, "count": 1, "dtype": "int16", "nodata": -1}
            with rasterio.open(label, "w", **profile) as dst:  # dark NIR = water, a label good enough for a grid test
                dst.write(np.where(nir < np.percentile(nir[nir > 0], 10), 1, 0).astype(np.int16)[None])
            head_i, _ = _fit(tmp_path, image, demo_model, "linear", steps=5, label=str(label), sensor="naip_rgbn")
        else:
            head_i, _ = _fit(tmp_path, image, demo_model, "linear", steps=5)
        out_i = tmp_path / f"{image}.tif"
        segment_raster(shared_file("data", image), out_i, head_i, demo_model, settings=QUICK)
        _same_grid(out_i, shared_file("data", image))


def test_pixel_head_round_trips_and_exports(tmp_path, demo_model) -> None:
    from engine.export import export_segmenter

    head_path, _ = _fit(tmp_path, S2, demo_model, "pixel", steps=20)
    head = load_head(head_path)
    assert head.card.head_type == "pixel" and head.reads_image
    assert len(head.card.blocks) == 2 and head.card.blocks[-1] == demo_model.depth - 1
    torch_map, onnx_map = tmp_path / "torch.tif", tmp_path / "onnx.tif"
    segment_raster(shared_file("data", S2), torch_map, head_path, demo_model, settings=QUICK)
    onnx = export_segmenter(head, demo_model, tmp_path / "pixel.onnx")
    segment_raster(shared_file("data", S2), onnx_map, onnx, settings=QUICK)
    _same_grid(onnx_map, shared_file("data", S2))
    with rasterio.open(torch_map) as a, rasterio.open(onnx_map) as b:
        assert (a.read(1) == b.read(1)).mean() > 0.999


@pytest.mark.slow
def test_pixel_head_beats_the_linear_head_on_a_flood_chip(tmp_path, demo_model) -> None:
    with rasterio.open(shared_file("data", LABEL)) as ds:
        label = ds.read(1)
    scores: dict[str, list[float]] = {"linear": [], "pixel": []}
    for seed in (0, 1):
        for head_type in scores:
            head, taken = _fit(tmp_path, S2, demo_model, head_type, steps=300, seed=seed)
            out = tmp_path / f"{head_type}-{seed}.tif"
            segment_raster(shared_file("data", S2), out, head, demo_model, settings=QUICK)
            with rasterio.open(out) as ds:
                classes = ds.read(1)
            keep = (label >= 0) & ~taken
            scores[head_type].append(water_iou(np.where(keep, classes, 255), np.where(keep, label == 1, False)))
    assert np.mean(scores["pixel"]) > np.mean(scores["linear"]) + 0.01, scores
    assert min(scores["pixel"]) > 0.8, scores
