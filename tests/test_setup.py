"""Project layout: plugin metadata, icons and the plugin entry point (fast, no model needed)."""

from __future__ import annotations

import configparser
import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ICONS = sorted((REPO / "icons").glob("*.svg"))
REQUIRED = ["name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
            "hasProcessingProvider"]


@pytest.fixture(scope="module")
def metadata() -> configparser.SectionProxy:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.optionxform = str  # keys are camelCase (qgisMinimumVersion)
    assert cfg.read(REPO / "metadata.txt", encoding="utf-8"), "metadata.txt missing"
    return cfg["general"]


def test_metadata_has_required_keys(metadata: configparser.SectionProxy) -> None:
    missing = [key for key in REQUIRED if not metadata.get(key, "").strip()]
    assert not missing, f"metadata.txt lacks {missing}"
    assert metadata["qgisMinimumVersion"] == "3.22"
    assert metadata["hasProcessingProvider"] == "yes"
    assert metadata["name"].startswith("msfm")


def test_about_text_breaks_lines_only_between_paragraphs(metadata: configparser.SectionProxy) -> None:
    """The Plugin Manager shows each line break of ``about``: a line must end a sentence, never stop mid-way."""
    lines = metadata["about"].splitlines()
    assert len(lines) >= 3 and all(line.rstrip().endswith((".", ":", "!", "?")) for line in lines), lines
    for name in ("Install packages", "ONNX Runtime", "PyTorch", "Batch"):
        assert name in metadata["about"]


def test_metadata_version_matches_pyproject(metadata: configparser.SectionProxy) -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{metadata["version"]}"' in pyproject


def test_metadata_icon_exists(metadata: configparser.SectionProxy) -> None:
    assert (REPO / metadata["icon"]).is_file()


def test_icons_present() -> None:
    names = {p.name for p in ICONS}
    assert {"msfm.svg", "embed.svg", "cluster.svg", "similarity.svg", "bands.svg", "download.svg", "train_head.svg",
            "segment.svg"} <= names


@pytest.mark.parametrize("icon", ICONS, ids=[p.name for p in ICONS])
def test_icon_is_svg(icon: Path) -> None:
    root = ET.parse(icon).getroot()
    assert root.tag in ("svg", "{http://www.w3.org/2000/svg}svg")
    assert root.get("viewBox") == "0 0 64 64"


def test_class_factory_without_iface() -> None:
    """Under qgis_process the plugin is created with iface=None."""
    import qgis_plugin

    plugin = qgis_plugin.classFactory(None)
    assert callable(plugin.initGui) and callable(plugin.unload)
    plugin.initGui()
    plugin.unload()


@pytest.mark.qgis
@pytest.mark.skipif(importlib.util.find_spec("qgis") is None, reason="QGIS Python bindings not installed")
def test_class_factory_with_iface(qgis_iface) -> None:
    """Load and unload the plugin against pytest-qgis's stub QgisInterface."""
    from qgis.core import QgsApplication

    import qgis_plugin

    registry = QgsApplication.processingRegistry()
    registered_before = registry.providerById("msfm") is not None  # e.g. by the plugin tests' session fixture
    plugin = qgis_plugin.classFactory(qgis_iface)
    plugin.initGui()
    from qgis_plugin.algorithms import ALGORITHMS

    assert len(ALGORITHMS) == 14
    assert registry.providerById("msfm") is not None and len(registry.providerById("msfm").algorithms()) == 14
    assert (plugin.provider is None) == registered_before  # a second provider with the same id is not kept
    assert plugin.dock is not None and plugin.action is not None
    plugin.unload()
    assert plugin.dock is None and plugin.action is None and plugin.provider is None
    assert (registry.providerById("msfm") is not None) == registered_before
