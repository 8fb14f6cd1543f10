"""The ``msfm`` command line, including the README's demo, run in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from engine.cli import main
from engine.cli.options import DEMO_RASTER
from engine.models import resolve_weights
from tests.conftest import L8, NAIP, S2_L1C, shared_file, water_iou


@pytest.mark.slow  # the 1024² demo scene at pixel resolution, ~12 s; test_spine.py is its fast twin
def test_demo_writes_a_georeferenced_class_map_that_separates_water_from_land(tmp_path: Path, capsys) -> None:
    try:
        resolve_weights("smarties-demo-tiny")
    except Exception as exc:  # the bundled model is part of the repository
        pytest.fail(f"bundled demo model missing: {exc}")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--threads", "2"]) == 0
    text = capsys.readouterr().out
    assert "B10" in text and "dropped" in text  # the band report is printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["classes.png", "classes.qml", "classes.tif", "embeddings.tif", "embeddings_pca.png",
                     "input_truecolor.png"]
    with rasterio.open(DEMO_RASTER) as src, rasterio.open(out / "classes.tif") as cls, \
            rasterio.open(out / "embeddings.tif") as emb:
        assert (cls.crs, cls.transform, cls.shape) == (src.crs, src.transform, src.shape)
        assert emb.crs == src.crs and emb.count == 192 and emb.shape == (128, 128)  # scale 2: 8 native px per cell
        labels = cls.read(1)
        bands = list(src.descriptions)
        green = src.read(bands.index("B03") + 1).astype(float)
        nir = src.read(bands.index("B08") + 1).astype(float)
    assert len(np.unique(labels)) == 8
    # NDWI > 0 (McFeeters 1996) is a physical water mask of this lagoon/ocean scene; the 8 unsupervised classes must
    # be nameable as water/land with high agreement at pixel resolution.
    water = (green - nir) / (green + nir) > 0
    assert water_iou(labels, water) > 0.9


def test_bands_command_reports_every_band_and_the_override_hint(capsys) -> None:
    assert main(["bands", str(shared_file(*L8))]) == 0
    out = capsys.readouterr().out
    assert "landsat8_oli_tirs" in out and "thermal_infrared_1" in out and "B9" in out
    assert main(["bands", str(shared_file(*NAIP))]) == 2
    err = capsys.readouterr().err
    assert "--sensor naip_rgbn" in err and "band 1" in err
    assert main(["bands", str(shared_file(*NAIP)), "--sensor", "naip_rgbn"]) == 0
    assert "near_infrared_1" in capsys.readouterr().out


def test_models_commands_work_offline(capsys) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smarties-vit-b" in out and "smarties-demo-tiny" in out
    assert main(["models", "download", "smarties-vit-b"]) == 2  # offline in tests, not cached
    assert "msfm models download smarties-vit-b" in capsys.readouterr().err


@pytest.mark.slow  # the whole NAIP tile at the default scale
def test_cluster_command_with_overrides_and_patch_resolution(tmp_path: Path, capsys) -> None:
    src = shared_file(*NAIP)
    args = ["cluster", str(src), str(tmp_path / "c.tif"), "--k", "3", "--resolution", "patch",
            "--band", "1=red_1", "--band", "2=green_1", "--band", "3=blue_3", "--band", "4=near_infrared_1",
            "--quicklook", str(tmp_path / "c.png"), "--batch-size", "4"]
    assert main(args) == 0
    with rasterio.open(tmp_path / "c.tif") as cls:
        assert cls.count == 1 and set(np.unique(cls.read(1))) <= {0, 1, 2, 255}
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "c.qml").exists()


FAST = ["--scale", "1", "--overlap-px", "0", "--batch-size", "4", "--threads", "2"]


def bounds_args(path: Path, col: int, row: int, width: int, height: int) -> list[str]:
    """``--bounds`` of a pixel window of a raster."""
    with rasterio.open(path) as ds:
        left, top = ds.transform * (col, row)
        right, bottom = ds.transform * (col + width, row + height)
    return ["--bounds", *(str(v) for v in (left, bottom, right, top))]


def test_embed_command_with_bounds_and_pca(tmp_path: Path, capsys) -> None:
    src = shared_file(*S2_L1C)
    args = ["embed", str(src), str(tmp_path / "e.tif"), *FAST, *bounds_args(src, 100, 200, 224, 224),
            "--pca", str(tmp_path / "pca.tif")]
    assert main(args) == 0
    assert "explain" in capsys.readouterr().out
    with rasterio.open(src) as s, rasterio.open(tmp_path / "e.tif") as e, rasterio.open(tmp_path / "pca.tif") as p:
        assert e.shape == (14, 14) and e.transform.c == s.transform.c + 1000 and e.transform.f == s.transform.f - 2000
        assert "MSFM_REGION" in e.tags()
        assert p.count == 3 and p.shape == e.shape and p.descriptions == ("pc1", "pc2", "pc3")
        assert np.isfinite(p.read()).all()
    assert main(["embed", str(src), str(tmp_path / "x.tif"), *FAST, "--bounds", "0", "0", "1", "1"]) == 2
    assert "does not overlap the raster" in capsys.readouterr().err


def test_cluster_command_with_bounds(tmp_path: Path) -> None:
    src = shared_file(*NAIP)
    args = ["cluster", str(src), str(tmp_path / "c.tif"), "--k", "3", "--sensor", "naip_rgbn", *FAST,
            *bounds_args(src, 300, 100, 250, 180)]
    assert main(args) == 0
    with rasterio.open(src) as s, rasterio.open(tmp_path / "c.tif") as cls:
        assert cls.shape == (180, 250) and cls.transform == s.transform * Affine.translation(300, 100)
        assert set(np.unique(cls.read(1))) <= {0, 1, 2, 255}


def test_similarity_command_with_points(tmp_path: Path, capsys) -> None:
    src = shared_file(*S2_L1C)
    with rasterio.open(src) as ds:
        water = [str(v) for v in ds.transform * (400.5, 600.5)]  # open water
        lagoon = [str(v) for v in ds.transform * (600.5, 300.5)]
    args = ["similarity", str(src), str(tmp_path / "s.tif"), "--point", *water, "--point", *lagoon, *FAST,
            *bounds_args(src, 256, 256, 448, 448), "--embeddings-output", str(tmp_path / "e.tif")]
    assert main(args) == 0
    assert "mean of 2 cell(s)" in capsys.readouterr().out
    with rasterio.open(tmp_path / "s.tif") as sim:
        assert sim.shape == (448, 448) and sim.tags()["MSFM_KIND"] == "similarity"
    args = ["similarity", str(src), str(tmp_path / "p.tif"), "--point", *water, "--embeddings", str(tmp_path / "e.tif"),
            "--resolution", "patch"]
    assert main(args) == 0
    with rasterio.open(tmp_path / "p.tif") as sim:
        assert sim.shape == (28, 28) and sim.tags()["MSFM_QUERY_CELLS"] == "1"
    assert main(["similarity", str(src), str(tmp_path / "q.tif"), "--point", "0", "0", "--embeddings",
                 str(tmp_path / "e.tif")]) == 2
    assert "outside the raster or on nodata" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.tif", "p.qml", "p.tif", "s.qml", "s.tif"]
