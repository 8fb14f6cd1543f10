"""Shared test fixtures: paths to ../shared (real rasters and reference fixtures) and an offline Hub cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MSFM_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: the Hub is offline and its cache is a fresh temporary folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))


def shared_file(*parts: str) -> Path:
    """Path of a file under ../shared, skipping the test when the shared folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (set MSFM_SHARED to the shared folder)")
    return path


#: Prepended to subprocess scripts by :func:`run_without_torch`: torch and onnx cannot be imported there, as in a
#: QGIS Python that has onnxruntime only.
HIDE_TORCH = f"""
import sys, importlib.abc
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx'):
            raise ImportError(name + ' is hidden for this test')
sys.meta_path.insert(0, _Hide())
sys.path.insert(0, {str(REPO)!r})
"""


def run_without_torch(script: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """Run a Python ``script`` in a subprocess where torch and onnx are hidden from the import system."""
    return subprocess.run([sys.executable, "-c", HIDE_TORCH + textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})
