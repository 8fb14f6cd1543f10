"""The msfm plugin object: registers the Processing provider and, in the desktop application, the dock.

``initProcessing`` touches no GUI, so the same object serves ``qgis_process`` (``iface`` is None there).
"""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import QgsApplication


class MsfmPlugin:
    """Plugin object returned by :func:`qgis_plugin.classFactory`."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface  # QgisInterface, or None under qgis_process
        self.provider: Optional[Any] = None
        self.dock: Optional[Any] = None
        self.action: Optional[Any] = None

    def initProcessing(self) -> None:  # noqa: N802 - name used by QGIS
        """Register the ``msfm`` provider (idempotent)."""
        from .provider import MsfmProvider

        if self.provider is None:
            provider = MsfmProvider()
            # addProvider() refuses (and deletes) a second provider with the same id: keep no dead reference
            if QgsApplication.processingRegistry().addProvider(provider):
                self.provider = provider

    def initGui(self) -> None:  # noqa: N802 - name required by QGIS
        """Called by QGIS when the plugin is loaded: provider, then the dock and its toolbar/menu action."""
        self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtCore import Qt
        from qgis.PyQt.QtWidgets import QAction

        from .algorithms.base import icon
        from .dock import MsfmDock

        self.dock = MsfmDock(self.iface)
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.dock.hide()
        self.action = QAction(icon("msfm"), "msfm foundation models", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.iface.addRasterToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu("msfm", self.action)

    def unload(self) -> None:
        """Called by QGIS when the plugin is unloaded: remove everything ``initGui`` added."""
        if self.action is not None:
            self.iface.removeRasterToolBarIcon(self.action)
            self.iface.removePluginRasterMenu("msfm", self.action)
            self.action.deleteLater()
            self.action = None
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.close_dock()
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
