"""Static checks of the engine: ruff (pycodestyle, pyflakes, import order, bugbear, Google-style docstrings) and mypy.

Both run as ``make test`` and CI run them, from the repository root with the settings in pyproject.toml
(``[tool.ruff*]``, ``[tool.mypy*]``) and the versions pinned in requirements.txt. mypy keeps its cache in
``.mypy_cache`` (ignored by git): about 20 s from a cold cache, under a second warm.

bandit (the security linter plugins.qgis.org runs on uploads) checks engine/, qgis_plugin/ and training/ with its
default settings: no finding of medium or high severity, of any confidence (a few seconds).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The virtual environment's bin folder (not resolved: .venv/bin/python is a link to the system interpreter).
BIN = Path(sys.executable).parent


def _tool(name: str) -> Path:
    """The executable ``name`` next to the running interpreter; skips the test when it is not installed."""
    for candidate in (BIN / name, BIN / f"{name}.exe"):
        if candidate.is_file():
            return candidate
    pytest.skip(f"{name} is not installed in {BIN} (a dev tool pinned in requirements.txt; run `make setup`)")


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_ruff_engine() -> None:
    result = _run([str(_tool("ruff")), "check", "--no-cache", "--output-format", "concise", "engine"], timeout=120)
    assert result.returncode == 0, f"ruff check engine failed:\n{result.stdout}{result.stderr}"


def test_mypy_engine() -> None:
    result = _run([str(_tool("mypy")), "engine"], timeout=600)
    assert result.returncode == 0, f"mypy engine failed:\n{result.stdout}{result.stderr}"


def test_bandit_medium_and_high() -> None:
    # -ll: severity medium and up; confidence any. -q: no banner, only the findings and the summary.
    result = _run([str(_tool("bandit")), "-r", "-q", "-ll", "engine", "qgis_plugin", "training"], timeout=300)
    assert result.returncode == 0, f"bandit found medium/high severity issues:\n{result.stdout}{result.stderr}"
