"""torch's matrix-product speed inside a process that exports a system BLAS globally (as QGIS does), and the fix.

The QGIS desktop and ``qgis_process`` executables load GDAL, and through it the system OpenBLAS, in the global
symbol scope. torch's CPU GEMMs call ``sgemm_``, which then binds to that BLAS instead of torch's own MKL.
``qgis_plugin.runtime.import_torch`` loads torch with ``RTLD_DEEPBIND`` in that case. Each configuration runs in a
fresh interpreter; figures are GFLOP/s of a 1024² fp32 matmul and the ratio to the plain interpreter, same run::

    .venv/bin/python bench/host_blas.py [--blas /lib/x86_64-linux-gnu/libblas.so.3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SNIPPET = """
import ctypes, os, sys, time
sys.path.insert(0, {repo!r})
if {load_blas}:
    ctypes.CDLL({blas!r}, mode=os.RTLD_GLOBAL)   # what the QGIS executable does at start-up
if {fix}:
    from qgis_plugin.runtime import import_torch
    torch = import_torch()
else:
    import torch
a = torch.randn(1024, 1024)
torch.mm(a, a)
best = 0.0
for _ in range(5):
    t = time.perf_counter()
    for _ in range(10):
        torch.mm(a, a)
    best = max(best, 10 * 2 * 1024 ** 3 / (time.perf_counter() - t) / 1e9)
print(best)
"""

CASES = (
    ("plain interpreter (baseline)", False, False),
    ("system BLAS exported globally, plain `import torch`", True, False),
    ("system BLAS exported globally, runtime.import_torch()", True, True),
)


def measure(load_blas: bool, fix: bool, blas: str) -> float:
    code = SNIPPET.format(repo=str(REPO), load_blas=load_blas, fix=fix, blas=blas)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blas", default="/lib/x86_64-linux-gnu/libblas.so.3", help="system BLAS to export")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (best of each is kept)")
    args = parser.parse_args()
    best = {name: 0.0 for name, _, _ in CASES}
    for _ in range(args.repeats):  # interleaved, so drift of the machine hits every case alike
        for name, load_blas, fix in CASES:
            best[name] = max(best[name], measure(load_blas, fix, args.blas))
    base = best[CASES[0][0]]
    for name, _, _ in CASES:
        print(f"{name:<58} {best[name]:7.1f} GFLOP/s  {best[name] / base:5.2f}× baseline")


if __name__ == "__main__":
    main()
