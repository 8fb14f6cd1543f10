"""Renderers for msfm outputs and the Processing post-processor that applies them when a layer is loaded.

- class maps: paletted renderer from the file's colour table, one legend entry per class ``class 0…k−1``;
- similarity maps: single-band pseudocolour on a perceptual ramp (Viridis) over the layer's value range;
- embeddings / principal components: three-band colour with a 2–98 % cumulative-cut stretch per channel.

Post-processors run on the main thread, only for outputs Processing loads on completion (also after a whole model).
QGIS does not own them (qgis/QGIS#48087), so they are kept alive here until replaced by the next run's.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from qgis.core import (
    QgsColorRampShader,
    QgsContrastEnhancement,
    QgsMultiBandColorRenderer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)

__all__ = ("attach", "style_classes", "style_rgb", "style_similarity")

_SAMPLE_PX = 250_000
_KEEP: dict[str, QgsProcessingLayerPostProcessorInterface] = {}


def style_classes(layer: QgsRasterLayer, labels: Sequence[str]) -> None:
    """Paletted renderer of classes ``0…len(labels)−1`` coloured from band 1's colour table, ``labels[i]`` as legend."""
    provider = layer.dataProvider()
    classes = QgsPalettedRasterRenderer.colorTableToClassData(provider.colorTable(1))
    used = [c for c in classes if 0 <= int(c.value) < len(labels)]  # the table has 256 entries; 255 = nodata
    for c in used:
        c.label = labels[int(c.value)]
    layer.setRenderer(QgsPalettedRasterRenderer(provider, 1, used))
    layer.triggerRepaint()


def style_similarity(layer: QgsRasterLayer, ramp: str = "Viridis") -> None:
    """Pseudocolour on ``ramp`` from the layer's minimum to maximum (cosine similarity, high = similar)."""
    provider = layer.dataProvider()
    stats = provider.bandStatistics(1, QgsRasterBandStats.Min | QgsRasterBandStats.Max, layer.extent(), _SAMPLE_PX)
    lo, hi = stats.minimumValue, stats.maximumValue
    if not hi > lo:
        lo, hi = -1.0, 1.0
    color_ramp = QgsStyle.defaultStyle().colorRamp(ramp) or QgsStyle.defaultStyle().colorRamp("Spectral")
    shader_fn = QgsColorRampShader(lo, hi, color_ramp, QgsColorRampShader.Interpolated)
    shader_fn.classifyColorRamp(5, -1)
    shader = QgsRasterShader(lo, hi)
    shader.setRasterShaderFunction(shader_fn)
    renderer = QgsSingleBandPseudoColorRenderer(provider, 1, shader)
    renderer.setClassificationMin(lo)
    renderer.setClassificationMax(hi)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def style_rgb(layer: QgsRasterLayer, bands: Sequence[int] = (1, 2, 3)) -> None:
    """Three-band colour of ``bands`` (1-based), each stretched between its 2 % and 98 % cumulative cuts."""
    provider = layer.dataProvider()
    renderer = QgsMultiBandColorRenderer(provider, *bands)
    setters = (renderer.setRedContrastEnhancement, renderer.setGreenContrastEnhancement,
               renderer.setBlueContrastEnhancement)
    for band, setter in zip(bands, setters):
        lo, hi = provider.cumulativeCut(band, 0.02, 0.98, layer.extent(), _SAMPLE_PX)
        enhancement = QgsContrastEnhancement(provider.dataType(band))
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        enhancement.setMinimumValue(lo)
        enhancement.setMaximumValue(hi if hi > lo else lo + 1e-6)
        setter(enhancement)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


class _Styler(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, style: Optional[Callable[[QgsRasterLayer], None]]) -> None:
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802 - QGIS API
        if self.style is not None and isinstance(layer, QgsRasterLayer) and layer.isValid():
            self.style(layer)


def attach(context: QgsProcessingContext, path: str, style: Optional[Callable[[QgsRasterLayer], None]],
           name: str = "", generic: str = "") -> bool:
    """When Processing loads the output ``path``: style it with ``style`` and name it ``name``.

    The name replaces only the generic one (``generic``: the output's description, "Classes"); a name the user or the
    dock gave is kept. Returns False when the output will not be loaded.
    """
    if not context.willLoadLayerOnCompletion(path):
        return False
    details = context.layerToLoadOnCompletionDetails(path)
    if name and details.name in ("", generic):
        details.name = name
    styler = _Styler(style)
    _KEEP[path] = styler
    details.setPostProcessor(styler)
    return True
