"""Package boundaries: engine never imports QGIS or training, and imports without torch for the band registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    """Run code in a fresh interpreter (clean ``sys.modules``) from the repository root; return its stdout."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_engine_does_not_import_qgis_or_training() -> None:
    code = (
        "import sys, engine, engine.bands, engine.cli, engine.cluster, engine.inference, engine.models, "
        "engine.upsample, engine.quicklook, engine.region, engine.similarity, engine.pca\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qgis', 'training', 'PyQt5'))\n"
        "print(','.join(bad))"
    )
    assert run_python(code).strip() == ""


def test_band_registry_works_without_importing_torch() -> None:
    code = (
        "import sys, engine\n"
        "from engine.bands import resolve_bands\n"
        "from engine.spectrum import projection_for\n"
        "assert projection_for('red_2').terms == ((6, 1.0),)\n"
        "print('torch' in sys.modules)"
    )
    assert run_python(code).strip() == "False"
