"""QGIS styles (``.qml``) written beside rasters, so QGIS shows them styled when it opens them.

QGIS loads ``NAME.qml`` beside ``NAME.tif`` as the layer's default style. :func:`write_qml` writes a paletted style
(class maps: a colour and a name per class), :func:`write_ramp_qml` a single-band pseudocolour style on a colour ramp
(similarity maps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from ..atomic import write_text

__all__ = ("VIRIDIS", "read_qml_labels", "write_qml", "write_ramp_qml")

#: Stops of the Viridis ramp (matplotlib's; perceptually uniform, colour-blind friendly), low to high.
VIRIDIS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")

_HEADER = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.16" styleCategories="AllStyleCategories">
  <pipe>
"""
_FOOTER = """    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def write_qml(path: Path, labels: list[str], colors: list[tuple[int, int, int, int]]) -> Path:
    """Write a QGIS paletted-renderer style (``.qml``) for a class raster (values 0..k−1, band 1), atomically.

    Args:
        path: The ``.qml`` file (QGIS loads ``NAME.qml`` beside ``NAME.tif`` with the layer).
        labels: Class names, index order.
        colors: RGBA colours, index order (:func:`engine.raster.class_colors`).

    Returns:
        ``path``.
    """
    entries = "\n".join(
        f'        <paletteEntry value="{i}" color="#{r:02x}{g:02x}{b:02x}" alpha="{a}" label="{escape(label)}"/>'
        for i, (label, (r, g, b, a)) in enumerate(zip(labels, colors))
    )
    text = _HEADER + f"""    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
""" + _FOOTER
    return write_text(path, text)


def write_ramp_qml(path: Path, low: float, high: float, colors: tuple[str, ...] = VIRIDIS,
                   label: str = "") -> Path:
    """Write a QGIS single-band pseudocolour style (``.qml``): band 1 from ``low`` to ``high`` on ``colors``.

    Args:
        path: The ``.qml`` file, beside the raster.
        low: Value of the first colour (e.g. the map's minimum).
        high: Value of the last colour (> ``low``; equal values are spread by 1e-6).
        colors: Ramp stops, ``#rrggbb``, low to high (:data:`VIRIDIS`).
        label: Legend title (e.g. ``cosine similarity``).

    Returns:
        ``path``.
    """
    high = high if high > low else low + 1e-6
    steps = len(colors) - 1
    items = "\n".join(
        f'            <item value="{low + (high - low) * i / steps:.6g}" color="{c}" alpha="255" '
        f'label="{low + (high - low) * i / steps:.3g}"/>'
        for i, c in enumerate(colors)
    )
    text = _HEADER + f"""    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" alphaBand="-1"
        nodataColor="" classificationMin="{low:.6g}" classificationMax="{high:.6g}">
      <rasterTransparency/>
      <rastershader>
        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0" minimumValue="{low:.6g}"
            maximumValue="{high:.6g}" labelPrecision="3">
{items}
        </colorrampshader>
      </rastershader>
      <legendSettings title="{escape(label)}" useContinuousLegend="1"/>
    </rasterrenderer>
""" + _FOOTER
    return write_text(path, text)


def read_qml_labels(path: Path) -> Optional[dict[int, str]]:
    """The class names of a paletted QGIS style (``.qml``): ``{value: label}`` of its palette entries.

    Args:
        path: The ``.qml`` file (as :func:`write_qml` writes it, or QGIS saves a paletted style).

    Returns:
        The labels of the entries that have one, or None when the file is missing, not XML or not paletted.
    """
    try:
        # a local style the user chose (no network input); Python's expat (≥ 2.4) bounds entity expansion
        root = ElementTree.parse(path).getroot()  # nosec B314
    except (OSError, ElementTree.ParseError):
        return None
    labels = {int(float(entry.get("value", ""))): entry.get("label", "")
              for entry in root.iter("paletteEntry") if entry.get("value", "").lstrip("-").replace(".", "").isdigit()}
    return {value: label for value, label in labels.items() if label} or None
