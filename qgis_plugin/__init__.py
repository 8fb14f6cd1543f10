"""QGIS entry point of the msfm plugin.

QGIS imports this package and calls ``classFactory(iface)``; ``iface`` is the ``QgisInterface`` of the desktop
application, or ``None`` under ``qgis_process``. Imports are relative so the package also works when deployed as
the plugin folder ``msfm/``.
"""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any):  # noqa: N802 - name required by QGIS
    """Return the plugin object QGIS manages (``initGui()`` on load, ``unload()`` on unload).

    First the packages installed from the dock (:mod:`.packages`) go on ``sys.path``, and QGIS's proxy settings into
    the environment for model downloads.
    """
    from . import packages
    from .plugin import MsfmPlugin

    packages.activate()
    packages.apply_proxy()
    return MsfmPlugin(iface)
