"""Atomic output files: every file the engine writes appears complete under its name, or not at all.

:func:`atomic_output` is the one mechanism behind every writer (GeoTIFFs, PNG quicklooks, QGIS styles, head files,
checkpoints, ONNX exports, GeoPackages): the writer fills a file of the target's name inside a *partial folder* beside
the target (same folder, so the final rename stays on one file system and is atomic), and the file is renamed onto the
target only when the ``with`` block ends without an exception. On any exception (cancellation, Ctrl-C, and the
``SIGTERM``/``SIGHUP`` the command line turns into exceptions), and also when the rename itself fails, the partial
folder is removed with everything in it (GDAL's ``.aux.xml`` sidecars included). :func:`scratch_folder` gives the same
kind of folder to intermediate products (the embeddings a class map is computed from).

A partial folder is named ``.<output name>.msfm-partial-<random>`` and holds a lock (``flock`` on POSIX, a byte-range
lock on Windows) for as long as its run lives. A run killed without a chance to clean up (``SIGKILL``, power loss)
leaves the folder behind, but its lock dies with the process: the next run on the same output finds the unlocked
folder and removes it (:func:`remove_abandoned`). Folders of runs still writing stay locked and are left alone, so
two runs never delete each other's work; the PID plays no part, so PID reuse cannot fool the check.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence, Union

from .errors import EngineError, OutputError

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

__all__ = ("PARTIAL_MARK", "atomic_output", "remove_abandoned", "remove_quietly", "scratch_folder", "write_text")

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
#: Files GDAL may write next to a raster; they follow the raster (or are removed with its partial folder).
GDAL_SIDECARS = (".aux.xml",)
#: Marks the partial folders of :func:`atomic_output` and :func:`scratch_folder`: ``.<output name>`` + mark + random.
PARTIAL_MARK = ".msfm-partial-"
_LOCK = ".lock"
#: A partial folder without its lock file is a run killed between creating the folder and locking it (microseconds),
#: or a run still in that window: it counts as abandoned only when older than this many seconds.
_UNLOCKED_GRACE_S = 60.0
#: Permissions of every output file: what ``open(path, "w")`` gives under the process's umask (0644 under 022).
_umask = os.umask(0o022)
os.umask(_umask)
_FILE_MODE = 0o666 & ~_umask
#: Free space below which a failed write is reported as a full disk.
_FULL_BYTES = 1 << 20


def remove_quietly(path: PathLike, sidecars: Sequence[str] = GDAL_SIDECARS) -> None:
    """Delete a file and its sidecars (``NAME`` + each suffix) where they exist.

    Args:
        path: The file.
        sidecars: Suffixes appended to the full file name (``".aux.xml"`` → ``scene.tif.aux.xml``).
    """
    path = Path(path)
    for p in (path, *(path.with_name(path.name + s) for s in sidecars)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _try_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False when another open file holds it."""
    try:
        if sys.platform == "win32":
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _abandoned(folder: Path) -> bool:
    """Whether a partial folder's run is gone: its lock can be taken (then it is released at once)."""
    lock = folder / _LOCK
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > _UNLOCKED_GRACE_S
        except FileNotFoundError:  # removed meanwhile by its own run
            return False
    try:
        return _try_lock(fd)
    finally:
        os.close(fd)  # closing releases the lock


def remove_abandoned(path: PathLike) -> list[Path]:
    """Remove the partial folders that killed runs left beside ``path`` (see the module text).

    Args:
        path: An output file; only folders named after it (``.<name>.msfm-partial-*``) are considered.

    Returns:
        The folders removed.
    """
    path = Path(path)
    removed = []
    for name in glob.glob(glob.escape(str(path.with_name(f".{path.name}{PARTIAL_MARK}"))) + "*"):
        folder = Path(name)
        if folder.is_dir() and _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed %s, left by an earlier run that was killed while writing %s", folder, path)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def scratch_folder(path: PathLike) -> Iterator[Path]:
    """A locked partial folder beside the output ``path``, removed with its content when the block exits.

    Folders that killed runs left for the same output are removed first (:func:`remove_abandoned`).

    Args:
        path: The output the folder serves (it names the folder and decides where it lies).

    Yields:
        The folder (``.<name>.msfm-partial-<random>``, mode 0700).

    Raises:
        OutputError: The folder of ``path`` does not exist or cannot be written (checked before anything is written).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"output folder {path.parent} does not exist; create it first")
    remove_abandoned(path)
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}{PARTIAL_MARK}", dir=path.parent))
    except PermissionError as exc:
        raise OutputError(
            f"cannot write into {path.parent} ({exc.strerror}); choose a folder you can write to"
        ) from exc
    fd = -1
    try:
        fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        _try_lock(fd)
        yield folder
    finally:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(path: PathLike, sidecars: Sequence[str] = GDAL_SIDECARS) -> Iterator[Path]:
    """Yield a temporary path for ``path``; move it onto ``path`` when the block succeeds.

    The file gets the permissions an ordinary new file has (``0666`` less the umask), whatever the writer used.

    The temporary file has the target's name, inside a :func:`scratch_folder` beside the target, so format drivers
    (GDAL's GTiff/PNG/GPKG) see the right suffix. Sidecars the writer leaves next to it (GDAL's ``.aux.xml``) move
    with it; whatever else the writer left is removed with the folder.

    Args:
        path: The final file; an existing file is replaced only on success (the replacement policy itself, asking
            before replacing, is :func:`engine.outputs.check_outputs`).
        sidecars: Suffixes of sidecar files that travel with the file.

    Yields:
        The temporary path to write.

    Raises:
        OutputError: The folder of ``path`` does not exist or is read-only (checked before anything is written).
    """
    path = Path(path)
    with scratch_folder(path) as folder:
        tmp = folder / path.name
        try:
            yield tmp
            if tmp.is_file():  # some writers create private files (safetensors: 0600): outputs get the usual mode
                os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, path)
            for suffix in sidecars:
                side = tmp.with_name(tmp.name + suffix)
                if side.exists():
                    os.replace(side, path.with_name(path.name + suffix))
        except Exception as exc:
            _raise_if_disk_full(path, exc)
            raise


def _raise_if_disk_full(path: Path, exc: Exception) -> None:
    """Name a full disk as the reason a write failed (GDAL says only "Write failed", with ENOSPC in its log).

    Raises:
        OutputError: ``exc`` is not an engine error and the folder of ``path`` has less than 1 MiB left.
    """
    if isinstance(exc, EngineError):
        return
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < _FULL_BYTES:
        raise OutputError(
            f"no space left on the device holding {path.parent} ({free // 1024} KiB free) while writing {path.name}; "
            "free some space or write the outputs to another disk (the partial file was removed)"
        ) from exc


def write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (:func:`atomic_output`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_output(path, sidecars=()) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
