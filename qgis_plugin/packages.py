"""Installing the engine's Python packages from QGIS, into a folder of the user's QGIS profile.

QGIS ships without torch, ONNX Runtime, rasterio or scikit-learn, and installing them into QGIS's own Python is the
most reported pain of QGIS deep-learning plugins (DLL errors on Windows, a QGIS broken by an upgraded numpy, proxies).
Here pip runs with QGIS's own interpreter but installs into a **plugin-private folder** of the profile
(``<profile>/python/msfm-packages/py3.11``, :func:`packages_folder`), never into QGIS's Python:

- a constraints file pins numpy to the version QGIS has (its GDAL bindings are built against it; ``numpy<2`` where
  QGIS has none), so nothing QGIS imports is replaced; distributions pip put in the folder that QGIS already has at
  the same version are removed again (:func:`prune`);
- pip writes into a hidden partial folder; the folder replaces the previous one only when pip succeeded. On failure or
  cancel the partial folder is removed and the previous installation stays as it was (the rollback);
- :func:`activate` puts the folder at the front of ``sys.path`` when the plugin loads (and right after an install, so
  no restart is needed): packages installed there, and their dependencies at the versions pip chose, come first;
- QGIS's proxy settings (Settings ▸ Options ▸ Network) are passed to pip and to model downloads as ``HTTP(S)_PROXY``
  (:func:`proxy_environment`, :func:`apply_proxy`).

Two choices (:data:`CHOICES`): ONNX Runtime (CPU, small: runs exported models) and PyTorch (every model; CPU wheels,
or CUDA wheels where an NVIDIA GPU is seen). :class:`InstallTask` runs pip as a ``QgsTask`` (progress, cancel, log).
No widget here: the dock shows the dialog (:mod:`.install_dialog`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import quote

from qgis.core import QgsApplication, QgsSettings, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .runtime import engine

__all__ = ("CHOICES", "Choice", "InstallTask", "activate", "apply_proxy", "constraints", "installed_choices",
           "nvidia_gpu", "packages_folder", "pip_command", "pip_launcher", "proxy_environment", "prune")

#: The record of what was installed, in the packages folder.
RECORD = "msfm-installed.json"
#: Where PyTorch's own wheels are: the CPU-only builds (Linux wheels on PyPI are CUDA builds of several GB), and the
#: CUDA builds for Windows (whose PyPI wheels are CPU-only).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu126"


@dataclass(frozen=True)
class Choice:
    """One thing the user can install.

    Attributes:
        key: ``"onnx"`` or ``"torch"``.
        title: Shown on its button.
        detail: One line on what it runs and its size.
        requirements: pip requirement specifiers (the engine's packages for this backend).
    """

    key: str
    title: str
    detail: str
    requirements: tuple[str, ...]


# affine 3 deprecates the `*` rasterio uses (warnings in the QGIS log)
_COMMON = ("rasterio>=1.3", "affine>=2.4,<3", "scikit-learn>=1.3", "huggingface_hub>=0.20", "safetensors>=0.4")
#: The two installs the dock offers.
CHOICES = {
    "onnx": Choice("onnx", "ONNX Runtime (CPU, small)",
                   "Runs exported .onnx models (Export model to ONNX) and every algorithm with them; about 100 MB.",
                   ("onnxruntime>=1.17", *_COMMON)),
    "torch": Choice("torch", "PyTorch (CPU, or CUDA where an NVIDIA GPU is seen)",
                    "Runs every model and trains heads; about 1 GB (CPU) or 3 GB (CUDA).",
                    ("torch>=2.1", *_COMMON)),
}


def packages_folder() -> Path:
    """The plugin-private packages folder of this QGIS profile and Python version (may not exist)."""
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return Path(QgsApplication.qgisSettingsDirPath()) / "python" / "msfm-packages" / version


def activate(folder: Optional[Path] = None) -> bool:
    """Put the packages folder first on ``sys.path`` (once) and forget cached import lookups.

    Returns:
        True when the folder exists (and is now on ``sys.path``).
    """
    folder = folder or packages_folder()
    if not folder.is_dir():
        return False
    path = str(folder)
    if path not in sys.path:
        sys.path.insert(0, path)
    importlib.invalidate_caches()
    return True


def installed_choices(folder: Optional[Path] = None) -> list[str]:
    """The choices installed in the packages folder (from its record)."""
    try:
        return list(json.loads(((folder or packages_folder()) / RECORD).read_text(encoding="utf-8"))["choices"])
    except (OSError, ValueError, KeyError):
        return []


def nvidia_gpu() -> bool:
    """Whether an NVIDIA GPU (driver) is seen: ``nvidia-smi`` on the PATH or the Linux driver's ``/proc`` entry."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()


def constraints() -> str:
    """pip constraints that keep QGIS's numpy: its exact version (``numpy<2`` where QGIS has none)."""
    try:
        return f"numpy=={importlib.metadata.version('numpy')}\n"
    except importlib.metadata.PackageNotFoundError:
        return "numpy<2\n"


#: Where Debian and Ubuntu keep the pip wheel of python3-pip-whl (a dependency of python3-venv), for a QGIS whose
#: Python has no pip module (python3-pip not installed): pip runs from the wheel itself.
PIP_WHEELS = ("/usr/share/python-wheels",)


def pip_launcher(python: str, wheels: tuple[str, ...] = PIP_WHEELS) -> list[str]:
    """How to run pip with ``python``: ``python -m pip``, else pip from a pip wheel (``python pip-X.whl/pip``).

    Raises:
        RuntimeError: Neither is found (the message says how to get pip).
    """
    probe = subprocess.run([python, "-c", "import pip"], capture_output=True, text=True, timeout=60)
    if probe.returncode == 0:
        return [python, "-m", "pip"]
    for folder in wheels:
        found = sorted(Path(folder).glob("pip-*.whl"))
        if found:
            return [python, f"{found[-1]}/pip"]
    raise RuntimeError(f"the Python of QGIS ({python}) has no pip: install it (Debian/Ubuntu: sudo apt install "
                       "python3-pip; Windows: the OSGeo4W installer's python3-pip), then try again")


def pip_command(launcher: list[str], choices: list[str], target: Path, constraints_file: Path, *,
                gpu: bool = False, platform: str = sys.platform) -> list[str]:
    """The pip command line that installs ``choices`` into ``target``.

    Args:
        launcher: How pip runs with QGIS's Python (:func:`pip_launcher`: ``[python, "-m", "pip"]``).
        choices: Keys of :data:`CHOICES` (every choice of the folder: a new install replaces the folder whole).
        target: The folder pip installs into (``--target``).
        constraints_file: :func:`constraints` written to a file.
        gpu: An NVIDIA GPU is seen: torch's CUDA wheels (PyPI's on Linux, PyTorch's index on Windows); else its
            CPU wheels from PyTorch's index on Linux and Windows (PyPI's on macOS).
        platform: ``sys.platform`` of the machine.

    Returns:
        The argument list for ``subprocess``.
    """
    requirements = sorted({r for key in choices for r in CHOICES[key].requirements})
    command = [*launcher, "install", "--target", str(target), "--constraint", str(constraints_file),
               "--no-input", "--disable-pip-version-check", "--progress-bar", "off", *requirements]
    if "torch" in choices and platform != "darwin":
        # an extra index: pip takes the highest version, and a local label (2.5.0+cpu) sorts above 2.5.0
        if not gpu:
            command += ["--extra-index-url", TORCH_CPU_INDEX]
        elif platform.startswith("win"):
            command += ["--extra-index-url", TORCH_CUDA_INDEX]
    return command


def proxy_environment(settings: Optional[QgsSettings] = None) -> dict[str, str]:
    """``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` from QGIS's proxy settings (empty when none is set).

    QGIS keeps them under ``proxy/`` (Settings ▸ Options ▸ Network): ``proxyEnabled``, ``proxyType``
    (``HttpProxy``, ``HttpCachingProxy``, ``Socks5Proxy``; ``DefaultProxy`` = the system's, which the environment
    already carries), ``proxyHost``, ``proxyPort``, ``proxyUser``, ``proxyPassword``, ``proxyExcludedUrls``.
    """
    settings = settings or QgsSettings()
    enabled = str(settings.value("proxy/proxyEnabled", False)).lower() in ("true", "1")
    host = str(settings.value("proxy/proxyHost", "") or "").strip()
    kind = str(settings.value("proxy/proxyType", "") or "")
    if not enabled or not host or kind == "DefaultProxy":
        return {}
    scheme = "socks5" if kind.startswith("Socks5") else "http"
    user = str(settings.value("proxy/proxyUser", "") or "")
    password = str(settings.value("proxy/proxyPassword", "") or "")
    login = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
    port = str(settings.value("proxy/proxyPort", "") or "").strip()
    url = f"{scheme}://{login}{host}{':' + port if port else ''}"
    excluded = settings.value("proxy/proxyExcludedUrls", []) or []
    if isinstance(excluded, str):
        excluded = [u for u in excluded.split("|") if u]
    env = {"HTTP_PROXY": url, "HTTPS_PROXY": url}
    if excluded:
        env["NO_PROXY"] = ",".join(re.sub(r"^\w+://", "", str(u)).rstrip("/") for u in excluded)
    return env


def apply_proxy() -> dict[str, str]:
    """Set QGIS's proxy in this process's environment for model downloads (variables already set are kept).

    Returns:
        The variables set.
    """
    applied = {}
    for name, value in proxy_environment().items():
        if not os.environ.get(name) and not os.environ.get(name.lower()):
            os.environ[name] = applied[name] = value
    return applied


def prune(folder: Path, outside: list[str]) -> list[str]:
    """Remove from ``folder`` the distributions already installed on ``outside`` paths at the same version.

    pip ``--target`` installs every dependency, including those QGIS's Python has (numpy, pinned to QGIS's version by
    :func:`constraints`): the copies are identical and would only shadow QGIS's own.

    Args:
        folder: A pip ``--target`` folder.
        outside: The ``sys.path`` entries of QGIS's Python (without the folder).

    Returns:
        ``name==version`` of the distributions removed.
    """
    have: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=outside):  # in path order: the first one is the one imported
        name = dist.metadata["Name"]
        if name:
            have.setdefault(_canonical(name), dist.version)
    removed = []
    for dist in importlib.metadata.distributions(path=[str(folder)]):
        name, version = dist.metadata["Name"] or "", dist.version
        if have.get(_canonical(name)) != version:
            continue
        for file in dist.files or ():  # pip's RECORD lists every file, the .dist-info folder's included
            path = Path(str(dist.locate_file(file)))
            if path.is_file() and path.resolve().is_relative_to(folder.resolve()):
                path.unlink()
        removed.append(f"{name}=={version}")
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(sub.iterdir()):
            sub.rmdir()
    return removed


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _stop(proc: subprocess.Popen) -> None:
    """Stop pip and whatever it started (its process group on POSIX), and wait for it."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


#: pip output line → progress (%), in the order pip prints them.
_STAGES = (("Collecting", 10.0), ("Downloading", 30.0), ("Processing", 30.0), ("Installing collected", 80.0),
           ("Successfully installed", 95.0))


class InstallTask(QgsTask):
    """pip into the packages folder, as a background ``QgsTask`` with progress, cancel and a log.

    Signals:
        line(str): Every line pip prints (and the task's own notes), for the log view.

    Attributes:
        choices: Every choice the folder will hold (the earlier ones and the new one).
        log: The lines so far.
        error: Why it failed (empty on success or cancel).
    """

    line = pyqtSignal(str)

    def __init__(self, choice: str, folder: Optional[Path] = None, python: Optional[str] = None,
                 on_done: Optional[Callable[[bool, "InstallTask"], None]] = None) -> None:
        super().__init__(f"msfm: install {CHOICES[choice].title}", QgsTask.CanCancel)
        self.folder = folder or packages_folder()
        self.choices = sorted({*installed_choices(self.folder), choice})
        self.python = python or engine.host.python_interpreter() or sys.executable
        self.on_done = on_done
        self.log: list[str] = []
        self.error = ""

    def _say(self, text: str) -> None:
        self.log.append(text)
        self.line.emit(text)

    def run(self) -> bool:  # noqa: D401 - QgsTask API; runs in a worker thread
        """Run pip into a partial folder, then put it in place of the packages folder."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.partial-", dir=self.folder.parent))
        try:
            pins = partial / "constraints.txt"
            pins.write_text(constraints(), encoding="utf-8")
            target = partial / "packages"
            command = pip_command(pip_launcher(self.python), self.choices, target, pins, gpu=nvidia_gpu())
            self._say("$ " + " ".join(command))
            env = {**os.environ, **proxy_environment(), "PYTHONNOUSERSITE": "1", "PIP_ROOT_USER_ACTION": "ignore"}
            env.pop("PYTHONPATH", None)  # pip sees QGIS's own Python, as the plugin will
            if not self._pip(command, env):
                return False
            outside = [p for p in sys.path if p and Path(p).resolve() != self.folder.resolve()]
            removed = prune(target, outside)
            if removed:
                self._say("already in QGIS's Python, removed from the folder: " + ", ".join(removed))
            (target / RECORD).write_text(json.dumps({"choices": self.choices, "python": sys.version.split()[0],
                                                     "command": command, "installed": time.time()}),
                                         encoding="utf-8")
            old = self.folder.with_name(f".{self.folder.name}.old-{os.getpid()}")
            if self.folder.exists():
                self.folder.rename(old)
            target.rename(self.folder)
            shutil.rmtree(old, ignore_errors=True)
            self._say(f"installed into {self.folder}")
            return True
        except Exception as exc:  # reported in the dialog; the previous folder is untouched
            self.error = f"{type(exc).__name__}: {exc}"
            self._say(self.error)
            return False
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def _pip(self, command: list[str], env: dict[str, str]) -> bool:
        """Run pip, following its output; False when it fails or the task is cancelled (pip is stopped)."""
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    bufsize=1, start_new_session=os.name == "posix")  # cancel stops its children
        except OSError as exc:
            self.error = f"cannot start {command[0]}: {exc}"
            self._say(self.error)
            return False
        assert proc.stdout is not None
        stdout = proc.stdout
        lines: queue.Queue = queue.Queue()

        def read() -> None:
            for text in stdout:
                lines.put(text)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        progress = 2.0
        self.setProgress(progress)
        while reader.is_alive() or not lines.empty():
            if self.isCanceled():  # checked every 0.2 s, also while pip downloads in silence
                _stop(proc)
                reader.join(timeout=30)
                self._say("cancelled: nothing was changed")
                return False
            try:
                text = lines.get(timeout=0.2).rstrip()
            except queue.Empty:
                continue
            self._say(text)
            for start, value in _STAGES:
                if text.startswith(start):
                    progress = max(progress, value if start != "Collecting" else min(progress + 5.0, 60.0))
            self.setProgress(progress)
        reader.join()
        stdout.close()
        if proc.wait() != 0:
            self.error = f"pip failed (exit status {proc.returncode}); the log above says why"
            self._say(self.error)
            return False
        self.setProgress(98.0)
        return True

    def finished(self, ok: bool) -> None:  # noqa: D401 - QgsTask API; runs in the main thread
        """Activate the new packages (no restart needed) and call ``on_done``."""
        if ok:
            activate(self.folder)
        if self.on_done is not None:
            self.on_done(ok, self)
