"""What the Python environment running QGIS provides to the plugin: the engine, its dependencies, devices, versions.

- :data:`engine` is the model engine's package; the plugin uses its public API only (``engine.spectral.resolve_bands``,
  ``engine.maps.cluster_raster``, …: names in the ``__all__`` of ``engine`` or of a subpackage). The packaged plugin
  vendors the engine under its own package (``msfm/engine``), so nothing named ``engine`` is put on QGIS's global
  ``sys.path``; a development checkout (tests, ``qgis_process`` pointed at the repository) uses the repository's
  top-level ``engine`` package. Importing it is instant: the engine imports numpy, rasterio or torch only when a name
  that needs them is first used.
- :func:`missing_packages` / :func:`require` check the engine's Python dependencies without importing them, and
  explain exactly what to install. The plugin loads and lists its algorithms without torch; running one that needs a
  missing package stops with that explanation. Nothing is ever installed silently: the dock's *Install packages…*
  (:mod:`.packages`) installs on request.
- :func:`device_report` and :func:`diagnostics` describe devices and versions for the log and for bug reports.

No Qt import here: this module is used from Processing's worker threads and from ``qgis_process``.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import platform
import sys
from types import ModuleType
from typing import Iterable, Optional

__all__ = (
    "DependencyError",
    "BACKENDS",
    "REQUIREMENTS",
    "device_report",
    "diagnostics",
    "engine",
    "engine_version",
    "host_exports_blas",
    "import_torch",
    "install_instructions",
    "is_installed",
    "missing_packages",
    "onnxruntime_report",
    "require",
    "requirement_kind",
)


try:  # the packaged plugin: the engine vendored as <plugin>/engine
    from . import engine
except ImportError:  # a development checkout: the repository's top-level package
    import engine  # type: ignore[no-redef]


def engine_version() -> str:
    """The engine's version string (no heavy import)."""
    return str(engine.__version__)


#: Import name → pip requirement of the engine's dependencies (versions known to work with QGIS's GDAL/numpy).
_IMPORT_TO_PIP = {
    "numpy": "numpy<2",
    "rasterio": "rasterio>=1.3",
    "affine": "affine",
    "torch": "torch>=2.1",
    "safetensors": "safetensors>=0.4",
    "huggingface_hub": "huggingface_hub>=0.20",
    "sklearn": "scikit-learn>=1.3",
    "onnxruntime": "onnxruntime>=1.17",
    "onnx": "onnx>=1.15",
    "distributed": "distributed>=2024.8",
    "pystac": "pystac-core>=1.15",
}

#: Inference backends: ``torch`` runs the checkpoints themselves, ``onnx`` an exported encoder (or an exported
#: encoder + segmentation head) with ONNX Runtime.
BACKENDS = ("torch", "onnx")

#: Which packages each kind of work needs. ``<kind>_onnx`` is ``<kind>`` run with the ONNX backend on an exported
#: ``.onnx`` file: ONNX Runtime instead of torch (see :func:`requirement_kind`). ``segmentation_onnx`` runs an
#: exported segmenter (encoder and head in one graph); ``export_onnx`` writes those files (torch + onnx; ONNX Runtime
#: too for the int8 and float16 copies).
REQUIREMENTS = {
    "bands": ("numpy", "rasterio"),
    "download": ("huggingface_hub",),
    "inference": ("numpy", "rasterio", "torch", "safetensors", "huggingface_hub"),
    "clustering": ("numpy", "rasterio", "torch", "safetensors", "huggingface_hub", "sklearn"),
    "segmentation": ("numpy", "rasterio", "torch", "safetensors", "huggingface_hub"),
    "export_onnx": ("numpy", "rasterio", "torch", "onnx", "safetensors", "huggingface_hub"),
    "inference_onnx": ("numpy", "rasterio", "onnxruntime"),
    "clustering_onnx": ("numpy", "rasterio", "onnxruntime", "sklearn"),
    "segmentation_onnx": ("numpy", "rasterio", "onnxruntime"),
    "batch": ("numpy", "rasterio", "torch", "safetensors", "huggingface_hub", "distributed", "pystac"),
    "batch_onnx": ("numpy", "rasterio", "onnxruntime", "distributed", "pystac"),
}


def requirement_kind(kind: str, backend: str = "torch") -> str:
    """The key of :data:`REQUIREMENTS` for ``kind`` run with ``backend`` (``"inference"`` + ``"onnx"`` →
    ``"inference_onnx"``); kinds without an ONNX variant are returned unchanged."""
    if backend == "onnx" and f"{kind}_onnx" in REQUIREMENTS:
        return f"{kind}_onnx"
    return kind


def is_installed(name: str) -> bool:
    """Whether ``name`` can be imported (``find_spec``: nothing is imported). An import hook that refuses the name
    (raises ImportError) or a broken parent package count as not available."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class DependencyError(RuntimeError):
    """Python packages the engine needs are not importable in QGIS's Python; the message says how to install them.

    Attributes:
        missing: Import names of the missing packages.
    """

    def __init__(self, missing: Iterable[str]) -> None:
        self.missing = sorted(set(missing))
        super().__init__(install_instructions(self.missing))


def missing_packages(kind: str) -> list[str]:
    """Import names of the packages ``kind`` (a key of :data:`REQUIREMENTS`) needs and that cannot be found.

    Uses ``importlib.util.find_spec``: nothing is imported, so the check is instant and cannot crash QGIS.
    """
    return [name for name in REQUIREMENTS[kind] if not is_installed(name)]


def require(kind: str) -> None:
    """Raise :class:`DependencyError` when a package needed for ``kind`` is missing."""
    missing = missing_packages(kind)
    if missing:
        raise DependencyError(missing)


def install_instructions(missing: Iterable[str]) -> str:
    """Exact, platform-specific commands that install ``missing`` into the Python QGIS runs on."""
    missing = list(missing)
    pips = " ".join(f'"{_IMPORT_TO_PIP.get(name, name)}"' for name in missing)
    if "numpy" not in missing:
        pips += ' "numpy<2"'  # never let pip upgrade QGIS's numpy past what its GDAL bindings were built for
    lines = [
        f"msfm needs Python package(s) that QGIS's Python does not have: {', '.join(missing)}.",
        "In QGIS: open the msfm dock (Plugins toolbar, or Raster ▸ msfm) and click 'Install packages…' (ONNX Runtime",
        "or PyTorch, installed into a folder of your QGIS profile; QGIS itself is left as it is).",
        f"By hand: QGIS runs Python {platform.python_version()} from {sys.prefix}. Install them there, then restart "
        "QGIS:",
    ]
    if sys.platform.startswith("win"):
        lines.append(f"  Windows: open the 'OSGeo4W Shell' (as administrator) and run: python -m pip install {pips}")
    elif sys.platform == "darwin":
        lines.append(f"  macOS: {sys.prefix}/bin/python3 -m pip install --user {pips}")
    else:
        lines.append(f"  Linux: python3 -m pip install --user {pips}")
        lines.append("  (Debian/Ubuntu refuse --user installs into the system Python: add --break-system-packages,")
        lines.append("  or install into a venv made with `python3 -m venv --system-site-packages` and start QGIS")
        lines.append("  with PYTHONPATH=<venv>/lib/python3.X/site-packages.)")
    if "torch" in missing:
        lines.append("  torch: the CPU build is enough; for an NVIDIA GPU pick the CUDA build matching your driver at")
        lines.append("  https://pytorch.org/get-started/locally/ (e.g. --index-url https://download.pytorch.org/whl/cu126).")
    lines.append("The plugin installs packages only when you ask it to.")
    return "\n".join(lines)


def _version(module: str) -> str:
    if not is_installed(module):
        return "not installed"
    try:
        mod = import_torch() if module == "torch" else importlib.import_module(module)
    except Exception as exc:  # a broken install must still be reported, not crash the report
        return f"import failed: {exc}"
    return str(getattr(mod, "__version__", "installed"))


def host_exports_blas() -> bool:
    """True when the process exports a BLAS in its global symbol scope (``sgemm_`` resolvable without a library).

    The QGIS and ``qgis_process`` executables link GDAL, which on Debian/Ubuntu pulls the system OpenBLAS in at
    start-up, globally. A library loaded later that calls ``sgemm_`` (torch's CPU matrix products do) then gets
    that BLAS instead of its own MKL: measured 41 instead of 234 GFLOP/s here (``bench/host_blas.py``). A plain
    Python interpreter that imports ``qgis.core`` loads GDAL locally and is not affected.
    """
    try:
        return hasattr(ctypes.CDLL(None), "sgemm_")
    except OSError:  # no dlopen(NULL) on this platform
        return False


def import_torch() -> ModuleType:
    """Import torch so that it keeps its own BLAS inside a QGIS process (see :func:`host_exports_blas`).

    When the host exports a BLAS, torch's libraries are loaded with ``RTLD_DEEPBIND`` (glibc): their symbols
    resolve inside torch first, so GEMMs run on torch's MKL. Elsewhere this is a plain ``import torch``. Every
    torch import of the plugin goes through here first; the engine's own ``import torch`` then finds the module.

    Raises:
        DependencyError: torch is not installed.
    """
    if "torch" in sys.modules:
        return sys.modules["torch"]
    if not is_installed("torch"):
        raise DependencyError(["torch"])
    flags = sys.getdlopenflags()
    if host_exports_blas() and hasattr(os, "RTLD_DEEPBIND"):
        sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import torch
    finally:
        sys.setdlopenflags(flags)
    return torch


def device_report() -> str:
    """One line on the compute devices torch sees (imports torch; call it from a worker thread or on demand)."""
    if not is_installed("torch"):
        return "torch is not installed"
    torch = import_torch()

    built = torch.version.cuda
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return f"CUDA available: {names} (torch {torch.__version__}, CUDA {built})"
    if built:
        return f"no CUDA GPU visible to torch {torch.__version__} (built for CUDA {built}); running on CPU"
    return f"CPU only: torch {torch.__version__} is a CPU build; install a CUDA build of torch to use an NVIDIA GPU"


def cpu_threads() -> str:
    """The CPU threads torch uses and the OpenMP/MKL libraries it found (imports torch)."""
    torch = import_torch()

    info = [line.strip() for line in torch.__config__.parallel_info().splitlines()]
    omp = next((line for line in info if line.startswith("omp_get_max_threads")), "")
    return f"torch CPU threads {torch.get_num_threads()} ({omp or 'no OpenMP'}; {os.cpu_count()} cores)"


def onnxruntime_report() -> str:
    """One line on ONNX Runtime: its version, execution providers and CPU cores (never imports torch)."""
    if not is_installed("onnxruntime"):
        return "onnxruntime is not installed"
    try:
        import onnxruntime
    except Exception as exc:  # a broken install must be reported, not crash the run's log
        return f"onnxruntime import failed: {exc}"
    providers = ", ".join(onnxruntime.get_available_providers())
    return f"onnxruntime {onnxruntime.__version__}, execution providers: {providers} ({os.cpu_count()} CPU cores)"


def diagnostics(qgis_version: Optional[str] = None) -> str:
    """A Markdown report of versions, devices and the model cache, for bug reports."""
    lines = ["### msfm diagnostics", ""]
    if qgis_version:
        lines.append(f"- QGIS: {qgis_version}")
    lines += [
        f"- OS: {platform.platform()}",
        f"- Python: {platform.python_version()} ({sys.executable})",
        f"- engine: {engine.__name__} {engine.__version__}",
    ]
    for module in ("numpy", "rasterio", "torch", "onnxruntime", "safetensors", "huggingface_hub", "sklearn"):
        lines.append(f"- {module}: {_version(module)}")
    lines.append(f"- devices: {device_report()}")
    if is_installed("torch"):
        lines.append(f"- {cpu_threads()}")
    if is_installed("onnxruntime"):
        lines.append(f"- {onnxruntime_report()}")
    if is_installed("rasterio"):
        import rasterio

        lines.append(f"- GDAL (rasterio): {rasterio.__gdal_version__}")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface (default)"
    lines.append(f"- model cache: {cache}")
    try:
        for spec in engine.models.list_models():
            info = engine.models.model_info(spec.name)
            if info.get("available"):
                lines.append(f"  - {spec.name}: {info['status']}")
    except Exception as exc:  # the report must be produced whatever is broken
        lines.append(f"  - model registry unavailable: {exc}")
    return "\n".join(lines)
