"""The plugin's package installer (qgis_plugin.packages): pip's command line per choice and platform, QGIS's proxy
passed on, identical copies of QGIS's packages pruned, and an install that fails or is cancelled leaves the packages
folder as it was. The real install (pip from the package registry, under Xvfb) is in test_gui.py."""

from __future__ import annotations

import importlib.metadata
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.qgis


def test_pip_installs_into_the_folder_with_qgis_numpy_pinned(qgis_app: Any, tmp_path: Path) -> None:
    from qgis_plugin import packages

    pins = tmp_path / "c.txt"
    launcher = packages.pip_launcher(sys.executable)
    assert launcher == [sys.executable, "-m", "pip"]
    onnx = packages.pip_command(launcher, ["onnx"], tmp_path / "t", pins)
    assert onnx[:6] == [sys.executable, "-m", "pip", "install", "--target", str(tmp_path / "t")]
    assert "onnxruntime>=1.17" in onnx and "rasterio>=1.3" in onnx and "torch>=2.1" not in onnx
    assert "--extra-index-url" not in onnx and onnx[onnx.index("--constraint") + 1] == str(pins)
    both = packages.pip_command(["py"], ["onnx", "torch"], tmp_path, pins, gpu=False, platform="linux")
    assert both[both.index("--extra-index-url") + 1] == packages.TORCH_CPU_INDEX and both.count("rasterio>=1.3") == 1
    assert "--extra-index-url" not in packages.pip_command(["py"], ["torch"], tmp_path, pins, gpu=True,
                                                          platform="linux")  # PyPI's Linux wheels are CUDA builds
    windows = packages.pip_command(["py"], ["torch"], tmp_path, pins, gpu=True, platform="win32")
    assert windows[windows.index("--extra-index-url") + 1] == packages.TORCH_CUDA_INDEX
    assert "--extra-index-url" not in packages.pip_command(["py"], ["torch"], tmp_path, pins, platform="darwin")
    assert packages.constraints() == f"numpy=={importlib.metadata.version('numpy')}\n"
    assert packages.packages_folder().name == f"py{sys.version_info.major}.{sys.version_info.minor}"


def test_a_python_without_pip_runs_pip_from_its_wheel(qgis_app: Any, tmp_path: Path) -> None:
    from qgis_plugin import packages

    no_pip = _fake_python(tmp_path, "exit 1", has_pip=False)
    wheel = tmp_path / "wheels" / "pip-23.0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"")
    assert packages.pip_launcher(no_pip, (str(wheel.parent),)) == [no_pip, f"{wheel}/pip"]
    with pytest.raises(RuntimeError, match="has no pip: install it"):
        packages.pip_launcher(no_pip, (str(tmp_path / "none"),))
    debian = Path(packages.PIP_WHEELS[0])
    if sorted(debian.glob("pip-*.whl")):  # the real thing: Debian's wheel runs as pip
        command = [sys.executable, f"{sorted(debian.glob('pip-*.whl'))[-1]}/pip", "--version"]
        assert subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.startswith("pip ")


def test_qgis_proxy_settings_reach_pip_and_downloads(qgis_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from qgis.core import QgsSettings

    from qgis_plugin import packages

    settings = QgsSettings()
    keys = ("proxyEnabled", "proxyType", "proxyHost", "proxyPort", "proxyUser", "proxyPassword", "proxyExcludedUrls")
    try:
        assert packages.proxy_environment() == {}
        for key, value in zip(keys, (True, "HttpProxy", "proxy.example.org", "3128", "ana", "p@ss word",
                                     ["https://intranet.example.org/", "localhost"])):
            settings.setValue(f"proxy/{key}", value)
        env = packages.proxy_environment()
        assert env == {"HTTP_PROXY": "http://ana:p%40ss%20word@proxy.example.org:3128",
                       "HTTPS_PROXY": "http://ana:p%40ss%20word@proxy.example.org:3128",
                       "NO_PROXY": "intranet.example.org,localhost"}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("NO_PROXY", "mine")  # the user's own variables win
        assert packages.apply_proxy() == {k: v for k, v in env.items() if k != "NO_PROXY"}
        settings.setValue("proxy/proxyType", "DefaultProxy")  # the system's proxy: already in the environment
        assert packages.proxy_environment() == {}
    finally:
        for key in keys:
            settings.remove(f"proxy/{key}")


def _dist(folder: Path, name: str, version: str, module: str) -> None:
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text("")
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"{module}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def test_copies_of_what_qgis_has_are_pruned(qgis_app: Any, tmp_path: Path) -> None:
    from qgis_plugin import packages

    numpy_version = importlib.metadata.version("numpy")
    _dist(tmp_path, "numpy", numpy_version, "numpy")  # the copy pip --target adds (pinned to QGIS's version)
    _dist(tmp_path, "numpy-like-only-here", "1.0", "only_here")
    removed = packages.prune(tmp_path, [p for p in sys.path if p])
    assert removed == [f"numpy=={numpy_version}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numpy-like-only-here-1.0.dist-info", "only_here"]


def _fake_python(tmp_path: Path, body: str, has_pip: bool = True) -> str:
    """A "python" that runs ``body`` for ``-m pip …`` (``$5`` is the ``--target`` folder); ``-c "import pip"`` succeeds
    when ``has_pip``."""
    script = tmp_path / "python"
    probe = 'if [ "$1" = "-c" ]; then exit 0; fi\n' if has_pip else ""
    script.write_text(f"#!/bin/sh\n{probe}{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_a_failed_or_cancelled_install_leaves_the_folder_as_it_was(qgis_app: Any, tmp_path: Path) -> None:
    from qgis_plugin import packages

    folder = tmp_path / "msfm-packages" / "py3"
    folder.mkdir(parents=True)
    (folder / "earlier.txt").write_text("an earlier install")
    failing = packages.InstallTask("onnx", folder, _fake_python(tmp_path, 'echo "ERROR: no network"; exit 1'))
    assert failing.run() is False and "pip failed (exit status 1)" in failing.error
    assert "ERROR: no network" in failing.log
    assert sorted(p.name for p in folder.parent.iterdir()) == ["py3"] and (folder / "earlier.txt").is_file()

    slow = packages.InstallTask("torch", folder, _fake_python(tmp_path, 'echo "Collecting torch"; sleep 30'))
    result: list[bool] = []
    runner = threading.Thread(target=lambda: result.append(slow.run()))
    started = time.perf_counter()
    runner.start()
    time.sleep(1.0)
    slow.cancel()
    runner.join(timeout=10)
    assert result == [False] and time.perf_counter() - started < 5  # pip stopped within 0.2 s of the cancel
    assert "cancelled: nothing was changed" in slow.log and slow.choices == ["torch"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["py3"] and (folder / "earlier.txt").is_file()


def test_an_install_replaces_the_folder_and_is_on_sys_path_at_once(qgis_app: Any, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from qgis_plugin import packages

    folder = tmp_path / "msfm-packages" / "py3"
    folder.mkdir(parents=True)
    (folder / "earlier.txt").write_text("an earlier install")
    # a "pip" that installs one module into --target (its 5th argument)
    python = _fake_python(tmp_path, 'mkdir -p "$5/msfm_fake_pkg" && echo "VALUE = 42" > "$5/msfm_fake_pkg/__init__.py"'
                                    ' && echo "Successfully installed msfm-fake-pkg-1.0"')
    task = packages.InstallTask("onnx", folder, python)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert task.run() is True, task.log
    task.finished(True)
    assert (folder / "msfm_fake_pkg" / "__init__.py").is_file() and not (folder / "earlier.txt").exists()
    assert packages.installed_choices(folder) == ["onnx"] and sys.path[0] == str(folder)
    import msfm_fake_pkg  # noqa: PLC0415 - importable without a restart

    assert msfm_fake_pkg.VALUE == 42
    sys.modules.pop("msfm_fake_pkg")
    assert sorted(p.name for p in folder.parent.iterdir()) == ["py3"]
