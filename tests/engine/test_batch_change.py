"""Change maps of pairs of scenes through a batch run (engine.batch.batch_change): scenes of a BEFORE and an AFTER
folder paired by name, one no-change calibration pooled over every pair, each pair's map equal to a single
change_raster with that calibration; a scene against itself gives 0 and an edited copy changes in its edited block;
reruns do nothing, and redo a pair whose mask or polygons went missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from engine.batch import batch_change
from engine.cli import main
from engine.errors import InputRasterError, OutputError, SettingsError
from engine.maps import change_raster, robust_spread, sample_distances
from tests.conftest import shared_file
from tests.engine.test_batch import FAST, S1_CHIP, S2_CHIP, _partials
from tests.engine.test_change import fiona_free_layer

INDIA = "sen1floods11_india_900498_s2_l1c"
VIRGINIA = ("data", "s2_l1c_13band_10m_virginia.tif")
USA_S1 = ("data", "sen1floods11_usa_905409_s1_db.tif")
#: The edited block of the Virginia crop, in pixels (rows and columns 192..320 of 512) and in 16-px cells (12..20).
BLOCK_PX, BLOCK_CELLS = slice(192, 320), slice(12, 20)
THRESHOLD = 0.05


def _crop(source: Path, output: Path, edit: bool = False) -> Path:
    """The upper-left 512 × 512 px of ``source`` with its band names and tags; ``edit``: the block holds the
    (flipped) pixels of another part of the crop, another land cover, as tests/engine/test_change.py does."""
    with rasterio.open(source) as src:
        window = Window(0, 0, 512, 512)
        data = src.read(window=window)
        if edit:
            data[:, BLOCK_PX, BLOCK_PX] = data[:, 0:128, 384:512][:, ::-1, ::-1].copy()
        profile = {**src.profile, "width": 512, "height": 512, "transform": src.window_transform(window)}
        with rasterio.open(output, "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = src.descriptions
            for band in range(1, src.count + 1):
                dst.update_tags(band, **src.tags(band))
            dst.update_tags(**src.tags())
    return output


def _copy(source: Path, folder: Path, name: str) -> Path:
    """``source`` (and its GDAL sidecar, where it has one) copied into ``folder`` as ``name``."""
    shutil.copyfile(source, folder / name)
    sidecar = source.with_name(source.name + ".aux.xml")
    if sidecar.is_file():
        shutil.copyfile(sidecar, folder / f"{name}.aux.xml")
    return folder / name


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """BEFORE: the India Sentinel-2 chip, a Virginia Sentinel-2 crop and the India Sentinel-1 chip; AFTER: the same
    India chip, the Virginia crop with one block edited, and a Sentinel-1 chip of another place. Compared on a
    2-worker local cluster at patch resolution, with a threshold."""
    root = tmp_path_factory.mktemp("pairs")
    before, after = root / "before", root / "after"
    before.mkdir()
    after.mkdir()
    for folder in (before, after):
        _copy(shared_file(*S2_CHIP), folder, f"{INDIA}.tif")
    _crop(shared_file(*VIRGINIA), before / "virginia.tif")
    _crop(shared_file(*VIRGINIA), after / "virginia.tif", edit=True)
    _copy(shared_file(*S1_CHIP), before, "india_s1.tif")  # BEFORE only
    _copy(shared_file(*USA_S1), after, "usa_s1.tif")  # AFTER only
    report = batch_change(before, after, root / "out", resolution="patch", threshold=THRESHOLD, settings=FAST,
                          workers=2)
    return {"before": before, "after": after, "out": root / "out", "report": report, "root": root}


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.slow
def test_pairs_share_one_pooled_calibration_and_the_edited_block_changes(pairs: dict[str, Any]) -> None:
    report, out = pairs["report"], pairs["out"]
    assert sorted(report.done) == [INDIA, "virginia"] and not report.failed and report.workers == 2
    assert report.unpaired == {"india_s1": "before", "usa_s1": "after"}
    assert not (out / "embeddings" / "before" / "india_s1.tif").exists()  # a scene without a partner is not embedded
    # the calibration: robust spread of the distances of both pairs together (every cell: 2 × 32 × 32 < max_samples)
    fitted = json.loads((out / "calibration.json").read_text())
    pooled = np.concatenate([sample_distances(out / "embeddings" / "before" / f"{name}.tif",
                                              out / "embeddings" / "after" / f"{name}.tif") for name in report.done])
    assert fitted["pairs"] == 2 and fitted["samples"] == pooled.size == 2 * 32 * 32
    assert (fitted["median"], fitted["sigma"]) == pytest.approx(robust_spread(pooled), rel=1e-6)
    assert fitted["sensors"] == [{"before": "sentinel2_l1c", "after": "sentinel2_l1c", "pairs": 2}]
    tag = f"{fitted['median']:.6g} {fitted['sigma']:.6g}"
    own = robust_spread(sample_distances(out / "embeddings" / "before" / "virginia.tif",
                                         out / "embeddings" / "after" / "virginia.tif"))
    assert own[0] > 10 * fitted["median"]  # the edited pair alone would be calibrated otherwise (measured 200×)
    for name in report.done:
        with rasterio.open(out / f"{name}.tif") as ds, rasterio.open(out / f"{name}_mask.tif") as mask:
            assert ds.tags()["MSFM_NO_CHANGE"] == tag and ds.tags()["MSFM_UNITS"] == "cosine_distance"
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.shape == (32, 32)
            assert mask.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and mask.nodata == 255
            assert float(mask.tags()["MSFM_THRESHOLD"]) == THRESHOLD
        assert (out / f"{name}.qml").is_file() and 'label="changed"' in (out / f"{name}_mask.qml").read_text()
    # a scene against itself: no change at all
    same = _read(out / f"{INDIA}.tif")
    assert np.isfinite(same).all() and np.nanmax(same) < 1e-5
    assert (_read(out / f"{INDIA}_mask.tif") == 0).all()
    # the edited copy: the most changed cells, and the changed cells, are the edited block
    distance = _read(out / "virginia.tif")
    block = np.zeros(distance.shape, bool)
    block[BLOCK_CELLS, BLOCK_CELLS] = True
    top = np.argsort(-np.nan_to_num(distance, nan=-1.0).ravel())[: block.sum()]
    assert block.ravel()[top].mean() >= 0.9  # measured 1.0
    hit = _read(out / "virginia_mask.tif") == 1
    assert hit[block].sum() / max(hit.sum(), 1) >= 0.95 and hit[block].mean() >= 0.8  # measured 62 of 64, none outside
    with fiona_free_layer(out / "virginia_changes.gpkg") as names:
        assert names and set(names) == {"changed"}
    with fiona_free_layer(out / f"{INDIA}_changes.gpkg") as names:
        assert names == []
    # products: a mosaic per CRS, and the mask and polygons as assets of each STAC item
    assert sorted(p.name for p in report.mosaics) == ["mosaic_EPSG_32618.vrt", "mosaic_EPSG_4326.vrt"]
    item = json.loads((out / "stac" / "virginia" / "virginia.json").read_text())
    assert {"data", "mask", "changes"} <= set(item["assets"])
    assert item["properties"]["msfm:before"] == str(pairs["before"] / "virginia.tif")
    assert _partials(out) == []


@pytest.mark.slow
def test_each_map_equals_one_change_raster_with_the_pooled_calibration(pairs: dict[str, Any], demo_model: Any,
                                                                         tmp_path: Path) -> None:
    out = pairs["out"]
    fitted = json.loads((out / "calibration.json").read_text())
    for name in (INDIA, "virginia"):
        single = change_raster(pairs["before"] / f"{name}.tif", pairs["after"] / f"{name}.tif",
                               tmp_path / f"{name}.tif", demo_model, settings=FAST, resolution="patch",
                               no_change=(fitted["median"], fitted["sigma"]), threshold=THRESHOLD,
                               mask_output=tmp_path / f"{name}_mask.tif")
        with rasterio.open(single.path) as a, rasterio.open(out / f"{name}.tif") as b:
            assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
            assert a.tags()["MSFM_NO_CHANGE"] == b.tags()["MSFM_NO_CHANGE"]
            x, y = a.read(1), b.read(1)
        assert np.array_equal(np.isnan(x), np.isnan(y))
        np.testing.assert_allclose(y, x, atol=1e-4)
        assert np.array_equal(_read(single.mask), _read(out / f"{name}_mask.tif"))


@pytest.mark.slow
def test_a_rerun_does_nothing_and_a_missing_companion_is_redone(pairs: dict[str, Any], capsys: Any) -> None:
    before, after, out = pairs["before"], pairs["after"], pairs["out"]

    def stamps() -> dict[str, int]:
        return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
                if p.suffix in (".tif", ".gpkg", ".qml") or p.name == "calibration.json"}

    first = stamps()
    again = batch_change(before, after, out, resolution="patch", threshold=THRESHOLD, settings=FAST, workers=2)
    assert again.done == [] and sorted(again.skipped) == [INDIA, "virginia"] and again.workers == 0  # no cluster
    assert again.unpaired == {"india_s1": "before", "usa_s1": "after"}
    assert stamps() == first
    # the command line, with the same options: the same run (same key), nothing to do
    assert main(["batch", "change", str(before), str(after), str(out), "--resolution", "patch", "--threshold",
                 str(THRESHOLD), "--tile-size-px", "224", "--overlap-px", "32", "--scale", "1", "--precision",
                 "fp32", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "0 pairs compared, 2 already done" in printed
    assert "not paired: india_s1 (only in the BEFORE catalogue)" in printed
    assert stamps() == first
    # a pair whose polygons went missing is redone, alone, with the calibration of the first run; a pair added since
    # (two rasters of different places under one name) is mapped with it too, and fails without stopping the others
    (out / "virginia_changes.gpkg").unlink()
    _copy(shared_file(*S2_CHIP), before, "elsewhere.tif")
    _crop(shared_file(*VIRGINIA), after / "elsewhere.tif")
    redone = batch_change(before, after, out, resolution="patch", threshold=THRESHOLD, settings=FAST, workers=2)
    assert redone.done == ["virginia"] and redone.skipped == [INDIA]
    assert list(redone.failed) == ["elsewhere"] and "does not overlap" in redone.failed["elsewhere"]
    assert (out / "virginia_changes.gpkg").is_file() and not (out / "elsewhere.tif").exists()
    now = stamps()
    unchanged = {k: v for k, v in first.items() if "virginia" not in k or "embeddings" in k}
    assert {k: now[k] for k in unchanged} == unchanged  # calibration.json, the India pair, the embeddings
    # another threshold is another run: refused in this folder
    with pytest.raises(OutputError, match="another run"):
        batch_change(before, after, out, resolution="patch", threshold="robust", settings=FAST)


@pytest.mark.slow
def test_pairs_that_cannot_be_compared_are_named_by_the_calibration(tmp_path: Path) -> None:
    elsewhere = _crop(shared_file(*VIRGINIA), tmp_path / f"{INDIA}.tif")  # Virginia, under the India chip's name
    with pytest.raises(InputRasterError, match=r"no cell is valid in both embeddings of any of the 1 pairs.*"
                       r"InputRasterError: the BEFORE raster does not overlap the AFTER raster"):
        batch_change([str(shared_file(*S2_CHIP))], [str(elsewhere)], tmp_path / "out", settings=FAST, workers=2)
    assert not (tmp_path / "out" / "calibration.json").exists()


def test_catalogues_without_a_common_scene_and_wrong_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputRasterError, match=r"no scene .* is in both: BEFORE 'sen1floods11_india_900498_s2_l1c'.*"
                       r"AFTER 'sen1floods11_india_900498_s1_db'.*same file name"):
        batch_change(shared_file(*S2_CHIP), [str(shared_file(*S1_CHIP))], tmp_path / "out", settings=FAST)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
    with pytest.raises(SettingsError, match="threshold must be a value, 'otsu' or 'robust', got 'huge'"):
        batch_change(tmp_path, tmp_path, tmp_path / "out", threshold="huge")
    with pytest.raises(SettingsError, match="calibration must be one of auto, distance, zscore"):
        batch_change(tmp_path, tmp_path, tmp_path / "out", calibration="sigma")  # type: ignore[arg-type]


@pytest.mark.slow
def test_changed_towards_one_set_of_classes_over_every_after_scene(pairs: dict[str, Any], tmp_path: Path) -> None:
    """``towards=3``: one k-means over the AFTER embeddings of every pair (its centres in calibration.json), and each
    pair's ``<id>_towards.tif`` holds, at its changed cells, the class those centres give the AFTER scene there."""
    from engine.maps import ClusterSettings, cluster_raster

    out, sides = tmp_path / "out", {}
    for side in ("before", "after"):  # the two pairs alone (other tests add pairs to the module's folders)
        sides[side] = tmp_path / side
        sides[side].mkdir()
        for name in (f"{INDIA}.tif", "virginia.tif"):
            _copy(pairs[side] / name, sides[side], name)
    report = batch_change(sides["before"], sides["after"], out, resolution="patch", threshold=THRESHOLD, towards=3,
                          settings=FAST, workers=2)
    assert set(report.done) == {INDIA, "virginia"} and not report.failed
    centers = np.asarray(json.loads((out / "calibration.json").read_text())["towards_centers"], np.float32)
    assert centers.shape[0] == 3
    classes = cluster_raster(sides["after"] / "virginia.tif", tmp_path / "classes.tif",
                             embeddings=out / "embeddings" / "after" / "virginia.tif", centers=centers,
                             clustering=ClusterSettings(k=3, resolution="patch")).path
    changed = _read(out / "virginia_mask.tif") == 1
    towards = _read(out / "virginia_towards.tif")
    assert changed[BLOCK_CELLS, BLOCK_CELLS].mean() > 0.9  # the edited block, as without towards
    assert (towards[changed] == _read(classes)[changed]).all() and (towards[~changed] == 255).all()
    with fiona_free_layer(out / "virginia_changes.gpkg") as names:
        assert names and set(names) <= {"class 0", "class 1", "class 2"}  # areas named by what they became
    assert (_read(out / f"{INDIA}_towards.tif") == 255).all()  # nothing changed in the identical pair
    items = list((out / "stac").glob("**/*.json"))
    assert any('"towards"' in item.read_text() for item in items)
