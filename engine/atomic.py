"""Atomic output files: every file the engine writes appears complete under its name, or not at all.

:func:`atomic_output` is the one mechanism behind every writer (GeoTIFFs, PNG quicklooks, QGIS styles, head files,
checkpoints, ONNX exports, GeoPackages): the writer fills a temporary file beside the target, in the same folder (so
the final rename stays on one file system and is atomic), and the temporary file is renamed onto the target only when
the ``with`` block ends without an exception. On any exception, cancellation included, and also when the rename
itself fails, the temporary file and its sidecars are removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence, Union

from .errors import SettingsError

__all__ = ("atomic_output", "remove_quietly", "write_text")

log = logging.getLogger(__name__)

#: Files GDAL may write next to a raster; they follow the raster's temporary file (or are removed with it).
GDAL_SIDECARS = (".aux.xml",)


def remove_quietly(path: Union[str, "os.PathLike[str]"], sidecars: Sequence[str] = GDAL_SIDECARS) -> None:
    """Delete a file and its sidecars (``NAME`` + each suffix) where they exist.

    Args:
        path: The file.
        sidecars: Suffixes appended to the full file name (``".aux.xml"`` → ``scene.tif.aux.xml``).
    """
    path = Path(path)
    for p in (path, *(path.with_name(path.name + s) for s in sidecars)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def atomic_output(path: Union[str, "os.PathLike[str]"], sidecars: Sequence[str] = GDAL_SIDECARS) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary name is ``.<stem>.part-<pid><suffix>``: hidden, unique per process, and with the target's suffix so
    that format drivers (GDAL's GTiff/PNG/GPKG) accept it. Sidecars the writer leaves next to the temporary file
    (GDAL's ``.aux.xml``) are renamed with it.

    Args:
        path: The final file; an existing file is replaced only on success.
        sidecars: Suffixes of sidecar files that travel with the file.

    Yields:
        The temporary path to write.

    Raises:
        SettingsError: The folder of ``path`` does not exist (checked before anything is written).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise SettingsError(f"output folder {path.parent} does not exist; create it first")
    tmp = path.with_name(f".{path.stem}.part-{os.getpid()}{path.suffix}")
    remove_quietly(tmp, sidecars)
    try:
        yield tmp
        os.replace(tmp, path)
        for suffix in sidecars:
            side = tmp.with_name(tmp.name + suffix)
            if side.exists():
                os.replace(side, path.with_name(path.name + suffix))
    except BaseException:
        remove_quietly(tmp, sidecars)
        log.debug("removed partial output %s", tmp)
        raise


def write_text(path: Union[str, "os.PathLike[str]"], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (:func:`atomic_output`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_output(path, sidecars=()) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
