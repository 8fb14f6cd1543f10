"""The *Install the packages msfm needs* dialog: a choice, a progress bar, pip's log, cancel (:mod:`.packages`)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from qgis.core import QgsApplication
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from . import packages, runtime

__all__ = ("InstallDialog",)


class InstallDialog(QDialog):
    """Choose ONNX Runtime or PyTorch and install it into the plugin's packages folder, in the background.

    Args:
        parent: The parent window.
        on_installed: Called after a successful install (the dock refreshes what it shows).
        choice: The choice selected at first (``"onnx"`` or ``"torch"``).
    """

    def __init__(self, parent: Optional[QWidget] = None, on_installed: Optional[Callable[[], None]] = None,
                 choice: str = "onnx") -> None:
        super().__init__(parent)
        self.setObjectName("MsfmInstallDialog")
        self.setWindowTitle("Install the packages msfm needs")
        self.on_installed = on_installed
        self.task: Optional[packages.InstallTask] = None
        layout = QVBoxLayout(self)
        folder = packages.packages_folder()
        intro = QLabel(
            "msfm runs its models with Python packages QGIS does not ship. They are installed with QGIS's own Python "
            f"into a folder of your QGIS profile (<tt>{folder}</tt>), never into QGIS itself: QGIS's numpy and GDAL "
            "stay as they are, and removing that folder undoes everything. QGIS's proxy settings are used.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.group = QButtonGroup(self)
        self.buttons: dict[str, QRadioButton] = {}
        gpu = packages.nvidia_gpu()
        for key, option in packages.CHOICES.items():
            detail = option.detail
            if key == "torch":
                detail += " NVIDIA GPU seen: the CUDA build." if gpu else " No NVIDIA GPU seen: the CPU build."
            button = QRadioButton(option.title)
            button.setToolTip(detail)
            self.group.addButton(button)
            self.buttons[key] = button
            layout.addWidget(button)
            note = QLabel(f"<small>{detail}</small>")
            note.setWordWrap(True)
            note.setContentsMargins(24, 0, 0, 4)
            layout.addWidget(note)
        self.buttons.get(choice, self.buttons["onnx"]).setChecked(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        layout.addWidget(self.progress)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.log.setMinimumHeight(160)
        layout.addWidget(self.log, 1)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        row = QHBoxLayout()
        row.addStretch(1)
        self.install_button = QPushButton("Install")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.close_button = QPushButton("Close")
        for widget in (self.install_button, self.cancel_button, self.close_button):
            row.addWidget(widget)
        layout.addLayout(row)
        self.install_button.clicked.connect(self.install)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        self.resize(620, 480)

    def choice(self) -> str:
        """The selected choice's key."""
        return next(key for key, button in self.buttons.items() if button.isChecked())

    def install(self) -> bool:
        """Start the install task (one at a time); False when one is running."""
        if self.task is not None:
            return False
        self.log.clear()
        self.progress.setValue(0)
        self.task = packages.InstallTask(self.choice(), on_done=self._done)
        self.task.line.connect(self.log.appendPlainText)
        self.task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self.status.setText(f"Installing {packages.CHOICES[self.choice()].title}…")
        for widget in (self.install_button, self.close_button, *self.buttons.values()):
            widget.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)
        return True

    def cancel(self) -> None:
        """Stop pip; the packages folder stays as it was."""
        if self.task is not None:
            self.task.cancel()
            self.status.setText("Cancelling…")

    def _done(self, ok: bool, task: Any) -> None:
        self.task = None
        for widget in (self.install_button, self.close_button, *self.buttons.values()):
            widget.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if ok:
            self.progress.setValue(100)
            missing = runtime.missing_packages("clustering_onnx" if task.choices == ["onnx"] else "clustering")
            self.status.setText(
                "Installed: msfm is ready, no restart needed." if not missing else
                f"Installed, but still missing: {', '.join(missing)} (see the log).")
            if self.on_installed is not None:
                self.on_installed()
        elif task.isCanceled():
            self.progress.setValue(0)
            self.status.setText("Cancelled: nothing was changed.")
        else:
            self.status.setText(f"The install failed, nothing was changed: {task.error}. The log above has pip's "
                                "messages (a proxy or firewall? Settings ▸ Options ▸ Network).")
