"""qgis_plugin.runtime: torch keeps its own BLAS inside a process that exports the system BLAS (as QGIS does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SYSTEM_BLAS = Path("/lib/x86_64-linux-gnu/libblas.so.3")

PRODUCT = """
import ctypes, hashlib, os, sys
sys.path.insert(0, {repo!r})
from qgis_plugin import runtime
if {export_blas}:
    ctypes.CDLL({blas!r}, mode=os.RTLD_GLOBAL)   # what the QGIS executable does at start-up (GDAL → OpenBLAS)
flags = sys.getdlopenflags()
print("EXPORTS", runtime.host_exports_blas())
torch = runtime.import_torch() if {fix} else __import__("torch")
print("FLAGS_RESTORED", sys.getdlopenflags() == flags)
g = torch.Generator().manual_seed(0)
a, b = torch.randn(257, 511, generator=g), torch.randn(511, 263, generator=g)
print("PRODUCT", hashlib.sha1(torch.nn.functional.linear(a, b.T).numpy().tobytes()).hexdigest())
"""


def product(export_blas: bool, fix: bool) -> dict[str, str]:
    code = PRODUCT.format(repo=str(REPO), export_blas=export_blas, fix=fix, blas=str(SYSTEM_BLAS))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


@pytest.mark.slow  # three Python subprocesses that import torch: ~5 s
@pytest.mark.skipif(not SYSTEM_BLAS.exists(), reason=f"no system BLAS at {SYSTEM_BLAS}")
def test_import_torch_keeps_torchs_own_blas_when_the_host_exports_one() -> None:
    plain = product(export_blas=False, fix=False)
    hijacked = product(export_blas=True, fix=False)
    fixed = product(export_blas=True, fix=True)
    assert plain["EXPORTS"] == "False" and hijacked["EXPORTS"] == fixed["EXPORTS"] == "True"
    assert fixed["FLAGS_RESTORED"] == "True"
    if hijacked["PRODUCT"] == plain["PRODUCT"]:
        pytest.skip("this system BLAS gives torch's bits: the hijack cannot be told apart here")
    # Same bits as torch alone: its GEMM ran on its own BLAS, not on the one the host exported.
    assert fixed["PRODUCT"] == plain["PRODUCT"]
