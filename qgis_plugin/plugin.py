"""The msfm plugin object.

A skeleton for now: ``initGui()`` and ``unload()`` exist so QGIS can load and unload the plugin, but they register
nothing yet. The Processing provider (embeddings, clustering, similarity) and the dock arrive with the plugin
issue.
"""

from __future__ import annotations

from typing import Any


class MsfmPlugin:
    """Plugin object returned by :func:`qgis_plugin.classFactory`."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface  # QgisInterface, or None under qgis_process

    def initGui(self) -> None:  # noqa: N802 - name required by QGIS
        """Called by QGIS when the plugin is loaded; nothing to register yet."""

    def unload(self) -> None:
        """Called by QGIS when the plugin is unloaded; nothing to remove yet."""
