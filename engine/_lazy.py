"""Lazy attributes of a package (PEP 562): names whose modules import torch are imported on first access.

``import engine`` and ``import engine.models`` must stay instant and work where torch is not installed (a QGIS Python
with ONNX Runtime only), so packages that mix torch-free and torch modules export the torch ones lazily. The names are
also imported under ``TYPE_CHECKING`` in each package, so type checkers and IDEs see them.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Mapping

__all__ = ("lazy_getattr",)


def lazy_getattr(package: str, names: Mapping[str, str], submodules: Iterable[str] = ()) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[attr]`` (a module relative to ``package``) on first access.

    Args:
        package: The package's ``__name__``.
        names: Attribute name → relative module name (``{"SmartiesEncoder": ".smarties"}``).
        submodules: Names of submodules returned themselves (``engine.spectral`` after a bare ``import engine``).

    Returns:
        The function to assign to the package's ``__getattr__``.
    """
    modules = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name], package), name)
        if name in modules:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
