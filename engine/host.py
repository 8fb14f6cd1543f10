"""The Python installation the engine runs in, as seen from a program that embeds it (QGIS, ``qgis_process``)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ("python_interpreter",)


def python_interpreter() -> str:
    """The Python interpreter of this installation, for child processes (Dask workers, pip).

    ``sys.executable`` where it is this installation's interpreter. In a program that embeds Python it is wrong: QGIS
    on Windows reports its own program, and ``qgis_process`` on Linux the first ``python3`` on ``PATH`` (a pyenv one on
    our machines, whose Dask workers then failed to import its standard library). The interpreter of the running
    installation lies under ``sys.base_exec_prefix`` (``bin/python3.X`` on Linux and macOS, ``python.exe`` on
    Windows); a child process given this process's ``sys.path`` sees the same packages.

    Returns:
        The interpreter's path (``sys.executable`` where no other is found).
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    executable = Path(sys.executable)
    homes = [Path(p).resolve() for p in {sys.prefix, sys.exec_prefix, sys.base_exec_prefix}]
    if executable.name.lower().startswith("python") and executable.is_file() and any(
            executable.resolve().is_relative_to(home) for home in homes):
        return sys.executable
    suffix = ".exe" if os.name == "nt" else ""
    base = Path(sys.base_exec_prefix)
    for folder in (base / "bin", base):
        for name in (f"python{version}", f"python{sys.version_info.major}", "python"):
            if (folder / f"{name}{suffix}").is_file():
                return str(folder / f"{name}{suffix}")
    return shutil.which(f"python{version}") or sys.executable
