"""Fixtures of the plugin tests: a headless QGIS with Processing and the msfm provider registered."""

from __future__ import annotations

from typing import Any, Iterator

import pytest


@pytest.fixture(scope="session")
def msfm_provider(qgis_app: Any, qgis_processing: Any) -> Iterator[Any]:
    """The ``msfm`` provider, registered once per test session (``processing.run("msfm:…")`` works)."""
    from qgis.core import QgsApplication

    from qgis_plugin.provider import MsfmProvider

    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("msfm")
    if provider is None:
        provider = MsfmProvider()
        registry.addProvider(provider)
    yield provider
