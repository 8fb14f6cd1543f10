"""`msfm eval knn | linear-probe | retrieval` (training/evaluation/cli.py) and the labelled-patch reader
(training/evaluation/datasets.py) on real data: the 6 BigEarthNet-MM pairs, and water / vegetation / shore patches cut
from the Virginia Sentinel-2 scene with labels from its own NDWI and NDVI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from engine import cli as engine_cli
from engine.models import load_model, model_statistics
from engine.raster import band_statistics
from engine.spectral import normalize, resolve_bands, select_band_families
from tests.conftest import shared_file
from training.data.pairs import BEN43_CLASSES, PairImages, bigearthnet_pairs
from training.evaluation.datasets import labelled_folder, load_labelled, split_patches
from training.evaluation.protocols import cross_sensor_retrieval

REPO = Path(__file__).resolve().parents[2]
#: Side of the Virginia patches in native 10 m pixels (320 m), and patches per class.
PATCH_PX = 32
PER_CLASS = 12


def _run(capsys, *args: str) -> tuple[int, str, str]:
    """``msfm eval ARGS`` in this process → (exit status, stdout, stderr). One torch thread: on a CPU busy with other
    work, two threads make each of the linear probe's tiny steps ~100× slower (thread synchronisation)."""
    code = engine_cli.main(["eval", *args, "--no-progress", "--threads", "1"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def ben() -> Path:
    return shared_file("data", "bigearthnet_mm")


@pytest.fixture(scope="module")
def virginia(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/<class>/*.tif``: 32 × 32-px windows of the Virginia L1C scene, 12 per class, classes from the scene:
    water (≥ 95 % of pixels with NDWI > 0), vegetation (≥ 95 % with NDVI > 0.3), shore (30–70 % with NDWI > 0).
    Each patch keeps the scene's band descriptions and tags, so the engine resolves its bands as the scene's."""
    src = shared_file("data", "s2_l1c_13band_10m_virginia.tif")
    root = tmp_path_factory.mktemp("virginia_patches")
    with rasterio.open(src) as ds:
        green, red, nir = (ds.read(b).astype(np.float64) for b in (3, 4, 8))
        ndwi, ndvi = (green - nir) / (green + nir + 1e-6), (nir - red) / (nir + red + 1e-6)
        n = ds.width // PATCH_PX

        def share(index: np.ndarray, threshold: float) -> np.ndarray:  # [n, n] share of pixels above threshold
            cut = index[: n * PATCH_PX, : n * PATCH_PX].reshape(n, PATCH_PX, n, PATCH_PX)
            return (cut > threshold).mean(axis=(1, 3))

        water = share(ndwi, 0.0)
        cells = {"water": np.argwhere(water >= 0.95), "vegetation": np.argwhere(share(ndvi, 0.3) >= 0.95),
                 "shore": np.argwhere((water >= 0.3) & (water <= 0.7))}
        rng = np.random.default_rng(0)
        profile = {k: v for k, v in ds.profile.items() if k not in ("blockxsize", "blockysize", "tiled")}
        for name, found in cells.items():
            assert len(found) >= PER_CLASS, (name, len(found))
            (root / name).mkdir()
            for i, (row, col) in enumerate(found[np.sort(rng.choice(len(found), PER_CLASS, replace=False))]):
                win = Window(col * PATCH_PX, row * PATCH_PX, PATCH_PX, PATCH_PX)
                profile.update(width=PATCH_PX, height=PATCH_PX, transform=ds.window_transform(win))
                with rasterio.open(root / name / f"{name}_{i:02d}.tif", "w", **profile) as out:
                    out.write(ds.read(window=win))
                    out.descriptions = ds.descriptions
                    out.update_tags(**ds.tags())
                    for b in range(1, ds.count + 1):
                        out.update_tags(b, central_wavelength_nm=ds.tags(b)["central_wavelength_nm"])
    return root


# ---------------------------------------------------------------------------------------------------- wiring
def test_eval_is_registered_as_an_msfm_command() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="msfm.commands")}
    assert eps.get("eval") == "training.evaluation.cli:register"
    assert "eval" in engine_cli.PLUGIN_COMMANDS
    # building the parser imports no torch (every msfm command builds it)
    code = "import sys, engine.cli; engine.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_python_m_training_eval(ben: Path, capsys) -> None:
    from training.__main__ import main

    assert main(["eval", "knn", str(ben), "--test-fraction", "0.34", "--no-progress", "--threads", "1"]) == 0
    assert "kNN (k 3, T 0.07): micro mAP" in capsys.readouterr().out
    assert main(["eval", "knn", "--no-progress"]) == 2
    assert "no dataset: give DATASET" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- BigEarthNet
def test_knn_and_linear_probe_on_bigearthnet(ben: Path, tmp_path: Path, capsys) -> None:
    for protocol in ("knn", "linear-probe"):
        report = tmp_path / f"{protocol}.json"
        code, out, _ = _run(capsys, protocol, str(ben), "--test-fraction", "0.34", "--seed", "0",
                            "--json", str(report))
        assert code == 0
        assert "data: 3 training / 3 test patches, 19 classes, multi-label, random (multi-label) split" in out
        result = json.loads(report.read_text())
        assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file
        assert result["protocol"] == protocol and result["metric"] == "micro_map" and result["multilabel"]
        assert 0.0 < result["value"] <= 100.0 and f"micro mAP {result['value']:.1f} %" in out
        assert result["train"]["n"] == 3 and result["test"]["n"] == 3 and len(result["classes"]) == 19
        assert set(result["train"]["ids"]).isdisjoint(result["test"]["ids"])
        assert result["embed_dim"] == 192 and result["model"] == "smarties-demo-tiny"
        # deterministic: the same seed gives the same split and metric
        code, out2, _ = _run(capsys, protocol, str(ben), "--test-fraction", "0.34", "--seed", "0")
        assert code == 0 and out2.splitlines()[-1] == out.splitlines()[-2]  # (the last line of `out` is "wrote …")
    # the S1 side, 43 classes, with explicit train and test sets (the same folder: every test patch is in training,
    # so each is its own nearest neighbour and the metric is high)
    code, out, _ = _run(capsys, "knn", "--train", str(ben), "--test", str(ben), "--bigearthnet-sensor", "s1",
                        "--nomenclature", "43", "--json", str(tmp_path / "s1.json"))
    result = json.loads((tmp_path / "s1.json").read_text())
    assert code == 0 and result["classes"] == list(BEN43_CLASSES) and result["split"] is None
    assert result["value"] > 80.0, out


def test_retrieval_on_bigearthnet_pairs(ben: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = _run(capsys, "retrieval", str(ben), "--json", str(tmp_path / "r.json"))
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["sensors"] == ["s1", "s2"] and result["n_pairs"] == 6
    metrics = result["metrics"]
    assert set(metrics) == {"s1_to_s2@1", "s1_to_s2@5", "s2_to_s1@1", "s2_to_s1@5"}
    for k in ("s1_to_s2", "s2_to_s1"):
        assert 0.0 <= metrics[f"{k}@1"] <= metrics[f"{k}@5"] <= 100.0
        assert metrics[f"{k}@5"] >= 100.0 * 4 / 6  # top-5 of 6 candidates: at most one pair can miss
    assert f"s1 → s2: top-1 {metrics['s1_to_s2@1']:.1f} %" in out


def test_retrieval_of_a_sensor_against_itself_is_perfect(ben: Path, tmp_path: Path, capsys) -> None:
    """A pairs CSV whose two columns list the same S2 files: identical features, every partner found first."""
    s2 = [p.paths["s2"] for p in bigearthnet_pairs(ben)]
    pairs_csv = tmp_path / "pairs.csv"
    with open(pairs_csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["a", "b"])
        writer.writerows([p, p] for p in s2)
    code, out, _ = _run(capsys, "retrieval", str(pairs_csv), "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    assert set(json.loads((tmp_path / "r.json").read_text())["metrics"].values()) == {100.0}
    # the helper level: features against themselves, and a mismatched order is found out
    feats = np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32)
    assert set(cross_sensor_retrieval(feats, feats).values()) == {100.0}
    assert cross_sensor_retrieval(feats, feats[::-1])["a_to_b@1"] == 0.0  # (reversed view: negative strides)


def test_xstars_dino_model(ben: Path, tmp_path: Path, capsys) -> None:
    """An X-STARS / DINO .pth: the red, green and blue bands, normalised with the checkpoint's mean/std."""
    ckpt = shared_file("fixtures", "xstars", "vit_tiny_dino_checkpoint.pth")
    model = load_model(ckpt)
    pair = bigearthnet_pairs(ben)[0]
    image, bands, _ = PairImages([pair], "s2", 120, model=model)[0]  # 120 px = the patch's own grid
    with rasterio.open(pair.paths["s2"]) as ds:
        mapping = select_band_families(resolve_bands(ds, "sentinel2_l2a"), model.band_families)
        expected = normalize(ds.read(list(mapping.indexes)).astype(np.float64),
                             model_statistics(model, band_statistics(ds, mapping)))
    assert bands == ["red_2", "green_2", "blue_1"] and image.shape == (3, 120, 120)
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-3)
    code, out, _ = _run(capsys, "knn", str(ben), "--model", str(ckpt), "--json", str(tmp_path / "x.json"))
    assert code == 0, out
    result = json.loads((tmp_path / "x.json").read_text())
    assert result["embed_dim"] == 48 and 0.0 < result["value"] <= 100.0
    code, _, err = _run(capsys, "retrieval", str(ben), "--model", str(ckpt))  # S1 has no red, green, blue
    assert code == 2 and "takes red, green, blue bands" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------- class folders
def test_knn_separates_water_vegetation_and_shore(virginia: Path, tmp_path: Path, capsys) -> None:
    patches = labelled_folder(virginia)
    assert patches.classes == ("shore", "vegetation", "water") and len(patches) == 3 * PER_CLASS
    assert not patches.multilabel and np.bincount(patches.labels()).tolist() == [PER_CLASS] * 3
    train, test = split_patches(patches, 0.25, seed=0)
    assert np.bincount(test.labels()).tolist() == [3, 3, 3]  # stratified
    assert {p.id for p in train.pairs}.isdisjoint(p.id for p in test.pairs)
    code, out, _ = _run(capsys, "knn", str(virginia), "--test-fraction", "0.25", "--json", str(tmp_path / "k.json"))
    assert code == 0
    result = json.loads((tmp_path / "k.json").read_text())
    assert result["metric"] == "top1_accuracy" and result["test"]["n"] == 9
    # measured: 88.9 % (seed 0), 88.9–100 % over seeds 0–7; chance 33 %
    assert result["value"] >= 77.0, out
    # the same patches listed in a CSV (paths relative to it) give the same split and the same accuracy
    listing = virginia / "patches.csv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows([p.paths["image"].relative_to(virginia).as_posix(), p.labels[0]] for p in patches.pairs)
    try:
        from_csv = load_labelled(listing)
        assert from_csv.classes == patches.classes and (from_csv.labels() == patches.labels()).all()
        code, out_csv, _ = _run(capsys, "knn", str(listing), "--test-fraction", "0.25")
        expected = f"kNN (k 20, T 0.07): top-1 accuracy {result['value']:.1f} % on 9 test patches"
        assert code == 0 and out_csv.splitlines()[-1] == expected
    finally:
        listing.unlink()
    code, out, _ = _run(capsys, "linear-probe", str(virginia), "--test-fraction", "0.25", "--epochs", "30")
    assert code == 0 and "linear probe (30 epochs): top-1 accuracy" in out


def test_multilabel_csv(ben: Path, tmp_path: Path, capsys) -> None:
    listing = tmp_path / "ben.csv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "labels"])
        writer.writerows([p.paths["s2"], ";".join(p.labels)] for p in bigearthnet_pairs(ben))
    patches = load_labelled(listing)
    assert patches.multilabel and len(patches.classes) == 10 and patches.labels().shape == (6, 10)
    code, out, _ = _run(capsys, "knn", str(listing), "--test-fraction", "0.34")
    assert code == 0 and "10 classes, multi-label" in out and "micro mAP" in out


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_a_clear_error(ben: Path, virginia: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    lonely = tmp_path / "lonely"
    for name, files in (("water", ["water_00.tif"]), ("shore", ["shore_00.tif", "shore_01.tif"])):
        (lonely / name).mkdir(parents=True)
        for f in files:
            (lonely / name / f).write_bytes((virginia / name / f).read_bytes())
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("path,labels\n" + "".join(f"{virginia / 'water' / f'water_0{i}.tif'},\n" for i in range(3)))
    cases = [
        (["knn", str(ben), "--test-fraction", "1.5"], "--test-fraction must be between 0 and 1"),
        (["knn", str(ben), "--test-fraction", "0.01"], None),  # 1 test patch of 6: fine
        (["knn", str(tmp_path / "empty")], "has no class sub-folder"),
        (["knn", str(tmp_path / "missing")], "does not exist"),
        (["knn", str(lonely)], "at least 2 patches per class; too few in water (1)"),
        (["knn", str(unlabelled)], "no patch has a label"),
        (["knn", str(ben), "--model", str(tmp_path / "nope.safetensors")], "does not exist"),
        (["knn", str(ben), "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["knn"], "no dataset"),
        (["knn", str(ben), "--sensor", "sentinel9"], "unknown sensor preset 'sentinel9'"),
        (["linear-probe", str(ben), "--epochs", "0"], "--epochs must be >= 1"),
        (["knn", str(ben), "--json", str(tmp_path / "no" / "k.json")], "folder"),
        (["retrieval", str(tmp_path / "empty")], "no sensor sub-folder"),
        (["retrieval", str(ben), "--sensors", "s2", "s3"], "not in"),
    ]
    for args, message in cases:
        code, _, err = _run(capsys, *args)
        if message is None:
            assert code == 0, err
            continue
        assert code == 2, (args, err)
        assert message in err and "Traceback" not in err, (args, err)
        assert err.startswith(f"msfm eval {args[0]}: error: ")
