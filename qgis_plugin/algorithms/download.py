"""*Download model*: fetch a registered model from the Hugging Face Hub into the local cache."""

from __future__ import annotations

from qgis.core import QgsProcessingOutputString, QgsProcessingParameterEnum

from ..runtime import engine
from .base import DEFAULT_MODEL, MsfmAlgorithm, model_names


class DownloadModel(MsfmAlgorithm):
    NAME = "downloadmodel"
    DISPLAY = "Download model"
    GROUP = "Models and bands"
    ICON = "download"
    NEEDS = "download"
    HELP = (
        "Downloads a model's weights from the Hugging Face Hub into the local cache (HF_HUB_CACHE, by default "
        "~/.cache/huggingface/hub), so later runs work offline. Proxies are read from the HTTPS_PROXY environment "
        "variable. The bundled demo model needs no download. Offline machines: copy a cache folder, or give a "
        "local .safetensors file to the other algorithms."
    )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterEnum(
            "MODEL", "Model", options=model_names(), defaultValue=DEFAULT_MODEL, usesStaticStrings=True))
        self.addOutput(QgsProcessingOutputString("PATH", "Local weights file"))
        self.addOutput(QgsProcessingOutputString("STATUS", "Status"))

    def compute(self, parameters, context, feedback) -> dict:
        name = self.parameterAsEnumString(parameters, "MODEL", context)
        feedback.pushInfo(f"{name}: {engine.models.model_info(name)['status']}")
        path = engine.models.download_model(name)
        status = engine.models.model_info(name)["status"]
        feedback.pushInfo(status)
        return {"PATH": str(path), "STATUS": status}
