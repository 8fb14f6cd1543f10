"""`msfm train` (engine CLI + the msfm.commands entry point of the training package) and `python -m training`."""

from __future__ import annotations

import csv
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from engine import cli as engine_cli
from engine.models import load_model
from tests.conftest import DATA, shared_file

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "configs" / "smarties-mae-tiny-cpu.yaml"


def test_msfm_train_runs_the_tiny_config(tmp_path, capsys) -> None:
    shared_file("data", "s2_l1c_13band_10m_virginia.tif")
    out = tmp_path / "run"
    args = ["train", "smarties-mae", str(TINY), "--out-dir", str(out), "--no-progress",
            "--set", "run.steps=2", "--set", f"data.data_dir={DATA}", "--set", "data.prefetch=0"]
    assert engine_cli.main(args) == 0
    text = capsys.readouterr().out
    exported = out / "export" / "smarties-mae-tiny-cpu.safetensors"
    assert "done: step 2/2 (steps)" in text and f"exported: {exported}" in text
    with open(out / "log.csv", newline="") as fh:
        assert [row["step"] for row in csv.DictReader(fh)] == ["1", "2"]
    model = load_model(out / "export" / "smarties-mae-tiny-cpu.safetensors")
    assert (model.embed_dim, model.depth, model.num_heads, model.grid_size) == (64, 2, 2, 4)
    # the run folder is protected; --resume continues it (here: nothing left to do)
    assert engine_cli.main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert engine_cli.main([*args, "--resume"]) == 0
    assert "done: step 2/2 (steps), 0 steps" in capsys.readouterr().out


def test_msfm_train_reports_config_errors(tmp_path, capsys) -> None:
    code = engine_cli.main(["train", "smarties-mae", str(TINY), "--out-dir", str(tmp_path), "--set", "optim.wd=1"])
    assert code == 2
    assert "unknown key optim.wd" in capsys.readouterr().err
    assert engine_cli.main(["train", "smarties-mae", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_config_must_match_the_recipe(capsys) -> None:
    assert engine_cli.main(["train", "xstars-continual", "xstars-tiny-cpu"]) == 2
    assert "is a 'xstars' config, not 'xstars-continual'" in capsys.readouterr().err


def test_training_registers_the_train_entry_point() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="msfm.commands")}
    assert eps.get("train") == "training.cli:register"


def test_train_without_the_training_package_says_how_to_install(monkeypatch, capsys) -> None:
    monkeypatch.setattr(engine_cli, "_entry_points", lambda group: [])
    assert engine_cli.main(["train", "smarties-mae", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "msfm train: comes with the msfm training package" in err and "pip install" in err


def test_broken_plugin_does_not_break_msfm(monkeypatch, capsys) -> None:
    class BrokenEntryPoint:
        name, value = "train", "missing_module:register"

        def load(self):
            raise ModuleNotFoundError("No module named 'missing_module'")

    monkeypatch.setattr(engine_cli, "_entry_points", lambda group: [BrokenEntryPoint()])
    assert engine_cli.main(["sensors"]) == 0
    capsys.readouterr()
    assert engine_cli.main(["train", "anything"]) == 2
    err = capsys.readouterr().err
    assert "missing_module:register failed to load" in err and "No module named" in err


def test_python_m_training_keeps_working() -> None:
    for args in (["train", "smarties-mae", "--help"], ["pretrain-demo", "--help"]):
        proc = subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "usage: python -m training" in proc.stdout
