"""Reliability (issue 14): no input is ever lost, every bad input gets one clear line, every interruption cleans up.

Every case runs on a copy of a real raster (the committed 96 × 128 Sentinel-2 crop, tests/data) and asserts the exit
status, the message and that the input and any existing output are byte-for-byte unchanged.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

import engine.atomic
from engine.atomic import PARTIAL_MARK, atomic_output, remove_abandoned, scratch_folder
from engine.cli import main
from engine.errors import InputRasterError, OutputError, SettingsError
from engine.maps import ClusterSettings, cluster_raster, embed_raster, similarity_raster
from engine.outputs import check_outputs
from engine.segmentation import HeadFitSettings
from tests.conftest import REPO, TINY_S2

MSFM = [sys.executable, "-m", "engine"]


@pytest.fixture()
def scene(tmp_path: Path) -> Path:
    """A private copy of the committed Sentinel-2 crop (never the repository's file)."""
    path = tmp_path / "scene.tif"
    shutil.copyfile(TINY_S2, path)
    return path


def _digest(path: Path) -> bytes:
    return path.read_bytes()


def _leftovers(folder: Path) -> list[str]:
    """Hidden files and partial folders in ``folder`` (what an interrupted run would leave)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


# --- the output policy: check_outputs and every writer ---------------------------------------------------------------

def test_an_output_that_is_the_input_is_refused_however_it_is_written(scene: Path, demo_model) -> None:
    before = _digest(scene)
    link = scene.with_name("link.tif")
    link.symlink_to(scene)
    spellings = [scene, scene.parent / "." / scene.name, Path(os.path.relpath(scene)), link]
    for output in spellings:
        for overwrite in (False, True):
            with pytest.raises(OutputError, match="is the input raster"):
                embed_raster(scene, output, demo_model, overwrite=overwrite)
    assert _digest(scene) == before


def test_an_existing_output_is_replaced_only_when_asked(scene: Path, tmp_path: Path, demo_model) -> None:
    out = tmp_path / "emb.tif"
    out.write_bytes(b"an earlier product")
    with pytest.raises(OutputError, match="already exists.*--overwrite.*overwrite=True"):
        embed_raster(scene, out, demo_model)
    assert out.read_bytes() == b"an earlier product"
    res = embed_raster(scene, out, demo_model, overwrite=True)
    with rasterio.open(res.path) as ds:
        assert ds.count == demo_model.embed_dim
    assert _leftovers(tmp_path) == []


def test_derived_products_refuse_inputs_as_outputs(scene: Path, tmp_path: Path, demo_model) -> None:
    emb = embed_raster(scene, tmp_path / "emb.tif", demo_model).path
    before = {p: _digest(p) for p in (scene, emb)}
    with pytest.raises(OutputError, match="is the embeddings"):
        cluster_raster(scene, emb, embeddings=emb, clustering=ClusterSettings(k=3), overwrite=True)
    with pytest.raises(OutputError, match="embeddings output .* is the input raster"):
        cluster_raster(scene, tmp_path / "c.tif", demo_model, embeddings_output=scene, overwrite=True)
    with pytest.raises(OutputError, match="same file"):
        similarity_raster(scene, tmp_path / "s.tif", demo_model, query=[{"type": "Point", "coordinates": [0, 0]}],
                          embeddings_output=tmp_path / "s.tif")
    assert before == {p: _digest(p) for p in before}


def test_check_outputs_names_folder_suffix_and_permission_problems(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist; create it first"):
        check_outputs({"output": tmp_path / "missing" / "x.tif"})
    with pytest.raises(OutputError, match="is a folder"):
        check_outputs({"output": tmp_path})
    with pytest.raises(OutputError, match=r"must end in \.tif or \.tiff.*name it x\.tif"):
        check_outputs({"output": tmp_path / "x.png"}, suffixes={"output": (".tif", ".tiff")})
    with pytest.raises(OutputError, match="path is empty"):
        check_outputs({"output": ""})
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(OutputError, match="permission denied"):
            check_outputs({"output": locked / "x.tif"})


# --- atomic outputs: no partial file, whatever happens ---------------------------------------------------------------

def test_a_failed_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied", dst)

    monkeypatch.setattr(engine.atomic.os, "replace", refuse)
    with pytest.raises(PermissionError), atomic_output(tmp_path / "x.tif") as tmp:
        tmp.write_bytes(b"data")
        tmp.with_name(tmp.name + ".aux.xml").write_text("<PAMDataset/>")
    assert list(tmp_path.iterdir()) == []


def test_abandoned_partial_folders_are_removed_but_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "x.tif"
    dead = tmp_path / f".x.tif{PARTIAL_MARK}dead"
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "x.tif").write_bytes(b"half")
    other = tmp_path / f".y.tif{PARTIAL_MARK}dead"  # another output's folder: not this run's business
    other.mkdir()
    (other / ".lock").touch()
    with scratch_folder(target) as live:
        assert not dead.exists() and other.exists()
        assert remove_abandoned(target) == []  # our own folder is locked: kept
        assert live.exists()
    assert not live.exists()


# --- interruptions: SIGTERM / SIGHUP clean up; SIGKILL leftovers go with the next run --------------------------------

def _start_embed(scene: Path, out: Path) -> subprocess.Popen[str]:
    # a 4× upsampled, fully overlapping run of the crop: a few seconds of work, plenty of time to be interrupted
    args = [*MSFM, "embed", str(scene), str(out), "--scale", "8", "--overlap-px", "208", "--batch-size", "1",
            "--threads", "1"]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_partial(folder: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(PARTIAL_MARK in p.name for p in folder.iterdir()):
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"the run never started writing (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    time.sleep(0.5)  # inside the tile loop


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_termination_signals_remove_partial_outputs(scene: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "emb.tif"
    proc = _start_embed(scene, out)
    _wait_for_partial(tmp_path, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name}; partial outputs were removed" in err
    assert "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_killed_run_leaves_a_folder_the_next_run_removes(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb.tif"
    proc = _start_embed(scene, out)
    _wait_for_partial(tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=60)
    left = _leftovers(tmp_path)
    assert len(left) == 1 and PARTIAL_MARK in left[0]  # SIGKILL gives no chance to clean up
    done = subprocess.run([*MSFM, "embed", str(scene), str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "left by an earlier run that was killed" in done.stderr
    assert out.exists() and _leftovers(tmp_path) == []


# --- the command line: one line, exit 2, before any work -------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    (["--device", "banana"], "unknown device 'banana'"),
    (["--threads", "-1"], "threads must be ≥ 1"),
    (["--tile-size-px", "100"], "multiple of the patch size"),
    (["--tile-size-px", "2048"], "at most 1024"),
    (["--overlap-px", "224"], "must be smaller than tile_size_px"),
    (["--batch-size", "0"], "batch_size must be ≥ 1"),
    (["--scale", "100"], "scale must be between"),
    (["--model", ""], "the model is empty"),
])
def test_bad_settings_are_one_line_and_exit_2(scene: Path, tmp_path: Path, capsys, extra: list[str],
                                              message: str) -> None:
    before = _digest(scene)
    code, err = _cli(["embed", str(scene), str(tmp_path / "e.tif"), *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("msfm: error: ")
    assert _digest(scene) == before and not (tmp_path / "e.tif").exists()


def test_cli_refuses_outputs_that_destroy_inputs_or_each_other(scene: Path, tmp_path: Path, capsys) -> None:
    before = _digest(scene)
    emb = tmp_path / "emb.tif"
    head = tmp_path / "head.safetensors"
    head.write_bytes(b"a trained head")
    cases = [
        (["embed", str(scene), str(scene)], "is the input"),
        (["embed", str(scene), f"{tmp_path}/../{tmp_path.name}/./scene.tif", "--overwrite"], "is the input"),
        (["embed", str(scene), str(emb), "--pca", str(emb)], "same file"),
        (["embed", str(scene), str(emb), "--quicklook", str(emb)], "same file"),
        (["embed", str(scene), str(emb), "--quicklook", str(tmp_path / "q.tif")], "must end in .png"),
        (["embed", str(scene), str(tmp_path / "e.png")], "must end in .tif"),
        (["cluster", str(scene), str(tmp_path / "c.tif"), "--embeddings-output", str(scene)], "is the input"),
        (["cluster", str(scene), str(tmp_path / "c.tif"), "--quicklook", str(tmp_path / "no" / "c.png")],
         "does not exist"),
        (["segment", str(scene), str(head), str(head)], "is the head"),
        (["train-head", str(scene), str(head), "--label-raster", str(scene)], "already exists"),
        (["export-onnx", str(tmp_path / "missing" / "m.onnx")], f"{tmp_path / 'missing'}, does not exist"),
        (["export-onnx", str(tmp_path / "m.onnx"), "--tile-size-px", "100"], "multiple of the patch size"),
    ]
    for args, message in cases:
        code, err = _cli(args, capsys)
        assert (code, message in err, "Traceback" in err) == (2, True, False), (args, err)
    assert _digest(scene) == before and head.read_bytes() == b"a trained head"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.safetensors", "scene.tif"]


def test_train_head_settings_are_checked_before_any_work(scene: Path, tmp_path: Path, capsys) -> None:
    for extra, message in ((["--steps", "0"], "steps must be at least 1"), (["--lr", "-1"], "lr must be positive"),
                           (["--seed", "-1"], "seed must be between")):
        code, err = _cli(["train-head", str(scene), str(tmp_path / "h.safetensors"), "--label-raster", str(scene),
                          *extra], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]
    with pytest.raises(SettingsError):
        HeadFitSettings(steps=0)


def test_a_corrupt_onnx_model_is_a_checkpoint_error(scene: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "random.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    code, err = _cli(["embed", str(scene), str(tmp_path / "e.tif"), "--model", str(bad)], capsys)
    assert code == 2 and "is not a readable ONNX model" in err and "re-export" in err


def test_debug_shows_the_traceback(scene: Path, tmp_path: Path, capsys) -> None:
    code, err = _cli(["--debug", "embed", str(scene), str(tmp_path / "e.tif"), "--device", "banana"], capsys)
    assert code == 2 and "Traceback" in err and "unknown device" in err


def test_a_closed_pipe_is_not_an_error() -> None:
    # `msfm sensors | head -1`: the reader goes away after one line
    proc = subprocess.run(f"{sys.executable} -m engine sensors | head -1", shell=True, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


# --- rasters pixel-resolution maps cannot follow ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rotated", "ungeoreferenced"])
def test_rotated_or_ungeoreferenced_rasters_are_refused_before_any_work(scene: Path, tmp_path: Path,
                                                                        kind: str) -> None:
    odd = tmp_path / f"{kind}.tif"
    with rasterio.open(scene) as src:
        profile, data = src.profile, src.read()
        t = src.transform
    if kind == "rotated":
        profile.update(transform=t * Affine.rotation(20))
    else:
        profile.update(transform=Affine.identity(), crs=None)
    with rasterio.open(odd, "w", **profile) as dst:
        dst.write(data)
    # no model: the refusal must come before any embedding work
    with pytest.raises(InputRasterError, match="north-up.*--resolution patch"):
        cluster_raster(odd, tmp_path / "c.tif", None, clustering=ClusterSettings(k=3))
    with pytest.raises(InputRasterError, match="north-up"):
        similarity_raster(odd, tmp_path / "s.tif", None, query=[{"type": "Point", "coordinates": [0, 0]}])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["scene.tif", odd.name])


# --- a full disk ---------------------------------------------------------------------------------------------------

@pytest.fixture()
def small_disk(tmp_path: Path) -> Path:
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(scene: Path, small_disk: Path, capsys) -> None:
    code, err = _cli(["embed", str(scene), str(small_disk / "emb.tif")], capsys)
    assert code == 2 and "no space left on the device holding" in err and "Traceback" not in err, err
    assert list(small_disk.iterdir()) == []


def test_a_vrt_with_a_missing_source_names_the_file(scene: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "part.tif"
    shutil.copyfile(scene, source)
    vrt = tmp_path / "mosaic.vrt"
    subprocess.run(["gdalbuildvrt", "-q", str(vrt), str(source)], check=True)
    source.unlink()
    code, err = _cli(["embed", str(vrt), str(tmp_path / "e.tif")], capsys)
    assert code == 2 and "refers to 1 missing source file(s)" in err and "part.tif" in err, err


def test_every_output_gets_the_usual_file_mode(tmp_path: Path) -> None:
    """safetensors creates its files 0600; outputs (head files among them) get what any new file gets (0644 here)."""
    import torch
    from safetensors.torch import save_file

    from engine.atomic import atomic_output

    with atomic_output(tmp_path / "head.safetensors", sidecars=()) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "head.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
