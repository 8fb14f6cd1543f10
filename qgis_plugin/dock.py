"""The msfm dock: the active raster layer's band mapping, the model and its cost, and buttons that run the algorithms.

The dock only *prepares* runs. Every run goes through the msfm Processing algorithms — the Processing dialog
prefilled with the dock's values, or ``msfm:cluster`` / ``msfm:change`` / ``msfm:downloadmodel`` in a
``QgsProcessingAlgRunnerTask`` —
so the toolbox, batch mode, the modeler, ``qgis_process`` and the dock share one code path.

What it shows, for the layer selected in the Layers panel:

- one row per band: index, description, wavelength, the spectral range it maps to (a chooser per row: any range key,
  a wavelength typed in nm, or drop), the rule and the reason — what ``engine.spectral.resolve_bands`` decided. Edits
  become the ``BAND_OVERRIDES`` string; when no rule maps a band, the engine's message (naming the band and the fix)
  is shown and the bands are still listed so a range can be picked;
- the model with its local state (bundled / cached / not downloaded) and a Download button, or a local model file
  (``.safetensors``, or an exported ``.onnx`` encoder); the inference backend (``torch``, or ``onnx``: ONNX Runtime —
  a ``.onnx`` model file always runs with it, without torch); the device;
- the tile count for the chosen tiling, and an estimated time *before* running: seconds per tile measured by the last
  run on this machine for the model, device and tile size, else a rough FLOP-based guess, labelled as such;
- *Change since*: an earlier raster of the project (not the dock's layer, not an msfm output) and *Change map*, which
  runs ``msfm:change`` with the dock's layer as the later raster.

Choices persist in ``QgsSettings`` under ``msfm/dock/…`` (sensor preset, band overrides and the earlier raster of
*Change since* per raster file).
torch is imported only when the dock is first shown (device detection with the torch backend) or a run starts, never at
plugin load; with the onnx backend the device line is ONNX Runtime's and torch is not imported.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapLayer,
    QgsMapLayerProxyModel,
    QgsMessageLog,
    QgsProcessingAlgRunnerTask,
    QgsProcessingFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsSettings,
)
from qgis.gui import QgsDockWidget, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, QTimer, pyqtSlot
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import runtime, timing
from .algorithms import base
from .runtime import engine

__all__ = ("MsfmDock",)

SETTINGS = "msfm/dock"
#: Table columns.
COLUMNS = ("Band", "nm", "Range", "Rule", "Why")
RANGE_COLUMN = COLUMNS.index("Range")
RULE_COLUMN = COLUMNS.index("Rule")
REASON_COLUMN = COLUMNS.index("Why")
#: Data of the special entries of a row's range chooser.
KEEP, AUTO, TYPE_NM = "__keep__", "__auto__", "__nm__"
#: Width (px) the dock opens with at least: the band table's five columns, the overrides and Download buttons.
DOCK_MIN_WIDTH = 560
#: Dialog buttons: (label, algorithm id, icon).
DIALOGS = (("Embeddings…", "msfm:embed", "embed"), ("Cluster…", "msfm:cluster", "cluster"),
           ("Similarity…", "msfm:similarity", "similarity"), ("Band report…", "msfm:bandmapping", "bands"))
BACKEND_TIP = ("BACKEND of the embedding algorithms: torch runs the checkpoint; onnx runs an exported encoder with "
               "ONNX Runtime (a registry model is exported once into the ONNX cache, which needs torch; a .onnx model "
               "file needs no torch at all).")


class MsfmDock(QgsDockWidget):
    """Dock following the active raster layer (see the module docstring).

    Args:
        iface: The ``QgisInterface`` (its ``currentLayerChanged`` signal is followed).
        parent: Parent widget (``iface.addDockWidget`` reparents it).
    """

    def __init__(self, iface: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__("msfm foundation models", parent)
        self.setObjectName("MsfmDock")
        self.iface = iface
        self.layer: Optional[QgsRasterLayer] = None
        self.path: Optional[str] = None  # GDAL-readable file of the layer
        self.mapping: Any = None  # engine BandMapping, None when unresolved
        self.descriptions: list[str] = []  # one per band of the file
        self.error = ""  # resolution error shown under the table
        self.overrides: dict[int, Any] = {}  # band index → range key, wavelength (float) or "drop"
        self.layer_size = (0, 0)
        self.devices: Optional[str] = None  # device_report(), after detection
        self.model_state: dict = {}
        self._task: Optional[QgsProcessingAlgRunnerTask] = None
        self._installer: Any = None  # the open InstallDialog
        self._products: dict[str, Optional[str]] = {}  # layer id → msfm_product of its file
        self._preset_scales: dict[str, Optional[float]] = {}  # file → default scale of its guessed sensor preset
        self._sized = False  # fit_width done on first show
        self._run: dict = {}  # context, feedback, algorithm, callbacks of the running task
        self._device_timer = QTimer(self)
        self._device_timer.setSingleShot(True)
        self._device_timer.timeout.connect(self._detect_if_shown)
        self._build()
        self._restore_settings()
        self._connect_controls()
        self.refresh_model_state()
        self.iface.currentLayerChanged.connect(self._on_current_layer_changed)
        QgsProject.instance().layerWillBeRemoved[str].connect(self._on_layer_removed)
        for signal in self._project_signals():
            signal.connect(self._refresh_before_choices)
        self.set_layer(self._active_layer())

    # ------------------------------------------------------------------------------------------------------------
    # Widgets
    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        self.layer_label = _wrapped_label()
        layout.addWidget(self.layer_label)
        self.packages_label = _wrapped_label(small=True)
        self.install_button = QPushButton("Install packages…")
        self.install_button.setToolTip("Install ONNX Runtime or PyTorch (and rasterio, scikit-learn) into a folder of "
                                       "your QGIS profile, with QGIS's own Python")
        self.packages_row = QWidget()
        self.packages_row.setLayout(_row((self.packages_label, 1), self.install_button))
        self.packages_row.layout().setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.packages_row)
        layout.addWidget(self._build_bands())
        layout.addWidget(self._build_model())
        layout.addWidget(self._build_run())
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)

    def _build_bands(self) -> QGroupBox:
        group = QGroupBox("Bands → SMARTIES spectral ranges")
        layout = QVBoxLayout(group)
        row = QHBoxLayout()
        row.addWidget(QLabel("Sensor preset"))
        self.sensor_combo = _combo()
        sensors = _sensor_names()
        for sensor_id in base.sensor_ids():
            self.sensor_combo.addItem(sensor_id, sensor_id)
            tip = "from the band names and metadata" if sensor_id == base.AUTO_SENSOR else sensors.get(sensor_id, "")
            self.sensor_combo.setItemData(self.sensor_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        row.addWidget(self.sensor_combo, 1)
        layout.addLayout(row)
        self.sensor_label = _wrapped_label(small=True)
        layout.addWidget(self.sensor_label)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 12)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        header = self.table.horizontalHeader()
        for column in range(len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        layout.addWidget(self.table)
        self.message_label = _wrapped_label()
        self.message_label.setStyleSheet("color: #b00020;")
        layout.addWidget(self.message_label)
        row = QHBoxLayout()
        row.addWidget(QLabel("Overrides"))
        self.overrides_edit = QLineEdit()
        self.overrides_edit.setPlaceholderText("none (e.g. 4=red_2; 5=842.5; 1=drop)")
        self.overrides_edit.setToolTip("The BAND_OVERRIDES parameter of the algorithms: band=range key, wavelength "
                                       "in nm or drop, separated by ';'. Edit the rows above or type here.")
        row.addWidget(self.overrides_edit, 1)
        self.reset_button = QToolButton()
        self.reset_button.setText("Reset")
        self.reset_button.setToolTip("Remove every override of this layer")
        row.addWidget(self.reset_button)
        layout.addLayout(row)
        return group

    def _build_model(self) -> QGroupBox:
        group = QGroupBox("Model and tiling")
        layout = QVBoxLayout(group)
        self.model_combo = _combo()
        for name in base.model_names():
            self.model_combo.addItem(name, name)
        self.download_button = QPushButton(base.icon("download"), "Download")
        self.download_button.setToolTip("Run msfm:downloadmodel in the background (Hugging Face Hub → local cache)")
        layout.addLayout(_row(QLabel("Model"), (self.model_combo, 1), self.download_button))
        self.model_label = _wrapped_label(small=True)
        layout.addWidget(self.model_label)
        self.model_file_widget = QgsFileWidget()
        self.model_file_widget.setFilter(base.MODEL_FILTER)
        self.model_file_widget.setDialogTitle("Local model file")
        self.model_file_widget.lineEdit().setPlaceholderText("none: the model above")
        self.model_file_widget.setToolTip("MODEL_FILE of the algorithms: a local .safetensors checkpoint, or an "
                                          "exported .onnx encoder (msfm export-onnx, or Export model to ONNX), which "
                                          "runs with ONNX Runtime without torch. Overrides Model.")
        layout.addLayout(_row(QLabel("File"), (self.model_file_widget, 1)))
        self.backend_combo = _combo()
        for backend in base.BACKENDS:
            self.backend_combo.addItem(backend, backend)
        self.backend_combo.setToolTip(BACKEND_TIP)
        layout.addLayout(_row(QLabel("Backend"), (self.backend_combo, 1)))
        self.device_combo = _combo()
        for device in base.DEVICES:
            self.device_combo.addItem(device, device)
        layout.addLayout(_row(QLabel("Device"), (self.device_combo, 1)))
        self.precision_combo = _combo()
        for precision in base.PRECISIONS:
            self.precision_combo.addItem(precision, precision)
        self.precision_combo.setToolTip(
            "PRECISION of the algorithms. auto: bf16 where the processor (AMX, AVX-512 BF16, Arm BF16) or the GPU has "
            "native bf16, else fp32 — the log says which and why; bf16: torch in bfloat16; int8: ONNX Runtime with int8 "
            "weights on the CPU, the fast path where the processor has no bf16.")
        layout.addLayout(_row(QLabel("Precision"), (self.precision_combo, 1)))
        self.device_label = _wrapped_label(small=True)
        self.device_label.setText("devices: detected when the dock is first shown")
        layout.addWidget(self.device_label)
        self.tile_spin = _spin(16, 1024, 16, 224, " px")  # the engine's limit (InferenceSettings)
        self.overlap_spin = _spin(0, 1008, 16, 112, " px")
        self.batch_spin = _spin(0, 1024, 1, 0, "")
        self.batch_spin.setSpecialValueText("auto")  # 0: the engine chooses (8 on a CPU, from free GPU memory)
        self.scale_spin = QDoubleSpinBox()
        self.scale_spin.setRange(0.0, 20.0)
        self.scale_spin.setDecimals(2)
        self.scale_spin.setSingleStep(0.5)
        self.scale_spin.setSpecialValueText("preset")
        self.scale_spin.setToolTip("Model pixels per layer pixel; 'preset' (0) = the sensor preset's default")
        grid = QGridLayout()
        for i, (label, widget) in enumerate((("Tile", self.tile_spin), ("Overlap", self.overlap_spin),
                                             ("Batch", self.batch_spin), ("Scale", self.scale_spin))):
            grid.addWidget(QLabel(label), i // 2, 2 * (i % 2))
            grid.addWidget(widget, i // 2, 2 * (i % 2) + 1)
        layout.addLayout(grid)
        self.tiles_label = _wrapped_label()
        layout.addWidget(self.tiles_label)
        self.estimate_label = _wrapped_label()
        layout.addWidget(self.estimate_label)
        return group

    def _build_run(self) -> QGroupBox:
        group = QGroupBox("Run (msfm Processing algorithms)")
        layout = QVBoxLayout(group)
        grid = QGridLayout()
        self.dialog_buttons: dict[str, QPushButton] = {}
        for i, (label, alg_id, icon_name) in enumerate(DIALOGS):
            button = QPushButton(base.icon(icon_name), label)
            button.setToolTip(f"Open the {alg_id} dialog with the dock's values")
            self.dialog_buttons[alg_id] = button
            grid.addWidget(button, i // 2, i % 2)
        layout.addLayout(grid)
        row = QHBoxLayout()
        row.addWidget(QLabel("Classes (k)"))
        self.k_spin = _spin(2, 254, 1, 8, "")
        row.addWidget(self.k_spin)
        self.run_button = QPushButton(base.icon("cluster"), "Run clustering")
        self.run_button.setToolTip("Run msfm:cluster in the background; the styled class map is added to the project")
        row.addWidget(self.run_button, 1)
        layout.addLayout(row)
        self.before_combo = QgsMapLayerComboBox()
        self.before_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.before_combo.setAllowEmptyLayer(True)
        self.before_combo.setLayer(None)
        self.before_combo.setToolTip("BEFORE of msfm:change: an earlier raster of the same place (any sensor; its "
                                     "sensor preset is guessed). This layer and msfm outputs are not listed.")
        self.change_button = QPushButton(base.icon("similarity"), "Change map")
        layout.addLayout(_row(QLabel("Change since"), (self.before_combo, 1), self.change_button))
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        row.addWidget(self.progress, 1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        self.diagnostics_button = QPushButton("Diagnostics")
        self.diagnostics_button.setToolTip("Copy versions (QGIS, torch, CUDA, onnxruntime, engine, model cache) "
                                           "to the clipboard for a bug report")
        row.addWidget(self.diagnostics_button)
        self.status_label = _wrapped_label(small=True)
        row.addWidget(self.status_label, 1)
        layout.addLayout(row)
        return group

    def _connect_controls(self) -> None:
        self.sensor_combo.currentIndexChanged.connect(self._on_sensor_changed)
        self.overrides_edit.editingFinished.connect(self._on_overrides_typed)
        self.reset_button.clicked.connect(self.reset_overrides)
        self.model_combo.currentIndexChanged.connect(self.refresh_model_state)
        self.download_button.clicked.connect(self.download_model)
        for widget in (self.model_combo, self.device_combo, self.precision_combo):
            widget.currentIndexChanged.connect(self._on_setting_changed)
        self.backend_combo.currentIndexChanged.connect(self._on_backend_changed)
        self.model_file_widget.fileChanged.connect(self._on_model_file_changed)
        for widget in (self.tile_spin, self.overlap_spin, self.batch_spin, self.scale_spin, self.k_spin):
            widget.valueChanged.connect(self._on_setting_changed)
        for alg_id, button in self.dialog_buttons.items():
            button.clicked.connect(partial(self.open_dialog, alg_id))
        self.run_button.clicked.connect(self.run_clustering)
        self.before_combo.layerChanged.connect(self.refresh_estimate)
        self.before_combo.activated.connect(self._save_layer_settings)  # a choice of the user's (not a removal)
        self.change_button.clicked.connect(self.run_change)
        self.cancel_button.clicked.connect(self.cancel_run)
        self.diagnostics_button.clicked.connect(self.copy_diagnostics)
        self.install_button.clicked.connect(self.open_installer)

    # ------------------------------------------------------------------------------------------------------------
    # The layer
    def _active_layer(self) -> Optional[QgsMapLayer]:
        try:
            layer = self.iface.activeLayer()
        except Exception:  # an iface without layers (tests, qgis_process) must not break the dock
            return None
        return layer if isinstance(layer, QgsMapLayer) else None

    def _on_current_layer_changed(self, layer: Any) -> None:
        layer = layer if isinstance(layer, QgsMapLayer) else None
        kind = msfm_product(_file_of(layer)) if isinstance(layer, QgsRasterLayer) else None
        if kind is not None and self.layer is not None and layer is not self.layer:
            # a class map, similarity or embedding raster just added (or clicked): the dock stays on the imagery
            self._describe_layer(f"“{layer.name()}”, the active layer, is an msfm output ({kind}); the dock stays on "
                                 "this imagery layer")
            return
        self.set_layer(layer)

    def _on_layer_removed(self, layer_id: str) -> None:
        if self.layer is not None and self.layer.id() == layer_id:
            self.set_layer(None)

    def set_layer(self, layer: Optional[QgsMapLayer]) -> None:
        """Show ``layer`` (a raster layer; anything else, or None, clears the dock with a one-line hint)."""
        self.layer = layer if isinstance(layer, QgsRasterLayer) and layer.isValid() else None
        self.path = _file_of(self.layer) if self.layer is not None else None
        self.layer_size = (self.layer.width(), self.layer.height()) if self.layer is not None else (0, 0)
        if self.layer is None:
            self.layer_label.setText("Select a raster layer in the Layers panel." if layer is None else
                                     f"“{layer.name()}” is not a raster layer: select a raster layer.")
        else:
            self._describe_layer()
        self._load_layer_settings()
        self.refresh_bands()

    def _describe_layer(self, note: str = "") -> None:
        """The line above the band table: the dock's layer (its bands and size), and ``note`` in small print."""
        assert self.layer is not None
        if self.path is None:
            text = (f"<b>{_esc(self.layer.name())}</b> is not a file ({self.layer.providerType()}): the band mapping "
                    "is previewed for files only; the algorithms read it through its data provider.")
        else:
            w, h = self.layer_size
            text = f"<b>{_esc(self.layer.name())}</b> — {self.layer.bandCount()} bands, {w} × {h} px"
            self.layer_label.setToolTip(self.path)
        self.layer_label.setText(text + (f"<br><small>{_esc(note)}</small>" if note else ""))

    # ------------------------------------------------------------------------------------------------------------
    # Change since: the earlier raster of msfm:change
    @staticmethod
    def _project_signals() -> tuple:
        """The project's signals after which *Change since* is listed again (layers added or removed)."""
        project = QgsProject.instance()
        return (project.layersAdded, project.layersRemoved)

    def before_layer(self) -> Optional[QgsRasterLayer]:
        """The earlier raster chosen in *Change since* (``BEFORE`` of ``msfm:change``), or None."""
        layer = self.before_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            return None
        return None if self.layer is not None and layer.id() == self.layer.id() else layer

    def _list_before_choices(self) -> None:
        """*Change since* lists the project's raster layers but the dock's layer and msfm outputs (:func:`msfm_product`,
        looked up once per layer)."""
        excepted = []
        for layer in QgsProject.instance().mapLayers().values():
            if not isinstance(layer, QgsRasterLayer):
                continue
            if layer.id() not in self._products:
                self._products[layer.id()] = msfm_product(_file_of(layer))
            if (self.layer is not None and layer.id() == self.layer.id()) or self._products[layer.id()] is not None:
                excepted.append(layer)
        self.before_combo.setExceptedLayerList(excepted)

    def _refresh_before_choices(self, *_: Any) -> None:
        self._list_before_choices()
        self.refresh_estimate()

    def _select_before(self, source: str) -> None:
        """Choose the project raster layer of file ``source`` in *Change since* (none when it is not in the project or
        is the dock's layer), without saving the choice."""
        found = None
        for layer in QgsProject.instance().mapLayers().values():
            if (source and isinstance(layer, QgsRasterLayer) and _source_of(layer) == source
                    and (self.layer is None or layer.id() != self.layer.id())):
                found = layer
                break
        self.before_combo.blockSignals(True)
        self._list_before_choices()
        self.before_combo.setLayer(found)
        self.before_combo.blockSignals(False)

    # ------------------------------------------------------------------------------------------------------------
    # Bands
    def sensor(self) -> str:
        """The chosen sensor preset id, or ``"auto"``."""
        return self.sensor_combo.currentData() or base.AUTO_SENSOR

    def overrides_text(self) -> str:
        """The ``BAND_OVERRIDES`` string of the dock's edits (``"1=drop; 4=red_2; 5=842.5"``)."""
        return "; ".join(f"{i}={_format_value(v)}" for i, v in sorted(self.overrides.items()))

    def refresh_bands(self) -> None:
        """Resolve the layer's bands with the engine and fill the table (also when resolution fails)."""
        self.mapping, self.error, self.descriptions = None, "", []
        if self.path is not None:
            try:
                with engine.raster.open_raster(self.path) as ds:
                    self.descriptions = [d or "" for d in ds.descriptions]
                    self.mapping = engine.spectral.resolve_bands(
                        ds, sensor=None if self.sensor() == base.AUTO_SENSOR else self.sensor(),
                        overrides=dict(self.overrides) or None)
            except engine.errors.BandResolutionError as exc:
                self.error = base.band_advice(exc, in_dock=True)
            except ImportError as exc:  # the engine's packages are not installed yet
                self.error = (f"The band mapping needs Python packages QGIS does not have ({exc.name or exc}): "
                              "click 'Install packages…' above.")
            except Exception as exc:  # an unreadable file…: say it in the dock
                self.error = str(exc)
        self._fill_table()
        if self.mapping is not None:
            self.sensor_label.setText(f"sensor: {self.mapping.sensor or 'none'} ({self.mapping.sensor_reason})")
        else:
            self.sensor_label.setText("")
        self.message_label.setText(self.error)
        self.message_label.setVisible(bool(self.error))
        self.overrides_edit.setText(self.overrides_text())
        self.refresh_estimate()

    def _fill_table(self) -> None:
        resolved = {b.index: b for b in self.mapping.bands} if self.mapping else {}
        dropped = {d.index: d for d in self.mapping.dropped} if self.mapping else {}
        self.table.setRowCount(0)
        self.table.setRowCount(len(self.descriptions))
        for row, description in enumerate(self.descriptions):
            index = row + 1
            band, gone = resolved.get(index), dropped.get(index)
            if band is not None:
                wavelength = "-" if band.wavelength_nm is None else f"{band.wavelength_nm:g}"
                current, rule, reason = band.key or band.projection.label, band.rule, band.reason
            elif gone is not None:
                wavelength, current, reason = "-", "drop", gone.reason
                rule = "override" if index in self.overrides else "dropped"
            else:
                wavelength, current, rule, reason = "-", "?", "unresolved", "no rule maps this band: pick a range"
            for column, text in ((0, f"{index} {description}".strip()), (1, wavelength),
                                 (RULE_COLUMN, rule), (REASON_COLUMN, reason)):
                item = QTableWidgetItem(text)
                item.setToolTip(reason)
                item.setFlags(Qt.ItemFlag.ItemIsEnabled)
                self.table.setItem(row, column, item)
            self.table.setCellWidget(row, RANGE_COLUMN, self._range_combo(index, current, reason))
        self.table.resizeColumnsToContents()
        longest = max(_range_keys() + ["drop"], key=len)  # every range key readable without a wide table
        self.table.setColumnWidth(RANGE_COLUMN, self.table.fontMetrics().horizontalAdvance(longest) + 48)
        row_height = self.table.verticalHeader().defaultSectionSize()
        rows = min(max(len(self.descriptions), 2), 16)  # every band visible up to 16, then the table scrolls
        frame = self.table.horizontalHeader().sizeHint().height() + self.table.horizontalScrollBar().sizeHint().height()
        self.table.setFixedHeight(rows * row_height + frame + 4)

    def _range_combo(self, index: int, current: str, reason: str) -> QComboBox:
        combo = _combo(14)
        combo.setEditable(True)
        combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        combo.setToolTip(f"{reason}\nPick a range, type a central wavelength in nm, or drop the band.")
        combo.addItem(current, KEEP)
        if index in self.overrides:
            combo.addItem("auto (remove override)", AUTO)
        for key in _range_keys():
            combo.addItem(key, key)
        combo.addItem("wavelength (type nm)…", TYPE_NM)
        combo.addItem("drop", "drop")
        combo.setCurrentIndex(0)
        combo.view().setMinimumWidth(combo.view().sizeHintForColumn(0) + 24)
        combo.activated.connect(partial(self._on_range_activated, index, combo))
        combo.lineEdit().editingFinished.connect(partial(self._on_range_typed, index, combo))
        return combo

    def range_combo(self, band_index: int) -> QComboBox:
        """The range chooser of a band (1-based), for tests and scripts."""
        return self.table.cellWidget(band_index - 1, RANGE_COLUMN)

    def _on_range_activated(self, index: int, combo: QComboBox, position: int) -> None:
        choice = combo.itemData(position)
        if choice == TYPE_NM:
            combo.setEditText("")
            combo.lineEdit().setPlaceholderText("nm, e.g. 842.5")
            combo.lineEdit().setFocus()
        elif choice != KEEP:
            self.set_band_range(index, None if choice == AUTO else choice)

    def _on_range_typed(self, index: int, combo: QComboBox) -> None:
        text = combo.currentText().strip()
        if not text or text == combo.itemText(0):
            return
        position = combo.findText(text, Qt.MatchFlag.MatchFixedString)
        if position >= 0:
            self._on_range_activated(index, combo, position)
            return
        try:
            self.set_band_range(index, float(text.lower().removesuffix("nm").strip()))
        except ValueError:
            self.status_label.setText(f"band {index}: “{text}” is neither a range key nor a wavelength in nm")
            combo.setCurrentIndex(0)

    def set_band_range(self, band_index: int, value: Any) -> None:
        """Override a band: a range key, a wavelength in nm (float), ``"drop"``, or None to remove the override."""
        if value is None:
            self.overrides.pop(band_index, None)
        else:
            self.overrides[band_index] = value
        self._save_layer_settings()
        self.refresh_bands()

    def _on_overrides_typed(self) -> None:
        text = self.overrides_edit.text().strip()
        if text == self.overrides_text():
            return
        try:
            self.overrides = self._parse_overrides(text)
        except Exception as exc:
            self.status_label.setText(f"Overrides not applied: {exc}")
            self.overrides_edit.setText(self.overrides_text())
            return
        self._save_layer_settings()
        self.refresh_bands()

    def _parse_overrides(self, text: str) -> dict[int, Any]:
        """``BAND_OVERRIDES`` text → {band index: value}, with the algorithms' parser (bands named by description
        are matched against the table's descriptions)."""
        parsed = base.parse_overrides(text) or {}
        descriptions = {d.lower(): i + 1 for i, d in enumerate(self.descriptions) if d}
        out: dict[int, Any] = {}
        for band, value in parsed.items():
            key = str(band).strip()
            index = int(key) if key.isdigit() else descriptions.get(key.lower())
            if index is None:
                raise ValueError(f"no band is described as {key!r}; use the band number")
            out[index] = value
        return out

    def reset_overrides(self) -> None:
        """Remove every override of the layer."""
        self.overrides = {}
        self._save_layer_settings()
        self.refresh_bands()

    def _on_sensor_changed(self) -> None:
        self._save_layer_settings()
        self.refresh_bands()

    # ------------------------------------------------------------------------------------------------------------
    # Model, device, tiles, estimate
    def model_name(self) -> str:
        return self.model_combo.currentData() or base.DEFAULT_MODEL

    def model_file(self) -> str:
        """The local model file (``MODEL_FILE``), or "" for the registry model of the Model chooser."""
        return self.model_file_widget.filePath().strip()

    def backend(self) -> str:
        """``"onnx"`` for a ``.onnx`` model file (always ONNX Runtime, as in the algorithms), else the chosen backend."""
        if base.is_onnx_file(self.model_file()):
            return "onnx"
        return self.backend_combo.currentData() or "torch"

    def _on_model_file_changed(self) -> None:
        self._sync_backend()
        self._on_setting_changed()
        self.refresh_model_state()

    def _on_backend_changed(self) -> None:
        self._on_setting_changed()
        self.refresh_packages()
        if self.devices is not None:  # detected already: the other backend's devices now
            self.detect_devices()

    def _sync_backend(self) -> None:
        """A ``.onnx`` model file fixes the backend to onnx (the chooser shows it, disabled)."""
        onnx_file = base.is_onnx_file(self.model_file())
        if onnx_file and self.backend_combo.currentData() != "onnx":
            _select(self.backend_combo, "onnx")  # emits: settings saved, devices re-detected
        self.backend_combo.setEnabled(not onnx_file)
        self.backend_combo.setToolTip(("A .onnx model file always runs with ONNX Runtime. " if onnx_file else "")
                                      + BACKEND_TIP)

    def refresh_model_state(self) -> None:
        """The model's local state (bundled / cached / not downloaded + size) and the Download button."""
        try:
            self.model_state = engine.models.model_info(self.model_name())
        except Exception as exc:
            self.model_state = {"status": f"unknown: {exc}", "available": False}
        info = self.model_state
        if info.get("bundled_present"):
            short = "bundled with the plugin (works offline)"
        elif info.get("cached"):
            short = f"downloaded (cache, commit {str(info.get('commit') or '-')[:8]})"
        elif info.get("repo_id"):
            short = f"not downloaded (~{info.get('size_mb') or 0:.0f} MB from the Hugging Face Hub)"
        else:
            short = info.get("status", "")
        if self.model_file():
            short = f"not used: the local file {Path(self.model_file()).name} overrides it"
        self.model_label.setText(short)
        self.model_label.setToolTip(info.get("status", ""))
        self.download_button.setEnabled(not info.get("available") and bool(info.get("repo_id")) and not self._task)
        self.refresh_packages()
        self.refresh_estimate()

    def missing_packages(self) -> list[str]:
        """The packages clustering with the chosen backend needs and QGIS's Python does not have."""
        return runtime.missing_packages(runtime.requirement_kind("clustering", self.backend()))

    def refresh_packages(self) -> None:
        """Show the *Install packages…* row while the chosen backend lacks packages."""
        missing = self.missing_packages()
        self.packages_row.setVisible(bool(missing))
        if missing:
            self.packages_label.setText(f"<b>Python packages missing</b> for the {self.backend()} backend: "
                                        f"{_esc(', '.join(missing))}.")

    def open_installer(self) -> Any:
        """Open the *Install the packages msfm needs* dialog (ONNX Runtime preselected for the onnx backend)."""
        from .install_dialog import InstallDialog

        dialog = InstallDialog(self.iface.mainWindow(), on_installed=self._packages_installed,
                               choice="onnx" if self.backend() == "onnx" else "torch")
        dialog.show()
        self._installer = dialog
        return dialog

    def _packages_installed(self) -> None:
        self.devices = None
        self.refresh_model_state()
        self.refresh_bands()
        if self.isVisible():
            self.detect_devices()

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self._sized:  # once: a docked widget opens at its small size hint, with the table cut off
            self._sized = True
            QTimer.singleShot(0, self.fit_width)
        if self.devices is None and not self._device_timer.isActive():
            self.device_label.setText("devices: detecting…")
            self._device_timer.start(0)

    def fit_width(self) -> int:
        """Widen the docked dock so the band table shows every column (at most 45 % of the main window); the user
        can resize it afterwards. Returns the width asked for."""
        main = self.iface.mainWindow()
        columns = sum(max(self.table.columnWidth(c), self.table.horizontalHeader().sectionSizeHint(c))
                      for c in range(self.table.columnCount()))
        width = min(max(DOCK_MIN_WIDTH, columns + 60), int(0.45 * main.width()))
        if not self.isFloating() and hasattr(main, "resizeDocks"):
            main.resizeDocks([self], [width], Qt.Horizontal)
        return width

    def _detect_if_shown(self) -> None:
        """The first show's device detection, unless the dock was hidden again meanwhile: QGIS shows a dock for an
        instant when the plugin adds it (Install from ZIP), and that must not import torch."""
        if self.isVisible():
            self.detect_devices()
        else:
            self.device_label.setText("")

    def detect_devices(self) -> None:
        """Ask torch which devices it sees (imports torch, ~2 s the first time: on first show, never at load), or
        ONNX Runtime which execution providers it has (the onnx backend: torch is not imported)."""
        try:
            self.devices = runtime.onnxruntime_report() if self.backend() == "onnx" else runtime.device_report()
        except Exception as exc:
            self.devices = f"device detection failed: {exc}"
        self.device_label.setText(self.devices)
        self.refresh_estimate()

    def device(self) -> str:
        """The device the run will use: the chosen one, or for ``auto`` CUDA when torch reported one (ONNX Runtime:
        when it has the CUDA execution provider)."""
        chosen = self.device_combo.currentData() or "auto"
        if chosen != "auto":
            return chosen
        if self.backend() == "onnx":
            cuda = bool(self.devices) and "CUDAExecutionProvider" in self.devices
        else:
            cuda = bool(self.devices) and self.devices.startswith("CUDA available")
        return "cuda" if cuda else "cpu"

    def scale(self) -> float:
        """Model pixels per layer pixel: the spin box, or the sensor preset's default when it is 0."""
        if self.scale_spin.value() > 0:
            return max(self.scale_spin.value(), 0.05)
        try:
            if self.mapping is not None:
                return float(self.mapping.default_scale)
            if self.sensor() != base.AUTO_SENSOR:
                return float(engine.spectral.get_sensor(self.sensor()).default_scale)
        except Exception:  # engine dependencies missing: the band table already says why
            pass
        return 1.0

    def tile_count(self) -> Optional[int]:
        """Tiles the run will encode (engine.raster.tile_grid over the layer's size × scale), or None if unknown."""
        width, height = self.layer_size
        return self._tiles(width, height, self.scale())

    def before_tile_count(self) -> Optional[int]:
        """Tiles *Change map* will encode for the earlier raster (its size × the scale: *Scale*, else the default of the
        sensor preset guessed for it, as ``BEFORE_SENSOR`` auto does), or None (none chosen, not a file, bands that do
        not resolve)."""
        before = self.before_layer()
        if before is None:
            return None
        scale = self.scale() if self.scale_spin.value() > 0 else self._preset_scale(_file_of(before))
        return None if scale is None else self._tiles(before.width(), before.height(), scale)

    def _preset_scale(self, path: Optional[str]) -> Optional[float]:
        """The default scale of the sensor preset ``engine.spectral.resolve_bands`` guesses for a file (cached), or
        None when it is no file or its bands do not resolve."""
        if path is None:
            return None
        if path not in self._preset_scales:
            try:
                with engine.raster.open_raster(path) as ds:
                    self._preset_scales[path] = float(engine.spectral.resolve_bands(ds).default_scale)
            except Exception:  # unresolved bands, missing packages: no estimate (the run says why)
                self._preset_scales[path] = None
        return self._preset_scales[path]

    def _tiles(self, width: int, height: int, scale: float) -> Optional[int]:
        """Tiles of a ``width`` × ``height``-px raster at ``scale`` with the dock's tiling, or None if unknown."""
        if not width or not height:
            return None
        patch = int(self.model_state.get("geometry", {}).get("patch_size") or self.model_state.get("patch_size", 16))
        try:
            grid = engine.raster.tile_grid(
                max(1, round(height * scale)), max(1, round(width * scale)),
                self.tile_spin.value(), self.overlap_spin.value(), patch)
        except (ValueError, ImportError):  # bad tiling, or the engine's packages are not installed yet
            return None
        return len(grid)

    def flops_per_tile(self) -> Optional[float]:
        """ViT FLOPs per tile ≈ depth·(24·T·D² + 4·T²·D), T = (tile/patch)² tokens."""
        geometry = self.model_state.get("geometry") or {}
        dim = geometry.get("embed_dim") or self.model_state.get("embed_dim")
        depth = geometry.get("depth") or self.model_state.get("depth")
        patch = geometry.get("patch_size") or self.model_state.get("patch_size") or 16
        if not dim or not depth:
            return None
        tokens = (self.tile_spin.value() / patch) ** 2
        return depth * (24 * tokens * dim ** 2 + 4 * tokens ** 2 * dim)

    def refresh_estimate(self) -> None:
        """Tile count and estimated time for the current layer and settings."""
        tile, overlap = self.tile_spin.value(), self.overlap_spin.value()
        tiles = self.tile_count() if self.layer is not None else None
        ok = tile % 16 == 0 and overlap % 16 == 0 and overlap < tile
        tiles_text, estimate = "-", "-"
        if self.layer is not None and not ok:
            tiles_text = "tile size and overlap must be multiples of 16 px, overlap < tile size"
        elif self.layer is not None and tiles is None:
            tiles_text = "unknown (the layer has no pixel size)"
        elif self.layer is not None:
            w, h = self.layer_size
            scale = self.scale()
            self.scale_spin.setSpecialValueText(f"preset ({scale:g})" if self.scale_spin.value() == 0 else "preset")
            tiles_text = (f"{tiles} tiles of {tile} px ({round(w * scale)} × {round(h * scale)} model px "
                          f"at scale {scale:g}, overlap {overlap} px)")
            seconds, source = timing.estimate(self.timing_key(), tiles, self.flops_per_tile(), self.device())
            if seconds is not None:
                estimate = f"~{_duration(seconds)} ({source})"
            earlier = self.before_tile_count() if tiles is not None else None
            if seconds is not None and earlier is not None:  # both rasters' tiles, as one run of this model
                change, _ = timing.estimate(self.timing_key(), tiles + earlier, self.flops_per_tile(), self.device())
                estimate += f"; change map ({tiles} + {earlier} tiles): ~{_duration(change or 0)}"
        self.tiles_label.setText(f"<b>Tiles:</b> {_esc(tiles_text)}")
        self.estimate_label.setText(f"<b>Estimated time:</b> {_esc(estimate)}")
        self._update_buttons(ok)

    def _update_buttons(self, tiling_ok: bool = True) -> None:
        has_layer = self.layer is not None
        running = self._task is not None
        for button in self.dialog_buttons.values():
            button.setEnabled(has_layer)
        bands_ok = self.mapping is not None or self.path is None
        self.run_button.setEnabled(has_layer and tiling_ok and not running and bands_ok)
        before = self.before_layer()
        why = ("Select the later raster in the Layers panel first." if self.layer is None else
               "Choose the earlier raster in 'Change since' first." if before is None else
               "A run is in progress; wait for it or cancel it." if running else
               "Tile size and overlap must be multiples of 16 px, overlap < tile size." if not tiling_ok else
               "Map this layer's bands first (see the band table)." if not bands_ok else "")
        self.change_button.setEnabled(not why)
        self.change_button.setToolTip(why or (
            f"Run msfm:change in the background: the cosine distance between the embeddings of “{before.name()}” "
            f"(earlier) and “{self.layer.name()}” (later); the change map is added to the project"))
        self.cancel_button.setEnabled(running)

    def timing_key(self) -> str:
        """The key of this model, device choice, tile size and backend in the timings runs record (:mod:`.timing`)."""
        return timing.key(self.model_file() or self.model_name(), self.device_combo.currentData() or "auto",
                          self.tile_spin.value(), self.backend())

    # ------------------------------------------------------------------------------------------------------------
    # Runs (all through the msfm Processing algorithms)
    def parameters(self, alg_id: str) -> dict:
        """The algorithm's parameters from the dock's values (only the ones ``alg_id`` declares)."""
        values: dict[str, Any] = {
            "INPUT": self.layer, "SENSOR": self.sensor(), "BAND_OVERRIDES": self.overrides_text(),
            "MODEL": self.model_name(), "BACKEND": self.backend(),
            "DEVICE": self.device_combo.currentData() or "auto",
            "PRECISION": self.precision_combo.currentData() or "auto",
            "TILE_SIZE": self.tile_spin.value(), "OVERLAP": self.overlap_spin.value(),
            "BATCH_SIZE": self.batch_spin.value() or None, "K": self.k_spin.value(),
        }
        if self.scale_spin.value() > 0:
            values["SCALE"] = self.scale()
        if self.model_file():
            values["MODEL_FILE"] = self.model_file()
        alg = QgsApplication.processingRegistry().algorithmById(alg_id)
        names = {p.name() for p in alg.parameterDefinitions()} if alg is not None else set(values)
        return {name: value for name, value in values.items() if name in names}

    def open_dialog(self, alg_id: str) -> None:
        """Open the Processing dialog of ``alg_id`` prefilled with the dock's values (it runs there)."""
        import processing

        results = processing.execAlgorithmDialog(alg_id, self.parameters(alg_id)) or {}
        self.refresh_estimate()  # the run recorded its timing
        # the run's own time (the dialog may have stayed open long after it)
        took = f" in {float(results['SECONDS']):.1f} s" if results.get("SECONDS") else ""
        self.status_label.setText(f"{alg_id}: finished{took}" if results else "")

    def run_clustering(self) -> bool:
        """Run ``msfm:cluster`` in the background; the class map is added to the project and styled."""
        if self.layer is None:
            return False
        params = self.parameters("msfm:cluster")
        name = f"{self.layer.name()} classes (k={params['K']})"
        params["OUTPUT"] = QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", QgsProject.instance())
        params["OUTPUT"].destinationName = name
        return self.start_task("msfm:cluster", params, self._clustering_done)

    def _clustering_done(self, ok: bool, results: dict, seconds: float) -> None:
        if ok:  # the run recorded its timing (refresh_model_state refreshes the estimate)
            took = float(results.get("SECONDS") or seconds)
            self.status_label.setText(f"Class map (k={results.get('K')}) added to the project in {took:.1f} s.")

    def run_change(self) -> bool:
        """Run ``msfm:change`` in the background: ``BEFORE`` the layer chosen in *Change since* (its sensor preset
        guessed), ``INPUT`` the dock's layer with the dock's band, model and tiling values; the change map is added
        to the project, named ``<later> change since <earlier>`` and styled by the algorithm."""
        before = self.before_layer()
        if self.layer is None or before is None:
            return False
        params = self.parameters("msfm:change")
        params.update(BEFORE=before, BEFORE_SENSOR=base.AUTO_SENSOR,
                      OUTPUT=QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", QgsProject.instance()))
        return self.start_task("msfm:change", params, self._change_done)

    def _change_done(self, ok: bool, results: dict, seconds: float) -> None:
        if ok:
            took = float(results.get("SECONDS") or seconds)
            self.status_label.setText(f"Change map added to the project in {took:.1f} s.")

    def download_model(self) -> bool:
        """Run ``msfm:downloadmodel`` for the chosen model in the background, then refresh its state."""
        return self.start_task("msfm:downloadmodel", {"MODEL": self.model_name()},
                               lambda ok, results, seconds: self.refresh_model_state())

    def start_task(self, alg_id: str, params: dict, on_done: Any) -> bool:
        """Run an algorithm in a ``QgsProcessingAlgRunnerTask`` (one at a time); outputs are loaded on completion
        (post-processors style them) and ``on_done(ok, results, seconds)`` is called."""
        from processing.tools import dataobjects

        alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
        if alg is None or self._task is not None:
            self.status_label.setText(f"{alg_id} is not available (is the msfm provider enabled?)"
                                      if alg is None else "A run is in progress.")
            return False
        feedback = QgsProcessingFeedback()
        context = dataobjects.createContext(feedback)
        ok, message = alg.checkParameterValues(params, context)
        if not ok:
            self.status_label.setText(message)
            return False
        task = QgsProcessingAlgRunnerTask(alg, params, context, feedback)
        self._run = {"alg": alg, "context": context, "feedback": feedback, "on_done": on_done,
                     "started": time.perf_counter(), "id": alg_id}
        feedback.progressChanged.connect(self._on_progress)
        task.executed.connect(self._on_executed)
        self._task = task
        self.progress.setValue(0)
        self.status_label.setText(f"Running {alg_id}…")
        self._update_buttons()
        self.download_button.setEnabled(False)
        QgsApplication.taskManager().addTask(task)
        return True

    def is_running(self) -> bool:
        return self._task is not None

    @pyqtSlot(float)
    def _on_progress(self, value: float) -> None:
        self.progress.setValue(int(value))

    @pyqtSlot(bool, "QVariantMap")
    def _on_executed(self, ok: bool, results: dict) -> None:
        from processing.gui.Postprocessing import handleAlgorithmResults

        run, self._run, self._task = self._run, {}, None
        seconds = time.perf_counter() - run["started"]
        feedback = run["feedback"]
        if ok:
            handleAlgorithmResults(run["alg"], run["context"], feedback, showResults=False)
            self.progress.setValue(100)
            self.status_label.setText(f"{run['id']}: done in {seconds:.1f} s")
        elif feedback.isCanceled():
            self.progress.setValue(0)
            self.status_label.setText(f"{run['id']}: cancelled")
        else:
            lines = [line for line in feedback.textLog().splitlines() if line.strip()]
            QgsMessageLog.logMessage(f"{run['id']} failed:\n{feedback.textLog()}", "msfm", Qgis.Critical)
            self.status_label.setText(f"{run['id']} failed: " + ("\n".join(lines[-4:]) or "see the log") +
                                      " (whole message: View ▸ Panels ▸ Log Messages ▸ msfm)")
        try:
            run["on_done"](ok, results or {}, seconds)
        finally:
            self.refresh_model_state()  # also re-enables the buttons

    def cancel_run(self) -> None:
        """Cancel the background run (the engine stops within one batch)."""
        if self._task is not None:
            self._task.cancel()
            self.status_label.setText("Cancelling…")

    def copy_diagnostics(self) -> str:
        """Copy versions (QGIS, torch, CUDA, onnxruntime, engine, model cache) to the clipboard; returns the text."""
        text = runtime.diagnostics(Qgis.version())
        QApplication.clipboard().setText(text)
        self.status_label.setText(f"Diagnostics copied to the clipboard ({len(text.splitlines())} lines): "
                                  "paste them into your bug report.")
        return text

    # ------------------------------------------------------------------------------------------------------------
    # Settings
    def _restore_settings(self) -> None:
        s = QgsSettings()
        _select(self.model_combo, s.value(f"{SETTINGS}/model", base.DEFAULT_MODEL))
        _select(self.device_combo, s.value(f"{SETTINGS}/device", "auto"))
        _select(self.precision_combo, s.value(f"{SETTINGS}/precision", "auto"))
        _select(self.backend_combo, s.value(f"{SETTINGS}/backend", "torch"))
        self.model_file_widget.setFilePath(s.value(f"{SETTINGS}/model_file", "") or "")
        self._sync_backend()
        for key, spin, default, kind in (("tile_size", self.tile_spin, 224, int),
                                         ("overlap", self.overlap_spin, 112, int),
                                         ("batch_size", self.batch_spin, 0, int),
                                         ("scale", self.scale_spin, 0.0, float), ("k", self.k_spin, 8, int)):
            spin.setValue(kind(s.value(f"{SETTINGS}/{key}", default)))

    def _on_setting_changed(self) -> None:
        s = QgsSettings()
        s.setValue(f"{SETTINGS}/model", self.model_name())
        s.setValue(f"{SETTINGS}/device", self.device_combo.currentData())
        s.setValue(f"{SETTINGS}/precision", self.precision_combo.currentData())
        s.setValue(f"{SETTINGS}/backend", self.backend_combo.currentData())
        s.setValue(f"{SETTINGS}/model_file", self.model_file())
        for key, spin in (("tile_size", self.tile_spin), ("overlap", self.overlap_spin),
                          ("batch_size", self.batch_spin), ("scale", self.scale_spin), ("k", self.k_spin)):
            s.setValue(f"{SETTINGS}/{key}", spin.value())
        self.refresh_estimate()

    def _layer_key(self) -> Optional[str]:
        if self.layer is None:
            return None
        source = self.path or self.layer.source()
        # A settings key, not a security use: the digest (and so the key of settings saved before) is unchanged.
        digest = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()[:16]
        return f"{SETTINGS}/layers/{digest}"

    def _load_layer_settings(self) -> None:
        """Sensor preset, overrides and the earlier raster of *Change since* of this raster file (kept per file across
        projects; the earlier raster is chosen when it is in the project)."""
        key = self._layer_key()
        sensor, text, before = base.AUTO_SENSOR, "", ""
        if key is not None:
            sensor = QgsSettings().value(f"{key}/sensor", base.AUTO_SENSOR)
            text = QgsSettings().value(f"{key}/overrides", "")
            before = QgsSettings().value(f"{key}/before", "")
        self._select_before(before)
        self.sensor_combo.blockSignals(True)
        _select(self.sensor_combo, sensor)
        self.sensor_combo.blockSignals(False)
        self.overrides = {}
        if text:
            try:
                self.overrides = {int(k): v for k, v in (base.parse_overrides(text) or {}).items()}
            except Exception:  # a stale or foreign value must not break the dock
                self.overrides = {}

    def _save_layer_settings(self, *_: Any) -> None:
        key = self._layer_key()
        if key is not None:
            before = self.before_layer()
            QgsSettings().setValue(f"{key}/sensor", self.sensor())
            QgsSettings().setValue(f"{key}/overrides", self.overrides_text())
            QgsSettings().setValue(f"{key}/before", _source_of(before) if before is not None else "")

    # ------------------------------------------------------------------------------------------------------------
    def close_dock(self) -> None:
        """Disconnect every signal the dock connected outside itself and cancel a running task (plugin unload)."""
        self._device_timer.stop()
        for signal, slot in ((self.iface.currentLayerChanged, self._on_current_layer_changed),
                             (QgsProject.instance().layerWillBeRemoved[str], self._on_layer_removed),
                             *((signal, self._refresh_before_choices) for signal in self._project_signals())):
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):  # already disconnected
                pass
        if self._task is not None:
            try:
                self._task.executed.disconnect(self._on_executed)
                self._run["feedback"].progressChanged.disconnect(self._on_progress)
            except (TypeError, RuntimeError):
                pass
            self._task.cancel()
            self._task = None
        self.layer = None


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers


def _wrapped_label(small: bool = False) -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if small:
        font = label.font()
        font.setPointSizeF(font.pointSizeF() * 0.9)
        label.setFont(font)
    return label


def _combo(characters: int = 16) -> QComboBox:
    """A combo box whose width does not grow with its longest entry (the dock stays narrow)."""
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    return combo


def _row(*widgets: Any) -> QHBoxLayout:
    """A horizontal row of widgets; ``(widget, stretch)`` pairs stretch."""
    row = QHBoxLayout()
    for item in widgets:
        widget, stretch = item if isinstance(item, tuple) else (item, 0)
        row.addWidget(widget, stretch)
    return row


def _spin(low: int, high: int, step: int, value: int, suffix: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setSuffix(suffix)
    return spin


def _select(combo: QComboBox, data: Any) -> None:
    position = combo.findData(data)
    if position >= 0:
        combo.setCurrentIndex(position)


def _sensor_names() -> dict[str, str]:
    try:
        return {s.id: s.name for s in engine.spectral.list_sensors()}
    except Exception:
        return {}


def _range_keys() -> list[str]:
    """Every SMARTIES range key a band can be mapped to (the disabled cirrus range excluded)."""
    try:
        return [r.key for r in engine.spectral.spectral_ranges() if not r.is_disabled]
    except Exception:
        return []


def _file_of(layer: QgsRasterLayer) -> Optional[str]:
    """The GDAL-readable file of a layer, or None (WMS, database and other non-file layers)."""
    if layer.providerType() != "gdal":
        return None
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or layer.source()
    return path if os.path.isfile(path) or path.startswith("/vsi") else None


def _source_of(layer: QgsRasterLayer) -> str:
    """What identifies a layer's raster across projects: its file, else its data source."""
    return _file_of(layer) or layer.source()


def msfm_product(path: Optional[str]) -> Optional[str]:
    """What msfm made this raster file: its ``MSFM_KIND`` tag (``classes``, ``similarity``…) or ``embeddings``; None
    for any other raster (or no file). Read with GDAL (QGIS's own): only the header is opened."""
    if not path:
        return None
    from osgeo import gdal

    try:
        dataset = gdal.Open(path)
    except RuntimeError:  # unreadable, where GDAL raises
        return None
    tags = (dataset.GetMetadata() if dataset is not None else None) or {}
    if "MSFM_KIND" in tags:
        return str(tags["MSFM_KIND"])
    return "embeddings" if "MSFM_MODEL" in tags else None


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours = math.floor(seconds / 3600)
    return f"{hours} h {(seconds - 3600 * hours) / 60:.0f} min"


def _esc(text: str) -> str:
    import html

    return html.escape(text)
