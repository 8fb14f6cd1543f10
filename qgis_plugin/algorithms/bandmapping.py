"""*Band mapping report*: how each band of the layer maps onto the model's spectral ranges, and why."""

from __future__ import annotations

import html
import json
import os

from qgis.core import QgsProcessingParameterFileDestination

from ..runtime import engine
from .base import MsfmAlgorithm


class BandMappingReport(MsfmAlgorithm):
    NAME = "bandmapping"
    DISPLAY = "Band mapping report"
    GROUP = "Models and bands"
    ICON = "bands"
    NEEDS = "bands"
    HELP = (
        "Shows how every band of the layer is embedded: the sensor preset recognised (or why none), each band's "
        "central wavelength, the spectral range (projection) chosen with the rule and reason, the normalisation "
        "statistics, and the bands left out. Run it before the other algorithms when a layer has no band "
        "descriptions; fix mistakes with the sensor preset or the band overrides (e.g. <tt>4=red_2; 5=842.5</tt>)."
    )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.add_band_parameters()
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Report", fileFilter="HTML files (*.html)", optional=True, createByDefault=True))

    def compute(self, parameters, context, feedback) -> dict:
        source = self.layer_path(parameters, context, feedback)
        with engine.raster.open_raster(source) as ds:
            mapping = engine.spectral.resolve_bands(ds, **self.band_arguments(parameters, context))
            mapping = mapping.with_stats(engine.raster.band_statistics(ds, mapping))  # estimated ones included
        text = engine.spectral.describe_mapping(mapping)
        feedback.pushInfo(text)
        outputs = {
            "SENSOR": mapping.sensor or "",
            "BANDS": json.dumps([b.key or b.projection.label for b in mapping.bands]),
            "DROPPED": json.dumps([d.index for d in mapping.dropped]),
        }
        path = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if path:
            engine.atomic.write_text(path, _html(mapping, source))
            outputs["OUTPUT"] = path
        return outputs


def _html(mapping, source: str) -> str:
    esc = html.escape
    rows = []
    for b in mapping.bands:
        s = b.stats
        stats = "from raster" if s is None else f"{s.p1:.4g} / {s.p99:.4g} / {s.mean:.3f} / {s.std:.3f} ({s.source})"
        rows.append(
            f"<tr><td>{b.index}</td><td>{esc(b.description or '-')}</td>"
            f"<td>{'-' if b.wavelength_nm is None else f'{b.wavelength_nm:g} nm'}</td>"
            f"<td>{esc(b.key or b.projection.label)}</td><td>{esc(b.rule)}</td><td>{esc(b.reason)}</td>"
            f"<td>{esc(stats)}</td></tr>"
        )
    dropped = "".join(
        f"<li>band {d.index} ({esc(d.description or 'no description')}): {esc(d.reason)}</li>" for d in mapping.dropped
    )
    return (
        "<html><head><meta charset='utf-8'><title>msfm band mapping</title></head><body>"
        f"<h2>Band mapping of {esc(os.path.basename(source))}</h2>"
        f"<p>Sensor: <b>{esc(mapping.sensor or 'none')}</b> — {esc(mapping.sensor_reason)}</p>"
        "<table border='1' cellspacing='0' cellpadding='3'><tr><th>band</th><th>description</th><th>wavelength</th>"
        "<th>range</th><th>rule</th><th>why</th><th>stats p1 / p99 / mean / std</th></tr>"
        + "".join(rows) + "</table>"
        + (f"<h3>Dropped</h3><ul>{dropped}</ul>" if dropped else "")
        + "</body></html>"
    )
