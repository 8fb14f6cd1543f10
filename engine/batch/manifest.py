"""The manifest of a batch run: what is finished, so that a rerun resumes where the last one stopped.

``OUTDIR/manifest.jsonl`` is JSON Lines: a header line with the run's key (command, model and settings), then one line
per finished or failed scene (status ``done`` or ``failed``, output, size, SHA-256, seconds, tiles, error, and the
size and SHA-256 of the outputs that go with it, ``companions``), appended
and flushed to disk as each scene ends. Appending costs the same for the millionth scene as for the first, and a
client killed while writing leaves at most one incomplete last line, which is ignored when the manifest is read. A
later line of a scene replaces an earlier one.

A scene is skipped on a rerun only when its output still exists with the recorded size and hash; failed scenes are
tried again. A manifest made with another key (a different model or settings) is refused unless the run overwrites.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..atomic import atomic_output
from ..errors import OutputError
from .products import file_digest

__all__ = ("MANIFEST_FORMAT", "Manifest", "run_key")

MANIFEST_FORMAT = "msfm-batch-manifest/1"


def run_key(command: str, model: str, settings: Mapping[str, Any]) -> str:
    """A short hash of what decides a batch run's outputs: the command, the model and the settings (JSON)."""
    text = json.dumps({"command": command, "model": model, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Manifest:
    """The manifest file of a batch run's output folder.

    Args:
        folder: The output folder (must exist).
        key: :func:`run_key` of this run.
        command: The batch command (``"embed"``), written in the header.
        overwrite: Start afresh: the manifest is replaced by an empty one, so every scene is redone.

    Attributes:
        path: ``folder/manifest.jsonl``.
        scenes: Scene id → its latest record.

    Raises:
        OutputError: The folder holds a manifest of another run (key) and ``overwrite`` is False, or an unreadable
            manifest.
    """

    def __init__(self, folder: Union[str, Path], key: str, command: str = "embed", overwrite: bool = False) -> None:
        self.path = Path(folder) / "manifest.jsonl"
        self.key = key
        self.scenes: dict[str, dict[str, Any]] = {}
        if self.path.exists() and not overwrite:
            self._read()
        else:
            header = {"format": MANIFEST_FORMAT, "command": command, "key": key}
            with atomic_output(self.path) as tmp:
                tmp.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def _read(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
            lines = text.splitlines()
            header = json.loads(lines[0]) if lines else {}
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot read {self.path} ({exc}); rerun with --overwrite to start afresh") from exc
        if header.get("key") != self.key:
            raise OutputError(
                f"{self.path.parent} holds the outputs of another run ({header.get('command')} with another model or "
                "other settings); choose another output folder, or rerun with --overwrite to redo every scene"
            )
        if not text.endswith("\n"):  # end the incomplete line, so the next record starts a line of its own
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n")
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except ValueError:  # the last line of a client killed while appending it
                continue
            self.scenes[record["id"]] = record

    def finished(self, scene_id: str) -> Optional[dict[str, Any]]:
        """The scene's record if it is done and its output is intact (same size and SHA-256), else None.

        The outputs that go with it (``companions`` of the record: a change run's mask and polygons) must be intact
        too.
        """
        record = self.scenes.get(scene_id)
        if not record or record.get("status") != "done":
            return None
        files = {record["output"]: record, **record.get("companions", {})}
        for name, recorded in files.items():
            output = self.path.parent / name
            if not output.is_file() or output.stat().st_size != recorded["bytes"]:
                return None
            if file_digest(output) != (recorded["bytes"], recorded["sha256"]):
                return None
        return record

    def update(self, scene_id: str, record: Mapping[str, Any]) -> None:
        """Append a scene's record and flush it to disk."""
        entry = {**record, "id": scene_id}
        self.scenes[scene_id] = entry
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
