"""Batch runs on Dask: real rasters through a 2-worker LocalCluster equal the single-process outputs; COGs, mosaics,
STAC; a rerun does nothing; a corrupt raster is reported while the others finish; a killed worker's scenes are
redone; a cancelled run resumes."""

from __future__ import annotations

import json
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds

from engine.batch import Manifest, batch_embed, dask_client, gdal_path, local_gpus, local_layout, read_catalogue
from engine.errors import InferenceCancelled, InputRasterError, OutputError, SettingsError
from engine.maps import embed_raster
from engine.settings import InferenceSettings
from tests.conftest import L8, TINY_S2, shared_file

#: fp32: bf16 sums depend on the thread count (a worker has 1 thread here, the single-process run 2)
FAST = InferenceSettings(tile_size_px=224, overlap_px=32, scale=1.0, precision="fp32")
S2_CHIP = ("data", "sen1floods11_india_900498_s2_l1c.tif")
S1_CHIP = ("data", "sen1floods11_india_900498_s1_db.tif")


def _corrupt(folder: Path) -> Path:
    path = folder / "corrupt.tif"
    path.write_bytes(b"II*\x00" + bytes(range(256)) * 20)  # a TIFF signature and garbage
    return path


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if "partial" in p.name)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 2-worker batch run over three real rasters (two CRSs) and a corrupt one."""
    folder = tmp_path_factory.mktemp("batch")
    scenes = [shared_file(*S2_CHIP), shared_file(*S1_CHIP), shared_file(*L8), _corrupt(folder)]
    catalogue = folder / "scenes.txt"
    catalogue.write_text("# three real rasters and a corrupt one\n" + "\n".join(map(str, scenes)) + "\n")
    report = batch_embed(catalogue, folder / "out", settings=FAST, workers=2)
    return {"folder": folder, "catalogue": catalogue, "scenes": scenes, "report": report, "out": folder / "out"}


@pytest.mark.slow
def test_a_batch_equals_single_process_runs_and_reports_the_corrupt_raster(run: dict[str, Any],
                                                                            demo_model: Any) -> None:
    report, out = run["report"], run["out"]
    assert report.workers == 2
    assert sorted(report.done) == ["l8_l1_10band_30m_gulfcoast", "sen1floods11_india_900498_s1_db",
                                   "sen1floods11_india_900498_s2_l1c"]
    assert list(report.failed) == ["corrupt"] and "InputRasterError" in report.failed["corrupt"]
    for source in run["scenes"][:3]:
        single = embed_raster(source, run["folder"] / f"single_{source.stem}.tif", demo_model, settings=FAST)
        with rasterio.open(single.path) as a, rasterio.open(out / f"{source.stem}.tif") as b:
            assert (b.crs, b.transform, b.shape, b.count) == (a.crs, a.transform, a.shape, a.count)
            side = min(256, 16 * -(-max(a.shape) // 16))  # internal tiles: 256 px, or the scene rounded up to 16 px
            assert b.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and b.block_shapes[0] == (side, side)
            assert b.descriptions == a.descriptions and b.tags()["MSFM_MODEL"] == a.tags()["MSFM_MODEL"]
            x, y = a.read(), b.read()
        assert np.array_equal(np.isnan(x), np.isnan(y))
        assert np.nanmax(np.abs(x - y)) <= 1e-4 * np.nanmax(np.abs(x))
    assert _partials(out) == []


@pytest.mark.slow
def test_the_mosaic_vrts_open_and_the_stac_collection_validates(run: dict[str, Any]) -> None:
    import pystac
    from pystac import STACObjectType
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    report, out = run["report"], run["out"]
    assert [p.name for p in report.mosaics] == ["mosaic_EPSG_32616.vrt", "mosaic_EPSG_4326.vrt"]
    with rasterio.open(out / "mosaic_EPSG_32616.vrt") as vrt, \
            rasterio.open(out / "l8_l1_10band_30m_gulfcoast.tif") as cog:
        assert (vrt.crs, vrt.transform, vrt.shape, vrt.count) == (cog.crs, cog.transform, cog.shape, cog.count)
        assert np.array_equal(vrt.read(5), cog.read(5), equal_nan=True)
    # the S2 and S1 chips share a footprint: the later scene of the catalogue (S1) is on top
    with rasterio.open(out / "mosaic_EPSG_4326.vrt") as vrt, \
            rasterio.open(out / "sen1floods11_india_900498_s1_db.tif") as cog:
        window = rasterio.windows.from_bounds(*cog.bounds, transform=vrt.transform)
        assert np.array_equal(vrt.read(1, window=window.round_offsets().round_lengths()), cog.read(1), equal_nan=True)
    collection = pystac.read_file(str(report.stac))
    items = {item.id: item for item in collection.get_items()}
    assert sorted(items) == sorted(report.done)
    # the core STAC 1.1 schemas, bundled with pystac (the projection extension's schema would need the network)
    validator = JsonSchemaSTACValidator()
    for stac, kind in [(collection, STACObjectType.COLLECTION), *((i, STACObjectType.ITEM) for i in items.values())]:
        record = stac.to_dict(include_self_link=False)
        validator.validate_core(record, kind, record["stac_version"], None)
    for item in items.values():
        cog = Path(item.assets["data"].get_absolute_href())
        assert cog.is_file() and item.properties["msfm:sha256"] and item.properties["msfm:model"]
        with rasterio.open(cog) as ds:
            west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        assert np.allclose(item.bbox, [west, south, east, north], atol=1e-3)
        assert item.properties["proj:code"] == f"EPSG:{ds.crs.to_epsg()}"
    assert Path(collection.assets["mosaic_EPSG_32616"].get_absolute_href()).is_file()


@pytest.mark.slow
def test_a_rerun_does_nothing_and_a_damaged_output_is_redone(run: dict[str, Any]) -> None:
    out = run["out"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")}
    again = batch_embed(run["catalogue"], out, settings=FAST, workers=2)
    assert again.done == [] and len(again.skipped) == 3 and list(again.failed) == ["corrupt"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")} == stamps
    damaged = out / "sen1floods11_india_900498_s1_db.tif"
    with open(damaged, "r+b") as f:  # same size, other bytes: only the hash tells
        f.seek(damaged.stat().st_size // 2)
        f.write(b"\x00" * 64)
    third = batch_embed(run["catalogue"], out, settings=FAST, workers=1)
    assert third.done == ["sen1floods11_india_900498_s1_db"] and len(third.skipped) == 2
    with pytest.raises(OutputError, match="another run.*--overwrite"):
        batch_embed(run["catalogue"], out, settings=replace(FAST, overlap_px=0))


@pytest.mark.slow
def test_a_killed_worker_loses_no_scene_and_a_cancelled_run_resumes(tmp_path: Path) -> None:
    import distributed

    source = shared_file(*S1_CHIP)
    names = []
    for i in range(6):  # six scenes of one real raster
        link = tmp_path / "scenes" / f"s1_{i}.tif"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(source)
        names.append(link.stem)
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        killed = threading.Event()

        def kill_one(fraction: float) -> None:  # once the run moves: SIGKILL a worker (a scene in flight on it)
            if not killed.is_set():
                killed.set()
                os.kill(next(iter(pids.values())), signal.SIGKILL)

        report = batch_embed(tmp_path / "scenes", out, settings=FAST, scheduler=cluster.scheduler_address,
                             progress=kill_one)
    assert killed.is_set() and sorted(report.done) == names and report.failed == {}
    assert sorted(p.name for p in out.glob("*.tif")) == [f"{n}.tif" for n in names] and _partials(out) == []
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert lines[0]["format"] == "msfm-batch-manifest/1"
    assert sorted(r["id"] for r in lines[1:]) == names and {r["status"] for r in lines[1:]} == {"done"}

    again = tmp_path / "again"

    def recorded() -> bool:  # cancel once the manifest holds a finished scene (its header is the first line)
        manifest = again / "manifest.jsonl"
        return manifest.is_file() and len(manifest.read_text().splitlines()) > 1

    with pytest.raises(InferenceCancelled):
        batch_embed(tmp_path / "scenes", again, settings=FAST, workers=1, is_canceled=recorded)
    first = Manifest(again, json.loads((again / "manifest.jsonl").read_text().splitlines()[0])["key"]).scenes
    assert len(first) >= 1
    resumed = batch_embed(tmp_path / "scenes", again, settings=FAST, workers=1)
    assert sorted(resumed.skipped) == sorted(first) and sorted(resumed.done + resumed.skipped) == names


def test_catalogues_from_folders_globs_lists_and_stac(tmp_path: Path) -> None:
    import pystac

    tiles = tmp_path / "tiles"
    (tiles / "a").mkdir(parents=True)
    (tiles / "b").mkdir()
    for sub in ("a", "b"):
        (tiles / sub / "T33.tif").symlink_to(TINY_S2)
    (tiles / "notes.txt").write_text("not a raster")
    folder = read_catalogue(tiles)
    assert [s.id for s in folder] == ["a_T33", "b_T33"]  # stems repeat: named by their relative path
    assert [s.id for s in read_catalogue(str(tiles / "a" / "*.tif"))] == ["T33"]
    listing = tmp_path / "list.txt"
    listing.write_text("# scenes\ntiles/a/T33.tif\n\nhttps://example.org/x.tif\ns3://bucket/k/y.tif\n")
    hrefs = [s.href for s in read_catalogue(listing)]
    assert hrefs == [str(tiles / "a" / "T33.tif"), "/vsicurl/https://example.org/x.tif", "/vsis3/bucket/k/y.tif"]
    assert gdal_path("/vsizip/a.zip/b.tif") == "/vsizip/a.zip/b.tif"

    def item(name: str, assets: dict[str, str]) -> Any:
        it = pystac.Item(name, None, None, pystac.utils.str_to_datetime("2020-06-01T10:00:00Z"), {"platform": "x"})
        for key, media in assets.items():
            it.add_asset(key, pystac.Asset(str(TINY_S2), media_type=media))
        return it

    stac = tmp_path / "items.json"
    tiff = pystac.MediaType.GEOTIFF
    pystac.ItemCollection([item("scene-1", {"data": tiff, "thumb": pystac.MediaType.PNG})]).save_object(
        dest_href=str(stac))
    [scene] = read_catalogue(stac)
    assert (scene.id, scene.href, scene.datetime) == ("scene-1", str(TINY_S2), "2020-06-01T10:00:00+00:00")
    pystac.ItemCollection([item("scene-2", {"B04": tiff, "B08": tiff})]).save_object(dest_href=str(stac))
    with pytest.raises(SettingsError, match="2 raster assets.*B04.*--asset"):
        read_catalogue(stac)
    assert read_catalogue(stac, asset="B08")[0].href == str(TINY_S2)
    with pytest.raises(InputRasterError, match="no asset 'B12'.*B04, B08"):
        read_catalogue(stac, asset="B12")
    with pytest.raises(InputRasterError, match="names no raster"):
        read_catalogue(tmp_path / "tiles" / "a" / "*.jp2")
    with pytest.raises(InputRasterError, match="does not exist"):
        read_catalogue(tmp_path / "missing.txt")


def test_the_local_cluster_uses_every_core_once_and_a_manifest_refuses_another_run(tmp_path: Path) -> None:
    assert local_layout(None, cores=1) == (1, 1)
    assert local_layout(None, cores=2) == (2, 1)
    assert local_layout(1, cores=2) == (1, 2)
    assert local_layout(None, cores=16) == (8, 2)
    assert local_layout(None, cores=16, gpus=2) == (2, 8)  # one worker per GPU
    assert local_gpus("cpu") == [] and local_gpus("cuda:1") == []
    Manifest(tmp_path, "key-a").update("s", {"status": "failed", "error": "x"})
    with open(tmp_path / "manifest.jsonl", "a") as f:
        f.write('{"id": "t", "status": "do')  # a client killed while appending
    manifest = Manifest(tmp_path, "key-a")
    assert list(manifest.scenes) == ["s"] and manifest.scenes["s"]["error"] == "x"
    manifest.update("u", {"status": "failed", "error": "y"})
    assert list(Manifest(tmp_path, "key-a").scenes) == ["s", "u"]
    assert (tmp_path / "manifest.jsonl").stat().st_mode & 0o777 == 0o644
    with pytest.raises(OutputError, match="another run"):
        Manifest(tmp_path, "key-b")
    assert Manifest(tmp_path, "key-b", overwrite=True).scenes == {}


def test_workers_start_from_this_python_even_when_it_is_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from engine.host import python_interpreter

    assert python_interpreter() == sys.executable  # pytest runs on a Python interpreter: sys.executable is right
    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis_process.bin")  # an embedding program
    python = Path(python_interpreter())
    assert python.is_file() and python.name.startswith("python")
    assert python.resolve().is_relative_to(Path(sys.base_exec_prefix).resolve())


def test_a_block_of_rows_equals_those_rows_of_a_full_run(demo_model: Any, tmp_path: Path) -> None:
    from engine.raster import Region

    source = shared_file(*L8)
    full = embed_raster(source, tmp_path / "full.tif", demo_model, settings=FAST)
    assert full.height == 38  # 603 px at 16 px per cell; tile rows start at cells 0, 12 and 24
    with rasterio.open(full.path) as ds:
        whole, transform = ds.read(), ds.transform
    for first, end in ((0, 13), (13, 26), (26, 38), (5, 6)):
        block = embed_raster(source, tmp_path / f"rows{first}.tif", demo_model, settings=FAST, rows=(first, end))
        with rasterio.open(block.path) as ds:
            assert json.loads(ds.tags()["MSFM_ROWS"]) == [first, end, 38]
            assert ds.transform == transform * rasterio.Affine.translation(0, first) and ds.height == end - first
            assert np.array_equal(ds.read(), whole[:, first:end], equal_nan=True)  # the same tiles, blended alike
    with pytest.raises(SettingsError, match="not a block"):
        embed_raster(source, tmp_path / "bad.tif", demo_model, settings=FAST, rows=(30, 40))
    with pytest.raises(SettingsError, match="not both"):
        embed_raster(source, tmp_path / "both.tif", demo_model, settings=FAST, rows=(0, 5),
                     region=Region(bounds=(*(full.transform * (0, 10)), *(full.transform * (10, 0)))))


@pytest.mark.slow
def test_one_large_raster_split_across_workers_equals_the_single_process_result(tmp_path: Path,
                                                                                demo_model: Any) -> None:
    source = shared_file(*L8)
    single = embed_raster(source, tmp_path / "single.tif", demo_model, settings=FAST)
    report = batch_embed([str(source)], tmp_path / "out", settings=FAST, workers=2, block_rows=13)
    stem = source.stem
    assert sorted(report.done) == [f"{stem}_rows000000", f"{stem}_rows000013", f"{stem}_rows000026"]
    with rasterio.open(single.path) as a, rasterio.open(tmp_path / "out" / f"{stem}.vrt") as b:
        assert (b.crs, b.transform, b.shape, b.count) == (a.crs, a.transform, a.shape, a.count)
        x, y = a.read(), b.read()
    assert np.array_equal(np.isnan(x), np.isnan(y)) and np.nanmax(np.abs(x - y)) <= 1e-4 * np.nanmax(np.abs(x))
    again = batch_embed([str(source)], tmp_path / "out", settings=FAST, workers=1, block_rows=13)
    assert again.done == [] and len(again.skipped) == 3


@pytest.mark.slow
def test_a_killed_client_is_resumed_by_the_next_run(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(6):
        (scenes / f"s1_{i}.tif").symlink_to(shared_file(*S1_CHIP))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "engine", "batch", "embed", str(scenes), str(out), "--workers", "1",
               "--tile-size-px", "224", "--overlap-px", "32", "--scale", "1", "--precision", "fp32"]
    client = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (manifest.is_file() and len(manifest.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    os.killpg(client.pid, signal.SIGKILL)  # the client and its local cluster, two scenes in
    client.wait()
    done_before = [json.loads(line)["id"] for line in manifest.read_text().splitlines()[1:]]
    assert 2 <= len(done_before) < 6
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{6 - len(done_before)} scenes embedded, {len(done_before)} already done" in rerun.stdout
    assert sorted(p.stem for p in out.glob("*.tif")) == [f"s1_{i}" for i in range(6)] and _partials(out) == []


@pytest.mark.slow
def test_a_local_gpu_cluster_gives_each_worker_one_gpu() -> None:
    """Without a GPU here, the pinning itself: worker i starts with CUDA_VISIBLE_DEVICES = the i-th id."""
    with dask_client(gpus=["3", "5"]) as (client, threads):
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(seen.values()) == ["3", "5"] and threads == max(1, local_layout(None, gpus=2)[1])


@pytest.mark.slow
def test_a_batch_segmentation_equals_single_process_class_maps_and_reports_tiles(tmp_path: Path, demo_model: Any) -> None:
    from engine.batch import batch_segment
    from engine.segmentation import segment_raster
    from tests.engine.test_segmentation_grid import S2, _fit

    head, _ = _fit(tmp_path, S2, demo_model, "linear", steps=3)
    settings = InferenceSettings(overlap_px=32, precision="fp32")
    source = shared_file("data", S2)
    single = segment_raster(source, tmp_path / "single.tif", head, settings=settings)
    fractions: list[float] = []
    report = batch_segment([str(source), str(_corrupt(tmp_path))], tmp_path / "out", head, settings=settings,
                           workers=2, progress=fractions.append)
    assert report.done == [source.stem] and list(report.failed) == ["corrupt"]
    # the tiles of the running scene move the progress (Dask events from the worker), never backwards
    assert any(0.5 < f < 1.0 for f in fractions) and fractions == sorted(fractions) and fractions[-1] == 1.0
    cog = tmp_path / "out" / f"{source.stem}.tif"
    with rasterio.open(single.path) as a, rasterio.open(cog) as b:
        assert (b.transform, b.shape, b.dtypes[0]) == (a.transform, a.shape, "uint8")
        assert b.colormap(1) == a.colormap(1) and b.tags()["MSFM_CLASSES"] == a.tags()["MSFM_CLASSES"]
        assert (a.read(1) == b.read(1)).mean() >= 0.999
    assert cog.with_suffix(".qml").is_file() and len(report.mosaics) == 1
