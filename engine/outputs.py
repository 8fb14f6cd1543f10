"""The output policy: no run ever destroys an input, and an existing file is replaced only when the user says so.

:func:`check_outputs` is the one place the policy lives; every public function that writes a product calls it first,
before reading a raster or loading anything (the command line, the QGIS algorithms and the Python API all go through
those functions). It refuses, with an :class:`~engine.errors.OutputError` naming the problem and the fix:

- an output that is one of the run's inputs (the raster, an embeddings raster, a head file or its card, a labels
  file, a model) — compared as files (:func:`os.path.samefile`, so ``../d/./x.tif``, symbolic and hard links count),
  not as strings;
- two outputs of the same run that are one file (``--pca`` equal to the main output…);
- an output that exists while ``overwrite`` is False (the command line's ``--overwrite``; QGIS asks the user itself
  and then passes True);
- an output that is a folder, whose folder is missing or read-only, or whose name has a suffix its format does not
  use (a GeoTIFF named ``.png``).

Replacing itself is atomic (:func:`engine.atomic.atomic_output`): an existing output is never half-replaced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from .errors import OutputError

__all__ = ("GEOTIFF", "check_outputs")

PathLike = Union[str, "os.PathLike[str]"]
#: Suffixes of GeoTIFF outputs (every raster product of the engine is a GeoTIFF).
GEOTIFF = (".tif", ".tiff")
_OVERWRITE_HINT = (
    "choose another path, or allow replacing it (--overwrite on the command line, overwrite=True in Python)"
)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def _check_one(role: str, path: Path, suffixes: Sequence[str]) -> None:
    if path.is_dir():
        raise OutputError(f"the {role} {path} is a folder; give a file name inside it")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"the folder of the {role}, {folder}, does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write the {role} into {folder} (permission denied); choose a folder you can write to"
        )
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(
            f"the {role} {path.name} must end in {' or '.join(suffixes)} (the format it is written in); "
            f"name it {path.stem}{suffixes[0]}"
        )


def check_outputs(
    outputs: Mapping[str, Optional[PathLike]],
    inputs: Mapping[str, Optional[PathLike]] = {},  # noqa: B006 (read only)
    *,
    overwrite: bool = False,
    suffixes: Mapping[str, Sequence[str]] = {},  # noqa: B006 (read only)
) -> None:
    """Refuse, before any work, outputs that would destroy an input or another output (the module text).

    Args:
        outputs: Role (``"output"``, ``"probabilities output"``…, used in messages) → path; None entries are skipped.
        inputs: Role (``"input raster"``, ``"head"``…) → path of every file the run reads; None entries are skipped.
        overwrite: Whether existing outputs may be replaced.
        suffixes: Role → the suffixes (lower case, with the dot) its format accepts; the first one is suggested.

    Raises:
        OutputError: An output is an input or another output, exists while ``overwrite`` is False, is a folder, lies
            in a missing or read-only folder, or has a suffix its format does not use.
    """
    paths = {}
    for role, value in outputs.items():
        if value is not None:
            if not os.fspath(value).strip():
                raise OutputError(f"the {role} path is empty; give a file name")
            paths[role] = Path(value)
    seen: dict[str, Path] = {}
    for role, path in paths.items():  # first what would destroy data, then what would merely fail
        for in_role, in_value in inputs.items():
            if in_value is not None and os.fspath(in_value).strip() and _same_file(path, Path(in_value)):
                raise OutputError(
                    f"the {role} {path} is the {in_role} {in_value}; writing it would destroy the {in_role}: "
                    "choose another output path"
                )
        for other_role, other in seen.items():
            if _same_file(path, other):
                raise OutputError(f"the {role} and the {other_role} are the same file {path}; give each its own path")
        seen[role] = path
    for role, path in paths.items():
        _check_one(role, path, suffixes.get(role, ()))
    for role, path in paths.items():
        if path.exists() and not overwrite:
            raise OutputError(f"the {role} {path} already exists; {_OVERWRITE_HINT}")
